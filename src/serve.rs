//! `ringlog serve`: the broker process. It assembles the settings, makes sure io_uring can lock
//! the memory it needs, then runs one glommio executor pinned to each core (or, with
//! `pin_cores` off, free to move between the allowed CPUs). Every executor
//! binds its own listener to the same address (glommio sets SO_REUSEPORT), so the kernel
//! spreads connections over the cores and a connection lives on the core that accepted it. A
//! port another process listens on is refused first (SO_REUSEPORT would share it silently).
//!
//! Shutdown: SIGINT/SIGTERM set a process-wide flag (signal-hook; a second signal exits at
//! once). Each executor polls it, stops accepting, lets its connections finish the request
//! they are on, and returns; the process then exits 0.

use std::cell::Cell;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::{TcpListener, TcpStream};
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};
use ringlog_engine::LogConfig;
use ringlog_net::connection::{self, ConnectionSettings, Shutdown};
use ringlog_net::handlers::BrokerIdentity;
use thiserror::Error;
use tracing::{debug, error, info, warn};

use crate::broker::catalog::{Catalog, Topic};
use crate::broker::groups;
use crate::broker::mesh::{self, Mesh, Message};
use crate::broker::{
    self, BrokerSettings, ListenerKind, Queues, Shard, ShardBroker, ShardSetup, Topology,
};
use crate::config::{ServeArgs, ServeConfig};
use crate::memlock;
use crate::meta_properties::MetaProperties;
use ringlog_env::Env;

/// Cluster id reported in Metadata. A persisted, generated id comes with cluster metadata.
/// How often an executor looks at the process-wide stop flag.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How often a broker in a cluster heartbeats to the controller (and catches up with the
/// metadata log): well inside the default 1.5 s session, as Kafka's 2 s is inside its 9 s.
const BROKER_HEARTBEAT_INTERVAL_MS: u64 = 150;
/// How long a stopping cluster broker waits for the controller to move its leaderships.
const CONTROLLED_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stopping waits for connections to finish a request before dropping them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the check for another listener on a port waits for its connection.
const PORT_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a port must keep accepting connections to count as in use by another process.
const PORT_PROBE_WINDOW: Duration = Duration::from_secs(3);
/// What to do about a core's own port (node per shard) that is taken.
const OWN_PORT_HINT: &str = "this is a core's own port as a node of its own: choose a --listen \
                             port followed by free ones, or run with --node-per-shard false";
/// Pause after a failed accept (for example EMFILE), so the loop does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(10);

/// Why an executor stopped serving.
#[derive(Debug, Error)]
enum ShardError {
    #[error("cannot listen on {address}: {source}{hint}")]
    Bind {
        address: SocketAddr,
        source: glommio::GlommioError<()>,
        /// What to do about it, after "; " (empty for the shared listen port).
        hint: String,
    },
    #[error("{0}")]
    Mesh(&'static str),
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
    std::fs::create_dir_all(&config.data_dir).map_err(|error| {
        format!(
            "cannot create data directory {}: {error}",
            config.data_dir.display()
        )
    })?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let stop =
        register_stop_signals().map_err(|error| format!("cannot handle signals: {error}"))?;
    // A node that is also a broker stops its controller only after the broker has stopped:
    // the broker's controlled shutdown needs a quorum, and this voter may be its leader (or
    // its majority). A controller-only node stops at the signal.
    let controller_stop = if config.process_roles.broker {
        Arc::new(AtomicBool::new(false))
    } else {
        Arc::clone(&stop)
    };
    let controller = match &config.quorum {
        Some(quorum) if config.process_roles.controller => {
            Some(start_controller(&config, quorum, &controller_stop)?)
        }
        _ => None,
    };
    if !config.process_roles.broker {
        let Some(controller) = controller else {
            return Err(
                "a node with neither the broker nor the controller role runs nothing".into(),
            );
        };
        return join_controller(controller);
    }
    let code = start_broker(&config, &stop);
    // The broker has stopped (a signal, or a failure): the controller stops with it.
    stop.store(true, Ordering::Release);
    controller_stop.store(true, Ordering::Release);
    match (controller.map(join_controller), code) {
        (Some(Err(message)), _) => Err(message),
        (_, code) => code,
    }
}

fn start_broker(config: &ServeConfig, stop: &Arc<AtomicBool>) -> Result<ExitCode, String> {
    let address = config.listen_address().map_err(|error| error.to_string())?;
    let io_memory = memlock::io_memory_bytes(config.fetch_cache_bytes);
    let io_memory =
        memlock::choose_io_memory(config.cores, io_memory).map_err(|error| error.to_string())?;
    warn_if_strict_overcommit();
    ensure_ports_free(config, address)?;
    let meta = MetaProperties::load_or_create(&config.data_dir, config.node_id)
        .map_err(|error| error.to_string())?;
    info!(
        listen = %config.listen,
        advertised = %config.advertised_listener,
        data_dir = %config.data_dir.display(),
        cores = config.cores,
        io_memory_bytes = io_memory,
        cluster_id = %meta.cluster_id,
        quorum = config.quorum.is_some(),
        "starting ringlog"
    );
    Ok(run_shards(config, &meta, address, io_memory, stop))
}

type ControllerThread = glommio::ExecutorJoinHandle<Result<(), String>>;

fn join_controller(controller: ControllerThread) -> Result<ExitCode, String> {
    match controller.join() {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(message)) => Err(message),
        Err(error) => Err(format!("the controller failed: {error}")),
    }
}

