//! Replicated partitions on a shard: each partition this shard keeps is either led here (its
//! [`LeaderState`] tracks the followers, the high watermark and the ISR it proposes) or
//! followed (a fetcher copies the leader's batches, offsets and epochs included).
//!
//! The decisions are `ringlog_replication`'s state machines; this module moves bytes for them.
//! Follower fetches travel core to core: the follower of a partition is on the same core index
//! as its leader, its fetcher connects to the leader node's own port (accepted on that core),
//! and one fetcher per (core, leader node) carries every partition the pair shares, long-polling
//! as a consumer does, with Kafka's Fetch (v12: replica id, current leader epoch, last fetched
//! epoch; the answer's diverging epoch). Where the leader answers v15 (asked by ApiVersions
//! on each new connection) the fetcher names topics by id and itself by ReplicaState: its node
//! id and the broker epoch of this process's registration, so the leader does not count a
//! fetch that this host's previous process left queued (KIP-903).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::ReplicaState;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, FetchRequest, FetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use ringlog_cluster::{AlterPartition, Command, NodeId};
use ringlog_net::client::connection::Connection;
use ringlog_net::client::error::ClientError;
use ringlog_net::client::wire::{ApiVersions, API_VERSIONS_VERSION};
use ringlog_replication::{Diverging, LeaderStart, LeaderState, NotEnoughReplicas};
use tracing::{debug, info, warn};

use super::catalog::PartitionState;
use super::{producer_state, Partition, Shard};

/// Kafka's `replica.lag.time.max.ms` default.
pub const REPLICA_LAG_TIME_MAX: Duration = Duration::from_secs(30);
/// A follower's long poll (Kafka's `replica.fetch.wait.max.ms`).
const FOLLOWER_MAX_WAIT: Duration = Duration::from_millis(500);
/// Bytes one follower fetch asks per partition (`replica.fetch.max.bytes`) and in all
/// (`replica.fetch.response.max.bytes`).
const FOLLOWER_PARTITION_MAX_BYTES: i32 = 1 << 20;
const FOLLOWER_RESPONSE_MAX_BYTES: i32 = 10 << 20;
/// How long a follower waits for a fetch answer: the long poll and a margin.
const FOLLOWER_REQUEST_TIMEOUT: Duration = Duration::from_millis(3_000);
/// Pause after a failed connection or fetch before the next try (`replica.fetch.backoff.ms`).
const FETCH_BACKOFF: Duration = Duration::from_millis(100);
/// The Fetch versions followers speak: v12 has the last fetched epoch and the diverging epoch
/// (KIP-595's form of KIP-279) they need; v13 names topics by id, v15 adds ReplicaState (the
/// follower's broker epoch). The highest the leader answers is used.
const FOLLOWER_FETCH_VERSIONS: std::ops::RangeInclusive<i16> = 12..=15;

/// What this replica of a partition is.
#[derive(Debug)]
pub enum Role {
    /// Led here: the followers' progress and the high watermark.
    Leader(LeaderState),
    /// Followed from `leader` (-1: no leader now) in `leader_epoch`; the high watermark as the
    /// leader last reported it.
    Follower {
        leader: i32,
        leader_epoch: i32,
        high_watermark: i64,
    },
}

impl Role {
    /// Before the catalog has said anything: follows no one, knows nothing committed.
    pub fn unknown() -> Self {
        Self::Follower {
            leader: -1,
            leader_epoch: -1,
            high_watermark: 0,
        }
    }
}

impl Partition {
    /// The high watermark: consumers read below it. A leader first counts its own appends
    /// completed since it last looked (with no followers in sync, that is the log end).
    pub fn high_watermark(&self) -> i64 {
        let log_end = self.log.log_end_offset();
        match &mut *self.role.borrow_mut() {
            Role::Leader(leader) => {
                leader.leader_appended(log_end);
                leader.high_watermark()
            }
            Role::Follower { high_watermark, .. } => (*high_watermark).min(log_end),
        }
    }

    /// The leader epoch, when this replica leads.
    pub fn leading_epoch(&self) -> Option<i32> {
        match &*self.role.borrow() {
            Role::Leader(leader) => Some(leader.leader_epoch()),
            Role::Follower { .. } => None,
        }
    }

    /// The leader epoch as this replica knows it, led here or not.
    pub fn known_epoch(&self) -> i32 {
        match &*self.role.borrow() {
            Role::Leader(leader) => leader.leader_epoch(),
            Role::Follower { leader_epoch, .. } => *leader_epoch,
        }
    }

