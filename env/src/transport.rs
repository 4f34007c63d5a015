//! Byte streams between nodes: the links to the controller and between brokers. [`Transport`]
//! connects and listens; a [`Stream`] is what it gives, read and written like a socket.
//!
//! [`TcpTransport`] is TCP on glommio. [`MemoryNetwork`] is a network of in-memory hosts for
//! tests and simulations: each host has a [`MemoryTransport`]; a test can cut the link between
//! two hosts (open streams fail, new connections are refused, as when a cable is pulled or a
//! host is partitioned away), heal it, and have every write arrive after a delay drawn from the
//! network's seeded [`Random`], measured on its [`Clock`]. Streams stay ordered, like TCP.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};

use crate::{Clock, Random, Sleep};

/// Bytes a memory stream holds unread before its writer waits: a limit like a socket buffer's.
const MEMORY_STREAM_BYTES_MAX: usize = 4 << 20;

/// A connected byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin {}

impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

/// Accepts the streams other nodes open to one address.
pub trait Listener {
    type Stream: Stream;

    /// The next stream opened to this address, and its peer's address.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, String)>>;

    /// The address this listener is bound to (with the port chosen, if 0 was asked).
    fn local_address(&self) -> io::Result<String>;
}

/// How a node reaches others: `HOST:PORT` addresses.
pub trait Transport {
    type Stream: Stream;
    type Listener: Listener<Stream = Self::Stream>;

    fn connect(&self, address: &str) -> impl Future<Output = io::Result<Self::Stream>>;

    fn listen(&self, address: &str) -> io::Result<Self::Listener>;
}

/// TCP on glommio (its futures must run on a glommio executor).
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpTransport;

impl Transport for TcpTransport {
    type Stream = glommio::net::TcpStream;
    type Listener = glommio::net::TcpListener;

    async fn connect(&self, address: &str) -> io::Result<Self::Stream> {
        glommio::net::TcpStream::connect(address)
            .await
            .map_err(io::Error::from)
    }

    fn listen(&self, address: &str) -> io::Result<Self::Listener> {
        glommio::net::TcpListener::bind(address).map_err(io::Error::from)
    }
}

impl Listener for glommio::net::TcpListener {
    type Stream = glommio::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Stream, String)> {
        let stream = glommio::net::TcpListener::accept(self)
            .await
            .map_err(io::Error::from)?;
        let peer = stream.peer_addr().map_err(io::Error::from)?;
        Ok((stream, peer.to_string()))
    }

    fn local_address(&self) -> io::Result<String> {
        self.local_addr()
            .map(|address| address.to_string())
            .map_err(io::Error::from)
    }
}

/// In-memory hosts that connect to each other; see the module's doc.
#[derive(Clone)]
pub struct MemoryNetwork(Rc<RefCell<Network>>);

struct Network {
    clock: Rc<dyn Clock>,
    random: Random,
    /// Each write arrives after a delay drawn from `0..=delay_max`.
    delay_max: Duration,
    listeners: HashMap<String, Rc<RefCell<Backlog>>>,
    /// Host pairs (in name order) that cannot reach each other.
    cut: HashSet<(String, String)>,
    /// Every stream opened, with the hosts at its ends, to break them when a link is cut.
    pipes: Vec<(String, String, Weak<RefCell<Pipe>>)>,
    next_port: u32,
}

#[derive(Default)]
struct Backlog {
    pending: VecDeque<(MemoryStream, String)>,
    waker: Option<Waker>,
    closed: bool,
}

/// One direction of a stream.
#[derive(Default)]
struct Pipe {
    /// Written bytes and when they arrive, in order (arrival times never decrease).
    chunks: VecDeque<(Instant, Vec<u8>)>,
    /// Unread bytes held.
    bytes: usize,
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// The writer closed its end: the reader gets end of stream after the last chunk.
    closed: bool,
    /// The link was cut or the reader went away: both ends fail.
    broken: bool,
}

