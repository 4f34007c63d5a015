//! Writing response frames to a client socket: a vectored plain send, or io_uring zero-copy
//! sends (SENDMSG_ZC) on a second ring of the shard.
//!
//! # Copy (plain) sends
//! `sendmsg` with all of a frame's pieces as one iovec list, non-blocking; when the socket is
//! full, glommio's own write waits for room (and writes part of the next piece). The kernel
//! copies the bytes into socket buffers; user space copies nothing.
//!
//! # Zero-copy sends
//! glommio has no SEND_ZC and expects one completion per operation, while a zero-copy send
//! completes twice: once with the bytes sent, later with a notification that the kernel no
//! longer reads the pages. So each shard that needs it opens a second io_uring ([`ZeroCopyRing`],
//! thread-local: the shard's executor thread owns it) with an eventfd registered for its
//! completions; a glommio task reads that eventfd (through glommio's own io_uring, so the
//! executor sleeps as usual), drains the completions and wakes the sends. A send resolves when
//! its bytes are queued (first completion) so the connection moves on; the frame, and with it
//! the cache chunks or read buffers its records live in, is held until the notification.
//! Every write of a connection in zero-copy mode goes through the ring, one at a time, so
//! responses leave in order; frames without records (or below the size threshold) use plain
//! SENDMSG on the same ring.
//!
//! A send future may be dropped at any point (its connection closes, a select drops it).
//! Each operation the ring has seen is owned by the ring's operation table, not by the
//! future: the table keeps the frame (and so the pins on the cache chunks and read buffers its
//! records live in), the iovecs, the message header and a duplicate of the socket's
//! descriptor until the operation's last completion, the notification for a zero-copy send.
//! A dropped future only marks its operation abandoned and asks the kernel to cancel it if it
//! has not completed; the table frees everything when the completions come. The duplicate
//! descriptor keeps the number in a submission that the kernel has not consumed yet (a failed
//! `io_uring_enter`) from naming another socket once the connection closes its own.
//!
//! The buffers are not registered with the second ring (fixed buffers): the cache's and the
//! reads' buffers come from glommio's private registered arena, and SENDMSG_ZC with a list of
//! pieces cannot name fixed buffers; the kernel pins the pages per send instead, which was
//! profiled at about 2% of the broker's CPU (docs/fetch-path.md, "Registered buffers for
//! SEND_ZC").
//!
//! # Choosing
//! `copy` always copies; `zero-copy` sends every frame carrying records with SENDMSG_ZC;
//! `auto` uses zero-copy only for peers that are not on loopback (where the kernel copies
//! anyway and zero-copy costs more CPU) and frames of at least [`AUTO_ZERO_COPY_MIN_BYTES`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::str::FromStr;
use std::task::{Context, Poll, Waker};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use io_uring::{cqueue, opcode, types, IoUring};

use crate::response::ResponseFrame;

/// Under `auto`, frames smaller than this are copied even to remote peers: the notification
/// round trip and page pinning cost more than copying a small frame.
pub const AUTO_ZERO_COPY_MIN_BYTES: usize = 64 << 10;
/// Entries of the zero-copy ring's submission queue.
const RING_ENTRIES: u32 = 256;
/// IORING_SEND_ZC_REPORT_USAGE: the notification says whether the kernel copied after all.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// IORING_NOTIF_USAGE_ZC_COPIED, in a notification's result.
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;
/// Most iovecs in one send (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;
/// The user data of cancellations: never an operation id (those count up from 0).
const CANCEL_USER_DATA: u64 = u64::MAX;

/// `--fetch-send`: how fetch responses are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FetchSend {
    ZeroCopy,
    Copy,
    #[default]
    Auto,
}

impl FromStr for FetchSend {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "zero-copy" => Ok(Self::ZeroCopy),
            "copy" => Ok(Self::Copy),
            "auto" => Ok(Self::Auto),
            other => Err(format!("{other:?} is not zero-copy, copy or auto")),
        }
    }
}