    /// A follower's fetch reached this leader (see [`LeaderState::follower_fetched`]);
    /// returns whether the high watermark moved. `broker_epoch`: the epoch of the follower's
    /// process as its fetch names it (Fetch v15's ReplicaState), `None` when it does not.
    pub fn follower_fetched(
        &self,
        replica: i32,
        fetch_offset: i64,
        now_ms: i64,
        request_ms: i64,
        broker_epoch: Option<u64>,
    ) -> Result<bool, ringlog_replication::FollowerRefusal> {
        let log_end = self.log.log_end_offset();
        match &mut *self.role.borrow_mut() {
            Role::Leader(leader) => {
                leader.leader_appended(log_end);
                // The leader also learns each follower's broker epoch from the metadata
                // (`Shard::followers_registered`) and forgets an earlier process's state when
                // its host registers again. A fetch naming an older epoch than that comes from
                // a dead process and is not counted; one naming none (Fetch v12, or a follower
                // that does not know its epoch yet) counts only if it arrived (`request_ms`)
                // after the leader last forgot that follower.
                leader.follower_fetched(replica, fetch_offset, now_ms, request_ms, broker_epoch)
            }
            Role::Follower { .. } => {
                Err(ringlog_replication::FollowerRefusal::NotAReplica(replica))
            }
        }
    }

    /// Whether an acks=all write may be accepted under `min.insync.replicas` (`required`):
    /// the committed ISR's size, by the leader's own rule. A replica that does not lead has
    /// no ISR to count.
    pub fn check_min_insync(&self, required: usize) -> Result<(), NotEnoughReplicas> {
        match &*self.role.borrow() {
            Role::Leader(leader) => leader.check_min_insync(required),
            Role::Follower { .. } => Err(NotEnoughReplicas {
                in_sync: 0,
                required,
            }),
        }
    }
}

/// KIP-320's check of a client's current leader epoch (-1: unchecked) against the leader's:
/// an older one missed a leader change, a newer one knows of a change this broker has not
/// applied yet.
pub fn check_current_epoch(current: i32, leader_epoch: i32) -> Result<(), ResponseError> {
    if current >= 0 && current < leader_epoch {
        return Err(ResponseError::FencedLeaderEpoch);
    }
    if current > leader_epoch {
        return Err(ResponseError::UnknownLeaderEpoch);
    }
    Ok(())
}

/// Why an acks=all write did not commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCommitted {
    /// Leadership moved while it waited: the client retries on the new leader.
    NotLeader,
    TimedOut,
    /// The high watermark reached it, but the ISR is now smaller than `min.insync.replicas`.
    NotEnoughReplicasAfterAppend,
}

impl NotCommitted {
    pub fn code(self) -> ResponseError {
        match self {
            Self::NotLeader => ResponseError::NotLeaderOrFollower,
            Self::TimedOut => ResponseError::RequestTimedOut,
            Self::NotEnoughReplicasAfterAppend => ResponseError::NotEnoughReplicasAfterAppend,
        }
    }
}

impl Shard {
    /// The node id of this shard.
    pub fn node(&self) -> i32 {
        self.settings.topology.node_of(self.id)
    }

    /// `min.insync.replicas` of a topic (its override, else the broker's default).
    pub fn min_insync_replicas(&self, topic: &str) -> usize {
        let catalog = self.catalog.borrow();
        let configs = catalog.topics.get(topic).map(|topic| &topic.configs);
        self.min_insync_replicas_of(configs)
    }

