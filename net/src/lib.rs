//! Kafka wire protocol for ringlog: framing and request headers.
//!
//! Every Kafka request and response is a frame: a 4-byte big-endian size, then that many bytes.
//! This crate splits a connection's byte stream into frames, refusing a frame over
//! `socket.request.max.bytes` from its size prefix alone, before a byte of it is buffered, and
//! reads the fixed part of the request header so the broker can route, answer with an error, or
//! close the connection. The codecs of the API bodies come from the `kafka-protocol` crate;
//! `handlers` has one module per implemented API and `connection` serves one client socket.
//!
//! `client` is the other side of the wire: the Kafka clients ringlog's own programs use (the
//! glommio client of `ringlog-perf` and of replication followers, and a blocking client for
//! admin tools), kept here next to the framing they share with the broker.

pub mod alloc;
pub mod client;
pub mod connection;
pub mod errors;
pub mod handlers;
pub mod receive;
pub mod response;
pub mod send;

// The tests feed hostile array counts to the decoders; they need the allocator the broker
// runs with.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: alloc::ClaimTolerantAlloc = alloc::ClaimTolerantAlloc;

use thiserror::Error;

/// Bytes of the size prefix of every frame.
pub const SIZE_PREFIX_BYTES: usize = 4;
/// Kafka's default `socket.request.max.bytes` (100 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 104_857_600;

/// Why the byte stream cannot be framed. Either way the connection must be closed: the
/// stream has lost its frame boundaries.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame size {size} is negative")]
    NegativeSize { size: i32 },
    #[error("frame of {size} bytes is over socket.request.max.bytes ({max})")]
    TooLarge { size: usize, max: usize },
}

/// What the next frame in a buffer looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A whole frame: its payload is `buffer[SIZE_PREFIX_BYTES..total]`.
    Complete { total: usize },
    /// Not all of it is here; `total` bytes are needed from the start of the buffer.
    Incomplete { total: usize },
}

/// Looks at the frame at the start of `buffer`. A size over `max_bytes` is refused from the
/// prefix alone, so a hostile client cannot make the broker allocate.
pub fn next_frame(buffer: &[u8], max_bytes: usize) -> Result<Frame, FrameError> {
    let Some(prefix) = buffer.get(..SIZE_PREFIX_BYTES) else {
        return Ok(Frame::Incomplete {
            total: SIZE_PREFIX_BYTES,
        });
    };
    let size = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let size = usize::try_from(size).map_err(|_| FrameError::NegativeSize { size })?;
    if size > max_bytes {
        return Err(FrameError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    let total = SIZE_PREFIX_BYTES + size;
    if buffer.len() >= total {
        Ok(Frame::Complete { total })
    } else {
        Ok(Frame::Incomplete { total })
    }
}

/// The fixed start of every request header (versions 0 to 2): API key, API version and
/// correlation id. The client id and tagged fields that follow depend on the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPrefix {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

/// Why a frame's payload has no readable request header.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("request of {len} bytes is too short for a header (needs 8)")]
pub struct HeaderError {
    pub len: usize,
}

impl RequestPrefix {
    /// Reads the prefix of a request payload (the frame without its size).
    pub fn parse(payload: &[u8]) -> Result<Self, HeaderError> {
        let Some(head) = payload.get(..8) else {
            return Err(HeaderError { len: payload.len() });
        };
        Ok(Self {
            api_key: i16::from_be_bytes([head[0], head[1]]),
            api_version: i16::from_be_bytes([head[2], head[3]]),
            correlation_id: i32::from_be_bytes([head[4], head[5], head[6], head[7]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn frames_split_and_refuse_oversized_before_buffering() {
        let mut stream = frame(&[0, 18, 0, 3, 0, 0, 0, 7, 9, 9]);
        stream.extend(frame(b"second"));
        let Ok(Frame::Complete { total }) = next_frame(&stream, 100) else {
            panic!("first frame is whole");
        };
        let prefix = RequestPrefix::parse(&stream[SIZE_PREFIX_BYTES..total]).expect("prefix");
        assert_eq!(
            (prefix.api_key, prefix.api_version, prefix.correlation_id),
            (18, 3, 7)
        );
        assert_eq!(
            next_frame(&stream[total..total + 5], 100),
            Ok(Frame::Incomplete { total: 10 })
        );
        assert_eq!(
            next_frame(&[0x7f, 0xff, 0xff, 0xff], 100),
            Err(FrameError::TooLarge {
                size: i32::MAX as usize,
                max: 100
            })
        );
        assert_eq!(
            next_frame(&[0xff, 0xff, 0xff, 0xfe], 100),
            Err(FrameError::NegativeSize { size: -2 })
        );
        assert!(RequestPrefix::parse(&[0, 1, 2]).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_frame_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            match next_frame(&bytes, 32) {
                Ok(Frame::Complete { total }) => prop_assert!(total <= bytes.len() && total <= 36),
                Ok(Frame::Incomplete { total }) => prop_assert!(total > bytes.len()),
                Err(_) => {}
            }
        }
    }
}
