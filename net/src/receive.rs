//! Receiving request frames straight into the buffers their payloads live in.
//!
//! A connection's bytes are received into one growing `BytesMut`; each whole frame is split
//! off it as the `Bytes` the handlers decode from, and Produce records stay slices of it until
//! the log copies them into its write buffers. Once a frame's size prefix is known, room for
//! the rest of the frame is reserved and the kernel copies the bytes into place, so a large
//! frame's bytes are copied once on the way in (by the kernel) and not moved again as its
//! buffer grows. Only the bytes taken by the read that waits for data (at most
//! `WAIT_READ_BYTES`, a whole small request) are copied a second time, from the wait buffer:
//! a small copy that saves the system calls of a receive in place (see [`FrameReader::fill`]).
//!
//! Limits: a frame over `socket.request.max.bytes` is refused from its prefix. Room is reserved
//! for at most [`RESERVE_AHEAD_BYTES`] beyond what has arrived (then doubled as bytes arrive),
//! so a client that announces 100 MiB and sends nothing costs little.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;

use crate::connection::ConnectionError;
use crate::{next_frame, Frame, FrameError, SIZE_PREFIX_BYTES};

/// Bytes asked for at least per receive: between frames, and for the tail of a frame, so that
/// small requests arrive several at a time. Small, because whatever of the next frame arrives
/// with it is copied once when that frame's room is reserved.
const RECEIVE_MIN_BYTES: usize = 16 * 1024;
/// Bytes taken by the read that waits for data: a whole small request, so that at moderate
/// rates a request costs one `recv` (see [`FrameReader::fill`]). What it takes is copied once
/// into the frame's buffer (a small copy next to the system calls it saves).
const WAIT_READ_BYTES: usize = 16 * 1024;
/// Room reserved ahead of the received bytes for a frame that is still arriving.
pub const RESERVE_AHEAD_BYTES: usize = 8 << 20;

/// The frames of one connection, as they arrive.
#[derive(Debug)]
pub struct FrameReader {
    buffer: BytesMut,
    request_max_bytes: usize,
    /// The last receive took less than it asked for: the socket is most likely empty, so the
    /// next one waits (glommio's read) instead of trying a `recv` that would find nothing.
    drained: bool,
    /// Where the waiting read puts what it takes (allocated at the first wait).
    wait_buffer: Vec<u8>,
}

impl FrameReader {
    pub fn new(request_max_bytes: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            request_max_bytes,
            drained: false,
            wait_buffer: Vec::new(),
        }
    }

    /// Bytes received and not yet taken as a frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The payload (without its size prefix) of the next whole frame, if it has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        match next_frame(&self.buffer, self.request_max_bytes)? {
            Frame::Complete { total } => {
                let mut payload = self.buffer.split_to(total).freeze();
                payload.advance(SIZE_PREFIX_BYTES);
                Ok(Some(payload))
            }
            Frame::Incomplete { .. } => Ok(None),
        }
    }

    /// Bytes the next frame needs in all (its size prefix included), as far as known.
    pub fn needed(&self) -> Result<usize, FrameError> {
        match next_frame(&self.buffer, self.request_max_bytes)? {
            Frame::Complete { total } | Frame::Incomplete { total } => Ok(total),
        }
    }

    /// Receives more bytes, waiting until some arrive; `Ok(0)` when the client has closed its
    /// side. Asks for the rest of the frame being received (within the limits above), or
    /// [`RECEIVE_MIN_BYTES`] when less is missing.
    ///
    /// System calls per request matter at moderate rates, where every request arrives alone:
    /// a `recv` that finds the socket empty is skipped when the last one drained it, and the
    /// wait is glommio's read of up to [`WAIT_READ_BYTES`], which takes a whole small request
    /// and, having taken less than it asked for, arms its poll for the next one at once (it
    /// stays armed in the stream if this wait is dropped because an answer was ready first).
    /// So a small request costs one `recv`, where trying first and waiting for a few bytes
    /// cost four. Large frames still arrive in place after their first bytes.
    pub async fn fill(&mut self, stream: &mut TcpStream) -> Result<usize, ConnectionError> {
        let missing = self.needed()?.saturating_sub(self.buffer.len());
        let ahead = self.buffer.len().max(RESERVE_AHEAD_BYTES);
        let want = missing.clamp(RECEIVE_MIN_BYTES, ahead);
        self.buffer.reserve(want);
        if !self.drained {
            loop {
                match receive_into(stream.as_raw_fd(), &mut self.buffer, want) {
                    Ok(received) => {
                        self.drained = received < want;
                        return Ok(received);
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) => return Err(error.into()),
                }
            }
        }
        if self.wait_buffer.is_empty() {
            self.wait_buffer = vec![0; WAIT_READ_BYTES];
        }
        let received = stream.read(&mut self.wait_buffer).await?;
        self.buffer.extend_from_slice(&self.wait_buffer[..received]);
        self.drained = received < self.wait_buffer.len();
        Ok(received)
    }
}

/// One non-blocking `recv` of at most `want` bytes into `buffer`'s spare capacity.
fn receive_into(fd: RawFd, buffer: &mut BytesMut, want: usize) -> io::Result<usize> {
    let spare = buffer.spare_capacity_mut();
    let len = spare.len().min(want);
    // SAFETY: `recv` writes at most `len` bytes to the pointer, and the spare capacity is valid
    // for writes of that many; no reference to uninitialized bytes is made.
    let received = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) };
    let received = usize::try_from(received).map_err(|_| io::Error::last_os_error())?;
    assert!(
        received <= len,
        "recv returned more than it was given room for"
    );
    // SAFETY: the kernel initialized the first `received` bytes of the spare capacity.
    unsafe { buffer.set_len(buffer.len() + received) };
    Ok(received)
}