    /// `min.insync.replicas` of a topic with these configs (`None`: unknown topic).
    pub(super) fn min_insync_replicas_of(
        &self,
        configs: Option<&std::collections::BTreeMap<String, String>>,
    ) -> usize {
        configs
            .and_then(|configs| configs.get("min.insync.replicas"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(self.settings.min_insync_replicas)
    }

    /// Makes `partition`'s role what the catalog says: leader of its epoch here, or follower
    /// of the leader elsewhere (with a fetcher for that leader running). `min_insync`: the
    /// topic's `min.insync.replicas`, below which a leader's high watermark stays (KIP-966; the
    /// controller keeps the ELR by the same number).
    /// The metadata named new broker epochs: every partition this shard leads forgets what a
    /// follower's earlier process reported once that follower's host registered again
    /// (KIP-903: it may have come back with an emptied disk).
    pub(super) fn followers_registered(&self) {
        let now = self.env.clock.now_ms();
        let epochs = self.catalog.borrow().broker_epochs.clone();
        for partition in self.owned() {
            if let Role::Leader(leader) = &mut *partition.role.borrow_mut() {
                registered(leader, &epochs, now);
            }
        }
    }

    pub(super) fn update_role(
        &self,
        partition: &Partition,
        state: &PartitionState,
        min_insync: usize,
    ) {
        let me = self.node();
        let now = self.env.clock.now_ms();
        let high_watermark = partition.high_watermark();
        {
            let mut role = partition.role.borrow_mut();
            if state.leader == me {
                if let Role::Leader(leader) = &mut *role {
                    if leader.leader_epoch() == state.leader_epoch {
                        leader.committed(state.partition_epoch, &state.replicas, &state.isr, now);
                        leader.set_min_insync_replicas(min_insync);
                        drop(role);
                        self.appended.notify(usize::MAX);
                        return;
                    }
                }
                if let Err(error) = partition.log.set_leader_epoch(state.leader_epoch) {
                    warn!(dir = %partition.log.dir().display(), "cannot record the leader epoch: {error}");
                }
                let lag = i64::try_from(self.settings.replica_lag_time_max.as_millis())
                    .unwrap_or(i64::MAX);
                *role = Role::Leader(LeaderState::new(LeaderStart {
                    leader: me,
                    leader_epoch: state.leader_epoch,
                    partition_epoch: state.partition_epoch,
                    replicas: &state.replicas,
                    isr: &state.isr,
                    log_end_offset: partition.log.log_end_offset(),
                    high_watermark,
                    lag_time_max_ms: lag,
                    min_insync_replicas: min_insync,
                    now_ms: now,
                }));
                if let Role::Leader(leader) = &mut *role {
                    registered(leader, &self.catalog.borrow().broker_epochs, now);
                }
                if state.replicas.len() > 1 {
                    info!(
                        dir = %partition.log.dir().display(),
                        leader_epoch = state.leader_epoch,
                        log_end_offset = partition.log.log_end_offset(),
                        high_watermark,
                        "leading"
                    );
                }
            } else {
                let same = matches!(&*role, Role::Follower { leader, leader_epoch, .. }
                    if *leader == state.leader && *leader_epoch == state.leader_epoch);
                if !same {
                    debug!(dir = %partition.log.dir().display(), leader = state.leader, leader_epoch = state.leader_epoch, "following");
                }
                *role = Role::Follower {
                    leader: state.leader,
                    leader_epoch: state.leader_epoch,
                    high_watermark,
                };
                if !same {
                    self.followers_changed.notify(usize::MAX);
                }
            }
        }
        // Waiting acks=all writes and long polls look again.
        self.appended.notify(usize::MAX);
    }

    /// Keeps a fetcher running for every leader node this shard follows partitions of, until
    /// the broker stops.
    pub(super) async fn supervise_fetchers(self: Rc<Self>) {
        const RECHECK: Duration = Duration::from_secs(1);
        while !self.stopping.is_triggered() {
            let listener = self.followers_changed.listen();
            self.start_fetchers();
            futures_lite::future::or(
                futures_lite::future::or(listener, self.env.clock.sleep(RECHECK)),
                self.stopping.wait(),
            )
            .await;
        }
    }

    /// Starts the fetchers this shard's followed partitions need (one per leader node).
    fn start_fetchers(self: &Rc<Self>) {
        let me = self.node();
        let mut leaders: Vec<i32> = Vec::new();
        for topic in self.catalog.borrow().topics.values() {
            for state in &topic.partitions {
                if state.local
                    && state.shard == self.id
                    && state.leader >= 0
                    && state.leader != me
                    && !leaders.contains(&state.leader)
                {
                    leaders.push(state.leader);
                }
            }
        }
        for leader in leaders {
            if self.fetchers.borrow_mut().insert(leader) {
                let shard = Rc::clone(self);
                glommio::spawn_local_into(
                    async move {
                        run_fetcher(&shard, leader).await;
                        shard.fetchers.borrow_mut().remove(&leader);
                    },
                    self.queues.requests,
                )
                .map(|task| {
                    task.detach();
                })
                .unwrap_or_else(|error| {
                    warn!("cannot start a replica fetcher: {error}");
                    self.fetchers.borrow_mut().remove(&leader);
                });
            }
        }
    }

    /// Asks the controller for the ISR changes this shard's leaders want (from the
    /// maintenance tick). Each proposal is sent once; the answer comes back as a catalog
    /// change ([`Shard::update_role`]) or, refused, lets the leader decide again.
    pub(super) fn propose_isr_changes(self: &Rc<Self>) {
        if self.settings.cluster.is_none() {
            return;
        }
        let now = self.env.clock.now_ms();
        let mut proposals = Vec::new();
        for (name, slots) in self.partitions.borrow().iter() {
            for (index, partition) in slots.iter().enumerate() {
                let Some(partition) = partition else { continue };
                let mut role = partition.role.borrow_mut();
                let Role::Leader(leader) = &mut *role else {
                    continue;
                };
                if let Some(isr) = leader.isr_proposal(now) {
                    proposals.push((
                        Rc::clone(partition),
                        AlterPartition {
                            topic: name.clone(),
                            partition: index as u32,
                            leader: NodeId(leader.leader()),
                            leader_epoch: leader.leader_epoch(),
                            partition_epoch: leader.partition_epoch(),
                            isr: isr.into_iter().map(NodeId).collect(),
                            // The broker epoch of the process whose fetches each proposed
                            // follower was judged on (from the metadata and its Fetch v15
                            // ReplicaState); a follower whose epoch is unknown is left out, and
                            // the controller then checks only that it is live.
                            broker_epochs: leader
                                .proposal_broker_epochs()
                                .into_iter()
                                .map(|(replica, epoch)| (NodeId(replica), epoch))
                                .collect(),
                        },
                    ));
                }
            }
        }
        for (partition, request) in proposals {
            let shard = Rc::clone(self);
            glommio::spawn_local_into(
                async move { send_isr_change(&shard, &partition, request).await },
                self.queues.background,
            )
            .map(|task| {
                task.detach();
            })
            .unwrap_or_else(|error| warn!("cannot send an ISR change: {error}"));
        }
    }
}

/// Sends one ISR proposal until the controller answers it. Only a refusal that proves the
/// change was not applied (an ineligible replica, a malformed request) lets the leader decide
/// again; after a timeout or a lost answer the same proposal may have committed, so it keeps
/// counting toward the high watermark and is sent again (as Kafka's AlterPartition manager
/// retries) until the metadata shows a newer partition epoch.
async fn send_isr_change(shard: &Shard, partition: &Partition, request: AlterPartition) {
    const RETRY: Duration = Duration::from_millis(500);
    info!(topic = %request.topic, partition = request.partition, isr = ?request.isr, "proposing an ISR change");
    loop {
        let result =
            super::admin::cluster::forward(shard, Command::AlterPartition(request.clone())).await;
        let still_in_flight = || match &*partition.role.borrow() {
            Role::Leader(leader) => {
                leader.leader_epoch() == request.leader_epoch
                    && leader.partition_epoch() == request.partition_epoch
                    && leader.proposal().is_some()
            }
            Role::Follower { .. } => false,
        };
        match result {
            Ok(_) => return,
            Err(error)
                if matches!(
                    error.code,
                    ResponseError::IneligibleReplica | ResponseError::InvalidRequest
                ) =>
            {
                warn!("ISR change refused: {}", error.message);
                if still_in_flight() {
                    if let Role::Leader(leader) = &mut *partition.role.borrow_mut() {
                        leader.proposal_failed();
                    }
                }
                return;
            }
            Err(error) => {
                debug!(
                    "ISR change not confirmed ({}), sending it again",
                    error.message
                );
                shard.env.clock.sleep(RETRY).await;
                if !still_in_flight() || shard.stopping.is_triggered() {
                    return;
                }
            }
        }
    }
}

/// Waits until the high watermark reaches `end_offset` (an acks=all write ending there is
/// committed) while this replica leads in `leader_epoch`, or `timeout`.
pub async fn wait_committed(
    shard: &Shard,
    topic: &str,
    partition: &Partition,
    leader_epoch: i32,
    end_offset: i64,
    timeout: Duration,
) -> Result<(), NotCommitted> {
    let deadline = shard.env.clock.now() + timeout;
    loop {
        let listener = shard.appended.listen();
        if partition.leading_epoch() != Some(leader_epoch) {
            return Err(NotCommitted::NotLeader);
        }
        if partition.high_watermark() >= end_offset {
            return partition
                .check_min_insync(shard.min_insync_replicas(topic))
                .map_err(|_| NotCommitted::NotEnoughReplicasAfterAppend);
        }
        let now = shard.env.clock.now();
        if now >= deadline || shard.stopping.is_triggered() {
            return Err(NotCommitted::TimedOut);
        }
        futures_lite::future::or(listener, shard.env.clock.sleep(deadline - now)).await;
    }
}

/// How a replica fetch ended.
enum Fetched {
    Answer(Result<FetchResponse, ringlog_net::client::error::ClientError>),
    TimedOut,
    /// Leadership moved or the broker stops.
    Abandoned,
}

/// One partition a fetcher carries, as it was when the request went out.
struct Followed {
    topic: String,
    /// The topic's id in this host's catalog (Fetch v13 and up name topics by id).
    topic_id: uuid::Uuid,
    index: i32,
    partition: Rc<Partition>,
    leader_epoch: i32,
    fetch_offset: i64,
}

/// Copies the partitions `leader` leads and this shard follows, until there are none.
async fn run_fetcher(shard: &Rc<Shard>, leader: i32) {
    // The connection and the Fetch version its leader answers.
    let mut connection: Option<(Connection, i16)> = None;
    let client_id = format!("ringlog-replica-{}", shard.node());
    while !shard.stopping.is_triggered() {
        let followed = followed_from(shard, leader);
        if followed.is_empty() {
            return;
        }
        if connection.is_none() {
            let Some(address) = shard
                .nodes()
                .into_iter()
                .find(|(node, _, _)| *node == leader)
                .map(|(_, host, port)| format!("{host}:{port}"))
            else {
                // The leader's host is not live in our view yet (or any more).
                shard.env.clock.sleep(FETCH_BACKOFF).await;
                continue;
            };
            match connect(&address, &client_id).await {
                Ok((opened, version)) => {
                    debug!(leader, %address, fetch_version = version, "replica fetcher connected");
                    connection = Some((opened, version));
                }
                Err(error) => {
                    debug!(leader, %address, "replica fetcher cannot connect: {error}");
                    shard.env.clock.sleep(FETCH_BACKOFF).await;
                    continue;
                }
            }
        }
        let Some((open, version)) = connection.as_mut() else {
            continue;
        };
        let version = *version;
        let request = fetch_request(shard.node(), own_broker_epoch(shard), version, &followed);
        // The answer comes within the long poll; a leader that does not answer by then is
        // paused or cut off. A partition changing leader abandons the request (and the
        // connection, whose answer would come late) so the new leader is fetched from at once.
        let changed = shard.followers_changed.listen();
        let answer = futures_lite::future::or(
            async { Fetched::Answer(open.call(&request, version).await) },
            async {
                futures_lite::future::or(
                    async {
                        shard.env.clock.sleep(FOLLOWER_REQUEST_TIMEOUT).await;
                        Fetched::TimedOut
                    },
                    async {
                        futures_lite::future::or(shard.stopping.wait(), changed).await;
                        Fetched::Abandoned
                    },
                )
                .await
            },
        )
        .await;
        let response = match answer {
            Fetched::Answer(Ok(response)) => response,
            Fetched::Answer(Err(error)) => {
                debug!(leader, "replica fetch failed: {error}");
                connection = None;
                shard.env.clock.sleep(FETCH_BACKOFF).await;
                continue;
            }
            Fetched::TimedOut => {
                debug!(leader, "the leader did not answer a replica fetch in time");
                connection = None;
                continue;
            }
            Fetched::Abandoned => {
                connection = None;
                continue;
            }
        };
        if !apply_response(shard, &followed, response, version).await {
            shard.env.clock.sleep(FETCH_BACKOFF).await;
        }
    }
}

/// Connects to a leader and asks which Fetch version to speak: the highest of
/// [`FOLLOWER_FETCH_VERSIONS`] it answers (a leader of an older build answers v12 at most).
async fn connect(address: &str, client_id: &str) -> Result<(Connection, i16), ClientError> {
    let mut connection = Connection::connect(address, client_id).await?;
    let response = connection
        .call(&ApiVersionsRequest::default(), API_VERSIONS_VERSION)
        .await?;
    let version = ApiVersions::from_response(&response, address)?.pick_key(
        ApiKey::Fetch as i16,
        "FetchRequest",
        FOLLOWER_FETCH_VERSIONS,
    )?;
    Ok((connection, version))
}

/// The broker epoch of this host's registration as this shard's metadata names it, -1 while
/// unknown (a one-host broker, or before the metadata showed the registration). It may name
/// the previous process's epoch for a moment after a restart; a leader that knows the new one
/// then ignores these fetches until the metadata here catches up, which errs the safe way.
fn own_broker_epoch(shard: &Shard) -> i64 {
    shard
        .catalog
        .borrow()
        .broker_epochs
        .get(&shard.node())
        .and_then(|&epoch| i64::try_from(epoch).ok())
        .unwrap_or(-1)
}

/// The partitions this shard follows from `leader` now, with where to fetch each from.
fn followed_from(shard: &Shard, leader: i32) -> Vec<Followed> {
    let me = shard.node();
    let mut followed = Vec::new();
    for (name, topic) in &shard.catalog.borrow().topics {
        for (index, state) in topic.partitions.iter().enumerate() {
            if !state.local || state.shard != shard.id || state.leader != leader || leader == me {
                continue;
            }
            let Some(partition) = shard.partition(name, index as i32) else {
                continue;
            };
            let fetch_offset = partition.log.log_end_offset();
            followed.push(Followed {
                topic: name.clone(),
                topic_id: topic.uuid(),
                index: index as i32,
                partition,
                leader_epoch: state.leader_epoch,
                fetch_offset,
            });
        }
    }
    followed
}

/// A follower's fetch of `followed` at `version`: from v13 topics go by id, and from v15
/// `replica` and its `broker_epoch` (-1: unknown) go in ReplicaState instead of the replica id.
fn fetch_request(
    replica: i32,
    broker_epoch: i64,
    version: i16,
    followed: &[Followed],
) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for part in followed {
        let wanted = FetchPartition::default()
            .with_partition(part.index)
            .with_current_leader_epoch(part.leader_epoch)
            .with_fetch_offset(part.fetch_offset)
            .with_last_fetched_epoch(part.partition.log.latest_epoch().unwrap_or(-1))
            .with_log_start_offset(part.partition.log.log_start_offset())
            .with_partition_max_bytes(FOLLOWER_PARTITION_MAX_BYTES);
        match topics.iter_mut().find(|t| t.topic.0.as_str() == part.topic) {
            Some(topic) => topic.partitions.push(wanted),
            None => {
                let mut topic = FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(part.topic.clone())))
                    .with_partitions(vec![wanted]);
                if version >= 13 {
                    topic = topic.with_topic_id(part.topic_id);
                }
                topics.push(topic);
            }
        }
    }
    let request = if version >= 15 {
        FetchRequest::default().with_replica_state(
            ReplicaState::default()
                .with_replica_id(BrokerId(replica))
                .with_replica_epoch(broker_epoch),
        )
    } else {
        FetchRequest::default().with_replica_id(BrokerId(replica))
    };
    request
        .with_max_wait_ms(FOLLOWER_MAX_WAIT.as_millis() as i32)
        .with_min_bytes(1)
        .with_max_bytes(FOLLOWER_RESPONSE_MAX_BYTES)
        .with_topics(topics)
}

