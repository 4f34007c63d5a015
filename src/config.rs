//! Settings of `ringlog serve`, from four layers: command-line flags win over `RINGLOG_*`
//! environment variables, which win over the TOML file given by `--config`, which wins over the
//! built-in defaults.
//!
//! Every layer is a `Layer` of optional values, so precedence is one `or` chain per setting
//! (`resolve`) and can be unit tested without touching the process environment: the
//! environment is read through a lookup function that tests replace.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::Args;
use ringlog_net::send::FetchSend;
use serde::Deserialize;
use thiserror::Error;

/// Default `--listen` and, through it, `--advertised-listener`: loopback, Kafka's port.
fn default_listen() -> HostPort {
    HostPort {
        host: "127.0.0.1".to_owned(),
        port: 9092,
    }
}
/// Default `--data-dir`.
pub const DEFAULT_DATA_DIR: &str = "./ringlog-data";
/// Default `--node-id`.
pub const DEFAULT_NODE_ID: i32 = 0;
/// Default `--fetch-cache-bytes`: per shard. Room for 64 of the engine's 1 MiB write buffers,
/// a few seconds of the tail at the produce rates measured here; consumers that fall further
/// behind are served by O_DIRECT reads with read-ahead.
pub const DEFAULT_FETCH_CACHE_BYTES: usize = 64 << 20;

const AFTER_HELP: &str = "Each setting can also come from the environment variable shown \
or from the TOML file given by --config (keys: listen, advertised_listener, data_dir, cores, \
node_id, socket_request_max_bytes, auto_create_topics_enable, num_partitions, \
log_retention_check_interval_ms, node_per_shard, pin_cores, group_initial_rebalance_delay_ms, \
group_consumer_heartbeat_interval_ms, group_consumer_session_timeout_ms, \
fetch_cache_bytes, fetch_send, process_roles, controller_listen, controller_quorum_voters, \
broker_session_timeout_ms, replica_lag_time_max_ms, min_insync_replicas, \
auto_leader_rebalance_enable, leader_imbalance_check_interval_seconds, \
leader_imbalance_per_broker_percentage, unclean_leader_election_enable). Flags win over the environment, which wins over the \
file, which wins over the defaults. Logging is filtered by RUST_LOG (default: info).";

