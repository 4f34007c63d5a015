//! Framing, the request/response envelope and API version negotiation, shared by the glommio
//! client (`connection`) and the blocking one (`blocking`): they differ only in how they move
//! bytes through the socket.
//!
//! A request frame is `size:i32 | header | body`; a response frame is `size:i32 |
//! correlation_id:i32 [| tagged fields for flexible versions] | body`. Control requests are
//! encoded by the `kafka-protocol` crate; the hot Produce path writes its frames itself
//! (`produce`).

use std::collections::HashMap;
use std::io;
use std::ops::RangeInclusive;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiVersionsResponse, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use super::error::{check_code, ClientError};

/// Bytes of the size prefix of every frame.
pub const SIZE_PREFIX_BYTES: usize = 4;
/// The largest response frame accepted (Fetch responses are bounded by the request's
/// `max_bytes`; this is a guard against a garbled size).
pub const RESPONSE_MAX_BYTES: usize = 256 * 1024 * 1024;
/// Bytes asked of the socket at a time when no larger frame is pending. Small: the buffer is
/// zero-filled up to what is asked, and Produce answers are tens of bytes; a large frame is
/// read in one go once its size prefix is in.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// The version of the ApiVersions request both clients open with: version 0 is answered by
/// every broker, whatever it supports.
pub const API_VERSIONS_VERSION: i16 = 0;

/// The name of an API, for messages.
pub fn api_name<R: Request>() -> &'static str {
    let name = std::any::type_name::<R>();
    name.rsplit("::").next().unwrap_or(name)
}

/// A request and where it went, for messages: `MetadataRequest v12 to host:9092`.
pub fn request_what<R: Request>(version: i16, address: &str) -> String {
    format!("{} v{version} to {address}", api_name::<R>())
}

/// A topic name for a request.
pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// Encodes one whole request frame (size prefix included) with `kafka-protocol`.
pub fn encode_request<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &str,
) -> Result<Bytes, ClientError> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_owned())));
    let encode_error = |reason: anyhow::Error| ClientError::Encode {
        api: api_name::<R>(),
        version,
        reason: reason.to_string(),
    };
    let mut buffer = BytesMut::with_capacity(256);
    buffer.put_i32(0);
    header
        .encode(&mut buffer, R::header_version(version))
        .map_err(encode_error)?;
    request.encode(&mut buffer, version).map_err(encode_error)?;
    patch_size_prefix(&mut buffer, 0);
    Ok(buffer.freeze())
}