fn link(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

fn host_of(address: &str) -> &str {
    address.rsplit_once(':').map_or(address, |(host, _)| host)
}

impl MemoryNetwork {
    /// A network whose writes each arrive after a delay in `0..=delay_max` on `clock`, drawn
    /// from `random`.
    pub fn new(clock: Rc<dyn Clock>, random: Random, delay_max: Duration) -> Self {
        Self(Rc::new(RefCell::new(Network {
            clock,
            random,
            delay_max,
            listeners: HashMap::new(),
            cut: HashSet::new(),
            pipes: Vec::new(),
            next_port: 40_000,
        })))
    }

    /// The transport of host `host` (a name or an address without port).
    pub fn host(&self, host: &str) -> MemoryTransport {
        MemoryTransport {
            network: self.clone(),
            host: host.to_owned(),
        }
    }

    /// Cuts the link between hosts `a` and `b`: their open streams fail, new connections
    /// between them are refused, until [`MemoryNetwork::heal`].
    pub fn cut(&self, a: &str, b: &str) {
        let mut network = self.0.borrow_mut();
        let pair = link(a, b);
        network.pipes.retain(|(from, to, pipe)| {
            let Some(pipe) = pipe.upgrade() else {
                return false;
            };
            if link(from, to) != pair {
                return true;
            }
            let mut pipe = pipe.borrow_mut();
            pipe.broken = true;
            pipe.wake_both();
            false
        });
        network.cut.insert(pair);
    }

    pub fn heal(&self, a: &str, b: &str) {
        self.0.borrow_mut().cut.remove(&link(a, b));
    }

    /// Cuts `host` from every other host that has listened or connected so far.
    pub fn isolate(&self, host: &str) {
        let others: HashSet<String> = {
            let network = self.0.borrow();
            let listening = network.listeners.keys().map(|a| host_of(a).to_owned());
            let connected = network
                .pipes
                .iter()
                .flat_map(|(a, b, _)| [a.clone(), b.clone()]);
            listening.chain(connected).collect()
        };
        for other in others.iter().filter(|other| *other != host) {
            self.cut(host, other);
        }
    }

    /// Heals every cut link.
    pub fn heal_all(&self) {
        self.0.borrow_mut().cut.clear();
    }

    fn delay(&self) -> Duration {
        let network = self.0.borrow();
        let nanos = u64::try_from(network.delay_max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(network.random.below(nanos.saturating_add(1)))
    }
}

/// One host's end of a [`MemoryNetwork`].
#[derive(Clone)]
pub struct MemoryTransport {
    network: MemoryNetwork,
    host: String,
}

impl Transport for MemoryTransport {
    type Stream = MemoryStream;
    type Listener = MemoryListener;

    async fn connect(&self, address: &str) -> io::Result<MemoryStream> {
        let target = host_of(address).to_owned();
        let (backlog, clock, local) = {
            let mut network = self.network.0.borrow_mut();
            if network.cut.contains(&link(&self.host, &target)) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} cannot reach {target}: the link is cut", self.host),
                ));
            }
            let Some(backlog) = network.listeners.get(address).cloned() else {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("nothing listens on {address}"),
                ));
            };
            network.next_port += 1;
            let local = format!("{}:{}", self.host, network.next_port);
            (backlog, Rc::clone(&network.clock), local)
        };
        let there = Rc::new(RefCell::new(Pipe::default()));
        let back = Rc::new(RefCell::new(Pipe::default()));
        {
            let mut network = self.network.0.borrow_mut();
            network
                .pipes
                .push((self.host.clone(), target.clone(), Rc::downgrade(&there)));
            network
                .pipes
                .push((target, self.host.clone(), Rc::downgrade(&back)));
        }
        let ours = MemoryStream {
            network: self.network.clone(),
            incoming: Rc::clone(&back),
            outgoing: Rc::clone(&there),
            clock: Rc::clone(&clock),
            arrival: None,
        };
        let theirs = MemoryStream {
            network: self.network.clone(),
            incoming: there,
            outgoing: back,
            clock,
            arrival: None,
        };
        let mut backlog = backlog.borrow_mut();
        if backlog.closed {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("{address} stopped listening"),
            ));
        }
        backlog.pending.push_back((theirs, local));
        if let Some(waker) = backlog.waker.take() {
            waker.wake();
        }
        Ok(ours)
    }

    fn listen(&self, address: &str) -> io::Result<MemoryListener> {
        let mut network = self.network.0.borrow_mut();
        let address = match address.rsplit_once(':') {
            Some((_, "0")) => {
                network.next_port += 1;
                format!("{}:{}", self.host, network.next_port)
            }
            _ => address.to_owned(),
        };
        if network.listeners.contains_key(&address) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{address} is already listened on"),
            ));
        }
        let backlog = Rc::new(RefCell::new(Backlog::default()));
        network
            .listeners
            .insert(address.clone(), Rc::clone(&backlog));
        Ok(MemoryListener {
            network: self.network.clone(),
            address,
            backlog,
        })
    }
}