/// `ringlog serve` flags. Every value is optional here so that a missing flag falls through to
/// the environment, the file and the default.
#[derive(Debug, Clone, Default, Args)]
#[command(after_help = AFTER_HELP)]
pub struct ServeArgs {
    /// TOML file with settings (overridden by environment variables and flags)
    /// [env: RINGLOG_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to accept Kafka clients on [env: RINGLOG_LISTEN] [default: 127.0.0.1:9092]
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<HostPort>,
    /// Address clients are told to connect to (Metadata) [env: RINGLOG_ADVERTISED_LISTENER]
    /// [default: the listen address]
    #[arg(long, value_name = "HOST:PORT")]
    pub advertised_listener: Option<HostPort>,
    /// Directory for partition data [env: RINGLOG_DATA_DIR] [default: ./ringlog-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Executors to run, one pinned to each of the first N cores [env: RINGLOG_CORES]
    /// [default: all available cores]
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,
    /// This broker's id in Metadata responses [env: RINGLOG_NODE_ID] [default: 0]
    #[arg(long, value_name = "ID")]
    pub node_id: Option<i32>,
    /// Largest request frame accepted, Kafka's socket.request.max.bytes
    /// [env: RINGLOG_SOCKET_REQUEST_MAX_BYTES] [default: 104857600]
    #[arg(long, value_name = "BYTES")]
    pub socket_request_max_bytes: Option<usize>,
    /// Create a topic when a client asks Metadata for one that does not exist, Kafka's
    /// auto.create.topics.enable [env: RINGLOG_AUTO_CREATE_TOPICS_ENABLE] [default: true]
    #[arg(long, value_name = "BOOL")]
    pub auto_create_topics_enable: Option<bool>,
    /// Partitions of a topic created without a count (auto-created ones included), Kafka's
    /// num.partitions [env: RINGLOG_NUM_PARTITIONS] [default: 1]
    #[arg(long, value_name = "N")]
    pub num_partitions: Option<usize>,
    /// How often retention deletes old segments, Kafka's log.retention.check.interval.ms
    /// [env: RINGLOG_LOG_RETENTION_CHECK_INTERVAL_MS] [default: 300000]
    #[arg(long, value_name = "MS")]
    pub log_retention_check_interval_ms: Option<u64>,
    /// Advertise each core's shard as its own broker node: with more than one core, shard i is
    /// node NODE_ID+i on port PORT+1+i (listen and advertised), leading the partitions it owns,
    /// so clients send each request to the owning core; PORT stays the bootstrap address.
    /// `false`: one node, requests forwarded between cores [env: RINGLOG_NODE_PER_SHARD]
    /// [default: true]
    #[arg(long, value_name = "BOOL")]
    pub node_per_shard: Option<bool>,
    /// Pin each core's executor to its CPU. `false` lets the kernel move the executors between
    /// the CPUs the process may use, which lowers the tail where something else can hold a CPU
    /// for milliseconds (a shared VM, a non-preemptible kernel thread; see docs/perf.md), at
    /// the cost of cache locality [env: RINGLOG_PIN_CORES] [default: true]
    #[arg(long, value_name = "BOOL")]
    pub pin_cores: Option<bool>,
    /// How long a consumer group's first rebalance waits for more members, Kafka's
    /// group.initial.rebalance.delay.ms [env: RINGLOG_GROUP_INITIAL_REBALANCE_DELAY_MS]
    /// [default: 3000]
    #[arg(long, value_name = "MS")]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// How often members of a consumer-protocol group (KIP-848) heartbeat, Kafka's
    /// group.consumer.heartbeat.interval.ms [env: RINGLOG_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS]
    /// [default: 5000]
    #[arg(long, value_name = "MS")]
    pub group_consumer_heartbeat_interval_ms: Option<u64>,
    /// How long a consumer-protocol group member may go without a heartbeat before it is
    /// removed, Kafka's group.consumer.session.timeout.ms
    /// [env: RINGLOG_GROUP_CONSUMER_SESSION_TIMEOUT_MS] [default: 45000]
    #[arg(long, value_name = "MS")]
    pub group_consumer_session_timeout_ms: Option<u64>,
    /// A follower that has not caught up with its leader for this long leaves the in-sync
    /// replicas, Kafka's replica.lag.time.max.ms [env: RINGLOG_REPLICA_LAG_TIME_MAX_MS]
    /// [default: 30000]
    #[arg(long, value_name = "MS")]
    pub replica_lag_time_max_ms: Option<u64>,
    /// In-sync replicas an acks=all write needs, for topics that do not set
    /// min.insync.replicas [env: RINGLOG_MIN_INSYNC_REPLICAS] [default: 1]
    #[arg(long, value_name = "N")]
    pub min_insync_replicas: Option<usize>,
    /// The active controller moves leaderships back to preferred replicas where a broker
    /// leads too few of them, Kafka's auto.leader.rebalance.enable
    /// [env: RINGLOG_AUTO_LEADER_REBALANCE_ENABLE] [default: true]
    #[arg(long, value_name = "BOOL")]
    pub auto_leader_rebalance_enable: Option<bool>,
    /// How often the controller checks leader balance, Kafka's
    /// leader.imbalance.check.interval.seconds
    /// [env: RINGLOG_LEADER_IMBALANCE_CHECK_INTERVAL_SECONDS] [default: 300]
    #[arg(long, value_name = "SECONDS")]
    pub leader_imbalance_check_interval_seconds: Option<u64>,
    /// A broker whose preferred partitions are led elsewhere above this percentage gets them
    /// back, Kafka's leader.imbalance.per.broker.percentage
    /// [env: RINGLOG_LEADER_IMBALANCE_PER_BROKER_PERCENTAGE] [default: 10]
    #[arg(long, value_name = "PERCENT")]
    pub leader_imbalance_per_broker_percentage: Option<u32>,
    /// Topics that do not set unclean.leader.election.enable may be led by an out-of-sync
    /// replica when no in-sync or eligible one is live, losing what only those had
    /// [env: RINGLOG_UNCLEAN_LEADER_ELECTION_ENABLE] [default: false]
    #[arg(long, value_name = "BOOL")]
    pub unclean_leader_election_enable: Option<bool>,
    /// Memory each core keeps of recently written batches to answer tail fetches without
    /// reading the disk (the tail cache; 0 turns it off). Each core registers (locks) this
    /// plus 32 MiB for reads as io_uring memory [env: RINGLOG_FETCH_CACHE_BYTES]
    /// [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    pub fetch_cache_bytes: Option<usize>,
    /// How fetch responses are sent: zero-copy (io_uring SENDMSG_ZC), copy (plain sendmsg) or
    /// auto (zero-copy only to peers off loopback, for responses of 64 KiB or more; on
    /// loopback the kernel copies anyway and zero-copy costs more CPU)
    /// [env: RINGLOG_FETCH_SEND] [default: auto]
    #[arg(long, value_name = "MODE")]
    pub fetch_send: Option<FetchSend>,
    /// What this node runs, as in KRaft: `broker`, `controller` or both. A controller is a
    /// voter of the quorum in --controller-quorum-voters, listening on --controller-listen;
    /// without voters the node is a one-node cluster with no quorum (as before)
    /// [env: RINGLOG_PROCESS_ROLES] [default: broker,controller]
    #[arg(long, value_name = "ROLES")]
    pub process_roles: Option<ProcessRoles>,
    /// Address this node's controller listens on for the other voters and for brokers
    /// [env: RINGLOG_CONTROLLER_LISTEN] [default: this node's address in the voters]
    #[arg(long, value_name = "HOST:PORT")]
    pub controller_listen: Option<HostPort>,
    /// The controller quorum: every voter's node id and controller address
    /// [env: RINGLOG_CONTROLLER_QUORUM_VOTERS] [default: none, a one-node cluster]
    #[arg(long, value_name = "ID@HOST:PORT,...")]
    pub controller_quorum_voters: Option<QuorumVoters>,
    /// A broker that has not heartbeat to the controller for this long is fenced and its
    /// leaderships move, Kafka's broker.session.timeout.ms
    /// [env: RINGLOG_BROKER_SESSION_TIMEOUT_MS] [default: 1500]
    #[arg(long, value_name = "MS")]
    pub broker_session_timeout_ms: Option<u64>,
}