impl std::fmt::Display for FetchSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ZeroCopy => "zero-copy",
            Self::Copy => "copy",
            Self::Auto => "auto",
        })
    }
}

/// The smallest frame (with records) sent with zero copy on a connection to `peer` in `mode`,
/// or `None` when the connection copies everything.
pub fn zero_copy_threshold(mode: FetchSend, peer: Option<IpAddr>) -> Option<usize> {
    match mode {
        FetchSend::Copy => None,
        FetchSend::ZeroCopy => Some(1),
        FetchSend::Auto => match peer {
            Some(ip) if !ip.is_loopback() => Some(AUTO_ZERO_COPY_MIN_BYTES),
            _ => None,
        },
    }
}

/// Counters of one shard's sends, for benchmarks and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    pub copied_frames: u64,
    pub copied_bytes: u64,
    pub zero_copy_frames: u64,
    pub zero_copy_bytes: u64,
    /// Zero-copy notifications that said the kernel copied after all (loopback does).
    pub zero_copy_notifications_copied: u64,
    pub zero_copy_notifications: u64,
    /// Ring operations whose send future was dropped before it took their result.
    pub abandoned_operations: u64,
}

thread_local! {
    static STATS: Cell<SendStats> = Cell::new(SendStats::default());
    static RING: RefCell<Option<Result<Rc<ZeroCopyRing>, String>>> = const { RefCell::new(None) };
}

/// This shard's send counters.
pub fn stats() -> SendStats {
    STATS.with(Cell::get)
}

fn count(update: impl FnOnce(&mut SendStats)) {
    STATS.with(|cell| {
        let mut stats = cell.get();
        update(&mut stats);
        cell.set(stats);
    });
}

/// Writes a connection's frames, in order, the way its settings say.
pub struct FrameSender {
    ring: Option<Rc<ZeroCopyRing>>,
    zero_copy_min_bytes: usize,
    /// For the ring: the connection's socket descriptor and a duplicate of it that its
    /// operations hold (see the module documentation).
    socket: RefCell<Option<(RawFd, Rc<OwnedFd>)>>,
}

impl FrameSender {
    /// The sender for a connection from `peer` under `mode`. Falls back to copying (with a
    /// warning, once per shard) when the zero-copy ring cannot be set up.
    pub fn new(mode: FetchSend, peer: Option<IpAddr>) -> Self {
        let Some(threshold) = zero_copy_threshold(mode, peer) else {
            return Self::copying();
        };
        match ZeroCopyRing::for_this_shard() {
            Ok(ring) => Self {
                ring: Some(ring),
                zero_copy_min_bytes: threshold,
                socket: RefCell::new(None),
            },
            Err(_) => Self::copying(),
        }
    }

    pub fn copying() -> Self {
        Self {
            ring: None,
            zero_copy_min_bytes: usize::MAX,
            socket: RefCell::new(None),
        }
    }

    pub fn is_zero_copy(&self) -> bool {
        self.ring.is_some()
    }

    /// Writes the whole frame. With zero copy, returns once the kernel has queued it; the
    /// frame's buffers are released after the kernel's notification.
    pub async fn send(&self, stream: &mut TcpStream, frame: ResponseFrame) -> io::Result<()> {
        match &self.ring {
            None => {
                count(|s| {
                    s.copied_frames += 1;
                    s.copied_bytes += frame.len() as u64;
                });
                send_copy(stream, &frame).await
            }
            Some(ring) => {
                let zero_copy = frame.record_bytes() > 0 && frame.len() >= self.zero_copy_min_bytes;
                count(|s| {
                    if zero_copy {
                        s.zero_copy_frames += 1;
                        s.zero_copy_bytes += frame.len() as u64;
                    } else {
                        s.copied_frames += 1;
                        s.copied_bytes += frame.len() as u64;
                    }
                });
                let socket = self.socket_for(stream)?;
                ring.send(&socket, Rc::new(frame), zero_copy).await
            }
        }
    }