/// Listens on one address of a [`MemoryNetwork`] until dropped.
pub struct MemoryListener {
    network: MemoryNetwork,
    address: String,
    backlog: Rc<RefCell<Backlog>>,
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        self.backlog.borrow_mut().closed = true;
        self.network.0.borrow_mut().listeners.remove(&self.address);
    }
}

impl Listener for MemoryListener {
    type Stream = MemoryStream;

    async fn accept(&self) -> io::Result<(MemoryStream, String)> {
        futures_lite::future::poll_fn(|context| {
            let mut backlog = self.backlog.borrow_mut();
            match backlog.pending.pop_front() {
                Some(accepted) => Poll::Ready(Ok(accepted)),
                None => {
                    backlog.waker = Some(context.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    fn local_address(&self) -> io::Result<String> {
        Ok(self.address.clone())
    }
}

/// A stream between two hosts of a [`MemoryNetwork`].
pub struct MemoryStream {
    network: MemoryNetwork,
    incoming: Rc<RefCell<Pipe>>,
    outgoing: Rc<RefCell<Pipe>>,
    clock: Rc<dyn Clock>,
    /// The timer for the next chunk, while it is still on its way.
    arrival: Option<Sleep>,
}

impl Pipe {
    fn wake_both(&mut self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }
}

fn cut_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "the link was cut")
}

impl AsyncRead for MemoryStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if let Some(arrival) = self.arrival.as_mut() {
                if arrival.as_mut().poll(context).is_pending() {
                    return Poll::Pending;
                }
                self.arrival = None;
            }
            let now = self.clock.now();
            let incoming = Rc::clone(&self.incoming);
            let mut pipe = incoming.borrow_mut();
            if pipe.broken {
                return Poll::Ready(Err(cut_error()));
            }
            let Some((arrives, _)) = pipe.chunks.front() else {
                if pipe.closed {
                    return Poll::Ready(Ok(0));
                }
                pipe.reader = Some(context.waker().clone());
                return Poll::Pending;
            };
            if *arrives > now {
                let wait = *arrives - now;
                drop(pipe);
                self.arrival = Some(self.clock.sleep(wait));
                continue;
            }
            let (_, chunk) = pipe.chunks.front_mut().expect("a chunk is there");
            let count = chunk.len().min(buffer.len());
            buffer[..count].copy_from_slice(&chunk[..count]);
            chunk.drain(..count);
            if chunk.is_empty() {
                pipe.chunks.pop_front();
            }
            pipe.bytes -= count;
            if let Some(waker) = pipe.writer.take() {
                waker.wake();
            }
            return Poll::Ready(Ok(count));
        }
    }
}

impl AsyncWrite for MemoryStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let delay = self.network.delay();
        let mut pipe = self.outgoing.borrow_mut();
        if pipe.broken {
            return Poll::Ready(Err(cut_error()));
        }
        if pipe.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream was closed for writing",
            )));
        }
        if bytes.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = MEMORY_STREAM_BYTES_MAX - pipe.bytes;
        if room == 0 {
            pipe.writer = Some(context.waker().clone());
            return Poll::Pending;
        }
        let count = bytes.len().min(room);
        // Ordered like TCP: a chunk never arrives before the one written ahead of it.
        let mut arrives = self.clock.now() + delay;
        if let Some((previous, _)) = pipe.chunks.back() {
            arrives = arrives.max(*previous);
        }
        pipe.chunks.push_back((arrives, bytes[..count].to_vec()));
        pipe.bytes += count;
        if let Some(waker) = pipe.reader.take() {
            waker.wake();
        }
        Poll::Ready(Ok(count))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut pipe = self.outgoing.borrow_mut();
        pipe.closed = true;
        pipe.wake_both();
        Poll::Ready(Ok(()))
    }
}

impl Drop for MemoryStream {
    fn drop(&mut self) {
        // The peer reads to the end of what was written, then end of stream; its writes fail,
        // as a socket's do once the other side is gone.
        let mut outgoing = self.outgoing.borrow_mut();
        outgoing.closed = true;
        outgoing.wake_both();
        let mut incoming = self.incoming.borrow_mut();
        incoming.broken = true;
        incoming.wake_both();
    }
}

#[cfg(test)]
mod tests {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::ManualClock;

