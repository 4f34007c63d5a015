//! The broker's shards: one per executor, each owning some partitions, a copy of the topic
//! catalog and its end of the cross-shard mesh.
//!
//! A client request is answered by the shard whose executor accepted the connection. Work on
//! partitions owned by another shard is sent there through the mesh ([`mesh`]), one message
//! per owner carrying all of the request's partitions it owns; the results are merged into
//! one response. Changes to topics go through shard 0, the controller ([`admin`]).

pub mod admin;
pub mod catalog;
pub mod consumer_group;
pub mod durable;
pub mod fetch;
pub mod groups;
pub mod member;
pub mod mesh;
pub mod metadata;
pub mod offsets;
pub mod produce;
pub mod producer_ids;
pub mod producer_state;
pub mod replica;
pub mod topic_config;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use event_listener::Event;
use glommio::TaskQueueHandle;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeClusterRequest, DescribeClusterResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, FetchRequest, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ProduceRequest,
    ProduceResponse,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse,
};
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, OffsetDeleteRequest, OffsetDeleteResponse,
};
use kafka_protocol::messages::{
    DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse,
};
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
use kafka_protocol::ResponseError;
use ringlog_engine::{LogConfig, OpenOptions, PartitionLog, ReadSource, TailCache};
use ringlog_env::Env;
use ringlog_net::handlers::{Broker, BrokerIdentity, ClientInfo};
use ringlog_net::response::FetchAnswer;
use tracing::{error, info, warn};

use self::catalog::{Catalog, PartitionState, Topic};
use self::mesh::{Mesh, MeshError, Routed};

/// How the shards appear to clients: as one broker node, or each as a node of its own.
///
/// With `node_per_shard`, shard `i` is node `base_node_id + i`, reachable on its own port
/// `advertised_port + 1 + i` (bound on `listen port + 1 + i`), and Metadata names the owning
/// shard's node as each partition's leader, so clients send produce and fetch requests straight
/// to the core that owns the partition. The shared listen port stays the bootstrap address,
/// accepted on every shard. Without it, the broker is one node and requests for partitions of
/// other shards are forwarded through the mesh. Either way a request reaching the wrong shard
/// is forwarded, never refused.
#[derive(Debug, Clone)]
pub struct Topology {
    pub base_node_id: i32,
    pub advertised_host: String,
    pub advertised_port: u16,
    pub node_per_shard: bool,
    pub shards: usize,
}

impl Topology {
    pub fn node_of(&self, shard: usize) -> i32 {
        if self.node_per_shard {
            self.base_node_id + shard as i32
        } else {
            self.base_node_id
        }
    }

    /// The port offset (from the listen and advertised ports) of a shard's own listener.
    pub fn port_offset(&self, shard: usize) -> u16 {
        if self.node_per_shard {
            1 + shard as u16
        } else {
            0
        }
    }

    /// A partition with one replica, on `shard`.
    pub fn single_replica(&self, shard: usize) -> PartitionState {
        PartitionState::single(shard, self.node_of(shard))
    }

    /// Every node clients are told about: (node id, port).
    pub fn nodes(&self) -> Vec<(i32, u16)> {
        let count = if self.node_per_shard { self.shards } else { 1 };
        (0..count)
            .map(|shard| {
                (
                    self.node_of(shard),
                    self.advertised_port.saturating_add(self.port_offset(shard)),
                )
            })
            .collect()
    }

    /// The shard a node id stands for; with one node for all shards, `None` means "any".
    pub fn shard_of(&self, node: i32) -> Result<Option<usize>, UnknownNode> {
        let index = node
            .checked_sub(self.base_node_id)
            .ok_or(UnknownNode(node))?;
        match (self.node_per_shard, usize::try_from(index)) {
            (true, Ok(shard)) if shard < self.shards => Ok(Some(shard)),
            (false, Ok(0)) => Ok(None),
            _ => Err(UnknownNode(node)),
        }
    }
}

/// A node id that is none of this broker's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("node {0} is not a node of this broker")]
pub struct UnknownNode(pub i32);