/// Starts this node's controller voter on a thread of its own (the quorum's fsyncs and ticks
/// never wait behind a shard), until `stop`.
fn start_controller(
    config: &ServeConfig,
    quorum: &crate::config::QuorumConfig,
    stop: &Arc<AtomicBool>,
) -> Result<ControllerThread, String> {
    let Some(listen) = &quorum.controller_listen else {
        return Err("a controller needs --controller-listen or its own entry in the voters".into());
    };
    let host = u32::try_from(config.node_id)
        .map(ringlog_cluster::HostId)
        .map_err(|_| format!("node id {} is negative", config.node_id))?;
    // glommio binds with SO_REUSEPORT, so a second voter with this node id could share the
    // port and split the links: two voters with one id would break the quorum's safety.
    let address = std::net::ToSocketAddrs::to_socket_addrs(&(listen.host.as_str(), listen.port))
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| format!("controller address {listen} does not resolve"))?;
    if address.port() != 0 && keeps_accepting(address) {
        return Err(format!(
            "cannot listen on {listen}: another process accepts connections there (is a \
             controller with node id {} already running?)",
            config.node_id
        ));
    }
    let mut voters: std::collections::BTreeMap<_, _> = quorum
        .voters
        .0
        .iter()
        .map(|(&id, address)| (ringlog_cluster::HostId(id), address.to_string()))
        .collect();
    // This voter listens where --controller-listen says; the others know it by its entry.
    voters.insert(host, listen.to_string());
    let mut settings = ringlog_cluster::quorum::QuorumSettings::default();
    settings.controller.session_timeout_ms = quorum.broker_session_timeout_ms;
    // The default the brokers' leaders use (`--min-insync-replicas`): the ELR rules need the
    // same one.
    settings.controller.min_insync_replicas = config.min_insync_replicas;
    settings.controller.leader_imbalance_check_interval_ms = config
        .auto_leader_rebalance_enable
        .then_some(config.leader_imbalance_check_interval_seconds * 1000);
    settings.controller.leader_imbalance_per_broker_percentage =
        config.leader_imbalance_per_broker_percentage;
    settings.controller.unclean_leader_election = config.unclean_leader_election_enable;
    let voter_config = crate::controller::driver::VoterConfig {
        id: host,
        voters,
        data_dir: config.data_dir.clone(),
        settings,
    };
    info!(node_id = config.node_id, controller_listen = %listen, voters = ?quorum.voters.0.keys().collect::<Vec<_>>(), "starting a ringlog controller");
    let stop = Arc::clone(stop);
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("controller")
        .io_memory(2 << 20)
        .spawn(move || async move {
            let shutdown = Rc::new(Shutdown::default());
            let env = Env::system();
            let seed = env.random.u64();
            let transport = ringlog_env::TcpTransport;
            let voter = crate::controller::driver::start(
                voter_config,
                transport,
                env,
                seed,
                Rc::clone(&shutdown),
            )
            .map_err(|error| error.to_string())?;
            while !stop.load(Ordering::Acquire) {
                glommio::timer::sleep(STOP_POLL_INTERVAL).await;
            }
            shutdown.trigger();
            glommio::timer::sleep(STOP_POLL_INTERVAL).await;
            info!(voter = %voter.id(), "controller stopped");
            Ok(())
        })
        .map_err(|error| format!("cannot start the controller's executor: {error}"))
}