/// Applies a leader's answer to a request of `version`: appends, truncates, learns the high
/// watermark. Returns false when a partition failed (the fetcher backs off before the next
/// round).
async fn apply_response(
    shard: &Shard,
    followed: &[Followed],
    response: FetchResponse,
    version: i16,
) -> bool {
    let mut healthy = response.error_code == 0;
    for topic in response.responses {
        // The answer names topics as the request did: by id from v13.
        let same_topic = |part: &Followed| {
            if version >= 13 {
                part.topic_id == topic.topic_id
            } else {
                part.topic == topic.topic.0.as_str()
            }
        };
        for data in topic.partitions {
            let Some(part) = followed
                .iter()
                .find(|p| same_topic(p) && p.index == data.partition_index)
            else {
                continue;
            };
            // The catalog may have moved on while the request was out: a partition that is
            // no longer followed from this leader in this epoch takes nothing from the answer.
            let current = matches!(&*part.partition.role.borrow(),
                Role::Follower { leader_epoch, .. } if *leader_epoch == part.leader_epoch);
            if !current {
                continue;
            }
            if data.error_code != 0 {
                healthy = false;
                let error = ResponseError::try_from_code(data.error_code);
                debug!(topic = %part.topic, partition = part.index, ?error, "replica fetch error");
                if error == Some(ResponseError::OffsetOutOfRange) {
                    out_of_range(part, data.log_start_offset, data.high_watermark).await;
                }
                continue;
            }
            if data.diverging_epoch.epoch >= 0 || data.diverging_epoch.end_offset >= 0 {
                let diverging = Diverging {
                    epoch: data.diverging_epoch.epoch,
                    end_offset: data.diverging_epoch.end_offset,
                };
                truncate_diverging(part, diverging).await;
                continue;
            }
            if let Some(records) = data.records.filter(|r| !r.is_empty()) {
                let bytes = records.len();
                if !append(shard, part, records).await {
                    healthy = false;
                    continue;
                }
                tracing::trace!(topic = %part.topic, partition = part.index, bytes, log_end_offset = part.partition.log.log_end_offset(), leader_hw = data.high_watermark, "replicated");
            }
            if let Role::Follower { high_watermark, .. } = &mut *part.partition.role.borrow_mut() {
                let log_end = part.partition.log.log_end_offset();
                *high_watermark = (*high_watermark).max(data.high_watermark.min(log_end));
            }
        }
    }
    healthy
}