/// Broker-wide settings every shard reads.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub topology: Topology,
    pub data_dir: PathBuf,
    pub shards: usize,
    /// `auto.create.topics.enable`: Metadata for an unknown topic creates it.
    pub auto_create_topics: bool,
    /// `num.partitions`: partitions of an auto-created topic, and of a created one that does
    /// not say.
    pub num_partitions: usize,
    /// Topic settings of every topic that does not override them.
    pub log_defaults: LogConfig,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval: Duration,
    /// `group.initial.rebalance.delay.ms`: how long a group's first rebalance waits for more
    /// members to join.
    pub group_initial_rebalance_delay: Duration,
    /// `group.consumer.heartbeat.interval.ms`: how often KIP-848 group members heartbeat.
    pub group_consumer_heartbeat_interval: Duration,
    /// `group.consumer.session.timeout.ms`: a KIP-848 member silent this long is removed.
    pub group_consumer_session_timeout: Duration,
    /// Bytes of recently written batches each shard keeps for tail fetches (the tail cache).
    pub fetch_cache_bytes: usize,
    /// In a cluster with a controller quorum: how to reach it. `None`: a one-node cluster,
    /// whose catalog is this broker's own (`topics.json`).
    pub cluster: Option<member::ClusterSettings>,
    /// `replica.lag.time.max.ms`: a follower behind for longer leaves the ISR.
    pub replica_lag_time_max: Duration,
    /// `min.insync.replicas` of topics that do not override it.
    pub min_insync_replicas: usize,
    /// `unclean.leader.election.enable` of topics that do not override it (the controller
    /// applies it; brokers report it in DescribeConfigs).
    pub unclean_leader_election: bool,
}

/// Fetch reads of a shard by where their bytes came from: (reads, bytes) per source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    pub tail_cache: (u64, u64),
    pub read_ahead: (u64, u64),
    pub disk: (u64, u64),
}

/// Replication bytes a shard moved: what it served to followers' fetches as a leader, and what
/// it appended as a follower from each leader node. Every leader node a shard fetched from is
/// the same core index on its host (the links run core to core), which the counts show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationCounts {
    /// Record bytes answered to follower fetches.
    pub served_bytes: u64,
    /// Record bytes appended from each leader node.
    pub fetched_bytes: BTreeMap<i32, u64>,
}

/// The task queues of a shard: client requests get most of the executor; background work
/// (sealing segments, retention, flush.ms, checkpoints) gets the rest.
#[derive(Debug, Clone, Copy)]
pub struct Queues {
    pub requests: TaskQueueHandle,
    pub background: TaskQueueHandle,
}

/// A partition this shard owns.
pub struct Partition {
    pub log: PartitionLog,
    /// The idempotent producers' sequences ([`producer_state`]), kept in step with `log`.
    pub producers: RefCell<producer_state::ProducerStates>,
    /// The log end offset of the producer state snapshot on disk, if it holds the current
    /// state: the state below an offset never changes, so there is nothing new to write until
    /// the log end moves.
    producer_snapshot_offset: Cell<Option<i64>>,
    /// Leader or follower, per the catalog ([`replica`]).
    pub role: RefCell<replica::Role>,
    /// As a follower: its last append of the leader's batches failed (a full disk, say). The
    /// fetcher retries every `replica.fetch.backoff.ms`; only the first failure and the
    /// recovery are logged as warnings.
    replica_append_failing: Cell<bool>,
}

impl Partition {
    fn new(log: PartitionLog, recovered: producer_state::Recovered) -> Self {
        Self {
            log,
            producers: RefCell::new(recovered.states),
            producer_snapshot_offset: Cell::new(recovered.snapshot_offset),
            role: RefCell::new(replica::Role::unknown()),
            replica_append_failing: Cell::new(false),
        }
    }

    /// Snapshots the producer state (at open, at each checkpoint, at close) when the log end
    /// moved since the last snapshot: an idle partition costs no write and no fsync.
    fn save_producer_state(&self) {
        if self.producer_snapshot_offset.get() == Some(self.log.log_end_offset()) {
            return;
        }
        match producer_state::save(&self.log, &self.producers.borrow()) {
            Ok(offset) => self.producer_snapshot_offset.set(Some(offset)),
            Err(error) => {
                warn!(dir = %self.log.dir().display(), "cannot write the producer state snapshot: {error}");
            }
        }
    }
}

