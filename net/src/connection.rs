//! One client connection: read frames, answer each in order, close on anything unreadable.
//!
//! A connection task runs on the shard that accepted it and owns its socket and buffer.
//! Responses leave in the order requests came (Kafka clients rely on it). Produce requests are
//! pipelined: once a request's records are queued in their logs, the next request is received
//! and queued while they are written, up to [`PIPELINE_MAX`] unanswered, so a client with
//! several requests in flight keeps the disk and the CPU busy at once; every other request
//! waits for the answers before it and is handled alone. Frames are received straight into
//! their own buffers ([`crate::receive`]) and checked against `socket.request.max.bytes` from
//! their size prefix. Every client mistake ends as a `ConnectionError` that the caller logs;
//! none of them can panic the shard.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;

use bytes::Bytes;
use glommio::net::TcpStream;
use kafka_protocol::messages::ApiKey;
use thiserror::Error;

use crate::handlers::{start_request, Broker, Handled, Later, RequestError};
use crate::receive::FrameReader;
use crate::response::ResponseFrame;
use crate::send::{FetchSend, FrameSender};
use crate::{FrameError, RequestPrefix};

/// Produce requests a connection takes before it has answered the first of them. Kafka
/// clients keep at most `max.in.flight.requests.per.connection` (5 by default) unanswered.
pub const PIPELINE_MAX: usize = 8;

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
    event: event_listener::Event,
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
/// shard stops. When stopping, a connection finishes the requests it has started receiving and
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
    let mut frames = FrameReader::new(settings.request_max_bytes);
    let mut unanswered = Unanswered::new();
    loop {
        take_frames(
            (&mut stream, &sender),
            &mut frames,
            &mut unanswered,
            broker,
            &peer_host,
        )
        .await?;
        let idle = frames.buffered() == 0 && unanswered.is_empty();
        if idle && shutdown.is_triggered() {
            return Ok(());
        }
        match next_event(&mut stream, &mut frames, &mut unanswered, shutdown, idle).await {
            Event::Answered(response) => {
                unanswered.pop_front();
                write_response((&mut stream, &sender), whole(response)?).await?;
            }
            Event::Received(received) => {
                if received? > 0 {
                    continue;
                }
                // The client closed its side: answer what it sent whole, then close.
                answer_all((&mut stream, &sender), &mut unanswered).await?;
                return match frames.buffered() {
                    0 => Ok(()),
                    buffered => Err(ConnectionError::Truncated {
                        buffered,
                        needed: frames.needed()?,
                    }),
                };
            }
            Event::Stopped => return Ok(()),
        }
    }
}

/// Produce requests whose records are queued in their logs, oldest first, with their answers
/// to come (see [`Broker::produce`](crate::handlers::Broker::produce)).
type Unanswered = VecDeque<Later<Result<Option<Bytes>, RequestError>>>;

enum Event {
    /// The oldest unanswered request's response (or `None`: it wants none).
    Answered(Result<Option<Bytes>, RequestError>),
    Received(Result<usize, ConnectionError>),
    Stopped,
}

/// Waits for the oldest unanswered request's response, for more bytes (while fewer than
/// [`PIPELINE_MAX`] requests are unanswered: beyond that the client waits, as TCP's window
/// fills), or, when `idle`, for the shard to stop.
async fn next_event(
    stream: &mut TcpStream,
    frames: &mut FrameReader,
    unanswered: &mut Unanswered,
    shutdown: &Shutdown,
    idle: bool,
) -> Event {
    let receive = unanswered.len() < PIPELINE_MAX;
    let answered = async {
        match unanswered.front_mut() {
            Some(oldest) => Event::Answered(oldest.await),
            None => std::future::pending().await,
        }
    };
    let received = async {
        if receive {
            Event::Received(frames.fill(stream).await)
        } else {
            std::future::pending().await
        }
    };
    let stopped = async {
        if idle {
            shutdown.wait().await;
            Event::Stopped
        } else {
            std::future::pending().await
        }
    };
    // Answers first: a response that is ready leaves before more is received.
    futures_lite::future::or(answered, futures_lite::future::or(received, stopped)).await
}

/// Takes every whole frame received, while fewer than [`PIPELINE_MAX`] are unanswered. A
/// Produce is queued in its logs and answered later, so the next request is read and queued
/// while its records are written; any other request first waits for every earlier answer (it
/// may depend on their records: a Fetch, an offset commit) and is answered whole. Responses
/// leave in request order either way, as Kafka clients require.
async fn take_frames<B: Broker>(
    (stream, sender): (&mut TcpStream, &FrameSender),
    frames: &mut FrameReader,
    unanswered: &mut Unanswered,
    broker: &B,
    peer_host: &str,
) -> Result<(), ConnectionError> {
    while unanswered.len() < PIPELINE_MAX {
        let Some(payload) = frames.next_frame()? else {
            return Ok(());
        };
        let produce = RequestPrefix::parse(&payload)
            .is_ok_and(|prefix| prefix.api_key == ApiKey::Produce as i16);
        if !produce {
            answer_all((&mut *stream, sender), unanswered).await?;
        }
        match start_request(payload, broker, peer_host).await {
            Ok(Handled::Now(response)) => write_response((&mut *stream, sender), response).await?,
            Ok(Handled::Later(later)) => unanswered.push_back(later),
            Err(error) => {
                // The requests before the unreadable one still get their answers.
                answer_all((&mut *stream, sender), unanswered).await?;
                return Err(error.into());
            }
        }
    }
    Ok(())
}

/// Waits for every unanswered request's response, in order, and writes it.
async fn answer_all(
    (stream, sender): (&mut TcpStream, &FrameSender),
    unanswered: &mut Unanswered,
) -> Result<(), ConnectionError> {
    while let Some(later) = unanswered.pop_front() {
        write_response((&mut *stream, sender), whole(later.await)?).await?;
    }
    Ok(())
}

/// A produce answer (one encoded frame) as a frame to send.
fn whole(
    response: Result<Option<Bytes>, RequestError>,
) -> Result<Option<ResponseFrame>, RequestError> {
    response.map(|frame| frame.map(ResponseFrame::whole))
}

/// Writes a response through the connection's sender: every write of a connection goes the
/// same way (with zero-copy sends, through the shard's second ring), so they keep their order.
async fn write_response(
    (stream, sender): (&mut TcpStream, &FrameSender),
    response: Option<ResponseFrame>,
) -> Result<(), ConnectionError> {
    if let Some(response) = response {
        sender.send(stream, response).await?;
    }
    Ok(())
}