/// Appends a leader's batches as they are, and replays them into the idempotent producers'
/// state so deduplication survives a failover.
async fn append(shard: &Shard, part: &Followed, records: Bytes) -> bool {
    let log = &part.partition.log;
    if log.log_end_offset() != part.fetch_offset {
        // Something else moved the log since the request went out; fetch again.
        return true;
    }
    let headers = match batch_headers(&records) {
        Ok(headers) => headers,
        Err(error) => {
            warn!(topic = %part.topic, partition = part.index, "leader sent damaged batches: {error}");
            return false;
        }
    };
    let bytes = records.len();
    match log.append_replica(records).await {
        Ok(_) => {
            if let Role::Follower { leader, .. } = &*part.partition.role.borrow() {
                shard.count_replication(Some(*leader), bytes);
            }
            let mut producers = part.partition.producers.borrow_mut();
            for header in &headers {
                producers.apply(header, header.base_offset);
            }
            drop(producers);
            shard.appended.notify(usize::MAX);
            if part.partition.replica_append_failing.replace(false) {
                warn!(topic = %part.topic, partition = part.index, log_end_offset = log.log_end_offset(), "appending the leader's batches again");
            }
            true
        }
        Err(error) => {
            // Retried after each backoff: a full disk would log ten lines a second.
            if part.partition.replica_append_failing.replace(true) {
                debug!(topic = %part.topic, partition = part.index, "cannot append the leader's batches: {error}");
            } else {
                warn!(topic = %part.topic, partition = part.index, "cannot append the leader's batches (retrying until it works; the leader takes this replica out of the ISR after replica.lag.time.max.ms): {error}");
            }
            false
        }
    }
}