/// One executor's broker state.
pub struct Shard {
    pub id: usize,
    pub settings: BrokerSettings,
    pub identity: BrokerIdentity,
    pub catalog: RefCell<Catalog>,
    /// Open partitions this shard owns, by topic name and partition index.
    partitions: RefCell<HashMap<String, Vec<Option<Rc<Partition>>>>>,
    pub mesh: Option<Mesh>,
    pub queues: Queues,
    /// The clock and random source this shard uses: the system's, or a test's.
    pub env: Env,
    /// Notified after every append on this shard: long-polling fetches wait on it.
    appended: Event,
    /// Serializes catalog changes (used on the controller, shard 0).
    admin: glommio::sync::Semaphore,
    /// Triggered when the broker stops: long polls end early so connections drain.
    pub stopping: Rc<ringlog_net::connection::Shutdown>,
    /// The consumer groups this shard coordinates.
    pub groups: groups::Coordinator,
    /// The producer id allocator (used on the controller, shard 0; loaded on first use).
    producer_ids: RefCell<Option<producer_ids::ProducerIdAllocator>>,
    /// Recently written batches of every partition this shard owns, for tail fetches.
    pub tail_cache: Rc<TailCache>,
    /// Wakes the cluster membership loop (shard 0, in a cluster) before its next heartbeat.
    pub member_wake: member::Wake,
    read_counts: Cell<ReadCounts>,
    replication_counts: RefCell<ReplicationCounts>,
    /// Replica fetchers running, by leader node ([`replica`]).
    fetchers: replica::Fetchers,
    /// Notified when a partition starts following a new leader: fetchers are (re)started.
    followers_changed: Event,
    /// The high-watermark checkpoint ([`replica::HighWatermarks`]).
    high_watermarks: replica::HighWatermarks,
    /// `__consumer_offsets` partitions this shard became the leader of, to load.
    offsets_to_load: RefCell<std::collections::BTreeSet<usize>>,
}

/// The shard that makes every catalog change and allocates producer ids.
pub const CONTROLLER: usize = 0;

/// A partition's place in a request: (topic index, partition index).
pub type Position = (usize, usize);

/// Where the answer for a partition comes from.
#[derive(Debug)]
pub enum Lookup {
    UnknownTopic,
    UnknownPartition,
    /// Another host of the cluster keeps the partition.
    Elsewhere,
    /// This broker keeps a follower replica; another node leads.
    Follower,
    Owner(usize),
}

/// What a shard is made of when its executor starts (see [`Shard::new`]).
pub struct ShardSetup {
    pub id: usize,
    pub settings: BrokerSettings,
    pub identity: BrokerIdentity,
    pub catalog: Catalog,
    pub mesh: Option<Mesh>,
    pub queues: Queues,
    pub env: Env,
    pub stopping: Rc<ringlog_net::connection::Shutdown>,
}

impl Shard {
    pub fn new(setup: ShardSetup) -> Self {
        Self {
            id: setup.id,
            identity: setup.identity,
            catalog: RefCell::new(setup.catalog),
            partitions: RefCell::new(HashMap::new()),
            mesh: setup.mesh,
            queues: setup.queues,
            env: setup.env,
            appended: Event::new(),
            admin: glommio::sync::Semaphore::new(1),
            stopping: setup.stopping,
            groups: groups::Coordinator::default(),
            producer_ids: RefCell::new(None),
            tail_cache: Rc::new(TailCache::new(setup.settings.fetch_cache_bytes)),
            member_wake: member::Wake::default(),
            read_counts: Cell::new(ReadCounts::default()),
            replication_counts: RefCell::default(),
            fetchers: replica::Fetchers::default(),
            followers_changed: Event::new(),
            high_watermarks: replica::HighWatermarks::default(),
            offsets_to_load: RefCell::default(),
            settings: setup.settings,
        }
    }

    /// Counts a fetch read by where its bytes came from.
    pub fn count_read(&self, source: ReadSource, bytes: usize) {
        let mut counts = self.read_counts.get();
        let slot = match source {
            ReadSource::Empty => return,
            ReadSource::TailCache => &mut counts.tail_cache,
            ReadSource::ReadAhead => &mut counts.read_ahead,
            ReadSource::Disk => &mut counts.disk,
        };
        slot.0 += 1;
        slot.1 += bytes as u64;
        self.read_counts.set(counts);
    }

    /// Counts record bytes served to a follower's fetch (`leader: None`) or appended from
    /// `leader` as a follower.
    pub fn count_replication(&self, leader: Option<i32>, bytes: usize) {
        let mut counts = self.replication_counts.borrow_mut();
        match leader {
            None => counts.served_bytes += bytes as u64,
            Some(leader) => *counts.fetched_bytes.entry(leader).or_default() += bytes as u64,
        }
    }

    pub fn replication_counts(&self) -> ReplicationCounts {
        self.replication_counts.borrow().clone()
    }