/// `--process-roles`: `broker`, `controller`, or both, comma separated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessRoles {
    pub broker: bool,
    pub controller: bool,
}

impl Default for ProcessRoles {
    fn default() -> Self {
        Self {
            broker: true,
            controller: true,
        }
    }
}

impl FromStr for ProcessRoles {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut roles = Self {
            broker: false,
            controller: false,
        };
        for role in text.split(',').map(str::trim) {
            match role {
                "broker" => roles.broker = true,
                "controller" => roles.controller = true,
                other => return Err(format!("{other:?} is not a role (broker, controller)")),
            }
        }
        Ok(roles)
    }
}

/// `--controller-quorum-voters`: `ID@HOST:PORT,...`, Kafka's controller.quorum.voters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumVoters(pub std::collections::BTreeMap<u32, HostPort>);

impl FromStr for QuorumVoters {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut voters = std::collections::BTreeMap::new();
        for voter in text.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            let (id, address) = voter
                .split_once('@')
                .ok_or_else(|| format!("{voter:?} is not ID@HOST:PORT"))?;
            let id: u32 = id
                .parse()
                .map_err(|_| format!("{id:?} in {voter:?} is not a node id"))?;
            if voters.insert(id, address.parse()?).is_some() {
                return Err(format!("voter {id} is named twice"));
            }
        }
        if voters.is_empty() {
            return Err("no voters".to_owned());
        }
        Ok(Self(voters))
    }
}

/// A `host:port` pair as written by the user; the host may be a name or an IP (IPv6 in
/// brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("{port:?} in {text:?} is not a port number"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text:?} has no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(formatter, "[{}]:{}", self.host, self.port)
        } else {
            write!(formatter, "{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why the settings cannot be assembled.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    ParseFile {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {name}={value:?} is not valid: {reason}")]
    Env {
        name: String,
        value: String,
        reason: String,
    },
    #[error("{setting} must be {expected}, got {value}")]
    OutOfRange {
        setting: &'static str,
        expected: String,
        value: String,
    },
    #[error("listen address {address} does not resolve: {reason}")]
    Resolve { address: HostPort, reason: String },
}

/// One layer of optional settings: the file's, the environment's or the flags'.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub listen: Option<HostPort>,
    pub advertised_listener: Option<HostPort>,
    pub data_dir: Option<PathBuf>,
    pub cores: Option<usize>,
    pub node_id: Option<i32>,
    pub socket_request_max_bytes: Option<usize>,
    pub auto_create_topics_enable: Option<bool>,
    pub num_partitions: Option<usize>,
    pub log_retention_check_interval_ms: Option<u64>,
    pub node_per_shard: Option<bool>,
    pub pin_cores: Option<bool>,
    pub group_initial_rebalance_delay_ms: Option<u64>,
    pub group_consumer_heartbeat_interval_ms: Option<u64>,
    pub group_consumer_session_timeout_ms: Option<u64>,
    pub replica_lag_time_max_ms: Option<u64>,
    pub min_insync_replicas: Option<usize>,
    pub auto_leader_rebalance_enable: Option<bool>,
    pub leader_imbalance_check_interval_seconds: Option<u64>,
    pub leader_imbalance_per_broker_percentage: Option<u32>,
    pub unclean_leader_election_enable: Option<bool>,
    pub fetch_cache_bytes: Option<usize>,
    #[serde(default, deserialize_with = "from_text")]
    pub fetch_send: Option<FetchSend>,
    #[serde(default, deserialize_with = "from_text")]
    pub process_roles: Option<ProcessRoles>,
    pub controller_listen: Option<HostPort>,
    #[serde(default, deserialize_with = "from_text")]
    pub controller_quorum_voters: Option<QuorumVoters>,
    pub broker_session_timeout_ms: Option<u64>,
}