/// The headers of the whole batches in `records`.
fn batch_headers(
    records: &[u8],
) -> Result<Vec<ringlog_engine::batch::BatchHeader>, ringlog_engine::batch::BatchError> {
    let mut headers = Vec::new();
    let mut rest = records;
    while !rest.is_empty() {
        let header = ringlog_engine::batch::BatchHeader::decode(rest)?;
        let total = header.total_bytes().min(rest.len());
        rest = &rest[total..];
        headers.push(header);
    }
    Ok(headers)
}

/// Truncates a diverging tail (KIP-101/279) and rebuilds the producer state without it.
async fn truncate_diverging(part: &Followed, diverging: Diverging) {
    let log = &part.partition.log;
    let log_end = log.log_end_offset();
    let high_watermark = part.partition.high_watermark();
    let offset = ringlog_replication::truncation_offset(
        |epoch| log.end_offset_for_epoch(epoch),
        log_end,
        high_watermark,
        diverging,
    );
    truncate(part, offset).await;
}

/// The leader does not have our fetch offset: below its log start we start over at its log
/// start; past its end (an unclean election cut its log) we cut ours to its high watermark.
async fn out_of_range(part: &Followed, leader_start: i64, leader_hw: i64) {
    if leader_start >= 0 && part.fetch_offset < leader_start {
        truncate(part, leader_start).await;
    } else if leader_hw >= 0 && part.fetch_offset > leader_hw {
        truncate(part, leader_hw).await;
    }
}