    pub fn read_counts(&self) -> ReadCounts {
        self.read_counts.get()
    }

    /// Logs what the fetch path did (at stop, for operators and benchmarks).
    pub fn log_fetch_stats(&self) {
        let reads = self.read_counts();
        let cache = self.tail_cache.stats();
        let sends = ringlog_net::send::stats();
        info!(
            shard = self.id,
            ?reads,
            ?cache,
            ?sends,
            "fetch path: reads by source (count, bytes), tail cache, sends"
        );
        let replication = self.replication_counts();
        if replication != ReplicationCounts::default() {
            info!(
                shard = self.id,
                served_bytes = replication.served_bytes,
                fetched_bytes = ?replication.fetched_bytes,
                "replication: record bytes served to followers, and appended from each leader node"
            );
        }
    }

    /// Which shard owns `topic`/`partition`, per this shard's copy of the catalog.
    pub fn lookup(&self, topic: &str, partition: i32) -> Lookup {
        match self.catalog.borrow().topics.get(topic) {
            None => Lookup::UnknownTopic,
            Some(entry) => match entry.partition(partition) {
                None => Lookup::UnknownPartition,
                Some(state) if !state.local => Lookup::Elsewhere,
                Some(state) if state.leader != self.settings.topology.node_of(state.shard) => {
                    Lookup::Follower
                }
                Some(state) => Lookup::Owner(state.shard),
            },
        }
    }

    /// Every broker node clients are told about: (node id, host, port). In a cluster, the
    /// live nodes of every host (from the metadata image); otherwise this broker's own.
    pub fn nodes(&self) -> Vec<(i32, String, u16)> {
        if let Some(brokers) = &self.catalog.borrow().brokers {
            return brokers.clone();
        }
        let host = &self.settings.topology.advertised_host;
        self.settings
            .topology
            .nodes()
            .into_iter()
            .map(|(node, port)| (node, host.clone(), port))
            .collect()
    }

    /// The controller id clients are told: in a cluster the active controller's broker node
    /// when it has one, otherwise this broker's first node (which forwards admin requests).
    pub fn controller_node(&self) -> i32 {
        self.catalog
            .borrow()
            .controller
            .unwrap_or_else(|| self.settings.topology.node_of(0))
    }