/// Writes the size of the frame that starts at `start` (its prefix excluded) into its prefix.
pub fn patch_size_prefix(buffer: &mut BytesMut, start: usize) {
    let size = buffer.len() - start - SIZE_PREFIX_BYTES;
    let size = i32::try_from(size).expect("a request frame is built under 2 GiB");
    buffer[start..start + SIZE_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
}

/// Reads the correlation id at the start of a response payload (the frame without its size).
pub fn response_correlation_id(payload: &[u8]) -> Result<i32, ClientError> {
    let head = payload.get(..4).ok_or(ClientError::Decode {
        what: "response header",
        reason: format!("{} bytes", payload.len()),
    })?;
    Ok(i32::from_be_bytes([head[0], head[1], head[2], head[3]]))
}

/// Decodes a response payload (the frame without its size) for request type `R` at `version`,
/// checking its correlation id.
pub fn decode_response<R: Request>(
    mut payload: Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<R::Response, ClientError> {
    let got = response_correlation_id(&payload)?;
    if got != correlation_id {
        return Err(ClientError::Correlation {
            expected: correlation_id,
            got,
        });
    }
    let decode_error = |reason: anyhow::Error| ClientError::Decode {
        what: api_name::<R>(),
        reason: reason.to_string(),
    };
    ResponseHeader::decode(
        &mut payload,
        <R::Response as HeaderVersion>::header_version(version),
    )
    .map_err(decode_error)?;
    let response = R::Response::decode(&mut payload, version).map_err(decode_error)?;
    Ok(response)
}

/// Splits the next whole frame off the front of `buffer`, returning its payload (no size
/// prefix), or `None` when more bytes are needed. `needed` is set to the bytes the next frame
/// needs in all, so the reader can grow its buffer once.
pub fn split_frame(
    buffer: &mut BytesMut,
    needed: &mut usize,
) -> Result<Option<Bytes>, ClientError> {
    if buffer.len() < SIZE_PREFIX_BYTES {
        *needed = SIZE_PREFIX_BYTES;
        return Ok(None);
    }
    let size = i32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
    let size = usize::try_from(size).map_err(|_| ClientError::Decode {
        what: "response frame",
        reason: format!("negative size {size}"),
    })?;
    if size > RESPONSE_MAX_BYTES {
        return Err(ClientError::FrameTooLarge {
            size,
            max: RESPONSE_MAX_BYTES,
        });
    }
    *needed = SIZE_PREFIX_BYTES + size;
    if buffer.len() < *needed {
        return Ok(None);
    }
    let mut frame = buffer.split_to(*needed).freeze();
    frame.advance(SIZE_PREFIX_BYTES);
    Ok(Some(frame))
}

/// The read side of a connection, less the socket: the bytes read so far, cut into whole
/// frames. The glommio reader and the blocking one each own one and differ only in the read
/// itself: `read_space` for where to read into, `filled` with what the read returned.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buffer: BytesMut,
    /// Bytes the next frame needs in all (its size prefix included), once its prefix is in.
    needed: usize,
    /// Bytes held before the read in progress.
    have: usize,
}

impl FrameBuffer {
    /// The next whole frame's payload (without its size prefix), or `None` when more bytes are
    /// needed. The bytes are a slice of the read buffer: records in a Fetch response are not
    /// copied again.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, ClientError> {
        split_frame(&mut self.buffer, &mut self.needed)
    }

    /// Where the next read goes: room for the rest of the pending frame, at least
    /// `READ_CHUNK_BYTES`. Call after `next_frame` said more bytes are needed.
    pub fn read_space(&mut self) -> &mut [u8] {
        self.have = self.buffer.len();
        let want = self.needed.saturating_sub(self.have).max(READ_CHUNK_BYTES);
        // Zero-filled up to what is asked; reading into uninitialised memory would need
        // unsafe code for a cost small next to the socket copy itself.
        self.buffer.resize(self.have + want, 0);
        &mut self.buffer[self.have..]
    }

    /// Takes in what a read into `read_space` returned: 0 bytes is the broker closing the
    /// connection.
    pub fn filled(&mut self, read: io::Result<usize>) -> Result<(), ClientError> {
        match read {
            Ok(0) => {
                self.buffer.truncate(self.have);
                Err(ClientError::Closed)
            }
            Ok(count) => {
                self.buffer.truncate(self.have + count);
                Ok(())
            }
            Err(error) => {
                self.buffer.truncate(self.have);
                Err(error.into())
            }
        }
    }
}

/// The version ranges a broker offered in ApiVersions, by API key.
#[derive(Debug, Clone, Default)]
pub struct ApiVersions {
    ranges: HashMap<i16, RangeInclusive<i16>>,
}

impl ApiVersions {
    /// The ranges of an ApiVersions answer (asked at `API_VERSIONS_VERSION`) from `address`.
    pub fn from_response(
        response: &ApiVersionsResponse,
        address: &str,
    ) -> Result<Self, ClientError> {
        check_code(response.error_code, || {
            format!("ApiVersions from {address}")
        })?;
        let ranges = response
            .api_keys
            .iter()
            .map(|api| (api.api_key, api.min_version..=api.max_version))
            .collect();
        Ok(Self { ranges })
    }