async fn truncate(part: &Followed, offset: i64) {
    let log = &part.partition.log;
    let before = log.log_end_offset();
    match log.truncate_to(offset).await {
        Ok(end) => {
            warn!(
                topic = %part.topic,
                partition = part.index,
                from = before,
                to = end,
                "truncated a replica's divergent tail"
            );
            let recovered = producer_state::recover(log).await;
            *part.partition.producers.borrow_mut() = recovered.states;
            if let Role::Follower { high_watermark, .. } = &mut *part.partition.role.borrow_mut() {
                *high_watermark = (*high_watermark).min(end);
            }
        }
        Err(error) => {
            warn!(topic = %part.topic, partition = part.index, "cannot truncate: {error}");
        }
    }
}

/// Fetchers running on a shard, by leader node.
pub type Fetchers = RefCell<std::collections::HashSet<i32>>;

/// The high watermarks a shard last checkpointed, by (topic, partition): Kafka's
/// `replication-offset-checkpoint`, one file per shard (`replication-offset-checkpoint.<shard>`
/// in the data directory, Kafka's text format: version 0, a count, then `topic partition
/// offset` lines). A replica that restarts starts from it instead of 0, so a leader elected
/// right after a restart serves what was committed before it without waiting for every
/// follower to fetch again. It is a hint: never above the log end, and never trusted for
/// truncation (leader epochs decide that).
#[derive(Debug, Default)]
pub struct HighWatermarks {
    /// Set once the shard's partitions are closed: the last checkpoint is written, and the
    /// maintenance tick (which may run once more) must not overwrite it with none.
    closed: std::cell::Cell<bool>,
    loaded: RefCell<std::collections::HashMap<(String, i32), i64>>,
    /// What the file holds now, to skip writes when nothing moved.
    written: RefCell<std::collections::BTreeMap<(String, i32), i64>>,
}