    /// An open partition owned here.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<Rc<Partition>> {
        let index = usize::try_from(partition).ok()?;
        self.partitions
            .borrow()
            .get(topic)
            .and_then(|partitions| partitions.get(index).cloned().flatten())
    }

    /// Runs `call` on shard `target`: directly when that is this shard, through the mesh
    /// otherwise.
    pub async fn call<C: Routed>(
        self: &Rc<Self>,
        target: usize,
        call: C,
    ) -> Result<C::Reply, MeshError> {
        if target == self.id {
            return Ok(call.run(Rc::clone(self)).await);
        }
        match &self.mesh {
            Some(mesh) => mesh.call(target, call).await,
            None => Err(MeshError::Unreachable(target)),
        }
    }

    /// The shard owning `topic`/`partition`, or the Kafka error for a partition this broker
    /// does not have.
    pub fn route(&self, topic: &str, partition: i32) -> Result<usize, ResponseError> {
        match self.lookup(topic, partition) {
            Lookup::Owner(owner) => Ok(owner),
            // Another node leads it: the client refreshes its metadata and goes there.
            Lookup::Elsewhere | Lookup::Follower => Err(ResponseError::NotLeaderOrFollower),
            Lookup::UnknownTopic | Lookup::UnknownPartition => {
                Err(ResponseError::UnknownTopicOrPartition)
            }
        }
    }

    fn log_config(&self, topic: &Topic) -> LogConfig {
        match topic_config::log_config(&self.settings.log_defaults, &topic.configs) {
            Ok(config) => config,
            Err(error) => {
                // Overrides were validated before they were stored; a hand-edited file can
                // still hold a bad one.
                warn!("ignoring the topic's overrides: {error}");
                self.settings.log_defaults.clone()
            }
        }
    }

    fn open_options(&self) -> OpenOptions {
        OpenOptions {
            background_queue: Some(self.queues.background),
            tail_cache: Some(Rc::clone(&self.tail_cache)),
            clock: Rc::clone(&self.env.clock),
            ..OpenOptions::default()
        }
    }

    /// Opens every partition of `name` this shard owns and has not opened yet, and applies
    /// the topic's config to those already open.
    async fn open_owned(&self, name: &str, topic: &Topic) {
        let config = self.log_config(topic);
        let min_insync = self.min_insync_replicas_of(Some(&topic.configs));
        for (index, state) in topic.partitions.iter().enumerate() {
            if state.shard != self.id || !state.local {
                continue;
            }
            let existing = self.partition(name, index as i32);
            if let Some(partition) = existing {
                partition.log.set_config(config.clone());
                let was_leading = partition.leading_epoch();
                self.update_role(&partition, state, min_insync);
                self.offsets_leadership(name, index, was_leading, &partition);
                continue;
            }
            let dir = catalog::partition_dir(&self.settings.data_dir, name, index);
            if let Err(source) = std::fs::create_dir_all(&dir) {
                error!(dir = %dir.display(), "cannot create partition directory: {source}");
                continue;
            }
            match PartitionLog::open_with(&dir, config.clone(), self.open_options()).await {
                Ok((log, report)) => {
                    let recovered = producer_state::recover(&log).await;
                    let partition = Partition::new(log, recovered);
                    partition.save_producer_state();
                    *partition.role.borrow_mut() = replica::Role::Follower {
                        leader: -1,
                        leader_epoch: -1,
                        high_watermark: self.checkpointed_high_watermark(name, index as i32),
                    };
                    self.update_role(&partition, state, min_insync);
                    self.offsets_leadership(name, index, None, &partition);
                    if let Some(corruption) = &report.corruption {
                        warn!(
                            topic = name,
                            partition = index,
                            ?corruption,
                            "recovered a damaged log tail"
                        );
                    }
                    let mut partitions = self.partitions.borrow_mut();
                    let slots = partitions.entry(name.to_owned()).or_default();
                    if slots.len() <= index {
                        slots.resize(index + 1, None);
                    }
                    slots[index] = Some(Rc::new(partition));
                }
                Err(source) => {
                    error!(
                        topic = name,
                        partition = index,
                        "cannot open partition: {source}"
                    );
                }
            }
        }
    }

    /// Opens every partition this shard owns, at start.
    pub async fn open_all(&self) {
        self.load_high_watermarks();
        let topics: Vec<(String, Topic)> = self
            .catalog
            .borrow()
            .topics
            .iter()
            .map(|(name, topic)| (name.clone(), topic.clone()))
            .collect();
        for (name, topic) in &topics {
            self.open_owned(name, topic).await;
        }
        let opened: usize = self
            .partitions
            .borrow()
            .values()
            .map(|slots| slots.iter().flatten().count())
            .sum();
        info!(shard = self.id, partitions = opened, "partitions open");
        self.load_led_offsets().await;
    }

    /// Notes a change of leadership of a `__consumer_offsets` partition: one this shard now
    /// leads is loaded ([`Shard::load_led_offsets`]) before its groups are served here; one it
    /// stopped leading has its groups forgotten.
    fn offsets_leadership(
        &self,
        name: &str,
        index: usize,
        was_leading: Option<i32>,
        partition: &Partition,
    ) {
        if name != groups::OFFSETS_TOPIC {
            return;
        }
        let leading = partition.leading_epoch();
        if leading.is_some() && leading != was_leading {
            self.offsets_to_load.borrow_mut().insert(index);
        } else if leading.is_none() && was_leading.is_some() {
            let partitions = self
                .catalog
                .borrow()
                .topics
                .get(name)
                .map_or(0, |topic| topic.partitions.len());
            groups::forget_partition(self, index, partitions);
        }
    }

    /// Loads the committed offsets of the offsets partitions this shard became the leader of.
    pub(crate) async fn load_led_offsets(&self) {
        let pending: Vec<usize> = std::mem::take(&mut *self.offsets_to_load.borrow_mut())
            .into_iter()
            .collect();
        if !pending.is_empty() {
            groups::load_offsets(self, &pending).await;
        }
    }

    /// Every open partition of this shard.
    pub(super) fn owned(&self) -> Vec<Rc<Partition>> {
        self.partitions
            .borrow()
            .values()
            .flat_map(|slots| slots.iter().flatten().cloned())
            .collect()
    }

    /// Background work for the shard's partitions, until the broker stops: flush.ms checks
    /// (every 100 ms), retention (every `log.retention.check.interval.ms`), recovery
    /// checkpoints (every minute).
    pub async fn maintain(self: Rc<Self>) {
        let stopping = Rc::clone(&self.stopping);
        const TICK: Duration = Duration::from_millis(100);
        const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
        // Kafka's replica.high.watermark.checkpoint.interval.ms.
        const HIGH_WATERMARK_INTERVAL: Duration = Duration::from_secs(5);
        let mut since_high_watermarks = Duration::ZERO;
        let mut since_retention = Duration::ZERO;
        let mut since_checkpoint = Duration::ZERO;
        let supervisor = Rc::clone(&self);
        glommio::spawn_local(async move { supervisor.supervise_fetchers().await }).detach();
        while !stopping.is_triggered() {
            self.env.clock.sleep(TICK).await;
            since_retention += TICK;
            since_checkpoint += TICK;
            groups::expire_sessions(&self);
            self.propose_isr_changes();
            since_high_watermarks += TICK;
            if since_high_watermarks >= HIGH_WATERMARK_INTERVAL {
                since_high_watermarks = Duration::ZERO;
                self.checkpoint_high_watermarks();
            }
            let partitions = self.owned();
            for partition in &partitions {
                partition.log.tick();
            }
            if since_retention >= self.settings.retention_check_interval {
                since_retention = Duration::ZERO;
                groups::clean_offsets(&self).await;
                for partition in &partitions {
                    match partition.log.enforce_retention().await {
                        Ok(deleted) if !deleted.is_empty() => info!(
                            dir = %partition.log.dir().display(),
                            segments = deleted.len(),
                            "retention deleted segments"
                        ),
                        Ok(_) => {}
                        Err(error) => {
                            warn!(dir = %partition.log.dir().display(), "retention failed: {error}")
                        }
                    }
                }
            }
            if since_checkpoint >= CHECKPOINT_INTERVAL {
                since_checkpoint = Duration::ZERO;
                for partition in &partitions {
                    if let Err(error) = partition.log.checkpoint().await {
                        warn!(dir = %partition.log.dir().display(), "checkpoint failed: {error}");
                    }
                    partition.save_producer_state();
                }
            }
        }
    }

    /// Closes every partition (flush, clean-shutdown marker), at stop.
    pub async fn close_all(&self) {
        self.final_high_watermarks();
        let partitions: Vec<Rc<Partition>> = self
            .partitions
            .borrow_mut()
            .drain()
            .flat_map(|(_, slots)| slots.into_iter().flatten())
            .collect();
        for partition in partitions {
            if let Err(error) = partition.log.close().await {
                error!(dir = %partition.log.dir().display(), "closing the log failed: {error}");
            }
            partition.save_producer_state();
        }
    }

    /// Takes a partition out of service and deletes its data (its topic was deleted).
    async fn remove_partition(&self, name: &str, index: usize) {
        let removed = self
            .partitions
            .borrow_mut()
            .get_mut(name)
            .and_then(|slots| slots.get_mut(index).and_then(Option::take));
        if let Some(partition) = removed {
            if let Err(error) = partition.log.close().await {
                warn!(
                    topic = name,
                    partition = index,
                    "closing a deleted partition: {error}"
                );
            }
        }
        let dir = catalog::partition_dir(&self.settings.data_dir, name, index);
        // Renamed first, so a crash mid-removal leaves a directory the next start deletes
        // instead of one that looks like a live partition of a re-created topic.
        let doomed = dir.with_extension(format!("{}-delete", std::process::id()));
        let target = match std::fs::rename(&dir, &doomed) {
            Ok(()) => doomed,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => dir,
        };
        if let Err(error) = std::fs::remove_dir_all(&target) {
            warn!(dir = %target.display(), "cannot delete a deleted partition's data: {error}");
        }
    }
}