/// Deserializes a setting from its text form (its `FromStr`).
fn from_text<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

impl Layer {
    fn from_args(args: &ServeArgs) -> Self {
        Self {
            listen: args.listen.clone(),
            advertised_listener: args.advertised_listener.clone(),
            data_dir: args.data_dir.clone(),
            cores: args.cores,
            node_id: args.node_id,
            socket_request_max_bytes: args.socket_request_max_bytes,
            auto_create_topics_enable: args.auto_create_topics_enable,
            num_partitions: args.num_partitions,
            log_retention_check_interval_ms: args.log_retention_check_interval_ms,
            node_per_shard: args.node_per_shard,
            pin_cores: args.pin_cores,
            group_initial_rebalance_delay_ms: args.group_initial_rebalance_delay_ms,
            group_consumer_heartbeat_interval_ms: args.group_consumer_heartbeat_interval_ms,
            group_consumer_session_timeout_ms: args.group_consumer_session_timeout_ms,
            replica_lag_time_max_ms: args.replica_lag_time_max_ms,
            min_insync_replicas: args.min_insync_replicas,
            auto_leader_rebalance_enable: args.auto_leader_rebalance_enable,
            leader_imbalance_check_interval_seconds: args.leader_imbalance_check_interval_seconds,
            leader_imbalance_per_broker_percentage: args.leader_imbalance_per_broker_percentage,
            unclean_leader_election_enable: args.unclean_leader_election_enable,
            fetch_cache_bytes: args.fetch_cache_bytes,
            fetch_send: args.fetch_send,
            process_roles: args.process_roles,
            controller_listen: args.controller_listen.clone(),
            controller_quorum_voters: args.controller_quorum_voters.clone(),
            broker_session_timeout_ms: args.broker_session_timeout_ms,
        }
    }

    /// Reads the `RINGLOG_*` variables through `lookup` (`std::env::var` outside tests).
    pub fn from_env(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(Self {
            listen: env_value(lookup, "RINGLOG_LISTEN")?,
            advertised_listener: env_value(lookup, "RINGLOG_ADVERTISED_LISTENER")?,
            data_dir: lookup("RINGLOG_DATA_DIR").map(PathBuf::from),
            cores: env_value(lookup, "RINGLOG_CORES")?,
            node_id: env_value(lookup, "RINGLOG_NODE_ID")?,
            socket_request_max_bytes: env_value(lookup, "RINGLOG_SOCKET_REQUEST_MAX_BYTES")?,
            auto_create_topics_enable: env_value(lookup, "RINGLOG_AUTO_CREATE_TOPICS_ENABLE")?,
            num_partitions: env_value(lookup, "RINGLOG_NUM_PARTITIONS")?,
            log_retention_check_interval_ms: env_value(
                lookup,
                "RINGLOG_LOG_RETENTION_CHECK_INTERVAL_MS",
            )?,
            node_per_shard: env_value(lookup, "RINGLOG_NODE_PER_SHARD")?,
            pin_cores: env_value(lookup, "RINGLOG_PIN_CORES")?,
            group_initial_rebalance_delay_ms: env_value(
                lookup,
                "RINGLOG_GROUP_INITIAL_REBALANCE_DELAY_MS",
            )?,
            group_consumer_heartbeat_interval_ms: env_value(
                lookup,
                "RINGLOG_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS",
            )?,
            group_consumer_session_timeout_ms: env_value(
                lookup,
                "RINGLOG_GROUP_CONSUMER_SESSION_TIMEOUT_MS",
            )?,
            replica_lag_time_max_ms: env_value(lookup, "RINGLOG_REPLICA_LAG_TIME_MAX_MS")?,
            min_insync_replicas: env_value(lookup, "RINGLOG_MIN_INSYNC_REPLICAS")?,
            auto_leader_rebalance_enable: env_value(
                lookup,
                "RINGLOG_AUTO_LEADER_REBALANCE_ENABLE",
            )?,
            leader_imbalance_check_interval_seconds: env_value(
                lookup,
                "RINGLOG_LEADER_IMBALANCE_CHECK_INTERVAL_SECONDS",
            )?,
            leader_imbalance_per_broker_percentage: env_value(
                lookup,
                "RINGLOG_LEADER_IMBALANCE_PER_BROKER_PERCENTAGE",
            )?,
            unclean_leader_election_enable: env_value(
                lookup,
                "RINGLOG_UNCLEAN_LEADER_ELECTION_ENABLE",
            )?,
            fetch_cache_bytes: env_value(lookup, "RINGLOG_FETCH_CACHE_BYTES")?,
            fetch_send: env_value(lookup, "RINGLOG_FETCH_SEND")?,
            process_roles: env_value(lookup, "RINGLOG_PROCESS_ROLES")?,
            controller_listen: env_value(lookup, "RINGLOG_CONTROLLER_LISTEN")?,
            controller_quorum_voters: env_value(lookup, "RINGLOG_CONTROLLER_QUORUM_VOTERS")?,
            broker_session_timeout_ms: env_value(lookup, "RINGLOG_BROKER_SESSION_TIMEOUT_MS")?,
        })
    }

    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::ParseFile {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }
}