/// Takes an exclusive lock on `DATA_DIR/.lock` for the life of the process (the returned file),
/// so two brokers never share a data directory (as Kafka locks its log directories).
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let path = data_dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "{} is in use by another ringlog process (lock {}): stop it or choose another --data-dir",
            data_dir.display(),
            path.display()
        ));
    }
    Ok(file)
}

/// Refuses to start when another process listens on a listen port. glommio binds every
/// listener with SO_REUSEPORT (each shard binds the shared port itself), so a port that another
/// SO_REUSEPORT listener of the same user holds (another ringlog, say) would be bound without an
/// error, and the kernel would deal new connections between the two processes. A bind probe
/// cannot tell that listener from the closing connections a previous broker on the port left
/// behind (which SO_REUSEPORT rightly ignores), so the probe connects: only a listener accepts,
/// and only a live one keeps accepting.
/// Port 0 (each shard gets a port of its own) needs no probe.
fn ensure_ports_free(config: &ServeConfig, address: SocketAddr) -> Result<(), String> {
    if address.port() == 0 {
        return Ok(());
    }
    let node_per_shard = config.node_per_shard && config.cores > 1;
    let own_ports = if node_per_shard { config.cores } else { 0 };
    for offset in 0..=own_ports {
        let port = u16::try_from(offset)
            .ok()
            .and_then(|offset| address.port().checked_add(offset))
            .ok_or_else(|| format!("no port {} + {offset}: over 65535", address.port()))?;
        let mut listen = address;
        listen.set_port(port);
        let mut probe = listen;
        if probe.ip().is_unspecified() {
            probe.set_ip(match probe {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if keeps_accepting(probe) {
            let hint = if offset == 0 {
                "stop it or choose another --listen port"
            } else {
                OWN_PORT_HINT
            };
            return Err(format!(
                "cannot listen on {listen}: in use by another process (it accepts connections \
                 there); {hint}"
            ));
        }
    }
    Ok(())
}

/// Whether something accepts connections on `address` for the whole of
/// [`PORT_PROBE_WINDOW`]. A broker killed a moment ago may still accept for a few milliseconds:
/// its io_uring is torn down after the process is gone, and the listening socket with it.
fn keeps_accepting(address: SocketAddr) -> bool {
    let deadline = Instant::now() + PORT_PROBE_WINDOW;
    loop {
        if std::net::TcpStream::connect_timeout(&address, PORT_PROBE_TIMEOUT).is_err() {
            return false;
        }
        if Instant::now() >= deadline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Hostile array counts in requests are survived by mapping huge reservations without
/// committing memory (`ringlog_net::alloc`), which strict overcommit refuses.
fn warn_if_strict_overcommit() {
    let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap_or_default();
    if mode.trim() == "2" {
        warn!(
            "vm.overcommit_memory is 2 (strict): a request claiming billions of array elements \
             can make the process abort; set it to 0 (sysctl vm.overcommit_memory=0) to be safe"
        );
    }
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

/// Everything a shard needs to start, all `Send` so it can move to the executor's thread.
#[derive(Clone)]
struct ShardStart {
    address: SocketAddr,
    connection: ConnectionSettings,
    identity: BrokerIdentity,
    settings: BrokerSettings,
    catalog: Catalog,
    stop: Arc<AtomicBool>,
    /// Shards that have opened their partitions; a shard accepts clients once all have,
    /// so a forwarded request never reaches a shard still opening the partition.
    ready: Arc<AtomicUsize>,
    /// Each shard's peer id in the channel mesh. glommio numbers mesh peers by executor id,
    /// which executor threads take as they start, in no fixed order; the shards exchange
    /// theirs here once, at start.
    peer_ids: Arc<std::sync::Mutex<Vec<Option<usize>>>>,
    /// Shards that have published their peer id.
    joined: Arc<AtomicUsize>,
    /// Shards that have drained their connections; logs close once all have, so no
    /// forwarded append finds its log closed.
    drained: Arc<AtomicUsize>,
    /// The cluster membership (shard 0) stopped the broker: the process fails.
    member_failed: Arc<AtomicBool>,
    /// In a cluster: set once the controller has moved this host's leaderships away after a
    /// stop was asked (controlled shutdown); the shards stop serving only then (or after
    /// [`CONTROLLED_SHUTDOWN_TIMEOUT`]), so clients find the new leaders while this host still
    /// answers.
    leaders_moved: Arc<AtomicBool>,
    /// In a cluster: the broker epoch the membership registered with
    /// ([`broker::member::NO_EPOCH`]: none), for the clean-shutdown file.
    registered_epoch: Arc<std::sync::atomic::AtomicU64>,
}

/// Starts one executor per core and waits for all of them. Any executor failing stops the
/// others, and the process exits 1.
fn run_shards(
    config: &ServeConfig,
    meta: &MetaProperties,
    address: SocketAddr,
    io_memory_bytes: usize,
    stop: &Arc<AtomicBool>,
) -> ExitCode {
    // In a cluster the catalog is the controller quorum's (applied by the membership loop on
    // shard 0), node ids are `node_id * 1024 + core`, and topics.json is not read.
    let cluster = config
        .quorum
        .as_ref()
        .map(|quorum| broker::member::ClusterSettings {
            host: ringlog_cluster::HostId(u32::try_from(config.node_id).unwrap_or(0)),
            voters: quorum
                .voters
                .0
                .iter()
                .map(|(&id, address)| (ringlog_cluster::HostId(id), address.to_string()))
                .collect(),
            heartbeat_interval: Duration::from_millis(BROKER_HEARTBEAT_INTERVAL_MS),
            session_timeout: Duration::from_millis(quorum.broker_session_timeout_ms),
        });
    let mut catalog = match (&cluster, Catalog::load(&config.data_dir)) {
        (Some(_), _) => Catalog::default(),
        (None, Ok(catalog)) => catalog,
        (None, Err(error)) => {
            error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let base_node_id = match &cluster {
        Some(cluster) => ringlog_cluster::NodeId::of(cluster.host, 0).0,
        None => config.node_id,
    };
    let topology = Topology {
        base_node_id,
        advertised_host: config.advertised_listener.host.clone(),
        advertised_port: config.advertised_listener.port,
        node_per_shard: config.node_per_shard && config.cores > 1,
        shards: config.cores,
    };
    if cluster.is_none() && !catalog.topics.contains_key(groups::OFFSETS_TOPIC) {
        let topic = Topic {
            id: broker::admin::new_topic_id(&ringlog_env::Random::from_entropy()),
            partitions: catalog
                .place(config.cores, groups::OFFSETS_TOPIC_PARTITIONS)
                .into_iter()
                .map(|shard| topology.single_replica(shard))
                .collect(),
            configs: groups::OFFSETS_TOPIC_CONFIGS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        catalog
            .topics
            .insert(groups::OFFSETS_TOPIC.to_owned(), topic);
        if let Err(error) = catalog.save(&config.data_dir) {
            error!("{error}");
            return ExitCode::FAILURE;
        }
    }
    if cluster.is_none() && catalog.fit(config.cores, |shard| topology.node_of(shard)) {
        info!(
            cores = config.cores,
            node_per_shard = topology.node_per_shard,
            "partitions placed on this start's shards and nodes (fewer cores than before, \
             a catalog from an older version, or another --node-per-shard)"
        );
        if let Err(error) = catalog.save(&config.data_dir) {
            error!("{error}");
            return ExitCode::FAILURE;
        }
    }
    broker::remove_deleted_leftovers(&config.data_dir);
    let start = ShardStart {
        address,
        connection: ConnectionSettings {
            request_max_bytes: config.socket_request_max_bytes,
            fetch_send: config.fetch_send,
        },
        identity: BrokerIdentity {
            node_id: config.node_id,
            advertised_host: config.advertised_listener.host.clone(),
            advertised_port: config.advertised_listener.port,
            // Every node of a cluster must report one cluster id: derived from the voters,
            // which all its nodes are configured with (meta.properties' own id is per host).
            cluster_id: match &config.quorum {
                Some(quorum) => {
                    let voters = format!("{:?}", quorum.voters.0);
                    let high = crc32c::crc32c(voters.as_bytes());
                    let low = crc32c::crc32c_append(high, voters.as_bytes());
                    format!("ringlog-{high:08x}{low:08x}")
                }
                None => meta.cluster_id.clone(),
            },
        },
        settings: BrokerSettings {
            topology,
            data_dir: config.data_dir.clone(),
            shards: config.cores,
            auto_create_topics: config.auto_create_topics_enable,
            num_partitions: config.num_partitions,
            log_defaults: LogConfig::default(),
            retention_check_interval: Duration::from_millis(config.log_retention_check_interval_ms),
            group_initial_rebalance_delay: Duration::from_millis(
                config.group_initial_rebalance_delay_ms,
            ),
            group_consumer_heartbeat_interval: Duration::from_millis(
                config.group_consumer_heartbeat_interval_ms,
            ),
            group_consumer_session_timeout: Duration::from_millis(
                config.group_consumer_session_timeout_ms,
            ),
            fetch_cache_bytes: config.fetch_cache_bytes,
            cluster,
            replica_lag_time_max: Duration::from_millis(config.replica_lag_time_max_ms),
            min_insync_replicas: config.min_insync_replicas,
            unclean_leader_election: config.unclean_leader_election_enable,
        },
        catalog,
        stop: Arc::clone(stop),
        ready: Arc::new(AtomicUsize::new(0)),
        peer_ids: Arc::new(std::sync::Mutex::new(vec![None; config.cores])),
        joined: Arc::new(AtomicUsize::new(0)),
        drained: Arc::new(AtomicUsize::new(0)),
        member_failed: Arc::new(AtomicBool::new(false)),
        leaders_moved: Arc::new(AtomicBool::new(false)),
        registered_epoch: Arc::new(std::sync::atomic::AtomicU64::new(broker::member::NO_EPOCH)),
    };
    let member_failed = Arc::clone(&start.member_failed);
    let registered_epoch = Arc::clone(&start.registered_epoch);
    let mesh = MeshBuilder::<Message, Full>::full(config.cores, mesh::CHANNEL_CAPACITY);
    let cpus = allowed_cpus();
    let mut handles = Vec::with_capacity(config.cores);
    let mut failed = false;
    for shard in 0..config.cores {
        let start = start.clone();
        let mesh = mesh.clone();
        // Shard i runs on the i-th CPU this process may use (taskset, cgroup cpusets), not
        // on CPU i, which may be outside the allowed set. Unpinned, it may run on any of them.
        let placement = if config.pin_cores {
            Placement::Fixed(cpus.get(shard).copied().unwrap_or(shard))
        } else {
            Placement::Unbound
        };
        let spawned = LocalExecutorBuilder::new(placement)
            .name(&format!("ringlog-shard-{shard}"))
            .io_memory(io_memory_bytes)
            .spawn(move || run_shard(shard, start, mesh));
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
    if failed || member_failed.load(Ordering::Acquire) {
        return ExitCode::FAILURE;
    }
    // Every shard closed its partitions: this stop lost nothing, and the next start may say so
    // to the controller (KIP-966), so this host's replicas stay eligible leaders.
    let epoch = registered_epoch.load(Ordering::Acquire);
    if config.quorum.is_some() && epoch != broker::member::NO_EPOCH {
        if let Err(error) = broker::member::write_clean_shutdown(&config.data_dir, epoch) {
            warn!("cannot write the clean-shutdown file: {error}");
        }
    }
    info!("stopped");
    ExitCode::SUCCESS
}

/// Waits (without blocking the executor, whose mesh tasks must keep serving the other
/// shards) until `counter` reaches `target` (true), or `stop` is set or `limit` passes.
async fn wait_for_all(
    counter: &AtomicUsize,
    target: usize,
    stop: &AtomicBool,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    while counter.load(Ordering::Acquire) < target {
        if Instant::now() >= deadline || stop.load(Ordering::Acquire) {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// One core's broker: join the mesh, open this shard's partitions, accept until told to stop,
/// drain this core's connections, close the partitions.
async fn run_shard(
    id: usize,
    start: ShardStart,
    mesh_builder: MeshBuilder<Message, Full>,
) -> Result<(), ShardError> {
    let executor = glommio::executor();
    let queues = Queues {
        requests: executor.create_task_queue(
            Shares::Static(1000),
            Latency::NotImportant,
            "requests",
        ),
        background: executor.create_task_queue(
            Shares::Static(100),
            Latency::NotImportant,
            "background",
        ),
    };
    let (senders, mut receivers) = mesh_builder
        .join()
        .await
        .map_err(|_| ShardError::Mesh("cannot join the channel mesh"))?;
    let shards = start.settings.shards;
    // Startup only, not the data path: a lock held for one store and one copy.
    if let Ok(mut peer_ids) = start.peer_ids.lock() {
        peer_ids[id] = Some(senders.peer_id());
    }
    start.joined.fetch_add(1, Ordering::AcqRel);
    if !wait_for_all(&start.joined, shards, &start.stop, Duration::from_secs(60)).await {
        start.stop.store(true, Ordering::Release);
        return Err(ShardError::Mesh("not every shard joined the channel mesh"));
    }
    let peer_ids: Vec<usize> = match start.peer_ids.lock() {
        Ok(peer_ids) => peer_ids
            .iter()
            .map(|peer| peer.unwrap_or(usize::MAX))
            .collect(),
        Err(_) => return Err(ShardError::Mesh("a shard failed while joining the mesh")),
    };
    let shutdown = Rc::new(Shutdown::default());
    let shard = Rc::new(Shard::new(ShardSetup {
        id,
        settings: start.settings.clone(),
        identity: start.identity.clone(),
        catalog: start.catalog.clone(),
        mesh: (shards > 1).then(|| Mesh::new(senders, peer_ids)),
        queues,
        env: Env::system(),
        stopping: Rc::clone(&shutdown),
    }));
    for (peer, receiver) in receivers.streams() {
        glommio::spawn_local_into(
            mesh::receive(Rc::clone(&shard), peer, receiver),
            queues.requests,
        )
        .map_err(|_| ShardError::Mesh("cannot start the mesh receiver"))?
        .detach();
    }
    shard.open_all().await;

    // The shared (bootstrap) address, and with a node per shard this shard's own port.
    let mut addresses = vec![start.address];
    let offset = start.settings.topology.port_offset(id);
    if offset > 0 {
        let mut own = start.address;
        own.set_port(start.address.port().saturating_add(offset));
        addresses.push(own);
    }
    let mut listeners = Vec::with_capacity(addresses.len());
    for address in addresses {
        match TcpListener::bind(address) {
            Ok(listener) => listeners.push(listener),
            Err(source) => {
                // Without this shard the broker is incomplete: stop the others too.
                start.stop.store(true, Ordering::Release);
                shard.close_all().await;
                let hint = if address == start.address {
                    String::new()
                } else {
                    format!("; {OWN_PORT_HINT}")
                };
                return Err(ShardError::Bind {
                    address,
                    source,
                    hint,
                });
            }
        }
    }
    // Every shard has opened its partitions and bound its listeners before any accepts: a
    // forwarded request never reaches a shard still opening, and a bind failure stops the
    // broker before it took a client.
    start.ready.fetch_add(1, Ordering::AcqRel);
    if !wait_for_all(&start.ready, shards, &start.stop, Duration::from_secs(3600)).await {
        shard.close_all().await;
        return Ok(());
    }
    for listener in &listeners {
        if let Ok(address) = listener.local_addr() {
            info!(shard = id, %address, "accepting Kafka clients");
        }
    }
    let leaders_moved = shard
        .settings
        .cluster
        .is_some()
        .then(|| Arc::clone(&start.leaders_moved));
    glommio::spawn_local(forward_stop(
        Arc::clone(&start.stop),
        leaders_moved,
        Rc::clone(&shutdown),
    ))
    .detach();
    glommio::spawn_local_into(Rc::clone(&shard).maintain(), queues.background)
        .map_err(|_| ShardError::Mesh("cannot start background work"))?
        .detach();
    if let (0, Some(cluster)) = (id, shard.settings.cluster.clone()) {
        let (member_shard, stop, failed) = (
            Rc::clone(&shard),
            Arc::clone(&start.stop),
            Arc::clone(&start.member_failed),
        );
        let stopping = broker::member::Stopping {
            asked: Arc::clone(&start.stop),
            leaders_moved: Arc::clone(&start.leaders_moved),
            registered_epoch: Arc::clone(&start.registered_epoch),
        };
        glommio::spawn_local(async move {
            if let Err(reason) = broker::member::run(member_shard, cluster, stopping).await {
                error!("{reason}");
                failed.store(true, Ordering::Release);
                stop.store(true, Ordering::Release);
            }
        })
        .detach();
    }
    let live_connections = Rc::new(Cell::new(0_usize));
    let connection = Rc::new(start.connection.clone());
    let mut accepting = Vec::with_capacity(listeners.len());
    // The first listener is the shared (bootstrap) address, a second one this shard's own.
    for (index, listener) in listeners.into_iter().enumerate() {
        let shutdown = Rc::clone(&shutdown);
        let live_connections = Rc::clone(&live_connections);
        let connection = Rc::clone(&connection);
        let came_in_on = if index == 0 {
            ListenerKind::Shared
        } else {
            ListenerKind::Node
        };
        let broker = ShardBroker(Rc::clone(&shard), came_in_on);
        let task = glommio::spawn_local_into(
            async move {
                accept_until_stopped(
                    &listener,
                    &connection,
                    &broker,
                    &shutdown,
                    &live_connections,
                )
                .await;
            },
            queues.requests,
        )
        .map_err(|_| ShardError::Mesh("cannot start accepting"))?;
        accepting.push(task);
    }
    for task in accepting {
        task.await;
    }
    drain(id, &live_connections).await;
    start.drained.fetch_add(1, Ordering::AcqRel);
    let never = AtomicBool::new(false);
    if !wait_for_all(&start.drained, shards, &never, DRAIN_TIMEOUT).await {
        warn!(
            shard = id,
            "other shards are still draining; closing this shard's partitions anyway"
        );
    }
    shard.log_fetch_stats();
    shard.close_all().await;
    Ok(())
}

/// Turns the process-wide flag (set by a signal handler, on any thread) into this shard's
/// local `Shutdown`, which wakes the tasks waiting on it.
async fn forward_stop(
    stop: Arc<AtomicBool>,
    leaders_moved: Option<Arc<AtomicBool>>,
    shutdown: Rc<Shutdown>,
) {
    while !stop.load(Ordering::Acquire) {
        glommio::timer::sleep(STOP_POLL_INTERVAL).await;
    }
    // In a cluster, keep serving (as a follower) until the controller has moved this host's
    // leaderships: a rolling restart then leaves no partition without a leader.
    if let Some(moved) = leaders_moved {
        let started = Instant::now();
        while !moved.load(Ordering::Acquire) && started.elapsed() < CONTROLLED_SHUTDOWN_TIMEOUT {
            glommio::timer::sleep(STOP_POLL_INTERVAL).await;
        }
    }
    shutdown.trigger();
}

async fn accept_until_stopped(
    listener: &TcpListener,
    settings: &Rc<ConnectionSettings>,
    broker: &ShardBroker,
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
            Some(Ok(stream)) => {
                spawn_connection(stream, settings, broker, shutdown, live_connections)
            }
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
    broker: &ShardBroker,
    shutdown: &Rc<Shutdown>,
    live_connections: &Rc<Cell<usize>>,
) {
    let guard = LiveGuard::new(live_connections);
    let settings = Rc::clone(settings);
    let broker = broker.clone();
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
        match connection::serve(stream, &settings, &broker, &shutdown).await {
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