/// Deletes the leftovers of topic deletions interrupted by a crash (`*-delete` directories).
pub fn remove_deleted_leftovers(data_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let doomed = path
            .extension()
            .and_then(|extension| extension.to_str())
            .is_some_and(|extension| extension.ends_with("-delete"));
        if doomed && path.is_dir() {
            if let Err(error) = std::fs::remove_dir_all(&path) {
                warn!(dir = %path.display(), "cannot delete a deleted partition's data: {error}");
            }
        }
    }
}

/// The `Broker` the wire protocol layer calls: a shard.
#[derive(Clone)]
pub struct ShardBroker(pub Rc<Shard>, pub ListenerKind);

/// Which of its shard's listeners a connection came in on: it decides what "this broker" means
/// for requests about the broker itself (ListGroups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// The shared (bootstrap) address, accepted on every shard: the whole broker.
    Shared,
    /// The shard's own port, with a node per shard: that shard's node alone.
    Node,
}

impl Broker for ShardBroker {
    fn identity(&self) -> &BrokerIdentity {
        &self.0.identity
    }

    async fn metadata(&self, request: MetadataRequest, version: i16) -> MetadataResponse {
        metadata::metadata(&self.0, request, version).await
    }

    async fn produce(
        &self,
        request: ProduceRequest,
        version: i16,
    ) -> ringlog_net::handlers::Later<Option<ProduceResponse>> {
        produce::produce(&self.0, request, version).await
    }

