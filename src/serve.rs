//! `ringlog serve`: the broker process. It assembles the settings, makes sure io_uring can lock
//! the memory it needs, then runs one glommio executor pinned to each core. Every executor
//! binds its own listener to the same address (glommio sets SO_REUSEPORT), so the kernel
//! spreads connections over the cores and a connection lives on the core that accepted it.
//!
//! Shutdown: SIGINT/SIGTERM set a process-wide flag (signal-hook; a second signal exits at
//! once). Each executor polls it, stops accepting, lets its connections finish the request
//! they are on, and returns; the process then exits 0.

use std::cell::Cell;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use ringlog_net::connection::{self, ConnectionSettings, Shutdown};
use ringlog_net::handlers::BrokerIdentity;
use thiserror::Error;
use tracing::{debug, error, info, warn};

use crate::config::{ServeArgs, ServeConfig};
use crate::memlock;
use crate::meta_properties::MetaProperties;

/// io_uring registered-buffer memory per executor (glommio's default, set explicitly so the
/// locked-memory check below knows it).
pub const IO_MEMORY_BYTES: usize = 10 << 20;
/// Cluster id reported in Metadata. A persisted, generated id comes with cluster metadata.
/// How often an executor looks at the process-wide stop flag.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long stopping waits for connections to finish a request before dropping them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (for example EMFILE), so the loop does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(10);

/// Why an executor stopped serving.
#[derive(Debug, Error)]
enum ShardError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: glommio::GlommioError<()>,
    },
}

