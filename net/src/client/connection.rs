//! One TCP connection to a broker, on the executor that opened it.
//!
//! `Connection` is the control path: `call` writes one request and waits for its answer.
//! The hot paths (Produce, Fetch) `split` it into a `FrameWriter` and a `FrameReader` owned by
//! two tasks, so several requests are in flight while answers come back in order.

use std::time::Duration;

use bytes::Bytes;
use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kafka_protocol::protocol::Request;

use super::error::ClientError;
use super::wire::{decode_response, encode_request, request_what, FrameBuffer};

/// How long a control request may take (the blocking client's too).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// Resolves to `Err(Timeout)` if `future` has not finished within `limit`.
pub async fn with_timeout<T>(
    limit: Duration,
    what: impl FnOnce() -> String,
    future: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let expired = async {
        glommio::timer::sleep(limit).await;
        Err(ClientError::timeout(what(), limit))
    };
    futures_lite::future::or(future, expired).await
}

/// Reads whole frames from a byte stream.
pub struct FrameReader<R> {
    stream: R,
    frames: FrameBuffer,
}

impl<R: futures_lite::AsyncRead + Unpin> FrameReader<R> {
    pub fn new(stream: R) -> Self {
        Self {
            stream,
            frames: FrameBuffer::default(),
        }
    }

    /// The next frame's payload (without its size prefix). The bytes are a slice of the read
    /// buffer: records in a Fetch response are not copied again.
    pub async fn read_frame(&mut self) -> Result<Bytes, ClientError> {
        loop {
            if let Some(frame) = self.frames.next_frame()? {
                return Ok(frame);
            }
            let read = self.stream.read(self.frames.read_space()).await;
            self.frames.filled(read)?;
        }
    }
}

/// Writes frames to a byte stream.
pub struct FrameWriter<W> {
    stream: W,
}

impl<W: futures_lite::AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(stream: W) -> Self {
        Self { stream }
    }

    /// Writes a whole frame; returns once the kernel has taken all of it, so the caller may
    /// reuse its buffer.
    pub async fn write_frame(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(frame).await?;
        Ok(())
    }
}

/// A connection's halves for pipelining: one task writes requests, another reads answers.
pub type SplitConnection = (
    FrameWriter<WriteHalf<TcpStream>>,
    FrameReader<ReadHalf<TcpStream>>,
);

/// One connection used one request at a time.
pub struct Connection {
    address: String,
    client_id: String,
    writer: FrameWriter<WriteHalf<TcpStream>>,
    reader: FrameReader<ReadHalf<TcpStream>>,
    next_correlation_id: i32,
}

impl Connection {
    pub async fn connect(address: &str, client_id: &str) -> Result<Self, ClientError> {
        let connect_error = |source| ClientError::Connect {
            address: address.to_owned(),
            source,
        };
        let stream = with_timeout(CONTROL_TIMEOUT, || format!("connect to {address}"), async {
            TcpStream::connect(address)
                .await
                .map_err(|e| connect_error(e.into()))
        })
        .await?;
        // Requests are whole frames written at once; Nagle would only delay them.
        stream
            .set_nodelay(true)
            .map_err(|e| connect_error(e.into()))?;
        let (read, write) = futures_lite::io::split(stream);
        Ok(Self {
            address: address.to_owned(),
            client_id: client_id.to_owned(),
            writer: FrameWriter::new(write),
            reader: FrameReader::new(read),
            next_correlation_id: 1,
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Sends one request and waits (at most `CONTROL_TIMEOUT`) for its answer.
    pub async fn call<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, ClientError> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let frame = encode_request(request, version, correlation_id, &self.client_id)?;
        let address = self.address.clone();
        let payload = with_timeout(
            CONTROL_TIMEOUT,
            || request_what::<R>(version, &address),
            async {
                self.writer.write_frame(&frame).await?;
                self.reader.read_frame().await
            },
        )
        .await?;
        decode_response::<R>(payload, version, correlation_id)
    }

    /// The two halves, for a writer task and a reader task. Correlation ids are the caller's
    /// from here on.
    pub fn split(self) -> SplitConnection {
        (self.writer, self.reader)
    }
}