    async fn fetch(&self, request: FetchRequest, version: i16) -> FetchAnswer {
        fetch::fetch(&self.0, request, version).await
    }

    async fn list_offsets(&self, request: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
        offsets::list_offsets(&self.0, request, version).await
    }

    async fn offset_for_leader_epoch(
        &self,
        request: OffsetForLeaderEpochRequest,
        version: i16,
    ) -> OffsetForLeaderEpochResponse {
        offsets::offset_for_leader_epoch(&self.0, request, version).await
    }

    async fn create_topics(
        &self,
        request: CreateTopicsRequest,
        version: i16,
    ) -> CreateTopicsResponse {
        admin::create_topics(&self.0, request, version).await
    }

    async fn delete_topics(
        &self,
        request: DeleteTopicsRequest,
        version: i16,
    ) -> DeleteTopicsResponse {
        admin::delete_topics(&self.0, request, version).await
    }

    async fn create_partitions(
        &self,
        request: CreatePartitionsRequest,
        version: i16,
    ) -> CreatePartitionsResponse {
        admin::create_partitions(&self.0, request, version).await
    }

    async fn describe_configs(
        &self,
        request: DescribeConfigsRequest,
        version: i16,
    ) -> DescribeConfigsResponse {
        admin::describe_configs(&self.0, request, version)
    }

    async fn alter_configs(
        &self,
        request: AlterConfigsRequest,
        version: i16,
    ) -> AlterConfigsResponse {
        admin::alter_configs(&self.0, request, version).await
    }

    async fn incremental_alter_configs(
        &self,
        request: IncrementalAlterConfigsRequest,
        version: i16,
    ) -> IncrementalAlterConfigsResponse {
        admin::incremental_alter_configs(&self.0, request, version).await
    }

    async fn describe_cluster(
        &self,
        request: DescribeClusterRequest,
        version: i16,
    ) -> DescribeClusterResponse {
        metadata::describe_cluster(&self.0, request, version)
    }

    async fn elect_leaders(
        &self,
        request: kafka_protocol::messages::ElectLeadersRequest,
        version: i16,
    ) -> kafka_protocol::messages::ElectLeadersResponse {
        admin::elect_leaders(&self.0, request, version).await
    }

    async fn describe_quorum(
        &self,
        request: kafka_protocol::messages::DescribeQuorumRequest,
        version: i16,
    ) -> kafka_protocol::messages::DescribeQuorumResponse {
        admin::describe_quorum(&self.0, request, version).await
    }

    async fn describe_topic_partitions(
        &self,
        request: kafka_protocol::messages::DescribeTopicPartitionsRequest,
        version: i16,
    ) -> kafka_protocol::messages::DescribeTopicPartitionsResponse {
        metadata::describe_topic_partitions(&self.0, request, version)
    }

    async fn find_coordinator(
        &self,
        request: FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        groups::find_coordinator(&self.0, request, version)
    }

    async fn join_group(
        &self,
        request: JoinGroupRequest,
        version: i16,
        client: ClientInfo,
    ) -> JoinGroupResponse {
        groups::join_group(&self.0, request, version, client).await
    }

    async fn sync_group(&self, request: SyncGroupRequest, version: i16) -> SyncGroupResponse {
        groups::sync_group(&self.0, request, version).await
    }

    async fn heartbeat(&self, request: HeartbeatRequest, version: i16) -> HeartbeatResponse {
        groups::heartbeat(&self.0, request, version).await
    }

    async fn leave_group(&self, request: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        groups::leave_group(&self.0, request, version).await
    }

    async fn offset_commit(
        &self,
        request: OffsetCommitRequest,
        version: i16,
    ) -> OffsetCommitResponse {
        groups::offset_commit(&self.0, request, version).await
    }