    /// Runs `test` with a driver that moves `clock` 1 ms whenever the test waits.
    fn simulate<T>(clock: &Rc<ManualClock>, test: impl Future<Output = T>) -> T {
        let driver = async {
            loop {
                futures_lite::future::yield_now().await;
                clock.advance(1);
            }
        };
        futures_lite::future::block_on(futures_lite::future::or(test, driver))
    }

    fn network(seed: u64, delay_max_ms: u64) -> (MemoryNetwork, Rc<ManualClock>) {
        let clock = ManualClock::new(0);
        let network = MemoryNetwork::new(
            clock.clone(),
            Random::seeded(seed),
            Duration::from_millis(delay_max_ms),
        );
        (network, clock)
    }

    #[test]
    fn memory_streams_carry_bytes_in_order_after_seeded_delays() {
        let arrival_ms = |seed| {
            let (network, clock) = network(seed, 20);
            let a = network.host("a");
            let b = network.host("b");
            simulate(&clock, async {
                let listener = b.listen("b:9093").expect("listen");
                let mut client = a.connect("b:9093").await.expect("connect");
                let (mut server, peer) = listener.accept().await.expect("accept");
                assert!(peer.starts_with("a:"));
                for chunk in [&b"hello "[..], b"over ", b"there"] {
                    client.write_all(chunk).await.expect("write");
                }
                let sent = clock.elapsed();
                let mut got = vec![0u8; 16];
                server.read_exact(&mut got).await.expect("read");
                assert_eq!(&got, b"hello over there");
                server.write_all(b"ok").await.expect("answer");
                let mut answer = [0u8; 2];
                client.read_exact(&mut answer).await.expect("read answer");
                assert_eq!(&answer, b"ok");
                drop(client);
                assert_eq!(server.read(&mut got).await.expect("end"), 0);
                (clock.elapsed() - sent).as_millis()
            })
        };
        assert_eq!(arrival_ms(3), arrival_ms(3), "a seed decides the delays");
        let delays: HashSet<u128> = (0..8).map(arrival_ms).collect();
        assert!(delays.len() > 1, "delays vary with the seed: {delays:?}");
        assert!(delays.iter().all(|&ms| ms <= 41), "{delays:?}");
    }

    #[test]
    fn a_cut_link_fails_open_streams_and_refuses_connections_until_healed() {
        let (network, clock) = network(1, 0);
        let a = network.host("a");
        let b = network.host("b");
        let c = network.host("c");
        simulate(&clock, async {
            let listener = b.listen("b:0").expect("listen");
            let address = listener.local_address().expect("address");
            let mut client = a.connect(&address).await.expect("connect");
            let (mut server, _) = listener.accept().await.expect("accept");
            network.cut("b", "a");
            let mut byte = [0u8; 1];
            let read = server.read(&mut byte).await;
            assert_eq!(
                read.expect_err("cut").kind(),
                io::ErrorKind::ConnectionReset
            );
            assert!(client.write_all(b"x").await.is_err());
            let refused = a.connect(&address).await.map(|_| ()).expect_err("cut");
            assert_eq!(refused.kind(), io::ErrorKind::TimedOut);
            // Other hosts still get through.
            let mut from_c = c.connect(&address).await.expect("c connects");
            from_c.write_all(b"c").await.expect("write");
            let (mut at_b, _) = listener.accept().await.expect("accept c");
            at_b.read_exact(&mut byte).await.expect("read");
            assert_eq!(&byte, b"c");
            network.heal("a", "b");
            a.connect(&address).await.expect("healed");
            network.isolate("c");
            assert!(c.connect(&address).await.is_err());
            drop(listener);
            let gone = a.connect(&address).await.map(|_| ()).expect_err("closed");
            assert_eq!(gone.kind(), io::ErrorKind::ConnectionRefused);
        });
    }

    #[test]
    fn tcp_transport_connects_on_loopback() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let listener = TcpTransport.listen("127.0.0.1:0").expect("listen");
                let address = listener.local_address().expect("address");
                let client = glommio::spawn_local(async move {
                    let mut stream = TcpTransport.connect(&address).await.expect("connect");
                    stream.write_all(b"ping").await.expect("write");
                });
                let (mut stream, peer) = Listener::accept(&listener).await.expect("accept");
                assert!(peer.starts_with("127.0.0.1:"));
                let mut got = [0u8; 4];
                stream.read_exact(&mut got).await.expect("read");
                assert_eq!(&got, b"ping");
                client.await;
            })
            .expect("executor")
            .join()
            .expect("join");
    }
}