fn env_value<T: FromStr>(
    lookup: &dyn Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<T>, ConfigError>
where
    T::Err: fmt::Display,
{
    let Some(value) = lookup(name) else {
        return Ok(None);
    };
    value
        .parse()
        .map(Some)
        .map_err(|error: T::Err| ConfigError::Env {
            name: name.to_owned(),
            reason: error.to_string(),
            value,
        })
}

/// The settings `serve` runs with, every one decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    pub listen: HostPort,
    pub advertised_listener: HostPort,
    pub data_dir: PathBuf,
    pub cores: usize,
    pub node_id: i32,
    pub socket_request_max_bytes: usize,
    pub auto_create_topics_enable: bool,
    pub num_partitions: usize,
    pub log_retention_check_interval_ms: u64,
    pub node_per_shard: bool,
    pub pin_cores: bool,
    pub group_initial_rebalance_delay_ms: u64,
    pub group_consumer_heartbeat_interval_ms: u64,
    pub group_consumer_session_timeout_ms: u64,
    pub replica_lag_time_max_ms: u64,
    pub min_insync_replicas: usize,
    pub auto_leader_rebalance_enable: bool,
    pub leader_imbalance_check_interval_seconds: u64,
    pub leader_imbalance_per_broker_percentage: u32,
    pub unclean_leader_election_enable: bool,
    pub fetch_cache_bytes: usize,
    pub fetch_send: FetchSend,
    pub process_roles: ProcessRoles,
    /// The controller quorum; `None`: a one-node cluster with no quorum.
    pub quorum: Option<QuorumConfig>,
}

/// This node's place in a controller quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumConfig {
    pub voters: QuorumVoters,
    /// Where this node's controller listens (a controller only).
    pub controller_listen: Option<HostPort>,
    pub broker_session_timeout_ms: u64,
}

impl ServeConfig {
    /// Assembles the settings from the flags, the process environment and the config file
    /// (named by `--config` or `RINGLOG_CONFIG`).
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let lookup = |name: &str| std::env::var(name).ok();
        let env = Layer::from_env(&lookup)?;
        let file_path = args
            .config
            .clone()
            .or_else(|| lookup("RINGLOG_CONFIG").map(PathBuf::from));
        let file = match file_path {
            Some(path) => read_file_layer(&path)?,
            None => Layer::default(),
        };
        resolve(&Layer::from_args(args), &env, &file, available_cores())
    }

    /// The listen address as a socket address, for binding.
    pub fn listen_address(&self) -> Result<SocketAddr, ConfigError> {
        let resolve_error = |reason: String| ConfigError::Resolve {
            address: self.listen.clone(),
            reason,
        };
        (self.listen.host.as_str(), self.listen.port)
            .to_socket_addrs()
            .map_err(|error| resolve_error(error.to_string()))?
            .next()
            .ok_or_else(|| resolve_error("no address".to_owned()))
    }
}