    async fn offset_fetch(&self, request: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
        groups::offset_fetch(&self.0, request, version).await
    }

    async fn list_groups(&self, request: ListGroupsRequest, version: i16) -> ListGroupsResponse {
        groups::list_groups(&self.0, request, version, self.1).await
    }

    async fn delete_groups(
        &self,
        request: DeleteGroupsRequest,
        version: i16,
    ) -> DeleteGroupsResponse {
        groups::delete_groups(&self.0, request, version).await
    }

    async fn offset_delete(
        &self,
        request: OffsetDeleteRequest,
        version: i16,
    ) -> OffsetDeleteResponse {
        groups::offset_delete(&self.0, request, version).await
    }

    async fn describe_groups(
        &self,
        request: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        groups::describe_groups(&self.0, request, version).await
    }

    async fn init_producer_id(
        &self,
        request: InitProducerIdRequest,
        version: i16,
    ) -> InitProducerIdResponse {
        producer_ids::init_producer_id(&self.0, request, version).await
    }

    async fn consumer_group_heartbeat(
        &self,
        request: ConsumerGroupHeartbeatRequest,
        version: i16,
        client: ClientInfo,
    ) -> ConsumerGroupHeartbeatResponse {
        groups::consumer_group_heartbeat(&self.0, request, version, client).await
    }

    async fn consumer_group_describe(
        &self,
        request: ConsumerGroupDescribeRequest,
        version: i16,
    ) -> ConsumerGroupDescribeResponse {
        groups::consumer_group_describe(&self.0, request, version).await
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use bytes::Bytes;
    use ringlog_engine::batch::BatchBuilder;

    use super::*;

    async fn open(dir: &Path) -> Partition {
        let (log, _) = PartitionLog::open(dir, LogConfig::default())
            .await
            .expect("open");
        let recovered = producer_state::recover(&log).await;
        Partition::new(log, recovered)
    }

    fn written_at(dir: &Path) -> Option<i64> {
        let text = std::fs::read(dir.join(producer_state::SNAPSHOT_FILE)).ok()?;
        let snapshot: serde_json::Value = serde_json::from_slice(&text).expect("json");
        snapshot["offset"].as_i64()
    }

    #[test]
    fn producer_state_is_written_only_when_the_log_end_moved() {
        // On the target's filesystem: O_DIRECT needs ext4 or xfs, not tmpfs.
        let exe = std::env::current_exe().expect("test binary");
        let root = exe.parent().expect("target dir");
        let temp = tempfile::tempdir_in(root).expect("temp dir");
        let dir = temp.path().to_owned();
        let snapshot = dir.join(producer_state::SNAPSHOT_FILE);
        glommio::LocalExecutorBuilder::default()
            .io_memory(2 << 20)
            .spawn(move || async move {
                // A new, empty log: no snapshot is the same as an empty one at its start.
                let partition = open(&dir).await;
                partition.save_producer_state();
                assert_eq!(written_at(&dir), None);
                let batch = BatchBuilder::new(0).record(0, None, Some(b"v")).build();
                partition
                    .log
                    .append(Bytes::from(batch))
                    .await
                    .expect("append");
                partition.save_producer_state();
                assert_eq!(written_at(&dir), Some(1));
                // Nothing new since: the file is not written again.
                std::fs::remove_file(&snapshot).expect("remove");
                partition.save_producer_state();
                assert_eq!(written_at(&dir), None);
                partition.log.close().await.expect("close");

                // Reopened without a snapshot: one is written at open.
                let partition = open(&dir).await;
                partition.save_producer_state();
                assert_eq!(written_at(&dir), Some(1));
                partition.log.close().await.expect("close");

                // Reopened with a snapshot at the log end: nothing to write.
                let partition = open(&dir).await;
                std::fs::remove_file(&snapshot).expect("remove");
                partition.save_producer_state();
                assert_eq!(written_at(&dir), None);
                partition.log.close().await.expect("close");

                // A snapshot ahead of the log (its tail lost in a crash) is replaced at open,
                // before the log can grow past it and make it look valid.
                std::fs::write(&snapshot, br#"{"version":1,"offset":100,"producers":[]}"#)
                    .expect("write");
                let partition = open(&dir).await;
                partition.save_producer_state();
                assert_eq!(written_at(&dir), Some(1));
                partition.log.close().await.expect("close");
            })
            .expect("executor starts")
            .join()
            .expect("executor finishes");
    }
}