    /// The highest version of `R` both sides speak, at most `ours_max` (the client may not
    /// handle every version `kafka-protocol` knows).
    pub fn pick<R: Request>(&self, ours_max: i16) -> Result<i16, ClientError> {
        let ours = R::VERSIONS.min..=ours_max.min(R::VERSIONS.max);
        self.pick_key(R::KEY, api_name::<R>(), ours)
    }

    /// The highest version of an API (by key) within `ours`; for requests written by hand
    /// (the Produce frame), whose lowest version is the client's, not `kafka-protocol`'s.
    pub fn pick_key(
        &self,
        key: i16,
        name: &'static str,
        ours: RangeInclusive<i16>,
    ) -> Result<i16, ClientError> {
        let broker = self.ranges.get(&key);
        if let Some(broker) = broker {
            let version = (*ours.end()).min(*broker.end());
            if version >= (*ours.start()).max(*broker.start()) {
                return Ok(version);
            }
        }
        Err(ClientError::Unsupported {
            api: name,
            ours,
            broker: broker.cloned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{
        ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, InitProducerIdRequest,
        MetadataRequest, ProduceRequest,
    };

    #[test]
    fn versions_are_the_highest_both_speak() {
        let versions = ApiVersions {
            ranges: [(0, 3..=11), (3, 0..=9), (22, 5..=5)].into_iter().collect(),
        };
        assert_eq!(versions.pick::<ProduceRequest>(8).expect("produce"), 8);
        assert_eq!(versions.pick::<MetadataRequest>(12).expect("metadata"), 9);
        let no_common = versions
            .pick::<InitProducerIdRequest>(4)
            .expect_err("v5 only");
        assert_eq!(
            no_common.to_string(),
            "InitProducerIdRequest: the broker speaks v5..=v5, this client v0..=v4: \
             no version in common"
        );
        let not_offered = versions
            .pick::<CreateTopicsRequest>(7)
            .expect_err("not offered");
        assert_eq!(
            not_offered.to_string(),
            "CreateTopicsRequest: the broker does not offer it (this client speaks v2..=v7)"
        );
        assert_eq!(versions.pick_key(0, "Produce", 3..=8).expect("key"), 8);
    }

    #[test]
    fn request_frames_carry_their_size_and_header() {
        let frame = encode_request(&ApiVersionsRequest::default(), 0, 7, "perf").expect("encode");
        let size = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        assert_eq!(size as usize, frame.len() - SIZE_PREFIX_BYTES);
        // api key 18, version 0, correlation id 7, client id "perf".
        assert_eq!(&frame[4..12], &[0, 18, 0, 0, 0, 0, 0, 7]);
        assert_eq!(&frame[12..18], &[0, 4, b'p', b'e', b'r', b'f']);
    }

    #[test]
    fn frames_split_only_when_whole_and_correlation_ids_are_checked() {
        let mut body = BytesMut::new();
        body.put_i32(42);
        ApiVersionsResponse::default()
            .encode(&mut body, 0)
            .expect("encode");
        let mut stream = BytesMut::new();
        stream.put_i32(body.len() as i32);
        stream.extend_from_slice(&body);
        let whole = stream.len();
        let mut partial = BytesMut::from(&stream[..whole - 1]);
        let mut needed = 0;
        assert!(split_frame(&mut partial, &mut needed)
            .expect("ok")
            .is_none());
        assert_eq!(needed, whole);
        let payload = split_frame(&mut stream, &mut needed)
            .expect("ok")
            .expect("whole");
        assert!(stream.is_empty());
        assert!(decode_response::<ApiVersionsRequest>(payload.clone(), 0, 42).is_ok());
        assert!(matches!(
            decode_response::<ApiVersionsRequest>(payload, 0, 41),
            Err(ClientError::Correlation {
                expected: 41,
                got: 42
            })
        ));
        let mut negative = BytesMut::from(&[0xff_u8, 0xff, 0xff, 0xff][..]);
        assert!(split_frame(&mut negative, &mut needed).is_err());
    }
}
