//! Frames on the controller's links (between voters, and from brokers to the controllers):
//! `[length: u32 LE][crc32c: u32 LE][payload]`, the CRC over the payload. A frame is read whole
//! or refused: a length over the limit, a CRC that does not match or a stream that ends inside
//! a frame is an error and the link is dropped (the peer reconnects), never a misread message.
//! The payloads are postcard-encoded messages, decoded by the caller.
//!
//! TCP already checks its segments; the CRC is for what TCP does not catch (a peer that writes
//! garbage, a middlebox, a bug of ours), since a metadata message decoded wrong could make a
//! controller decide on nonsense.

use std::io;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use ringlog_env::Stream;
use thiserror::Error;

/// The largest frame a controller link carries: a snapshot of the metadata image for 100,000
/// partitions fits; anything bigger is damage or an attack.
pub const FRAME_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, Error)]
pub enum WireError {
    #[error("the peer closed the link")]
    Closed,
    #[error("frame of {0} bytes is over the {FRAME_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("frame CRC mismatch (damaged or not a ringlog controller link)")]
    Crc,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Writes one frame (and flushes it).
pub async fn write_frame(stream: &mut impl Stream, payload: &[u8]) -> Result<(), WireError> {
    if payload.len() > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge(payload.len()));
    }
    let length = u32::try_from(payload.len()).expect("bounded by FRAME_BYTES_MAX");
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&length.to_le_bytes());
    frame.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one frame's payload.
pub async fn read_frame(stream: &mut impl Stream) -> Result<Vec<u8>, WireError> {
    let mut header = [0u8; 8];
    match stream.read_exact(&mut header).await {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(WireError::Closed)
        }
        Err(error) => return Err(error.into()),
    }
    let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if length > FRAME_BYTES_MAX {
        return Err(WireError::TooLarge(length));
    }
    let mut payload = vec![0u8; length];
    match stream.read_exact(&mut payload).await {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(WireError::Closed)
        }
        Err(error) => return Err(error.into()),
    }
    if crc32c::crc32c(&payload) != crc {
        return Err(WireError::Crc);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::time::Duration;

    use ringlog_env::{Listener, ManualClock, MemoryNetwork, Random, Transport};

    use super::*;

    fn run<T>(test: impl std::future::Future<Output = T>) -> T {
        futures_lite::future::block_on(test)
    }

    fn pair() -> (ringlog_env::MemoryTransport, ringlog_env::MemoryTransport) {
        let clock: Rc<ManualClock> = ManualClock::new(0);
        let network = MemoryNetwork::new(clock, Random::seeded(1), Duration::ZERO);
        (network.host("a"), network.host("b"))
    }

    #[test]
    fn frames_cross_whole_and_damage_is_refused() {
        let (a, b) = pair();
        run(async {
            let listener = b.listen("b:1").expect("listen");
            let mut client = a.connect("b:1").await.expect("connect");
            let (mut server, _) = listener.accept().await.expect("accept");
            write_frame(&mut client, b"hello").await.expect("write");
            write_frame(&mut client, b"").await.expect("write empty");
            assert_eq!(read_frame(&mut server).await.expect("read"), b"hello");
            assert_eq!(read_frame(&mut server).await.expect("read"), b"");
            // A flipped payload byte.
            let mut frame = Vec::new();
            frame.extend_from_slice(&3u32.to_le_bytes());
            frame.extend_from_slice(&crc32c::crc32c(b"abc").to_le_bytes());
            frame.extend_from_slice(b"abd");
            client.write_all(&frame).await.expect("raw");
            assert!(matches!(read_frame(&mut server).await, Err(WireError::Crc)));
            // A length over the limit is refused before anything is allocated.
            let huge = u32::try_from(FRAME_BYTES_MAX + 1).expect("fits");
            client.write_all(&huge.to_le_bytes()).await.expect("raw");
            client.write_all(&[0; 4]).await.expect("raw");
            assert!(matches!(
                read_frame(&mut server).await,
                Err(WireError::TooLarge(_))
            ));
            // A stream that ends inside a frame.
            client.write_all(&10u32.to_le_bytes()).await.expect("raw");
            drop(client);
            assert!(matches!(
                read_frame(&mut server).await,
                Err(WireError::Closed)
            ));
        });
    }
}