    /// The duplicate of `stream`'s descriptor that ring operations hold, made on first use.
    fn socket_for(&self, stream: &TcpStream) -> io::Result<Rc<OwnedFd>> {
        let fd = stream.as_raw_fd();
        let mut cached = self.socket.borrow_mut();
        if let Some((cached_fd, socket)) = cached.as_ref() {
            if *cached_fd == fd {
                return Ok(Rc::clone(socket));
            }
        }
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor (or -1, checked) nothing else owns.
        let duplicate = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if duplicate < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `duplicate` is a fresh descriptor owned here from now on.
        let socket = Rc::new(unsafe { OwnedFd::from_raw_fd(duplicate) });
        *cached = Some((fd, Rc::clone(&socket)));
        Ok(socket)
    }
}

/// iovecs for the frame's bytes from `skip` on (at most [`IOV_MAX`]).
fn iovecs(frame: &ResponseFrame, mut skip: usize) -> Vec<libc::iovec> {
    let mut out = Vec::with_capacity(frame.pieces().len().min(IOV_MAX));
    for piece in frame.pieces() {
        let bytes = piece.as_bytes();
        if skip >= bytes.len() {
            skip -= bytes.len();
            continue;
        }
        let rest = &bytes[skip..];
        skip = 0;
        out.push(libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        });
        if out.len() == IOV_MAX {
            break;
        }
    }
    out
}

/// The bytes of the piece holding frame byte `at`, from there on.
fn piece_from(frame: &ResponseFrame, mut at: usize) -> &[u8] {
    for piece in frame.pieces() {
        let bytes = piece.as_bytes();
        if at < bytes.len() {
            return &bytes[at..];
        }
        at -= bytes.len();
    }
    &[]
}

fn message(iov: &mut [libc::iovec]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    msg
}

async fn send_copy(stream: &mut TcpStream, frame: &ResponseFrame) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    let mut sent = 0;
    while sent < frame.len() {
        let mut iov = iovecs(frame, sent);
        let msg = message(&mut iov);
        // SAFETY: `msg` points at `iov`, whose entries point into `frame`; all outlive the call.
        let result = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if result >= 0 {
            sent += result as usize;
            continue;
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::WouldBlock => {
                // The socket is full: glommio waits for room and writes some of the next piece.
                let written = stream.write(piece_from(frame, sent)).await?;
                if written == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                sent += written;
            }
            io::ErrorKind::Interrupted => {}
            _ => return Err(error),
        }
    }
    Ok(())
}

/// One send on the ring, from submission to its last completion. Owned by the ring's
/// operation table, never by the send future: see the module documentation.
struct Operation {
    /// Bytes sent, or a negative errno, once the first completion came.
    result: Option<i32>,
    waker: Option<Waker>,
    /// A notification will come (or has not yet come) for a zero-copy send.
    awaiting_notification: bool,
    /// The sender no longer waits (it took the result, or its future was dropped): the
    /// operation ends with its last completion.
    sender_gone: bool,
    /// The socket, until the first completion: the kernel has read the submission by then.
    socket: Option<Rc<OwnedFd>>,
    /// What the kernel may read until the operation ends: the frame and its iovec list.
    _frame: Rc<ResponseFrame>,
    _iov: Vec<libc::iovec>,
    _msg: Box<libc::msghdr>,
}

impl Operation {
    /// Nothing of it is still in the kernel's or the sender's hands.
    fn is_finished(&self) -> bool {
        self.sender_gone && self.result.is_some() && !self.awaiting_notification
    }
}

/// A shard's second io_uring, for zero-copy sends. See the module documentation.
pub struct ZeroCopyRing {
    ring: RefCell<IoUring>,
    eventfd: OwnedFd,
    operations: RefCell<HashMap<u64, Operation>>,
    next_id: Cell<u64>,
}

/// A submitted operation as its sender awaits it. Dropping it abandons the operation to the
/// ring, which keeps what the kernel reads until the last completion.
struct InFlight<'a> {
    ring: &'a ZeroCopyRing,
    id: u64,
}