fn read_file_layer(path: &Path) -> Result<Layer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    Layer::from_toml(path, &text)
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Picks each setting from the first layer that has it, then the default, and checks ranges.
pub fn resolve(
    flags: &Layer,
    env: &Layer,
    file: &Layer,
    cores_available: usize,
) -> Result<ServeConfig, ConfigError> {
    let layers = [flags, env, file];
    let listen = first(&layers, |layer| layer.listen.clone()).unwrap_or_else(default_listen);
    let config = ServeConfig {
        advertised_listener: first(&layers, |layer| layer.advertised_listener.clone())
            .unwrap_or_else(|| listen.clone()),
        data_dir: first(&layers, |layer| layer.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        cores: first(&layers, |layer| layer.cores).unwrap_or(cores_available),
        node_id: first(&layers, |layer| layer.node_id).unwrap_or(DEFAULT_NODE_ID),
        socket_request_max_bytes: first(&layers, |layer| layer.socket_request_max_bytes)
            .unwrap_or(ringlog_net::DEFAULT_MAX_REQUEST_BYTES),
        auto_create_topics_enable: first(&layers, |layer| layer.auto_create_topics_enable)
            .unwrap_or(true),
        num_partitions: first(&layers, |layer| layer.num_partitions).unwrap_or(1),
        log_retention_check_interval_ms: first(&layers, |layer| {
            layer.log_retention_check_interval_ms
        })
        .unwrap_or(300_000),
        node_per_shard: first(&layers, |layer| layer.node_per_shard).unwrap_or(true),
        pin_cores: first(&layers, |layer| layer.pin_cores).unwrap_or(true),
        group_initial_rebalance_delay_ms: first(&layers, |layer| {
            layer.group_initial_rebalance_delay_ms
        })
        .unwrap_or(3000),
        group_consumer_heartbeat_interval_ms: first(&layers, |layer| {
            layer.group_consumer_heartbeat_interval_ms
        })
        .unwrap_or(5000),
        group_consumer_session_timeout_ms: first(&layers, |layer| {
            layer.group_consumer_session_timeout_ms
        })
        .unwrap_or(45_000),
        replica_lag_time_max_ms: first(&layers, |layer| layer.replica_lag_time_max_ms)
            .unwrap_or(30_000),
        min_insync_replicas: first(&layers, |layer| layer.min_insync_replicas)
            .unwrap_or(1)
            .max(1),
        auto_leader_rebalance_enable: first(&layers, |layer| layer.auto_leader_rebalance_enable)
            .unwrap_or(true),
        leader_imbalance_check_interval_seconds: first(&layers, |layer| {
            layer.leader_imbalance_check_interval_seconds
        })
        .unwrap_or(300)
        .max(1),
        leader_imbalance_per_broker_percentage: first(&layers, |layer| {
            layer.leader_imbalance_per_broker_percentage
        })
        .unwrap_or(10),
        unclean_leader_election_enable: first(&layers, |layer| {
            layer.unclean_leader_election_enable
        })
        .unwrap_or(false),
        fetch_cache_bytes: first(&layers, |layer| layer.fetch_cache_bytes)
            .unwrap_or(DEFAULT_FETCH_CACHE_BYTES),
        fetch_send: first(&layers, |layer| layer.fetch_send).unwrap_or_default(),
        process_roles: first(&layers, |layer| layer.process_roles).unwrap_or_default(),
        quorum: resolve_quorum(&layers)?,
        listen,
    };
    check_ranges(&config, cores_available)?;
    Ok(config)
}

/// The quorum settings: none without voters (a one-node cluster). A controller's listen
/// address defaults to its own entry in the voters.
fn resolve_quorum(layers: &[&Layer]) -> Result<Option<QuorumConfig>, ConfigError> {
    let Some(voters) = first(layers, |layer| layer.controller_quorum_voters.clone()) else {
        return Ok(None);
    };
    let node_id = first(layers, |layer| layer.node_id).unwrap_or(DEFAULT_NODE_ID);
    let roles = first(layers, |layer| layer.process_roles).unwrap_or_default();
    let own = u32::try_from(node_id)
        .ok()
        .and_then(|id| voters.0.get(&id).cloned());
    let controller_listen = match (roles.controller, own) {
        (false, _) => None,
        (true, Some(own)) => {
            Some(first(layers, |layer| layer.controller_listen.clone()).unwrap_or(own))
        }
        (true, None) => {
            return Err(ConfigError::OutOfRange {
                setting: "controller_quorum_voters",
                expected: format!("to name this controller's node id {node_id}"),
                value: format!("{:?}", voters.0.keys().collect::<Vec<_>>()),
            })
        }
    };
    let session = first(layers, |layer| layer.broker_session_timeout_ms).unwrap_or(1500);
    if session < 100 {
        return Err(ConfigError::OutOfRange {
            setting: "broker_session_timeout_ms",
            expected: "100 or more".to_owned(),
            value: session.to_string(),
        });
    }
    Ok(Some(QuorumConfig {
        voters,
        controller_listen,
        broker_session_timeout_ms: session,
    }))
}

/// The value of the first layer (highest precedence first) that sets it.
fn first<T>(layers: &[&Layer], get: impl Fn(&Layer) -> Option<T>) -> Option<T> {
    layers.iter().find_map(|layer| get(layer))
}

fn check_ranges(config: &ServeConfig, cores_available: usize) -> Result<(), ConfigError> {
    if config.cores == 0 || config.cores > cores_available {
        return Err(ConfigError::OutOfRange {
            setting: "cores",
            expected: format!("between 1 and {cores_available} (the cores available)"),
            value: config.cores.to_string(),
        });
    }
    if config.num_partitions == 0 || i32::try_from(config.num_partitions).is_err() {
        return Err(ConfigError::OutOfRange {
            setting: "num_partitions",
            expected: "1 or more".to_owned(),
            value: config.num_partitions.to_string(),
        });
    }
    if config.log_retention_check_interval_ms == 0 {
        return Err(ConfigError::OutOfRange {
            setting: "log_retention_check_interval_ms",
            expected: "1 or more".to_owned(),
            value: "0".to_owned(),
        });
    }
    if config.node_id < 0 {
        return Err(ConfigError::OutOfRange {
            setting: "node_id",
            expected: "0 or more".to_owned(),
            value: config.node_id.to_string(),
        });
    }
    // Kafka requires the session to outlast the heartbeat interval; both travel as i32 ms.
    let heartbeat_ms = config.group_consumer_heartbeat_interval_ms;
    if heartbeat_ms == 0 || heartbeat_ms > i32::MAX as u64 {
        return Err(ConfigError::OutOfRange {
            setting: "group_consumer_heartbeat_interval_ms",
            expected: format!("between 1 and {}", i32::MAX),
            value: heartbeat_ms.to_string(),
        });
    }
    if config.group_consumer_session_timeout_ms <= heartbeat_ms {
        return Err(ConfigError::OutOfRange {
            setting: "group_consumer_session_timeout_ms",
            expected: format!("more than group_consumer_heartbeat_interval_ms ({heartbeat_ms})"),
            value: config.group_consumer_session_timeout_ms.to_string(),
        });
    }
    // The size prefix is an i32; 8 bytes is the smallest request header.
    if !(8..=i32::MAX as usize).contains(&config.socket_request_max_bytes) {
        return Err(ConfigError::OutOfRange {
            setting: "socket_request_max_bytes",
            expected: format!("between 8 and {}", i32::MAX),
            value: config.socket_request_max_bytes.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_port(text: &str) -> HostPort {
        text.parse().expect("valid HOST:PORT")
    }

    fn env_of(pairs: &[(&str, &str)]) -> Layer {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = move |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        Layer::from_env(&lookup).expect("valid environment")
    }

    #[test]
    fn quorum_settings_parse_and_default_to_a_one_node_cluster() {
        let none =
            resolve(&Layer::default(), &Layer::default(), &Layer::default(), 2).expect("valid");
        assert_eq!(none.quorum, None);
        assert_eq!(none.process_roles, ProcessRoles::default());

        let roles: ProcessRoles = "controller".parse().expect("roles");
        assert!(roles.controller && !roles.broker);
        assert!("broker,controller".parse::<ProcessRoles>().is_ok());
        assert!("broker,tester".parse::<ProcessRoles>().is_err());
        let voters: QuorumVoters = "0@127.0.0.1:9093,1@127.0.0.2:9093".parse().expect("voters");
        assert_eq!(voters.0[&1], host_port("127.0.0.2:9093"));
        for bad in ["", "0@", "x@h:1", "0@h:1,0@h:2", "0h:1"] {
            assert!(bad.parse::<QuorumVoters>().is_err(), "{bad}");
        }

        let lookup = |name: &str| match name {
            "RINGLOG_CONTROLLER_QUORUM_VOTERS" => Some("0@127.0.0.1:9093,1@127.0.0.2:9093".into()),
            "RINGLOG_NODE_ID" => Some("1".into()),
            "RINGLOG_PROCESS_ROLES" => Some("controller".into()),
            _ => None,
        };
        let env = Layer::from_env(&lookup).expect("env");
        let config = resolve(&Layer::default(), &env, &Layer::default(), 2).expect("valid");
        let quorum = config.quorum.expect("a quorum");
        assert_eq!(quorum.controller_listen, Some(host_port("127.0.0.2:9093")));
        assert_eq!(quorum.broker_session_timeout_ms, 1500);
        // A controller must be one of the voters.
        let stranger = |name: &str| match name {
            "RINGLOG_NODE_ID" => Some("5".into()),
            other => lookup(other),
        };
        let env = Layer::from_env(&stranger).expect("env");
        assert!(resolve(&Layer::default(), &env, &Layer::default(), 2).is_err());
    }

    #[test]
    fn defaults_apply_when_no_layer_sets_a_value() {
        let config = resolve(&Layer::default(), &Layer::default(), &Layer::default(), 4)
            .expect("defaults are valid");
        assert_eq!(config.listen, host_port("127.0.0.1:9092"));
        assert_eq!(config.advertised_listener, config.listen);
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(config.cores, 4);
        assert_eq!(config.node_id, DEFAULT_NODE_ID);
        assert_eq!(config.socket_request_max_bytes, 104_857_600);
        assert_eq!(config.group_consumer_heartbeat_interval_ms, 5000);
        assert_eq!(config.group_consumer_session_timeout_ms, 45_000);
        assert!(config.pin_cores, "shards are pinned unless asked not to be");
    }

    #[test]
    fn pin_cores_can_be_turned_off_from_the_environment_or_the_file() {
        let env = env_of(&[("RINGLOG_PIN_CORES", "false")]);
        let config = resolve(&Layer::default(), &env, &Layer::default(), 2).expect("valid");
        assert!(!config.pin_cores);
        let file = Layer::from_toml(Path::new("t.toml"), "pin_cores = false\n").expect("TOML");
        let config = resolve(&Layer::default(), &Layer::default(), &file, 2).expect("valid");
        assert!(!config.pin_cores);
        let lookup = |name: &str| (name == "RINGLOG_PIN_CORES").then(|| "maybe".to_owned());
        let error = Layer::from_env(&lookup).expect_err("not a bool");
        assert!(error.to_string().contains("RINGLOG_PIN_CORES"), "{error}");
    }

    #[test]
    fn consumer_group_timings_come_from_the_environment_and_are_checked() {
        let env = env_of(&[
            ("RINGLOG_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS", "500"),
            ("RINGLOG_GROUP_CONSUMER_SESSION_TIMEOUT_MS", "3000"),
        ]);
        let config = resolve(&Layer::default(), &env, &Layer::default(), 1).expect("valid");
        assert_eq!(config.group_consumer_heartbeat_interval_ms, 500);
        assert_eq!(config.group_consumer_session_timeout_ms, 3000);
        let env = env_of(&[("RINGLOG_GROUP_CONSUMER_SESSION_TIMEOUT_MS", "5000")]);
        let error = resolve(&Layer::default(), &env, &Layer::default(), 1).expect_err("equal");
        assert!(error.to_string().contains("session_timeout"), "{error}");
    }

    #[test]
    fn flags_win_over_env_which_wins_over_file() {
        let file = Layer::from_toml(
            Path::new("test.toml"),
            "listen = \"10.0.0.1:1\"\ndata_dir = \"/file\"\ncores = 1\nnode_id = 7\n",
        )
        .expect("valid TOML");
        let env = env_of(&[
            ("RINGLOG_LISTEN", "10.0.0.2:2"),
            ("RINGLOG_DATA_DIR", "/env"),
        ]);
        let flags = Layer {
            listen: Some(host_port("10.0.0.3:3")),
            ..Layer::default()
        };
        let config = resolve(&flags, &env, &file, 2).expect("valid");
        assert_eq!(config.listen, host_port("10.0.0.3:3"), "flag wins");
        assert_eq!(config.data_dir, PathBuf::from("/env"), "env wins over file");
        assert_eq!(config.cores, 1, "file wins over default");
        assert_eq!(config.node_id, 7);
        assert_eq!(
            config.advertised_listener,
            host_port("10.0.0.3:3"),
            "advertised defaults to the resolved listen address"
        );
    }

    #[test]
    fn advertised_listener_set_in_a_lower_layer_still_applies() {
        let env = env_of(&[("RINGLOG_ADVERTISED_LISTENER", "broker.example:9093")]);
        let flags = Layer {
            listen: Some(host_port("0.0.0.0:9092")),
            ..Layer::default()
        };
        let config = resolve(&flags, &env, &Layer::default(), 1).expect("valid");
        assert_eq!(config.advertised_listener, host_port("broker.example:9093"));
    }

    #[test]
    fn invalid_values_are_reported_with_their_source() {
        let lookup = |name: &str| (name == "RINGLOG_CORES").then(|| "many".to_owned());
        let error = Layer::from_env(&lookup).expect_err("not a number");
        assert!(error.to_string().contains("RINGLOG_CORES"), "{error}");
        let error = Layer::from_toml(Path::new("x.toml"), "litsen = \"a:1\"").expect_err("typo");
        assert!(error.to_string().contains("x.toml"), "{error}");
        let flags = Layer {
            cores: Some(3),
            ..Layer::default()
        };
        let error = resolve(&flags, &Layer::default(), &Layer::default(), 2).expect_err("cores");
        assert!(error.to_string().contains("cores"), "{error}");
    }

    #[test]
    fn host_port_parses_names_ips_and_bracketed_ipv6() {
        assert_eq!(host_port("localhost:9092").host, "localhost");
        assert_eq!(host_port("[::1]:9092").host, "::1");
        assert_eq!(host_port("[::1]:9092").to_string(), "[::1]:9092");
        assert!("nohost".parse::<HostPort>().is_err());
        assert!(":9092".parse::<HostPort>().is_err());
        assert!("h:99999".parse::<HostPort>().is_err());
    }
}