pub fn run(args: &ServeArgs) -> ExitCode {
    match start(args) {
        Ok(code) => code,
        Err(message) => {
            error!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// Everything up to the executors; an error here is a setup problem, reported in one line.
fn start(args: &ServeArgs) -> Result<ExitCode, String> {
    let config = ServeConfig::load(args).map_err(|error| error.to_string())?;
    let address = config.listen_address().map_err(|error| error.to_string())?;
    memlock::ensure(config.cores, IO_MEMORY_BYTES).map_err(|error| error.to_string())?;
    std::fs::create_dir_all(&config.data_dir).map_err(|error| {
        format!(
            "cannot create data directory {}: {error}",
            config.data_dir.display()
        )
    })?;
    let meta = MetaProperties::load_or_create(&config.data_dir, config.node_id)
        .map_err(|error| error.to_string())?;
    let stop =
        register_stop_signals().map_err(|error| format!("cannot handle signals: {error}"))?;
    info!(
        listen = %config.listen,
        advertised = %config.advertised_listener,
        data_dir = %config.data_dir.display(),
        cores = config.cores,
        cluster_id = %meta.cluster_id,
        "starting ringlog"
    );
    Ok(run_shards(&config, &meta, address, &stop))
}

/// SIGINT and SIGTERM set the returned flag; a second one while it is set exits with 1, so an
/// operator can still interrupt a stuck shutdown.
fn register_stop_signals() -> std::io::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}

fn connection_settings(config: &ServeConfig, meta: &MetaProperties) -> ConnectionSettings {
    ConnectionSettings {
        request_max_bytes: config.socket_request_max_bytes,
        broker: BrokerIdentity {
            node_id: config.node_id,
            advertised_host: config.advertised_listener.host.clone(),
            advertised_port: config.advertised_listener.port,
            cluster_id: meta.cluster_id.clone(),
        },
    }
}

/// Starts one executor per core and waits for all of them. Any executor failing stops the
/// others, and the process exits 1.
fn run_shards(
    config: &ServeConfig,
    meta: &MetaProperties,
    address: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> ExitCode {
    let settings = connection_settings(config, meta);
    let cpus = allowed_cpus();
    let mut handles = Vec::with_capacity(config.cores);
    let mut failed = false;
    for shard in 0..config.cores {
        let settings = settings.clone();
        let shard_stop = Arc::clone(stop);
        // Shard i runs on the i-th CPU this process may use (taskset, cgroup cpusets), not
        // on CPU i, which may be outside the allowed set.
        let cpu = cpus.get(shard).copied().unwrap_or(shard);
        let spawned = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("ringlog-shard-{shard}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || run_shard(shard, address, settings, shard_stop));
        match spawned {
            Ok(handle) => handles.push((shard, handle)),
            Err(source) => {
                error!(shard, "cannot start executor: {source}");
                stop.store(true, Ordering::Release);
                failed = true;
                break;
            }
        }
    }
    for (shard, handle) in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                error!(shard, "{source}");
                failed = true;
            }
            Err(source) => {
                error!(shard, "executor failed: {source}");
                failed = true;
            }
        }
    }
    if failed {
        return ExitCode::FAILURE;
    }
    info!("stopped");
    ExitCode::SUCCESS
}

/// One core's broker: accept until told to stop, then drain this core's connections.
async fn run_shard(
    shard: usize,
    address: SocketAddr,
    settings: ConnectionSettings,
    stop: Arc<AtomicBool>,
) -> Result<(), ShardError> {
    let listener = match TcpListener::bind(address) {
        Ok(listener) => listener,
        Err(source) => {
            // Without this shard the broker is incomplete: stop the others too.
            stop.store(true, Ordering::Release);
            return Err(ShardError::Bind { address, source });
        }
    };
    info!(shard, %address, "accepting Kafka clients");
    let shutdown = Rc::new(Shutdown::default());
    glommio::spawn_local(forward_stop(stop, Rc::clone(&shutdown))).detach();
    let live_connections = Rc::new(Cell::new(0_usize));
    let settings = Rc::new(settings);
    accept_until_stopped(&listener, &settings, &shutdown, &live_connections).await;
    drop(listener);
    drain(shard, &live_connections).await;
    Ok(())
}

/// Turns the process-wide flag (set by a signal handler, on any thread) into this shard's
/// local `Shutdown`, which wakes the tasks waiting on it.
async fn forward_stop(stop: Arc<AtomicBool>, shutdown: Rc<Shutdown>) {
    while !stop.load(Ordering::Acquire) {
        glommio::timer::sleep(STOP_POLL_INTERVAL).await;
    }
    shutdown.trigger();
}

async fn accept_until_stopped(
    listener: &TcpListener,
    settings: &Rc<ConnectionSettings>,
    shutdown: &Rc<Shutdown>,
    live_connections: &Rc<Cell<usize>>,
) {
    loop {
        let stopped = async {
            shutdown.wait().await;
            None
        };
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, stopped);
        match accepted.await {
            None => return,
            Some(Ok(stream)) => spawn_connection(stream, settings, shutdown, live_connections),
            Some(Err(source)) => {
                warn!("accept failed: {source}");
                glommio::timer::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
    }
}

/// Counts a live connection for as long as it exists, also if its task is dropped.
struct LiveGuard(Rc<Cell<usize>>);

impl LiveGuard {
    fn new(count: &Rc<Cell<usize>>) -> Self {
        count.set(count.get() + 1);
        Self(Rc::clone(count))
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

fn spawn_connection(
    stream: TcpStream,
    settings: &Rc<ConnectionSettings>,
    shutdown: &Rc<Shutdown>,
    live_connections: &Rc<Cell<usize>>,
) {
    let guard = LiveGuard::new(live_connections);
    let settings = Rc::clone(settings);
    let shutdown = Rc::clone(shutdown);
    glommio::spawn_local(async move {
        let _guard = guard;
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "unknown peer".to_owned(), |peer| peer.to_string());
        // Responses are written whole; Nagle would only delay them.
        if let Err(source) = stream.set_nodelay(true) {
            debug!(%peer, "cannot set TCP_NODELAY: {source}");
        }
        debug!(%peer, "connection opened");
        match connection::serve(stream, &settings, &shutdown).await {
            Ok(()) => debug!(%peer, "connection closed"),
            Err(source) => warn!(%peer, "closing connection: {source}"),
        }
    })
    .detach();
}

/// Waits for this shard's connections to finish, at most `DRAIN_TIMEOUT`.
async fn drain(shard: usize, live_connections: &Cell<usize>) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while live_connections.get() > 0 {
        if Instant::now() >= deadline {
            warn!(
                shard,
                connections = live_connections.get(),
                "dropping connections still mid-request after the drain timeout"
            );
            return;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// The CPUs this process may run on, in order (from its affinity mask); empty if unknown.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this process (pid 0).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the set's capacity.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}