/// The checkpoint file of shard `shard`.
pub fn checkpoint_name(shard: usize) -> String {
    format!("replication-offset-checkpoint.{shard}")
}

/// Parses a checkpoint; a line that does not parse ends it (what came before is kept).
pub fn parse_checkpoint(text: &str) -> Vec<((String, i32), i64)> {
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some("0") {
        return Vec::new();
    }
    let Some(count) = lines
        .next()
        .and_then(|line| line.trim().parse::<usize>().ok())
    else {
        return Vec::new();
    };
    let mut entries = Vec::with_capacity(count.min(1 << 16));
    for line in lines.take(count) {
        let mut fields = line.split_whitespace();
        let (Some(topic), Some(partition), Some(offset), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            break;
        };
        let (Ok(partition), Ok(offset)) = (partition.parse::<i32>(), offset.parse::<i64>()) else {
            break;
        };
        entries.push(((topic.to_owned(), partition), offset));
    }
    entries
}

fn encode_checkpoint(entries: &std::collections::BTreeMap<(String, i32), i64>) -> String {
    let mut text = format!("0\n{}\n", entries.len());
    for ((topic, partition), offset) in entries {
        text.push_str(&format!("{topic} {partition} {offset}\n"));
    }
    text
}

impl Shard {
    /// Loads this shard's high-watermark checkpoint (at start, before partitions open).
    pub(super) fn load_high_watermarks(&self) {
        let path = self.settings.data_dir.join(checkpoint_name(self.id));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
            Err(error) => {
                warn!(path = %path.display(), "cannot read the high-watermark checkpoint: {error}");
                return;
            }
        };
        let entries = parse_checkpoint(&text);
        *self.high_watermarks.written.borrow_mut() = entries.iter().cloned().collect();
        *self.high_watermarks.loaded.borrow_mut() = entries.into_iter().collect();
    }

    /// The checkpointed high watermark of a partition opening now (0 when none).
    pub(super) fn checkpointed_high_watermark(&self, topic: &str, partition: i32) -> i64 {
        self.high_watermarks
            .loaded
            .borrow()
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or(0)
    }

    /// Writes the high watermarks of this shard's partitions when any moved since the last
    /// write (from the maintenance tick, and at close).
    pub(super) fn checkpoint_high_watermarks(&self) {
        if self.high_watermarks.closed.get() {
            return;
        }
        let mut now = std::collections::BTreeMap::new();
        for (name, slots) in self.partitions.borrow().iter() {
            for (index, partition) in slots.iter().enumerate() {
                if let Some(partition) = partition {
                    now.insert((name.clone(), index as i32), partition.high_watermark());
                }
            }
        }
        if *self.high_watermarks.written.borrow() == now {
            return;
        }
        let text = encode_checkpoint(&now);
        let name = checkpoint_name(self.id);
        match super::durable::replace_file(&self.settings.data_dir, &name, text.as_bytes()) {
            Ok(()) => *self.high_watermarks.written.borrow_mut() = now,
            Err(error) => warn!("cannot write the high-watermark checkpoint {name}: {error}"),
        }
    }

    /// Writes the last high-watermark checkpoint as the partitions close.
    pub(super) fn final_high_watermarks(&self) {
        self.checkpoint_high_watermarks();
        self.high_watermarks.closed.set(true);
    }
}

/// Tells `leader` the broker epoch each of its followers' hosts is registered at.
fn registered(leader: &mut LeaderState, epochs: &BTreeMap<i32, u64>, now_ms: i64) {
    for follower in leader.followers() {
        if let Some(&epoch) = epochs.get(&follower) {
            leader.broker_registered(follower, epoch, now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_text_round_trips_and_damage_keeps_the_good_prefix() {
        let entries: std::collections::BTreeMap<(String, i32), i64> = [
            (("orders".to_owned(), 0), 42),
            (("orders".to_owned(), 3), 7),
        ]
        .into_iter()
        .collect();
        let text = encode_checkpoint(&entries);
        assert_eq!(text, "0\n2\norders 0 42\norders 3 7\n");
        let parsed: std::collections::BTreeMap<_, _> =
            parse_checkpoint(&text).into_iter().collect();
        assert_eq!(parsed, entries);
        assert_eq!(
            parse_checkpoint("0\n2\norders 0 42\norders x 7\n"),
            vec![(("orders".to_owned(), 0), 42)]
        );
        assert!(parse_checkpoint("1\n0\n").is_empty());
        assert!(parse_checkpoint("").is_empty());
    }
}
