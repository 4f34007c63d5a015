//! One client connection: read frames, answer each in order, close on anything unreadable.
//!
//! A connection task runs on the shard that accepted it and owns its socket and buffer. It
//! handles one request at a time, so responses leave in the order requests came (Kafka clients
//! rely on it). Frames are checked against `socket.request.max.bytes` from their size prefix
//! before the buffer grows for them. Every client mistake ends as a `ConnectionError` that the
//! caller logs; none of them can panic the shard.

use std::cell::Cell;
use std::io;

use bytes::{Buf, BytesMut};
use event_listener::Event;
use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;
use thiserror::Error;

use crate::handlers::{handle_request, Broker, RequestError};
use crate::send::{FetchSend, FrameSender};
use crate::{next_frame, Frame, FrameError, SIZE_PREFIX_BYTES};

/// Bytes read from the socket at a time. Larger frames arrive over several reads.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What every connection of a shard needs besides the broker.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// `socket.request.max.bytes`: the largest request frame accepted.
    pub request_max_bytes: usize,
    /// How responses carrying records are written (see [`crate::send`]).
    pub fetch_send: FetchSend,
}

/// Why a connection ended other than by the client closing it between requests.
#[derive(Debug, Error)]
pub enum ConnectionError {
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("client closed the connection {buffered} bytes into a {needed}-byte frame")]
    Truncated { buffered: usize, needed: usize },
}

/// Tells a shard's tasks that the broker is stopping. Lives on one shard (not `Send`); the
/// process-wide signal is forwarded to it by the shard itself.
#[derive(Debug, Default)]
pub struct Shutdown {
    stopping: Cell<bool>,
    event: Event,
}

impl Shutdown {
    pub fn trigger(&self) {
        self.stopping.set(true);
        self.event.notify(usize::MAX);
    }

    pub fn is_triggered(&self) -> bool {
        self.stopping.get()
    }

    /// Resolves once `trigger` has been called.
    pub async fn wait(&self) {
        // Listen before checking, so a trigger between the two is not missed.
        let listener = self.event.listen();
        if self.is_triggered() {
            return;
        }
        listener.await;
    }
}

/// Serves one connection until the client closes it, it sends something unreadable, or the
/// shard stops. When stopping, a connection finishes the request it has started receiving and
/// closes before the next one.
pub async fn serve<B: Broker>(
    mut stream: TcpStream,
    settings: &ConnectionSettings,
    broker: &B,
    shutdown: &Shutdown,
) -> Result<(), ConnectionError> {
    let peer = stream.peer_addr().ok().map(|peer| peer.ip());
    let peer_host = peer.map_or_else(String::new, |ip| ip.to_string());
    let sender = FrameSender::new(settings.fetch_send, peer);
    let mut buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0_u8; READ_CHUNK_BYTES];
    loop {
        let needed = answer_buffered(
            (&mut stream, &sender),
            &mut buffer,
            settings,
            broker,
            &peer_host,
        )
        .await?;
        let idle = buffer.is_empty();
        if idle && shutdown.is_triggered() {
            return Ok(());
        }
        let read = if idle {
            // Between requests the connection may be closed by a shutdown.
            let stopped = async {
                shutdown.wait().await;
                None
            };
            futures_lite::future::or(async { Some(stream.read(&mut chunk).await) }, stopped).await
        } else {
            Some(stream.read(&mut chunk).await)
        };
        let Some(read) = read else {
            return Ok(());
        };
        match read? {
            0 if idle => return Ok(()),
            0 => {
                return Err(ConnectionError::Truncated {
                    buffered: buffer.len(),
                    needed,
                })
            }
            count => buffer.extend_from_slice(&chunk[..count]),
        }
    }
}

/// Answers every whole frame at the start of `buffer`, in order, and returns how many bytes
/// the next (incomplete) frame needs in all.
async fn answer_buffered<B: Broker>(
    (stream, sender): (&mut TcpStream, &FrameSender),
    buffer: &mut BytesMut,
    settings: &ConnectionSettings,
    broker: &B,
    peer_host: &str,
) -> Result<usize, ConnectionError> {
    loop {
        match next_frame(buffer, settings.request_max_bytes)? {
            Frame::Complete { total } => {
                let mut payload = buffer.split_to(total).freeze();
                payload.advance(SIZE_PREFIX_BYTES);
                if let Some(response) = handle_request(payload, broker, peer_host).await? {
                    sender.send(stream, response).await?;
                }
            }
            // The buffer grows only as bytes arrive, not by the claimed size: a client that
            // announces 100 MiB and sends nothing costs nothing.
            Frame::Incomplete { total } => return Ok(total),
        }
    }
}