impl Future for InFlight<'_> {
    type Output = i32;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
        self.ring.poll_result(self.id, cx.waker())
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ring.abandon(self.id);
    }
}

impl ZeroCopyRing {
    /// This shard's ring, created (with its completion task) on first use.
    pub fn for_this_shard() -> Result<Rc<Self>, String> {
        RING.with(|slot| {
            let mut slot = slot.borrow_mut();
            if let Some(ring) = slot.as_ref() {
                return ring.clone();
            }
            let made = Self::new().map(Rc::new).map_err(|error| {
                tracing::warn!(
                    %error,
                    "zero-copy sends are unavailable on this shard; fetch responses are copied"
                );
                error.to_string()
            });
            if let Ok(ring) = &made {
                let reaper = Rc::clone(ring);
                glommio::spawn_local(async move { reaper.reap().await }).detach();
            }
            *slot = Some(made.clone());
            made
        })
    }

    fn new() -> io::Result<Self> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::SendMsgZc::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel has no IORING_OP_SENDMSG_ZC (Linux 6.1 or later)",
            ));
        }
        // SAFETY: eventfd returns a new descriptor (or -1, checked) that nothing else owns.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned here from now on.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(Self {
            ring: RefCell::new(ring),
            eventfd,
            operations: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
        })
    }

    /// Sends the whole frame on `socket`, one operation at a time (partial sends continue
    /// where they stopped), and returns once every byte is queued.
    async fn send(
        &self,
        socket: &Rc<OwnedFd>,
        frame: Rc<ResponseFrame>,
        zero_copy: bool,
    ) -> io::Result<()> {
        let mut sent = 0;
        while sent < frame.len() {
            let result = self.submit(socket, &frame, sent, zero_copy)?.await;
            if result < 0 {
                return Err(io::Error::from_raw_os_error(-result));
            }
            if result == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            sent += result as usize;
        }
        Ok(())
    }

    fn submit(
        &self,
        socket: &Rc<OwnedFd>,
        frame: &Rc<ResponseFrame>,
        sent: usize,
        zero_copy: bool,
    ) -> io::Result<InFlight<'_>> {
        let mut iov = iovecs(frame, sent);
        let msg = Box::new(message(&mut iov));
        let flags = (libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32;
        let fd = types::Fd(socket.as_raw_fd());
        let entry = if zero_copy {
            opcode::SendMsgZc::new(fd, &*msg)
                .flags(flags)
                .ioprio(SEND_ZC_REPORT_USAGE)
                .build()
        } else {
            opcode::SendMsg::new(fd, &*msg).flags(flags).build()
        };
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.operations.borrow_mut().insert(
            id,
            Operation {
                result: None,
                waker: None,
                awaiting_notification: false,
                sender_gone: false,
                socket: Some(Rc::clone(socket)),
                _frame: Rc::clone(frame),
                _iov: iov,
                _msg: msg,
            },
        );
        let entry = entry.user_data(id);
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the message, its iovecs, the bytes they point at and the socket are kept in
        // the operation until its last completion.
        while unsafe { ring.submission().push(&entry) }.is_err() {
            if let Err(error) = ring.submit() {
                // The kernel never saw this operation: nothing of it is in use.
                self.operations.borrow_mut().remove(&id);
                return Err(error);
            }
        }
        let submitted = ring.submit();
        drop(ring);
        // From here the kernel may read the operation: only the ring's table frees it, and
        // dropping `in_flight` (on the error below too) hands it over.
        let in_flight = InFlight { ring: self, id };
        submitted?;
        Ok(in_flight)
    }

    fn poll_result(&self, id: u64, waker: &Waker) -> Poll<i32> {
        let mut operations = self.operations.borrow_mut();
        let Some(operation) = operations.get_mut(&id) else {
            unreachable!("an operation lives until its sender took the result");
        };
        let Some(result) = operation.result else {
            operation.waker = Some(waker.clone());
            return Poll::Pending;
        };
        operation.sender_gone = true;
        if operation.is_finished() {
            operations.remove(&id);
        }
        Poll::Ready(result)
    }

    /// The sender of operation `id` is gone without its result (its future was dropped, or
    /// submitting failed after the kernel could see the operation). The operation stays in
    /// the table until its last completion; one still running is cancelled.
    fn abandon(&self, id: u64) {
        let mut operations = self.operations.borrow_mut();
        let Some(operation) = operations.get_mut(&id) else {
            return;
        };
        if operation.sender_gone {
            return;
        }
        operation.sender_gone = true;
        operation.waker = None;
        count(|s| s.abandoned_operations += 1);
        if operation.is_finished() {
            operations.remove(&id);
            return;
        }
        if operation.result.is_some() {
            return; // Only the notification is to come.
        }
        drop(operations);
        // Best effort: the kernel completes a send to a peer that does not read only when the
        // peer reads or the connection fails. Should submitting fail, the cancellation stays
        // queued for the next submission on this ring.
        let cancel = opcode::AsyncCancel::new(id)
            .build()
            .user_data(CANCEL_USER_DATA);
        let mut ring = self.ring.borrow_mut();
        // SAFETY: a cancellation points at no memory.
        if unsafe { ring.submission().push(&cancel) }.is_ok() {
            let _ = ring.submit();
        }
    }

    /// Waits for completions and hands them out, for as long as the shard runs.
    async fn reap(self: Rc<Self>) {
        // SAFETY: a duplicate of the eventfd, owned by the glommio file from now on.
        let duplicate = unsafe { libc::dup(self.eventfd.as_raw_fd()) };
        if duplicate < 0 {
            tracing::error!("cannot duplicate the zero-copy eventfd; zero-copy sends stall");
            return;
        }
        // SAFETY: `duplicate` is a fresh descriptor nothing else owns.
        let events = unsafe { glommio::io::BufferedFile::from_raw_fd(duplicate) };
        loop {
            self.drain();
            if let Err(error) = events.read_at(0, 8).await {
                tracing::error!(%error, "reading the zero-copy eventfd failed");
                return;
            }
        }
    }

    fn drain(&self) {
        let mut ring = self.ring.borrow_mut();
        let mut operations = self.operations.borrow_mut();
        for completion in ring.completion() {
            let id = completion.user_data();
            let flags = completion.flags();
            let Some(operation) = operations.get_mut(&id) else {
                continue;
            };
            if cqueue::notif(flags) {
                // The kernel is done with the pages: the frame may go.
                count(|s| {
                    s.zero_copy_notifications += 1;
                    // IORING_NOTIF_USAGE_ZC_COPIED: the data was copied after all.
                    if completion.result() as u32 & NOTIF_USAGE_ZC_COPIED != 0 {
                        s.zero_copy_notifications_copied += 1;
                    }
                });
                operation.awaiting_notification = false;
                if operation.is_finished() {
                    operations.remove(&id);
                }
                continue;
            }
            operation.result = Some(completion.result());
            operation.awaiting_notification = cqueue::more(flags);
            operation.socket = None;
            if operation.is_finished() {
                operations.remove(&id);
            } else if let Some(waker) = operation.waker.take() {
                waker.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use futures_lite::AsyncReadExt;
    use glommio::net::TcpListener;
    use ringlog_engine::{RecordPiece, TailCache};

    use super::*;
    use crate::response::Piece;

    /// Records in the test frame: far more than the small socket buffers below hold.
    const RECORD_BYTES: usize = 4 << 20;
    /// Send and receive buffers of the test connection.
    const SOCKET_BUFFER_BYTES: libc::c_int = 64 << 10;
    const DEADLINE: Duration = Duration::from_secs(20);

    fn on_executor<F, Fut>(body: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(move || async move { body().await })
            .expect("executor starts")
            .join()
            .expect("executor finishes");
    }

    fn set_buffer(fd: RawFd, option: libc::c_int) {
        let bytes = SOCKET_BUFFER_BYTES;
        // SAFETY: `bytes` outlives the call, which only reads it.
        let result = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&bytes).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(result, 0, "setsockopt: {}", io::Error::last_os_error());
    }

    /// (broker side, client side) of a loopback connection with small buffers.
    async fn connection() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let client = TcpStream::connect(address).await.expect("connect");
        let server = listener.accept().await.expect("accept");
        set_buffer(server.as_raw_fd(), libc::SO_SNDBUF);
        set_buffer(client.as_raw_fd(), libc::SO_RCVBUF);
        (server, client)
    }

    /// A frame whose records are one cached chunk, as a fetch at the tail answers.
    fn cached_frame(cache: &TailCache) -> ResponseFrame {
        let log = cache.register();
        let mut buffer = glommio::allocate_dma_buffer(RECORD_BYTES);
        for (i, byte) in buffer.as_bytes_mut().iter_mut().enumerate() {
            *byte = (i * 7 % 251) as u8;
        }
        cache.insert(log, 0, 0, Rc::new(buffer), RECORD_BYTES, RECORD_BYTES);
        cache.record_batch(log, 0, 0, (0, 0), RECORD_BYTES);
        let read = cache.read(log, 0, RECORD_BYTES, 1).expect("cached");
        let mut pieces = vec![Piece::Bytes(Bytes::from_static(b"frame header"))];
        pieces.extend(
            read.slices
                .into_iter()
                .map(|slice| Piece::Records(RecordPiece::Cached(slice))),
        );
        ResponseFrame::from_pieces(pieces)
    }

    async fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A send to a peer that does not read is dropped mid-flight: the ring keeps the frame
    /// (its cache chunk stays pinned) until the kernel's last completion, then lets it go.
    async fn dropped_send(zero_copy: bool) {
        let ring = match ZeroCopyRing::for_this_shard() {
            Ok(ring) => ring,
            Err(error) => {
                eprintln!("skipped: no zero-copy ring on this machine: {error}");
                return;
            }
        };
        let cache = TailCache::new(2 * RECORD_BYTES);
        let frame = cached_frame(&cache);
        let expected = frame.to_vec();
        let (mut server, mut client) = connection().await;
        let sender = FrameSender {
            ring: Some(Rc::clone(&ring)),
            zero_copy_min_bytes: if zero_copy { 1 } else { usize::MAX },
            socket: RefCell::new(None),
        };
        let before = stats();
        assert_eq!(cache.stats().pinned_chunks, 1);

        let finished = futures_lite::future::or(
            async {
                sender.send(&mut server, frame).await.expect("send");
                true
            },
            async {
                glommio::timer::sleep(Duration::from_millis(300)).await;
                false
            },
        )
        .await;
        assert!(
            !finished,
            "the peer reads nothing: the send cannot have finished"
        );
        assert_eq!(
            stats().abandoned_operations,
            before.abandoned_operations + 1
        );
        if zero_copy {
            // The kernel may still read the pages: the chunk must not be freed or evicted.
            assert_eq!(cache.stats().pinned_chunks, 1, "released under the kernel");
            assert!(!ring.operations.borrow().is_empty());
        }

        // The connection goes; the peer reads what was queued, then sees the end.
        drop(sender);
        drop(server);
        let mut received = Vec::new();
        let mut chunk = vec![0; 1 << 16];
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "the peer never saw the end");
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
        assert!(!received.is_empty() && received.len() < expected.len());
        assert!(
            received == expected[..received.len()],
            "the peer got bytes that are not the frame's"
        );

        wait_for("the ring to let the operation go", || {
            ring.operations.borrow().is_empty()
        })
        .await;
        assert_eq!(cache.stats().pinned_chunks, 0, "the pin outlived the send");
        if zero_copy {
            assert!(stats().zero_copy_notifications > before.zero_copy_notifications);
        }
    }

    #[test]
    fn dropped_zero_copy_send_holds_its_buffers_until_the_notification() {
        on_executor(|| dropped_send(true));
    }

    #[test]
    fn dropped_plain_send_on_the_ring_is_released_at_its_completion() {
        on_executor(|| dropped_send(false));
    }
}
