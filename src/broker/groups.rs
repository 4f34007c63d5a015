//! Consumer groups (the classic protocol, and the glue of the new one, KIP-848, whose state
//! machine is `consumer_group`) and committed offsets.
//!
//! Every group has a coordinator: the shard owning the group's partition of the internal
//! `__consumer_offsets` topic (partition = Java `String.hashCode` of the group id, masked
//! positive, modulo the partition count, as Kafka computes it). With a node per core,
//! FindCoordinator names that shard's node, so clients talk to it directly; any group request
//! reaching another shard is forwarded to it whole (the kafka-protocol request types are
//! `Send`).
//!
//! Membership lives in memory on the coordinator, as a small state machine per group (Empty →
//! PreparingRebalance → CompletingRebalance → Stable), driven by JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup and session expiry. Committed offsets are appended to the group's
//! `__consumer_offsets` partition before they are acknowledged, and replayed from it when the
//! shard opens, so they survive restarts and crashes; members simply rejoin after a restart.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use event_listener::Event;
use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment as DescribedAssignment, DescribedGroup as ConsumerDescribedGroup,
    Member as DescribedMember, TopicPartitions as DescribedTopicPartitions,
};
use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions as ConsumerGroupHeartbeatTopicPartitions;
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment as HeartbeatAssignment, TopicPartitions as ConsumerGroupHeartbeatResponsePartitions,
};
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse, ConsumerProtocolSubscription,
};
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, OffsetDeleteRequest, OffsetDeleteResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;
use ringlog_engine::batch::{self, BatchBuilder};
use ringlog_engine::scan;
use ringlog_engine::{Clock, SystemClock};
use ringlog_net::errors;
use ringlog_net::handlers::ClientInfo;
use tracing::{debug, info, warn};

use super::consumer_group::{
    self, Assignment, ConsumerGroup, Heartbeat, HeartbeatAnswer, HeartbeatError, TopicInfo,
};
use super::mesh::{Call, Route, Routed};
use super::Shard;

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Its partitions when the broker creates it. Fixed once created: a group's coordinator is
/// found by hashing over the count.
pub const OFFSETS_TOPIC_PARTITIONS: usize = 8;
/// Its settings: small segments, no preallocation (commits are small and rare next to data),
/// kept forever (compaction, which Kafka uses here, does not exist yet).
pub const OFFSETS_TOPIC_CONFIGS: &[(&str, &str)] = &[
    ("segment.bytes", "104857600"),
    ("segment.index.bytes", "1048576"),
    ("preallocate", "false"),
    ("retention.ms", "-1"),
];
/// Session timeouts accepted (Kafka's group.min/max.session.timeout.ms are 6 s and 30 min;
/// the minimum is lower here so tests can expire members quickly).
const MIN_SESSION_TIMEOUT: Duration = Duration::from_millis(1000);
const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(1800);
/// Kafka's offset.metadata.max.bytes.
const MAX_OFFSET_METADATA_BYTES: usize = 4096;
/// FindCoordinator key types.
const KEY_TYPE_GROUP: i8 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone)]
struct Member {
    instance_id: Option<String>,
    client: ClientInfo,
    protocols: Vec<(String, Bytes)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    assignment: Bytes,
    /// Has (re)joined in the current rebalance.
    joined: bool,
    /// A JoinGroup or SyncGroup of it is waiting on the coordinator: its heartbeats pause.
    awaiting: bool,
    last_seen: Instant,
    join_order: u64,
}

#[derive(Debug)]
struct Group {
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not joined yet.
    pending: HashSet<String>,
    /// When the current rebalance completes at the latest.
    deadline: Instant,
    /// The rebalance started from an empty group: wait the initial delay for more members.
    initial: bool,
    completer_running: bool,
    next_join_order: u64,
}

impl Group {
    /// An empty group, its deadline `now` (no rebalance is running).
    fn new(now: Instant) -> Self {
        Self {
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashSet::new(),
            deadline: now,
            initial: false,
            completer_running: false,
            next_join_order: 0,
        }
    }

    fn start_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        let initial = self.state == State::Empty;
        self.state = State::PreparingRebalance;
        self.initial = initial;
        for member in self.members.values_mut() {
            member.joined = false;
        }
        let rebalance_timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(initial_delay);
        self.deadline = now
            + if initial {
                initial_delay.min(rebalance_timeout)
            } else {
                rebalance_timeout
            };
    }

    fn make_empty(&mut self) {
        self.state = State::Empty;
        self.generation += 1;
        self.protocol = None;
        self.leader = None;
    }

    /// The protocol the members would use: each votes for its first protocol everyone
    /// supports; the most votes win (Kafka's `selectProtocol`).
    fn select_protocol(&self) -> Option<String> {
        let mut common: Option<Vec<String>> = None;
        for member in self.members.values() {
            let names: Vec<String> = member.protocols.iter().map(|(n, _)| n.clone()).collect();
            common = Some(match common {
                None => names,
                Some(common) => common.into_iter().filter(|n| names.contains(n)).collect(),
            });
        }
        let common = common.unwrap_or_default();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member.protocols.iter().find(|(n, _)| common.contains(n)) {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        common
            .iter()
            .max_by_key(|name| votes.get(name.as_str()).copied().unwrap_or(0))
            .cloned()
    }

    /// The member id a static member (`group.instance.id`, KIP-345) has now.
    fn static_member_id(&self, instance: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance))
            .map(|(id, _)| id.as_str())
    }

    /// Kafka's check of a member's request (JoinGroup with a member id, SyncGroup, Heartbeat,
    /// OffsetCommit, LeaveGroup): with an instance id, the member id must be the instance's
    /// current one (FENCED_INSTANCE_ID when a newer consumer took the instance over,
    /// UNKNOWN_MEMBER_ID when the group has no such instance); without, a member.
    fn validate_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        match instance_id {
            Some(instance) => match self.static_member_id(instance) {
                None => Err(ResponseError::UnknownMemberId),
                Some(current) if current != member_id => Err(ResponseError::FencedInstanceId),
                Some(_) => Ok(()),
            },
            None if self.members.contains_key(member_id) => Ok(()),
            None => Err(ResponseError::UnknownMemberId),
        }
    }

    /// Why a member's waiting JoinGroup or SyncGroup ends when the member is no longer in the
    /// group: fenced when its instance now belongs to another member id (Kafka answers the
    /// replaced member's pending requests so), otherwise unknown.
    fn gone_error(&self, instance_id: Option<&str>) -> ResponseError {
        if instance_id.is_some_and(|i| self.static_member_id(i).is_some()) {
            ResponseError::FencedInstanceId
        } else {
            ResponseError::UnknownMemberId
        }
    }

    /// One member of a LeaveGroup, as Kafka judges it: by instance id alone (an empty member
    /// id, an administrator's removal), a member id handed out but not joined yet, or a member
    /// (checked as `validate_member`). Returns the member removed (`None` for a pending one).
    fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<Option<String>, ResponseError> {
        if member_id.is_empty() {
            let id = instance_id
                .and_then(|instance| self.static_member_id(instance))
                .map(str::to_owned)
                .ok_or(ResponseError::UnknownMemberId)?;
            self.members.remove(&id);
            return Ok(Some(id));
        }
        if self.pending.remove(member_id) {
            return Ok(None);
        }
        self.validate_member(member_id, instance_id)?;
        self.members.remove(member_id);
        Ok(Some(member_id.to_owned()))
    }

    /// Ends the join phase: drops members that did not rejoin, picks the protocol and leader,
    /// starts the next generation.
    fn complete_join(&mut self) {
        self.members.retain(|_, member| member.joined);
        if self.members.is_empty() {
            self.make_empty();
            return;
        }
        self.protocol = self.select_protocol();
        let leader_stays = self
            .leader
            .as_ref()
            .is_some_and(|leader| self.members.contains_key(leader));
        if !leader_stays {
            self.leader = self
                .members
                .iter()
                .min_by_key(|(_, m)| m.join_order)
                .map(|(id, _)| id.clone());
        }
        self.generation += 1;
        self.state = State::CompletingRebalance;
        for member in self.members.values_mut() {
            member.assignment = Bytes::new();
        }
    }
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

/// One group's committed offsets by (topic, partition).
type GroupOffsets = BTreeMap<(String, i32), Committed>;

/// The groups this shard coordinates and their committed offsets.
pub struct Coordinator {
    groups: RefCell<HashMap<String, Group>>,
    /// Groups of the new protocol (KIP-848); a group id is in at most one of the two maps.
    consumer: RefCell<HashMap<String, ConsumerGroup>>,
    offsets: RefCell<HashMap<String, GroupOffsets>>,
    /// Notified on every group change; waiting joins and syncs re-check their group.
    changed: Event,
    /// Commits hold it shared while they append; cleaning holds it alone, so its rewrite of the
    /// live offsets cannot interleave with a newer commit.
    writes: glommio::sync::RwLock<()>,
}

impl Default for Coordinator {
    fn default() -> Self {
        Self {
            groups: RefCell::default(),
            consumer: RefCell::default(),
            offsets: RefCell::default(),
            changed: Event::new(),
            writes: glommio::sync::RwLock::new(()),
        }
    }
}

/// Kafka's partition for a group: `Utils.abs(groupId.hashCode()) % partitions`.
pub fn offsets_partition(group: &str, partitions: usize) -> usize {
    let mut hash: i32 = 0;
    for unit in group.encode_utf16() {
        hash = hash.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    (hash & 0x7fff_ffff) as usize % partitions.max(1)
}

/// The shard coordinating `group`, per this shard's catalog; `None` when no shard of this
/// host does (no offsets topic, or, in a cluster, another host keeps the group's partition).
fn coordinator_of(shard: &Shard, group: &str) -> Option<(usize, usize)> {
    let catalog = shard.catalog.borrow();
    let topic = catalog.topics.get(OFFSETS_TOPIC)?;
    let partition = offsets_partition(group, topic.partitions.len());
    // In a cluster the leader of the group's offsets partition coordinates it; a follower
    // replica here does not.
    topic
        .partitions
        .get(partition)
        .filter(|state| state.local && state.leader == shard.settings.topology.node_of(state.shard))
        .map(|state| (state.shard, partition))
}

/// The node coordinating `group` and its address: a shard of this host, or, in a cluster, the
/// leader of the group's offsets partition wherever it is.
fn coordinator_node(shard: &Shard, group: &str) -> Option<(i32, String, u16)> {
    if let Some((owner, _)) = coordinator_of(shard, group) {
        let topology = &shard.settings.topology;
        let port = topology
            .advertised_port
            .saturating_add(topology.port_offset(owner));
        return Some((
            topology.node_of(owner),
            topology.advertised_host.clone(),
            port,
        ));
    }
    let catalog = shard.catalog.borrow();
    let topic = catalog.topics.get(OFFSETS_TOPIC)?;
    let state = topic
        .partitions
        .get(offsets_partition(group, topic.partitions.len()))?;
    catalog
        .brokers
        .as_ref()?
        .iter()
        .find(|(node, _, _)| *node == state.leader)
        .cloned()
}

fn str_bytes(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

// ---------------------------------------------------------------------------------------------
// Offsets records in __consumer_offsets: key = version 1, group, topic, partition; value =
// offset, leader epoch, metadata (absent value: the offset was deleted).

fn put_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.extend_from_slice(&(bytes.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(&bytes[..bytes.len().min(u16::MAX as usize)]);
}

fn take<'a>(bytes: &mut &'a [u8], count: usize) -> Option<&'a [u8]> {
    let (head, rest) = (bytes.get(..count)?, bytes.get(count..)?);
    *bytes = rest;
    Some(head)
}

fn take_str(bytes: &mut &[u8]) -> Option<String> {
    let len = take(bytes, 2)?;
    let len = u16::from_be_bytes([len[0], len[1]]) as usize;
    String::from_utf8(take(bytes, len)?.to_vec()).ok()
}

fn offset_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut key = vec![1];
    put_str(&mut key, group);
    put_str(&mut key, topic);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

fn offset_value(committed: &Committed) -> Vec<u8> {
    let mut value = Vec::with_capacity(16);
    value.extend_from_slice(&committed.offset.to_be_bytes());
    value.extend_from_slice(&committed.leader_epoch.to_be_bytes());
    match &committed.metadata {
        Some(metadata) => {
            value.push(1);
            put_str(&mut value, metadata);
        }
        None => value.push(0),
    }
    value
}

fn decode_record(
    key: &[u8],
    value: Option<&[u8]>,
) -> Option<(String, String, i32, Option<Committed>)> {
    let mut key = key;
    if take(&mut key, 1)? != [1] {
        return None;
    }
    let group = take_str(&mut key)?;
    let topic = take_str(&mut key)?;
    let partition = i32::from_be_bytes(take(&mut key, 4)?.try_into().ok()?);
    let Some(mut value) = value else {
        return Some((group, topic, partition, None));
    };
    let offset = i64::from_be_bytes(take(&mut value, 8)?.try_into().ok()?);
    let leader_epoch = i32::from_be_bytes(take(&mut value, 4)?.try_into().ok()?);
    let metadata = match take(&mut value, 1)? {
        [1] => Some(take_str(&mut value)?),
        _ => None,
    };
    Some((
        group,
        topic,
        partition,
        Some(Committed {
            offset,
            leader_epoch,
            metadata,
        }),
    ))
}

/// Why a write to an offsets partition failed.
enum OffsetsWrite {
    Append(ringlog_engine::AppendError),
    /// Written here, but not (yet) on every in-sync replica.
    NotCommitted(super::replica::NotCommitted),
}

/// How long a write to a replicated offsets partition waits for its replicas (Kafka's
/// `offsets.commit.timeout.ms`).
const OFFSETS_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Appends records to an offsets partition and waits until every in-sync replica has them
/// (Kafka's `offsets.commit.required.acks` = -1): a commit acknowledged by a coordinator that
/// then fails is on the replica that takes over. With no followers the wait ends at once.
async fn append_offsets(
    shard: &Shard,
    partition: &super::Partition,
    records: Bytes,
) -> Result<(), OffsetsWrite> {
    let Some(epoch) = partition.leading_epoch() else {
        return Err(OffsetsWrite::NotCommitted(
            super::replica::NotCommitted::NotLeader,
        ));
    };
    let info = partition
        .log
        .append(records)
        .await
        .map_err(OffsetsWrite::Append)?;
    super::replica::wait_committed(
        shard,
        OFFSETS_TOPIC,
        partition,
        epoch,
        info.last_offset + 1,
        OFFSETS_COMMIT_TIMEOUT,
    )
    .await
    .map_err(OffsetsWrite::NotCommitted)
}

/// The `__consumer_offsets` partitions this shard leads, and the topic's partition count (none
/// and 0 without the topic).
fn owned_offsets_partitions(shard: &Shard) -> (Vec<usize>, usize) {
    let catalog = shard.catalog.borrow();
    let Some(topic) = catalog.topics.get(OFFSETS_TOPIC) else {
        return (Vec::new(), 0);
    };
    let me = shard.settings.topology.node_of(shard.id);
    let owned = (0..topic.partitions.len())
        .filter(|&p| {
            let state = &topic.partitions[p];
            state.shard == shard.id && state.local && state.leader == me
        })
        .collect();
    (owned, topic.partitions.len())
}

/// Rebuilds the committed offsets of the given `__consumer_offsets` partitions of this shard
/// (those it leads: at start, and when it becomes their leader).
pub async fn load_offsets(shard: &Shard, partitions: &[usize]) {
    let mut records = 0_usize;
    for &partition in partitions {
        let Some(log) = shard.partition(OFFSETS_TOPIC, partition as i32) else {
            continue;
        };
        // Batch by batch, yielding between reads: a long offsets log must not keep the
        // shard's other tasks (connections, other partitions opening) waiting.
        let replayed = scan::visit_batches(&log.log, 0, |_, one| {
            let Ok(views) = batch::uncompressed_records(one) else {
                return;
            };
            for view in views {
                if let Some((group, topic, p, committed)) =
                    view.key.and_then(|key| decode_record(key, view.value))
                {
                    apply_committed(&shard.groups, group, topic, p, committed);
                    records += 1;
                }
            }
        })
        .await;
        if let Err(error) = replayed {
            warn!(partition, "cannot replay committed offsets: {error}");
        }
    }
    // A group whose every offset was deleted (DeleteGroups, or OffsetDelete of all of them)
    // is gone, as Kafka's group tombstone and its cleanup of empty groups leave it.
    shard
        .groups
        .offsets
        .borrow_mut()
        .retain(|_, offsets| !offsets.is_empty());
    // A group known only by its offsets is an empty group, as it was before the restart (a
    // commit creates one): ListGroups and DescribeGroups show it Empty, and a member joining
    // with either protocol takes it over.
    let consumer = shard.groups.consumer.borrow();
    let mut groups = shard.groups.groups.borrow_mut();
    let now = shard.env.clock.now();
    for group in shard.groups.offsets.borrow().keys() {
        if !consumer.contains_key(group) {
            groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(now));
        }
    }
    if records > 0 {
        info!(shard = shard.id, records, "committed offsets replayed");
    }
}

/// Forgets the groups whose offsets partition is `partition` (this shard stopped leading it:
/// their new coordinator has them; a later leadership here loads them again from the log).
pub fn forget_partition(shard: &Shard, partition: usize, partitions: usize) {
    let ours = |group: &String| offsets_partition(group, partitions) != partition;
    shard
        .groups
        .groups
        .borrow_mut()
        .retain(|group, _| ours(group));
    shard
        .groups
        .consumer
        .borrow_mut()
        .retain(|group, _| ours(group));
    shard
        .groups
        .offsets
        .borrow_mut()
        .retain(|group, _| ours(group));
    shard.groups.changed.notify(usize::MAX);
}

fn apply_committed(
    coordinator: &Coordinator,
    group: String,
    topic: String,
    partition: i32,
    committed: Option<Committed>,
) {
    let mut offsets = coordinator.offsets.borrow_mut();
    let entry = offsets.entry(group).or_default();
    match committed {
        Some(committed) => {
            entry.insert((topic, partition), committed);
        }
        None => {
            entry.remove(&(topic, partition));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// FindCoordinator

pub fn find_coordinator(
    shard: &Shard,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let locate = |key: &str| -> Result<(i32, String, u16), (ResponseError, &'static str)> {
        if request.key_type != KEY_TYPE_GROUP {
            // Not COORDINATOR_NOT_AVAILABLE: clients retry that until their timeout (10 s to
            // minutes). This is the non-retriable answer Kafka gives a transactional id the
            // client may not use, so init_transactions() fails at once with the reason, as
            // InitProducerId with a transactional id does.
            return Err((
                ResponseError::TransactionalIdAuthorizationFailed,
                "transactions are not supported by ringlog yet: only group coordinators exist",
            ));
        }
        coordinator_node(shard, key).ok_or((
            ResponseError::CoordinatorNotAvailable,
            "the offsets topic or its partition's leader is missing",
        ))
    };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .iter()
            .map(|key| {
                let entry = CoordinatorEntry::default().with_key(key.clone());
                match locate(key) {
                    Ok((node, host, port)) => entry
                        .with_node_id(BrokerId(node))
                        .with_host(str_bytes(host))
                        .with_port(i32::from(port)),
                    Err((error, message)) => entry
                        .with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_code(error.code())
                        .with_error_message(Some(StrBytes::from_static_str(message))),
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match locate(&request.key) {
        Ok((node, host, port)) => FindCoordinatorResponse::default()
            .with_node_id(BrokerId(node))
            .with_host(str_bytes(host))
            .with_port(i32::from(port)),
        Err((error, message)) => {
            let mut response = FindCoordinatorResponse::default()
                .with_error_code(error.code())
                .with_node_id(BrokerId(-1))
                .with_port(-1);
            if version >= 1 {
                response = response.with_error_message(Some(StrBytes::from_static_str(message)));
            }
            response
        }
    }
}

/// Runs `call` on the coordinator of `group`, or answers `unavailable` when there is none.
async fn on_coordinator<C: Routed>(
    shard: &Rc<Shard>,
    group: &str,
    unavailable: C::Reply,
    call: C,
) -> C::Reply {
    match coordinator_of(shard, group) {
        Some((owner, _)) => shard.call(owner, call).await.unwrap_or(unavailable),
        None => unavailable,
    }
}

// ---------------------------------------------------------------------------------------------
// The calls a shard sends a group's coordinator (see `mesh`): each runs the `*_local` handler
// there and answers what the client gets.

pub struct JoinGroup(JoinGroupRequest, i16, ClientInfo);

impl Call for JoinGroup {
    type Reply = JoinGroupResponse;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        join_local(&shard, self.0, self.1, self.2).await
    }
}

pub struct SyncGroup(SyncGroupRequest, i16);

impl Call for SyncGroup {
    type Reply = SyncGroupResponse;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        sync_local(&shard, self.0, self.1).await
    }
}

pub struct GroupHeartbeat(HeartbeatRequest);

impl Call for GroupHeartbeat {
    type Reply = HeartbeatResponse;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        let error = heartbeat_local(&shard, &self.0);
        HeartbeatResponse::default().with_error_code(error.map_or(0, |e| e.code()))
    }
}

pub struct LeaveGroup(LeaveGroupRequest, i16);

impl Call for LeaveGroup {
    type Reply = LeaveGroupResponse;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        leave_local(&shard, &self.0, self.1)
    }
}

/// The request, the partitions no topic has (per the sending shard's catalog), the version.
pub struct CommitOffsets(OffsetCommitRequest, HashSet<(String, i32)>, i16);

impl Call for CommitOffsets {
    type Reply = OffsetCommitResponse;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        commit_local(&shard, self.0, self.1, self.2).await
    }
}

/// The group, the topics and partitions asked for (all when `None`), and the member a
/// KIP-848 OffsetFetch names.
pub struct FetchOffsets {
    group: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
    member: Option<(String, i32)>,
}

impl Call for FetchOffsets {
    type Reply = Result<FetchedOffsets, ResponseError>;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        fetch_local(&shard, &self.group, self.topics, self.member)
    }
}

/// A classic group's description (DescribeGroups): the group id and the request's version.
pub struct DescribeGroup(String, i16);

impl Call for DescribeGroup {
    type Reply = DescribedGroup;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        describe_local(&shard, &self.0, self.1)
    }
}

/// A consumer group's description (ConsumerGroupDescribe): the group id and the version.
pub struct DescribeConsumerGroup(String, i16);

impl Call for DescribeConsumerGroup {
    type Reply = ConsumerDescribedGroup;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        describe_consumer_local(&shard, &self.0, self.1)
    }
}

pub struct DeleteGroup(String);

impl Call for DeleteGroup {
    type Reply = Option<ResponseError>;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        delete_local(&shard, &self.0).await
    }
}

pub struct DeleteOffsets(OffsetDeleteRequest);

impl Call for DeleteOffsets {
    type Reply = OffsetDeleteResponse;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        offset_delete_local(&shard, &self.0).await
    }
}

/// The groups a shard coordinates (ListGroups asks every shard).
pub struct ListGroupsHere;

impl Call for ListGroupsHere {
    type Reply = Vec<Listed>;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        groups_here(&shard)
    }
}

pub struct ConsumerHeartbeat(ConsumerGroupHeartbeatRequest, ClientInfo);

impl Call for ConsumerHeartbeat {
    type Reply = ConsumerGroupHeartbeatResponse;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        consumer_heartbeat_local(&shard, &self.0, self.1)
    }
}

// ---------------------------------------------------------------------------------------------
// JoinGroup

pub async fn join_group(
    shard: &Rc<Shard>,
    request: JoinGroupRequest,
    version: i16,
    client: ClientInfo,
) -> JoinGroupResponse {
    let unavailable = join_error(ResponseError::CoordinatorNotAvailable, &request.member_id);
    let group = request.group_id.to_string();
    let call = JoinGroup(request, version, client);
    on_coordinator(shard, &group, unavailable, call).await
}

fn join_error(error: ResponseError, member_id: &StrBytes) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(error.code())
        .with_generation_id(-1)
        .with_member_id(member_id.clone())
        .with_protocol_name(Some(StrBytes::default()))
}

/// A member id as Kafka makes them: the group instance id (a static member) or else the client
/// id, a dash and a UUID. Client-side assignors sort members by id (librdkafka's roundrobin
/// does), so the same ids give the same assignment as on Kafka.
fn new_member_id(shard: &Shard, client_id: &str, instance_id: Option<&str>) -> String {
    let prefix = instance_id.unwrap_or(client_id);
    format!("{prefix}-{}", shard.env.random.uuid().hyphenated())
}

/// Ends a member's wait on a JoinGroup or SyncGroup however the request ends: answered, or
/// dropped because its connection closed (a request whose coordinator is this shard runs in
/// the connection's task). A member left marked `awaiting` would never expire, and the group
/// would wait for it for minutes (issue 18, bug 3); from here its session timeout runs.
struct Awaiting<'a> {
    shard: &'a Shard,
    group: String,
    member: String,
}

impl<'a> Awaiting<'a> {
    fn new(shard: &'a Shard, group: &str, member: &str) -> Self {
        Self {
            shard,
            group: group.to_owned(),
            member: member.to_owned(),
        }
    }
}

impl Drop for Awaiting<'_> {
    fn drop(&mut self) {
        // Never panic in drop: the map is not borrowed when a request ends, but if it were,
        // the member would simply keep its flag until its next request.
        let Ok(mut groups) = self.shard.groups.groups.try_borrow_mut() else {
            return;
        };
        if let Some(member) = groups
            .get_mut(&self.group)
            .and_then(|group| group.members.get_mut(&self.member))
        {
            member.awaiting = false;
            member.last_seen = self.shard.env.clock.now();
        }
    }
}

async fn join_local(
    shard: &Rc<Shard>,
    request: JoinGroupRequest,
    version: i16,
    client: ClientInfo,
) -> JoinGroupResponse {
    let coordinator = &shard.groups;
    let group_id = request.group_id.to_string();
    let session_timeout =
        Duration::from_millis(u64::try_from(request.session_timeout_ms).unwrap_or(0));
    let rebalance_timeout = if version >= 1 && request.rebalance_timeout_ms > 0 {
        Duration::from_millis(request.rebalance_timeout_ms as u64)
    } else {
        session_timeout
    };
    if group_id.is_empty() {
        return join_error(ResponseError::InvalidGroupId, &request.member_id);
    }
    if !(MIN_SESSION_TIMEOUT..=MAX_SESSION_TIMEOUT).contains(&session_timeout) {
        return join_error(ResponseError::InvalidSessionTimeout, &request.member_id);
    }
    if request.protocol_type.is_empty() || request.protocols.is_empty() {
        return join_error(ResponseError::InconsistentGroupProtocol, &request.member_id);
    }
    let protocols: Vec<(String, Bytes)> = request
        .protocols
        .iter()
        .map(|p| (p.name.to_string(), p.metadata.clone()))
        .collect();
    let instance_id = request.group_instance_id.as_ref().map(|i| i.to_string());
    {
        // A group of the new protocol with members takes no classic member (Kafka's answer
        // without online migration); an empty one becomes a classic group.
        let mut consumer = coordinator.consumer.borrow_mut();
        if let Some(group) = consumer.get(&group_id) {
            if !group.members.is_empty() {
                return join_error(ResponseError::InconsistentGroupProtocol, &request.member_id);
            }
            consumer.remove(&group_id);
        }
    }
    let now = shard.env.clock.now();
    let (member_id, generation_at_join) = {
        let mut groups = coordinator.groups.borrow_mut();
        let group = groups
            .entry(group_id.clone())
            .or_insert_with(|| Group::new(now));
        if !group.members.is_empty() {
            if group.protocol_type.as_deref() != Some(&*request.protocol_type) {
                return join_error(ResponseError::InconsistentGroupProtocol, &request.member_id);
            }
            let supported = group.members.values().all(|m| {
                m.protocols
                    .iter()
                    .any(|(name, _)| protocols.iter().any(|(n, _)| n == name))
            });
            if !supported {
                return join_error(ResponseError::InconsistentGroupProtocol, &request.member_id);
            }
        }
        let mut member_id = request.member_id.to_string();
        // A static member (group.instance.id) keeps its place: a join without a member id
        // replaces the instance's current member id with a new one (KIP-345).
        let static_previous = instance_id
            .as_deref()
            .and_then(|instance| group.static_member_id(instance))
            .map(str::to_owned);
        if member_id.is_empty() {
            member_id = new_member_id(shard, &client.client_id, instance_id.as_deref());
            if version >= 4 && instance_id.is_none() {
                group.pending.insert(member_id.clone());
                return join_error(ResponseError::MemberIdRequired, &str_bytes(member_id));
            }
        } else if !group.pending.contains(&member_id) {
            // A member id with the instance id: it must still be the instance's (a consumer
            // whose instance a newer one took over is fenced, as in Kafka).
            if let Err(error) = group.validate_member(&member_id, instance_id.as_deref()) {
                if error == ResponseError::FencedInstanceId {
                    info!(
                        group = group_id,
                        member = member_id,
                        instance = instance_id.as_deref().unwrap_or(""),
                        "JoinGroup of a fenced static member"
                    );
                }
                return join_error(error, &request.member_id);
            }
        }
        group.pending.remove(&member_id);
        // The static member's old id gives way to the new one, leadership included.
        let leader_before = group.leader.clone();
        let replaced = static_previous.filter(|old| *old != member_id);
        if replaced.is_some() && group.leader == replaced {
            group.leader = Some(member_id.clone());
        }
        let replacing = replaced.is_some();
        if let Some(old) = &replaced {
            info!(
                group = group_id,
                old = old.as_str(),
                new = member_id.as_str(),
                instance = instance_id.as_deref().unwrap_or(""),
                "static member replaced"
            );
        }
        let previous = replaced.and_then(|old| group.members.remove(&old));
        let existing = group.members.remove(&member_id).or(previous);
        let join_order = existing.as_ref().map_or_else(
            || {
                group.next_join_order += 1;
                group.next_join_order
            },
            |m| m.join_order,
        );
        group.members.insert(
            member_id.clone(),
            Member {
                instance_id: instance_id.clone(),
                client,
                protocols,
                session_timeout,
                rebalance_timeout,
                assignment: existing
                    .as_ref()
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default(),
                joined: true,
                awaiting: true,
                last_seen: now,
                join_order,
            },
        );
        group.protocol_type = Some(request.protocol_type.to_string());
        // KIP-345: a static member back under a new member id, to a stable group whose
        // protocol would stay the same, takes its predecessor's place and assignment without
        // a rebalance (Kafka compares the protocol the group would select next).
        let static_return =
            replacing && group.state == State::Stable && group.select_protocol() == group.protocol;
        if static_return {
            if let Some(member) = group.members.get_mut(&member_id) {
                member.awaiting = false;
            }
            info!(
                group = group_id,
                member = member_id,
                generation = group.generation,
                "static member rejoined with its assignment, no rebalance"
            );
            // Its SyncGroup of this generation gets the assignment it had (a stable group
            // answers SyncGroup with the stored assignment, even to the leader). As Kafka:
            // from v9 a returning leader is told to skip the assignment; before, the answer
            // names the old leader id, so the member does not assign (a stable group would
            // not hand its assignment out).
            let mut response = join_response(group, &member_id, version);
            if version >= 9 {
                response.skip_assignment = group.leader.as_deref() == Some(&*member_id);
            } else {
                response.leader = str_bytes(leader_before.unwrap_or_default());
                response.members.clear();
            }
            return response;
        }
        match group.state {
            State::PreparingRebalance => {}
            // A known dynamic member rejoining a stable group (a client that lost its SyncGroup
            // answer), or a static one with changed protocols, triggers a rebalance.
            State::Empty | State::Stable | State::CompletingRebalance => {
                let initial_delay = shard.settings.group_initial_rebalance_delay;
                group.start_rebalance(now, initial_delay);
                if let Some(member) = group.members.get_mut(&member_id) {
                    member.joined = true;
                }
                debug!(
                    group = group_id,
                    generation = group.generation,
                    "rebalance started"
                );
            }
        }
        let generation = group.generation;
        ensure_completer(shard, &group_id, group);
        (member_id, generation)
    };
    coordinator.changed.notify(usize::MAX);

    // Wait for the join phase to end.
    let _awaiting = Awaiting::new(shard, &group_id, &member_id);
    loop {
        let listener = coordinator.changed.listen();
        {
            let mut groups = coordinator.groups.borrow_mut();
            let Some(group) = groups.get_mut(&group_id) else {
                return join_error(ResponseError::UnknownMemberId, &str_bytes(member_id));
            };
            let Some(member) = group.members.get_mut(&member_id) else {
                let error = group.gone_error(instance_id.as_deref());
                return join_error(error, &str_bytes(member_id));
            };
            if group.generation > generation_at_join {
                // Its SyncGroup is due within its session timeout, as Kafka expects: a member
                // that never sends it is expired like a silent one.
                member.awaiting = false;
                member.last_seen = shard.env.clock.now();
                return join_response(group, &member_id, version);
            }
        }
        if shard.stopping.is_triggered() {
            return join_error(
                ResponseError::CoordinatorNotAvailable,
                &str_bytes(member_id),
            );
        }
        futures_lite::future::or(listener, async {
            shard.stopping.wait().await;
        })
        .await;
    }
}

fn join_response(group: &Group, member_id: &str, version: i16) -> JoinGroupResponse {
    let protocol = group.protocol.clone().unwrap_or_default();
    let leader = group.leader.clone().unwrap_or_default();
    let members = if leader == member_id {
        group
            .members
            .iter()
            .map(|(id, m)| {
                let metadata = m
                    .protocols
                    .iter()
                    .find(|(name, _)| *name == protocol)
                    .map(|(_, metadata)| metadata.clone())
                    .unwrap_or_default();
                let mut entry = JoinGroupResponseMember::default()
                    .with_member_id(str_bytes(id.clone()))
                    .with_metadata(metadata);
                if version >= 5 {
                    entry = entry.with_group_instance_id(m.instance_id.clone().map(str_bytes));
                }
                entry
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut response = JoinGroupResponse::default()
        .with_generation_id(group.generation)
        .with_protocol_name(Some(str_bytes(protocol)))
        .with_leader(str_bytes(leader))
        .with_member_id(str_bytes(member_id.to_owned()))
        .with_members(members);
    if version >= 7 {
        response = response.with_protocol_type(group.protocol_type.clone().map(str_bytes));
    }
    response
}

/// Completes a group's join phase once every member has rejoined (or, for a group that was
/// empty, once the initial delay has passed), or at the rebalance deadline.
async fn complete_when_ready(shard: &Shard, group_id: &str) {
    // Spawned tasks run at once up to their first wait, and every spawner holds the groups
    // borrowed: step aside first.
    futures_lite::future::yield_now().await;
    let coordinator = &shard.groups;
    loop {
        let listener = coordinator.changed.listen();
        let deadline = {
            let mut groups = coordinator.groups.borrow_mut();
            let Some(group) = groups.get_mut(group_id) else {
                return;
            };
            if group.state != State::PreparingRebalance {
                group.completer_running = false;
                return;
            }
            let now = shard.env.clock.now();
            let all_joined = group.members.values().all(|m| m.joined);
            if now >= group.deadline || (!group.initial && all_joined) {
                group.complete_join();
                group.completer_running = false;
                info!(
                    group = group_id,
                    generation = group.generation,
                    members = group.members.len(),
                    protocol = group.protocol.as_deref().unwrap_or(""),
                    "rebalance completed"
                );
                drop(groups);
                coordinator.changed.notify(usize::MAX);
                return;
            }
            group.deadline
        };
        let wait = deadline.saturating_duration_since(shard.env.clock.now());
        futures_lite::future::or(listener, shard.env.clock.sleep(wait)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// SyncGroup, Heartbeat, LeaveGroup

pub async fn sync_group(
    shard: &Rc<Shard>,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let unavailable =
        SyncGroupResponse::default().with_error_code(ResponseError::CoordinatorNotAvailable.code());
    let group = request.group_id.to_string();
    on_coordinator(shard, &group, unavailable, SyncGroup(request, version)).await
}

async fn sync_local(
    shard: &Rc<Shard>,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let coordinator = &shard.groups;
    let group_id = request.group_id.to_string();
    let member_id = request.member_id.to_string();
    let fail = |error: ResponseError| SyncGroupResponse::default().with_error_code(error.code());
    let answer = |group: &Group, assignment: Bytes| {
        let mut response = SyncGroupResponse::default().with_assignment(assignment);
        if version >= 5 {
            response = response
                .with_protocol_type(group.protocol_type.clone().map(str_bytes))
                .with_protocol_name(group.protocol.clone().map(str_bytes));
        }
        response
    };
    let instance_id = request.group_instance_id.as_deref();
    let waited_since = shard.env.clock.now();
    let _awaiting = Awaiting::new(shard, &group_id, &member_id);
    loop {
        let listener = coordinator.changed.listen();
        let timeout = {
            let mut groups = coordinator.groups.borrow_mut();
            let Some(group) = groups.get_mut(&group_id) else {
                return fail(ResponseError::UnknownMemberId);
            };
            if let Err(error) = group.validate_member(&member_id, instance_id) {
                return fail(error);
            }
            if request.generation_id != group.generation {
                return fail(ResponseError::IllegalGeneration);
            }
            match group.state {
                State::Empty => return fail(ResponseError::UnknownMemberId),
                State::PreparingRebalance => return fail(ResponseError::RebalanceInProgress),
                State::Stable => {
                    let member = group.members.get_mut(&member_id).expect("checked above");
                    member.awaiting = false;
                    member.last_seen = shard.env.clock.now();
                    let assignment = member.assignment.clone();
                    return answer(group, assignment);
                }
                State::CompletingRebalance => {}
            }
            if group.leader.as_deref() == Some(&*member_id) {
                for assignment in &request.assignments {
                    if let Some(member) = group.members.get_mut(&*assignment.member_id) {
                        member.assignment = assignment.assignment.clone();
                    }
                }
                group.state = State::Stable;
                let member = group.members.get_mut(&member_id).expect("checked above");
                member.awaiting = false;
                member.last_seen = shard.env.clock.now();
                let assignment = member.assignment.clone();
                let response = answer(group, assignment);
                drop(groups);
                coordinator.changed.notify(usize::MAX);
                return response;
            }
            let member = group.members.get_mut(&member_id).expect("checked above");
            member.awaiting = true;
            member.rebalance_timeout
        };
        // A leader that never sends its assignments must not hold the followers forever.
        let remaining = timeout.saturating_sub(waited_since.elapsed());
        if remaining.is_zero() || shard.stopping.is_triggered() {
            let mut groups = coordinator.groups.borrow_mut();
            if let Some(group) = groups.get_mut(&group_id) {
                if group.state == State::CompletingRebalance
                    && group.generation == request.generation_id
                {
                    let delay = shard.settings.group_initial_rebalance_delay;
                    group.start_rebalance(shard.env.clock.now(), delay);
                    ensure_completer(shard, &group_id, group);
                }
            }
            drop(groups);
            coordinator.changed.notify(usize::MAX);
            return fail(ResponseError::RebalanceInProgress);
        }
        futures_lite::future::or(listener, shard.env.clock.sleep(remaining)).await;
    }
}

pub async fn heartbeat(
    shard: &Rc<Shard>,
    request: HeartbeatRequest,
    _version: i16,
) -> HeartbeatResponse {
    let unavailable =
        HeartbeatResponse::default().with_error_code(ResponseError::CoordinatorNotAvailable.code());
    let group = request.group_id.to_string();
    on_coordinator(shard, &group, unavailable, GroupHeartbeat(request)).await
}

fn heartbeat_local(shard: &Shard, request: &HeartbeatRequest) -> Option<ResponseError> {
    let mut groups = shard.groups.groups.borrow_mut();
    let Some(group) = groups.get_mut(&**request.group_id) else {
        return Some(ResponseError::UnknownMemberId);
    };
    let state = group.state;
    let generation = group.generation;
    if let Err(error) =
        group.validate_member(&request.member_id, request.group_instance_id.as_deref())
    {
        return Some(error);
    }
    let Some(member) = group.members.get_mut(&*request.member_id) else {
        return Some(ResponseError::UnknownMemberId);
    };
    member.last_seen = shard.env.clock.now();
    if state == State::PreparingRebalance {
        return Some(ResponseError::RebalanceInProgress);
    }
    if request.generation_id != generation {
        return Some(ResponseError::IllegalGeneration);
    }
    None
}

pub async fn leave_group(
    shard: &Rc<Shard>,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let unavailable = LeaveGroupResponse::default()
        .with_error_code(ResponseError::CoordinatorNotAvailable.code());
    let group = request.group_id.to_string();
    on_coordinator(shard, &group, unavailable, LeaveGroup(request, version)).await
}

fn leave_local(shard: &Rc<Shard>, request: &LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let coordinator = &shard.groups;
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let mut results = Vec::with_capacity(leaving.len());
    {
        let mut groups = coordinator.groups.borrow_mut();
        let Some(group) = groups.get_mut(&**request.group_id) else {
            return LeaveGroupResponse::default()
                .with_error_code(ResponseError::UnknownMemberId.code());
        };
        let mut removed_any = false;
        for (member_id, instance_id) in &leaving {
            match group.leave(member_id, instance_id.as_deref()) {
                Ok(removed) => {
                    debug!(
                        group = &**request.group_id,
                        member = removed.as_deref().unwrap_or(member_id),
                        instance = instance_id.as_deref().unwrap_or(""),
                        "member left"
                    );
                    removed_any |= removed.is_some();
                    results.push((member_id.clone(), instance_id.clone(), None));
                }
                Err(error) => {
                    results.push((member_id.clone(), instance_id.clone(), Some(error)));
                }
            }
        }
        if removed_any {
            member_gone(shard, &request.group_id, group);
        }
    }
    coordinator.changed.notify(usize::MAX);
    if version >= 3 {
        let members = results
            .into_iter()
            .map(|(member_id, instance_id, error)| {
                MemberResponse::default()
                    .with_member_id(str_bytes(member_id))
                    .with_group_instance_id(instance_id.map(str_bytes))
                    .with_error_code(error.map_or(0, |e| e.code()))
            })
            .collect();
        return LeaveGroupResponse::default().with_members(members);
    }
    let error = results.first().and_then(|(_, _, error)| *error);
    LeaveGroupResponse::default().with_error_code(error.map_or(0, |e| e.code()))
}

/// After members left or expired: an empty group becomes Empty, otherwise the rest rebalance.
fn member_gone(shard: &Rc<Shard>, group_id: &str, group: &mut Group) {
    if group.members.is_empty() {
        group.make_empty();
        return;
    }
    if group.state != State::PreparingRebalance {
        group.start_rebalance(
            shard.env.clock.now(),
            shard.settings.group_initial_rebalance_delay,
        );
    }
    ensure_completer(shard, group_id, group);
}

/// Starts the task completing `group`'s rebalance, unless one is running.
fn ensure_completer(shard: &Rc<Shard>, group_id: &str, group: &mut Group) {
    if group.completer_running {
        return;
    }
    group.completer_running = true;
    let shard = Rc::clone(shard);
    let id = group_id.to_owned();
    glommio::spawn_local(async move { complete_when_ready(&shard, &id).await }).detach();
}

/// Removes members whose session expired (no heartbeat for their session timeout, and no
/// JoinGroup or SyncGroup waiting). Run periodically on every shard.
pub fn expire_sessions(shard: &Rc<Shard>) {
    let coordinator = &shard.groups;
    let now = shard.env.clock.now();
    expire_consumer_members(shard, now);
    let mut changed = false;
    {
        let mut groups = coordinator.groups.borrow_mut();
        for (group_id, group) in groups.iter_mut() {
            let before = group.members.len();
            group.members.retain(|member_id, m| {
                let alive = m.awaiting || now.duration_since(m.last_seen) <= m.session_timeout;
                if !alive {
                    info!(
                        group = group_id,
                        member = member_id,
                        "member session expired"
                    );
                }
                alive
            });
            if group.members.len() != before {
                member_gone(shard, group_id, group);
                changed = true;
            }
        }
    }
    if changed {
        coordinator.changed.notify(usize::MAX);
    }
}

// ---------------------------------------------------------------------------------------------
// OffsetCommit, OffsetFetch

pub async fn offset_commit(
    shard: &Rc<Shard>,
    request: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let unknown = unknown_partitions(shard, &request);
    let unavailable = commit_response(&request, &unknown, |_, _| {
        Some(ResponseError::CoordinatorNotAvailable)
    });
    let group = request.group_id.to_string();
    // Every shard applies a catalog change before it is acknowledged, so the coordinator's
    // catalog agrees with this one: the set travels with the request.
    let call = CommitOffsets(request, unknown, version);
    on_coordinator(shard, &group, unavailable, call).await
}

/// The partitions of an OffsetCommit that no topic has, per this shard's catalog. As in
/// Kafka, their offsets are not stored and they are answered UNKNOWN_TOPIC_OR_PARTITION
/// whatever the group's state.
fn unknown_partitions(shard: &Shard, request: &OffsetCommitRequest) -> HashSet<(String, i32)> {
    request
        .topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .filter(|p| !partition_exists(shard, &topic.name, p.partition_index))
                .map(|p| (topic.name.to_string(), p.partition_index))
        })
        .collect()
}

/// Whether `unknown` holds the partition (without building a key when it is empty, as it is
/// for every commit but a mistaken one).
fn is_unknown(unknown: &HashSet<(String, i32)>, topic: &str, partition: i32) -> bool {
    !unknown.is_empty() && unknown.contains(&(topic.to_owned(), partition))
}

/// The answer to `request`: UNKNOWN_TOPIC_OR_PARTITION for the `unknown` partitions, `error`'s
/// answer for the others.
fn commit_response(
    request: &OffsetCommitRequest,
    unknown: &HashSet<(String, i32)>,
    error: impl Fn(&str, i32) -> Option<ResponseError>,
) -> OffsetCommitResponse {
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(
                            if is_unknown(unknown, &topic.name, p.partition_index) {
                                Some(ResponseError::UnknownTopicOrPartition)
                            } else {
                                error(&topic.name, p.partition_index)
                            }
                            .map_or(0, |e| e.code()),
                        )
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

async fn commit_local(
    shard: &Rc<Shard>,
    request: OffsetCommitRequest,
    unknown: HashSet<(String, i32)>,
    version: i16,
) -> OffsetCommitResponse {
    let partitions: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    if partitions > 0 && unknown.len() == partitions {
        // Nothing the coordinator could store: the group is neither checked nor created.
        return commit_response(&request, &unknown, |_, _| None);
    }
    let group_id = request.group_id.to_string();
    let consumer_refusal = shard.groups.consumer.borrow().get(&group_id).map(|group| {
        consumer_commit_refusal(
            group,
            &request.member_id,
            request.generation_id_or_member_epoch,
            version,
        )
    });
    let is_consumer_group = consumer_refusal.is_some();
    // Whether the committer may commit for the group now.
    let refused = if let Some(refusal) = consumer_refusal {
        refusal
    } else {
        let mut groups = shard.groups.groups.borrow_mut();
        match groups.get_mut(&group_id) {
            Some(group) if !group.members.is_empty() => {
                let generation = group.generation;
                let state = group.state;
                // A fenced static member (its instance taken over) is refused, as in Kafka.
                let valid =
                    group.validate_member(&request.member_id, request.group_instance_id.as_deref());
                match group.members.get_mut(&*request.member_id) {
                    _ if valid.is_err() => valid.err(),
                    None => Some(ResponseError::UnknownMemberId),
                    Some(_) if request.generation_id_or_member_epoch != generation => {
                        Some(ResponseError::IllegalGeneration)
                    }
                    Some(_) if state == State::CompletingRebalance => {
                        Some(ResponseError::RebalanceInProgress)
                    }
                    Some(member) => {
                        member.last_seen = shard.env.clock.now();
                        None
                    }
                }
            }
            // An empty or unknown group takes commits from anyone not claiming a generation
            // (the "simple consumer" commits of assign-only clients).
            _ if request.generation_id_or_member_epoch >= 0 => {
                Some(ResponseError::IllegalGeneration)
            }
            _ => None,
        }
    };
    if let Some(error) = refused {
        return commit_response(&request, &unknown, |_, _| Some(error));
    }
    let Some((_, partition)) = coordinator_of(shard, &group_id) else {
        return commit_response(&request, &unknown, |_, _| {
            Some(ResponseError::CoordinatorNotAvailable)
        });
    };
    let Some(log) = shard.partition(OFFSETS_TOPIC, partition as i32) else {
        return commit_response(&request, &unknown, |_, _| {
            Some(ResponseError::CoordinatorNotAvailable)
        });
    };
    let now_ms = SystemClock.now_ms();
    let mut builder = BatchBuilder::new(now_ms);
    let mut accepted: Vec<(String, i32, Committed)> = Vec::new();
    let mut too_large: HashSet<(String, i32)> = HashSet::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            if is_unknown(&unknown, &topic.name, p.partition_index) {
                continue;
            }
            let metadata = p.committed_metadata.as_ref().map(|m| m.to_string());
            if metadata
                .as_ref()
                .is_some_and(|m| m.len() > MAX_OFFSET_METADATA_BYTES)
            {
                too_large.insert((topic.name.to_string(), p.partition_index));
                continue;
            }
            let committed = Committed {
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata,
            };
            builder = builder.record(
                now_ms,
                Some(&offset_key(&group_id, &topic.name, p.partition_index)),
                Some(&offset_value(&committed)),
            );
            accepted.push((topic.name.to_string(), p.partition_index, committed));
        }
    }
    let mut failure = None;
    let _writing = shard.groups.writes.read().await;
    if !accepted.is_empty() {
        match append_offsets(shard, &log, Bytes::from(builder.build())).await {
            Ok(()) => {}
            Err(OffsetsWrite::Append(error)) => {
                warn!(group = group_id, "cannot store committed offsets: {error}");
                failure = Some(match errors::append_error(&error) {
                    ResponseError::MessageTooLarge => ResponseError::OffsetMetadataTooLarge,
                    _ => ResponseError::CoordinatorNotAvailable,
                });
            }
            // The coordinator moved: the client finds the new one and commits again.
            Err(OffsetsWrite::NotCommitted(error)) => {
                warn!(group = group_id, ?error, "committed offsets not replicated");
                failure = Some(ResponseError::NotCoordinator);
            }
        }
    }
    if failure.is_none() {
        for (topic, partition, committed) in accepted {
            apply_committed(
                &shard.groups,
                group_id.clone(),
                topic,
                partition,
                Some(committed),
            );
        }
    }
    if failure.is_none() && !is_consumer_group {
        let now = shard.env.clock.now();
        shard
            .groups
            .groups
            .borrow_mut()
            .entry(group_id.clone())
            .or_insert_with(|| Group::new(now));
    }
    commit_response(&request, &unknown, |topic, partition| {
        if too_large.contains(&(topic.to_owned(), partition)) {
            Some(ResponseError::OffsetMetadataTooLarge)
        } else {
            failure
        }
    })
}

/// One group's committed offsets for the asked partitions (all when `topics` is `None`):
/// (topic, [(partition, committed or None)]).
pub type FetchedOffsets = Vec<(String, Vec<(i32, Option<Committed>)>)>;

fn fetch_local(
    shard: &Shard,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    member: Option<(String, i32)>,
) -> Result<FetchedOffsets, ResponseError> {
    if let Some(refusal) = shard
        .groups
        .consumer
        .borrow()
        .get(group)
        .and_then(|g| consumer_fetch_refusal(g, member.as_ref()))
    {
        return Err(refusal);
    }
    let offsets = shard.groups.offsets.borrow();
    let committed = offsets.get(group);
    Ok(match topics {
        Some(topics) => topics
            .into_iter()
            .map(|(topic, partitions)| {
                let found = partitions
                    .into_iter()
                    .map(|p| {
                        (
                            p,
                            committed.and_then(|c| c.get(&(topic.clone(), p)).cloned()),
                        )
                    })
                    .collect();
                (topic, found)
            })
            .collect(),
        None => {
            let mut by_topic: BTreeMap<String, Vec<(i32, Option<Committed>)>> = BTreeMap::new();
            for ((topic, p), c) in committed.into_iter().flatten() {
                by_topic
                    .entry(topic.clone())
                    .or_default()
                    .push((*p, Some(c.clone())));
            }
            by_topic.into_iter().collect()
        }
    })
}

/// `member`: the member id and epoch an OffsetFetch v9+ names, checked against a
/// consumer-protocol group.
async fn fetch_offsets(
    shard: &Rc<Shard>,
    group: String,
    topics: Option<Vec<(String, Vec<i32>)>>,
    member: Option<(String, i32)>,
) -> Result<FetchedOffsets, ResponseError> {
    let Some((owner, _)) = coordinator_of(shard, &group) else {
        return Err(ResponseError::CoordinatorNotAvailable);
    };
    let call = FetchOffsets {
        group,
        topics,
        member,
    };
    shard
        .call(owner, call)
        .await
        .map_err(|error| error.code(Route::Coordinator))?
}

pub async fn offset_fetch(
    shard: &Rc<Shard>,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(request.groups.len());
        for wanted in &request.groups {
            let topics = wanted.topics.as_ref().map(|topics| {
                topics
                    .iter()
                    .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let entry = OffsetFetchResponseGroup::default().with_group_id(wanted.group_id.clone());
            let member = wanted
                .member_id
                .as_ref()
                .map(|id| (id.to_string(), wanted.member_epoch));
            let group = wanted.group_id.to_string();
            let entry = match fetch_offsets(shard, group, topics, member).await {
                Ok(found) => entry.with_topics(
                    found
                        .into_iter()
                        .map(|(topic, partitions)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(str_bytes(topic)))
                                .with_partitions(
                                    partitions
                                        .into_iter()
                                        .map(|(p, c)| {
                                            let (offset, epoch, metadata) = committed_fields(c);
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(p)
                                                .with_committed_offset(offset)
                                                .with_committed_leader_epoch(epoch)
                                                .with_metadata(Some(str_bytes(metadata)))
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
                Err(error) => entry.with_error_code(error.code()),
            };
            groups.push(entry);
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let topics = request.topics.as_ref().map(|topics| {
        topics
            .iter()
            .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    match fetch_offsets(shard, request.group_id.to_string(), topics, None).await {
        Ok(found) => {
            let topics = found
                .into_iter()
                .map(|(topic, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(str_bytes(topic)))
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(p, c)| {
                                    let (offset, epoch, metadata) = committed_fields(c);
                                    let mut partition = OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_metadata(Some(str_bytes(metadata)));
                                    if version >= 5 {
                                        partition = partition.with_committed_leader_epoch(epoch);
                                    }
                                    partition
                                })
                                .collect(),
                        )
                })
                .collect();
            OffsetFetchResponse::default().with_topics(topics)
        }
        Err(error) => {
            let response = OffsetFetchResponse::default();
            if version >= 2 {
                response.with_error_code(error.code())
            } else {
                response
            }
        }
    }
}

/// (offset, leader epoch, metadata) as OffsetFetch reports them; -1 and "" when nothing is
/// committed.
fn committed_fields(committed: Option<Committed>) -> (i64, i32, String) {
    match committed {
        Some(c) => (c.offset, c.leader_epoch, c.metadata.unwrap_or_default()),
        None => (-1, -1, String::new()),
    }
}

// ---------------------------------------------------------------------------------------------
// ListGroups, DescribeGroups

/// A group as ListGroups shows it.
pub struct Listed {
    id: String,
    protocol_type: String,
    state: &'static str,
    /// "classic" or "consumer" (KIP-848).
    kind: &'static str,
}

/// Every group this shard coordinates.
fn groups_here(shard: &Shard) -> Vec<Listed> {
    let classic = shard.groups.groups.borrow();
    let consumer = shard.groups.consumer.borrow();
    let classic = classic.iter().map(|(id, g)| Listed {
        id: id.clone(),
        protocol_type: g.protocol_type.clone().unwrap_or_default(),
        state: g.state.name(),
        kind: "classic",
    });
    let consumer = consumer.iter().map(|(id, g)| Listed {
        id: id.clone(),
        protocol_type: "consumer".to_owned(),
        state: g.state(),
        kind: "consumer",
    });
    classic.chain(consumer).collect()
}

/// Lists the groups this broker coordinates. A connection to a shard's own port (a node per
/// shard) speaks to that shard's node, which coordinates only its own groups: tools that ask
/// every node and merge the answers (librdkafka's list_groups) then see each group once. The
/// shared bootstrap address speaks for every shard.
pub async fn list_groups(
    shard: &Rc<Shard>,
    request: ListGroupsRequest,
    version: i16,
    came_in_on: super::ListenerKind,
) -> ListGroupsResponse {
    let mut listed = Vec::new();
    let targets = match came_in_on {
        super::ListenerKind::Node => shard.id..shard.id + 1,
        super::ListenerKind::Shared => 0..shard.settings.shards,
    };
    for target in targets {
        match shard.call(target, ListGroupsHere).await {
            Ok(groups) => listed.extend(groups),
            Err(_) => {
                return ListGroupsResponse::default()
                    .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            }
        }
    }
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|s| s.to_string())
        .collect();
    let types: Vec<String> = request.types_filter.iter().map(|t| t.to_string()).collect();
    let groups = listed
        .into_iter()
        .filter(|g| states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(g.state)))
        .filter(|g| types.is_empty() || types.iter().any(|t| t.eq_ignore_ascii_case(g.kind)))
        .map(|g| {
            let mut group = ListedGroup::default()
                .with_group_id(GroupId(str_bytes(g.id)))
                .with_protocol_type(str_bytes(g.protocol_type));
            if version >= 4 {
                group = group.with_group_state(StrBytes::from_static_str(g.state));
            }
            if version >= 5 {
                group = group.with_group_type(StrBytes::from_static_str(g.kind));
            }
            group
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

fn describe_local(shard: &Shard, group_id: &str, version: i16) -> DescribedGroup {
    let groups = shard.groups.groups.borrow();
    let described =
        DescribedGroup::default().with_group_id(GroupId(str_bytes(group_id.to_owned())));
    if shard.groups.consumer.borrow().contains_key(group_id) {
        // Not a classic group: ConsumerGroupDescribe describes it (Kafka, KIP-1043).
        return described
            .with_error_code(ResponseError::GroupIdNotFound.code())
            .with_group_state(StrBytes::from_static_str("Dead"));
    }
    let Some(group) = groups.get(group_id) else {
        return described.with_group_state(StrBytes::from_static_str("Dead"));
    };
    let protocol = group.protocol.clone().unwrap_or_default();
    let members = group
        .members
        .iter()
        .map(|(id, m)| {
            let metadata = m
                .protocols
                .iter()
                .find(|(name, _)| *name == protocol)
                .map(|(_, metadata)| metadata.clone())
                .unwrap_or_default();
            let mut member = DescribedGroupMember::default()
                .with_member_id(str_bytes(id.clone()))
                .with_client_id(str_bytes(m.client.client_id.clone()))
                .with_client_host(str_bytes(format!("/{}", m.client.host)))
                .with_member_metadata(metadata)
                .with_member_assignment(m.assignment.clone());
            if version >= 4 {
                member = member.with_group_instance_id(m.instance_id.clone().map(str_bytes));
            }
            member
        })
        .collect();
    described
        .with_group_state(StrBytes::from_static_str(group.state.name()))
        .with_protocol_type(str_bytes(group.protocol_type.clone().unwrap_or_default()))
        .with_protocol_data(str_bytes(protocol))
        .with_members(members)
}

pub async fn describe_groups(
    shard: &Rc<Shard>,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let unavailable = |group: &GroupId| {
        DescribedGroup::default()
            .with_group_id(group.clone())
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
    };
    let described =
        describe_each(shard, &request.groups, version, unavailable, DescribeGroup).await;
    DescribeGroupsResponse::default().with_groups(described)
}

/// Describes each group on its coordinator, in the order asked; `unavailable` answers for a
/// group whose coordinator cannot be reached.
async fn describe_each<C: Routed>(
    shard: &Rc<Shard>,
    group_ids: &[GroupId],
    version: i16,
    unavailable: fn(&GroupId) -> C::Reply,
    describe: fn(String, i16) -> C,
) -> Vec<C::Reply> {
    let mut described = Vec::with_capacity(group_ids.len());
    for group in group_ids {
        let id = group.to_string();
        let call = describe(id.clone(), version);
        described.push(on_coordinator(shard, &id, unavailable(group), call).await);
    }
    described
}

// ---------------------------------------------------------------------------------------------
// The new consumer group protocol (KIP-848): ConsumerGroupHeartbeat, ConsumerGroupDescribe.
// The state machine is `consumer_group`; here it meets the wire types, the catalog and the
// classic groups sharing the same group ids.

/// The Kafka error code of a refused heartbeat.
fn heartbeat_error_code(error: &HeartbeatError) -> ResponseError {
    match error {
        HeartbeatError::InvalidRequest(_) => ResponseError::InvalidRequest,
        HeartbeatError::UnsupportedAssignor(_) => ResponseError::UnsupportedAssignor,
        HeartbeatError::GroupIdNotFound => ResponseError::GroupIdNotFound,
        HeartbeatError::UnknownMemberId => ResponseError::UnknownMemberId,
        HeartbeatError::FencedMemberEpoch { .. } => ResponseError::FencedMemberEpoch,
        HeartbeatError::UnreleasedInstanceId => ResponseError::UnreleasedInstanceId,
        HeartbeatError::FencedInstanceId => ResponseError::FencedInstanceId,
    }
}

pub async fn consumer_group_heartbeat(
    shard: &Rc<Shard>,
    request: ConsumerGroupHeartbeatRequest,
    _version: i16,
    client: ClientInfo,
) -> ConsumerGroupHeartbeatResponse {
    let unavailable = ConsumerGroupHeartbeatResponse::default()
        .with_error_code(ResponseError::CoordinatorNotAvailable.code());
    let group = request.group_id.to_string();
    let call = ConsumerHeartbeat(request, client);
    on_coordinator(shard, &group, unavailable, call).await
}

fn to_assignment(partitions: &[ConsumerGroupHeartbeatTopicPartitions]) -> Assignment {
    let mut assignment = Assignment::new();
    for topic in partitions {
        assignment
            .entry(topic.topic_id)
            .or_default()
            .extend(topic.partitions.iter().copied());
    }
    assignment.retain(|_, partitions| !partitions.is_empty());
    assignment
}

fn consumer_heartbeat_local(
    shard: &Shard,
    request: &ConsumerGroupHeartbeatRequest,
    client: ClientInfo,
) -> ConsumerGroupHeartbeatResponse {
    let group_id = request.group_id.to_string();
    let heartbeat = Heartbeat {
        member_id: if request.member_id.is_empty() {
            shard.env.random.uuid().simple().to_string()
        } else {
            request.member_id.to_string()
        },
        member_epoch: request.member_epoch,
        instance_id: request.instance_id.as_ref().map(|i| i.to_string()),
        rack_id: request.rack_id.as_ref().map(|r| r.to_string()),
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        subscribed_topic_names: request
            .subscribed_topic_names
            .as_ref()
            .map(|names| names.iter().map(|n| n.to_string()).collect()),
        subscribed_topic_regex: request
            .subscribed_topic_regex
            .as_ref()
            .map(|r| r.to_string()),
        server_assignor: request.server_assignor.as_ref().map(|a| a.to_string()),
        owned: request.topic_partitions.as_deref().map(to_assignment),
        client_id: client.client_id,
        client_host: format!("/{}", client.host),
    };
    let result = consumer_group::validate(&group_id, &heartbeat)
        .and_then(|()| apply_consumer_heartbeat(shard, &group_id, &heartbeat));
    match result {
        Ok(answer) => {
            let assignment = answer.assignment.map(|assignment| {
                HeartbeatAssignment::default().with_topic_partitions(
                    assignment
                        .into_iter()
                        .map(|(topic, partitions)| {
                            ConsumerGroupHeartbeatResponsePartitions::default()
                                .with_topic_id(topic)
                                .with_partitions(partitions.into_iter().collect())
                        })
                        .collect(),
                )
            });
            let interval_ms = shard.settings.group_consumer_heartbeat_interval.as_millis();
            ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(str_bytes(answer.member_id)))
                .with_member_epoch(answer.member_epoch)
                .with_heartbeat_interval_ms(i32::try_from(interval_ms).unwrap_or(i32::MAX))
                .with_assignment(assignment)
        }
        Err(error) => {
            debug!(
                group = group_id,
                member = heartbeat.member_id,
                ?error,
                "heartbeat refused"
            );
            ConsumerGroupHeartbeatResponse::default()
                .with_error_code(heartbeat_error_code(&error).code())
                .with_error_message(Some(str_bytes(error.message())))
        }
    }
}

/// Runs a heartbeat against the group, creating it on a first join. A non-empty classic group
/// of the same id refuses it (GROUP_ID_NOT_FOUND, as Kafka does without group conversion); an
/// empty one gives way.
fn apply_consumer_heartbeat(
    shard: &Shard,
    group_id: &str,
    heartbeat: &Heartbeat,
) -> Result<HeartbeatAnswer, HeartbeatError> {
    let coordinator = &shard.groups;
    let mut groups = coordinator.consumer.borrow_mut();
    if heartbeat.member_epoch < 0 {
        let group = groups
            .get_mut(group_id)
            .ok_or(HeartbeatError::GroupIdNotFound)?;
        let answer = group.leave(
            &heartbeat.member_id,
            heartbeat.instance_id.as_deref(),
            heartbeat.member_epoch,
        )?;
        info!(
            group = group_id,
            member = heartbeat.member_id,
            epoch = heartbeat.member_epoch,
            "member left"
        );
        return Ok(answer);
    }
    if !groups.contains_key(group_id) {
        if heartbeat.member_epoch > 0 {
            // Kafka keeps groups across restarts and answers GROUP_ID_NOT_FOUND only for
            // groups that never existed. Here membership does not survive a restart, so a
            // member of a forgotten group is told to rejoin instead (librdkafka treats
            // GROUP_ID_NOT_FOUND as fatal).
            return Err(HeartbeatError::UnknownMemberId);
        }
        let mut classic = coordinator.groups.borrow_mut();
        if classic.get(group_id).is_some_and(|g| !g.members.is_empty()) {
            return Err(HeartbeatError::GroupIdNotFound);
        }
        classic.remove(group_id);
        groups.insert(group_id.to_owned(), ConsumerGroup::default());
    }
    let group = groups
        .get_mut(group_id)
        .ok_or(HeartbeatError::GroupIdNotFound)?;
    let catalog = shard.catalog.borrow();
    let topics = |name: &str| {
        catalog.topics.get(name).map(|topic| TopicInfo {
            id: topic.uuid(),
            partitions: i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX),
        })
    };
    let known = group.members.contains_key(&heartbeat.member_id);
    let assignment_epoch = group.assignment_epoch;
    let answer = group.heartbeat(heartbeat, &topics, shard.env.clock.now())?;
    // No partition held by two members (checked in debug builds: it walks the whole group).
    debug_assert_eq!(group.check_invariants(), Ok(()));
    if !known {
        info!(
            group = group_id,
            member = answer.member_id,
            instance = heartbeat.instance_id.as_deref().unwrap_or(""),
            "member joined"
        );
    }
    if group.assignment_epoch != assignment_epoch {
        info!(
            group = group_id,
            epoch = group.assignment_epoch,
            members = group.members.len(),
            assignor = group.assignor.as_deref().unwrap_or(""),
            "target assignment computed"
        );
    }
    Ok(answer)
}

/// Fences consumer-protocol members whose session or revocation time ran out.
fn expire_consumer_members(shard: &Shard, now: Instant) {
    let session_timeout = shard.settings.group_consumer_session_timeout;
    for (group_id, group) in shard.groups.consumer.borrow_mut().iter_mut() {
        for (member, reason) in group.expire(now, session_timeout) {
            info!(group = group_id, member, reason, "member fenced");
        }
    }
}

/// Whether an OffsetCommit may commit for a consumer-protocol group (Kafka's
/// `ConsumerGroup.validateOffsetCommit`).
fn consumer_commit_refusal(
    group: &ConsumerGroup,
    member_id: &str,
    epoch: i32,
    version: i16,
) -> Option<ResponseError> {
    // Admin tools and assign-only consumers commit without a member, to an empty group.
    if epoch < 0 && group.members.is_empty() {
        return None;
    }
    let Some(current) = group.member_epoch(member_id) else {
        return Some(ResponseError::UnknownMemberId);
    };
    if version < 9 {
        return Some(ResponseError::UnsupportedVersion);
    }
    (epoch != current).then_some(ResponseError::StaleMemberEpoch)
}

/// Whether an OffsetFetch (v9+, naming a member) may read a consumer-protocol group's offsets.
fn consumer_fetch_refusal(
    group: &ConsumerGroup,
    member: Option<&(String, i32)>,
) -> Option<ResponseError> {
    let (member_id, epoch) = member?;
    match group.member_epoch(member_id) {
        None => Some(ResponseError::UnknownMemberId),
        Some(current) if current != *epoch => Some(ResponseError::StaleMemberEpoch),
        Some(_) => None,
    }
}

pub async fn consumer_group_describe(
    shard: &Rc<Shard>,
    request: ConsumerGroupDescribeRequest,
    version: i16,
) -> ConsumerGroupDescribeResponse {
    let unavailable = |group: &GroupId| {
        ConsumerDescribedGroup::default()
            .with_group_id(group.clone())
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
    };
    let described = describe_each(
        shard,
        &request.group_ids,
        version,
        unavailable,
        DescribeConsumerGroup,
    )
    .await;
    ConsumerGroupDescribeResponse::default().with_groups(described)
}

fn describe_consumer_local(shard: &Shard, group_id: &str, version: i16) -> ConsumerDescribedGroup {
    let described = ConsumerDescribedGroup::default().with_group_id(GroupId(str_bytes(group_id)));
    let groups = shard.groups.consumer.borrow();
    let Some(group) = groups.get(group_id) else {
        // Also what a classic group gets: librdkafka's AdminClient then asks DescribeGroups.
        return described
            .with_error_code(ResponseError::GroupIdNotFound.code())
            .with_error_message(Some(str_bytes(format!(
                "group {group_id} is not a consumer group"
            ))));
    };
    let catalog = shard.catalog.borrow();
    let named = |assignment: &Assignment| {
        DescribedAssignment::default().with_topic_partitions(
            assignment
                .iter()
                .map(|(topic, partitions)| {
                    let name = catalog
                        .by_id(*topic)
                        .map_or_else(String::new, |(name, _)| name.clone());
                    DescribedTopicPartitions::default()
                        .with_topic_id(*topic)
                        .with_topic_name(TopicName(str_bytes(name)))
                        .with_partitions(partitions.iter().copied().collect())
                })
                .collect(),
        )
    };
    let members = group
        .members
        .values()
        .map(|m| {
            let target = group.target.get(&m.id).cloned().unwrap_or_default();
            let member = DescribedMember::default()
                .with_member_id(str_bytes(m.id.clone()))
                .with_instance_id(m.instance_id.clone().map(str_bytes))
                .with_rack_id(m.rack_id.clone().map(str_bytes))
                .with_member_epoch(m.epoch)
                .with_client_id(str_bytes(m.client_id.clone()))
                .with_client_host(str_bytes(m.client_host.clone()))
                .with_subscribed_topic_names(
                    m.subscribed
                        .iter()
                        .map(|t| TopicName(str_bytes(t.clone())))
                        .collect(),
                )
                .with_assignment(named(&m.assigned))
                .with_target_assignment(named(&target));
            if version >= 1 {
                member.with_member_type(1)
            } else {
                member
            }
        })
        .collect();
    described
        .with_group_state(StrBytes::from_static_str(group.state()))
        .with_group_epoch(group.group_epoch)
        .with_assignment_epoch(group.assignment_epoch)
        .with_assignor_name(str_bytes(
            group
                .assignor
                .clone()
                .unwrap_or_else(|| consumer_group::DEFAULT_ASSIGNOR.to_owned()),
        ))
        .with_members(members)
}

// ---------------------------------------------------------------------------------------------
// Cleaning __consumer_offsets

/// Records per batch when rewriting live offsets (well under max.message.bytes).
const CLEANING_BATCH_RECORDS: usize = 2000;

/// Drops superseded commits from the `__consumer_offsets` partitions this shard owns: a
/// partition that has rolled at least one segment gets its live offsets (the latest commit of
/// every group and partition hashed to it) appended afresh, and every segment entirely before
/// that rewrite is deleted. Run with retention; replay after a restart reads the rewrite last,
/// so it sees the same state. Returns the number of segments deleted.
pub async fn clean_offsets(shard: &Shard) -> usize {
    let (owned, partitions) = owned_offsets_partitions(shard);
    let mut deleted = 0;
    for partition in owned {
        let Some(log) = shard.partition(OFFSETS_TOPIC, partition as i32) else {
            continue;
        };
        if log.log.segment_base_offsets().len() < 2 {
            continue;
        }
        let Ok(_alone) = shard.groups.writes.write().await else {
            continue;
        };
        let rewrite_from = log.log.log_end_offset();
        let live: Vec<(Vec<u8>, Vec<u8>)> = shard
            .groups
            .offsets
            .borrow()
            .iter()
            .filter(|(group, _)| offsets_partition(group, partitions) == partition)
            .flat_map(|(group, committed)| {
                committed
                    .iter()
                    .map(move |((topic, p), c)| (offset_key(group, topic, *p), offset_value(c)))
            })
            .collect();
        let now_ms = SystemClock.now_ms();
        let mut failed = false;
        for chunk in live.chunks(CLEANING_BATCH_RECORDS) {
            let mut builder = BatchBuilder::new(now_ms);
            for (key, value) in chunk {
                builder = builder.record(now_ms, Some(key), Some(value));
            }
            if append_offsets(shard, &log, Bytes::from(builder.build()))
                .await
                .is_err()
            {
                warn!(partition, "cannot rewrite live committed offsets");
                failed = true;
                break;
            }
        }
        if failed {
            continue;
        }
        match log.log.delete_segments_before(rewrite_from).await {
            Ok(bases) if !bases.is_empty() => {
                info!(
                    partition,
                    segments = bases.len(),
                    live = live.len(),
                    "cleaned committed offsets"
                );
                deleted += bases.len();
            }
            Ok(_) => {}
            Err(error) => warn!(
                partition,
                "cannot delete superseded offsets segments: {error}"
            ),
        }
    }
    deleted
}

// ---------------------------------------------------------------------------------------------
// DeleteGroups, OffsetDelete

/// Writes tombstones for `partitions` of `group` to its offsets partition and forgets them.
async fn forget_offsets(
    shard: &Shard,
    group: &str,
    partitions: Vec<(String, i32)>,
) -> Result<(), ResponseError> {
    if partitions.is_empty() {
        return Ok(());
    }
    let Some((_, offsets_partition)) = coordinator_of(shard, group) else {
        return Err(ResponseError::CoordinatorNotAvailable);
    };
    let Some(log) = shard.partition(OFFSETS_TOPIC, offsets_partition as i32) else {
        return Err(ResponseError::CoordinatorNotAvailable);
    };
    let now_ms = SystemClock.now_ms();
    let mut builder = BatchBuilder::new(now_ms);
    for (topic, partition) in &partitions {
        builder = builder.record(now_ms, Some(&offset_key(group, topic, *partition)), None);
    }
    let _writing = shard.groups.writes.read().await;
    append_offsets(shard, &log, Bytes::from(builder.build()))
        .await
        .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
    for (topic, partition) in partitions {
        apply_committed(&shard.groups, group.to_owned(), topic, partition, None);
    }
    Ok(())
}

/// What DeleteGroups and OffsetDelete need to know of a group id on its coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// No group of either protocol, and no committed offsets.
    Unknown,
    /// Known (a group without members, or only committed offsets).
    Empty,
    /// A group of either protocol with members.
    Active,
}

fn presence(coordinator: &Coordinator, group: &str) -> Presence {
    let classic = coordinator.groups.borrow();
    let consumer = coordinator.consumer.borrow();
    let active = classic.get(group).is_some_and(|g| !g.members.is_empty())
        || consumer.get(group).is_some_and(|g| !g.members.is_empty());
    if active {
        Presence::Active
    } else if classic.contains_key(group)
        || consumer.contains_key(group)
        || coordinator.offsets.borrow().contains_key(group)
    {
        Presence::Empty
    } else {
        Presence::Unknown
    }
}

/// Deletes an empty group and its committed offsets.
async fn delete_local(shard: &Shard, group: &str) -> Option<ResponseError> {
    match presence(&shard.groups, group) {
        Presence::Unknown => return Some(ResponseError::GroupIdNotFound),
        Presence::Active => return Some(ResponseError::NonEmptyGroup),
        Presence::Empty => {}
    }
    let committed: Vec<(String, i32)> = shard
        .groups
        .offsets
        .borrow()
        .get(group)
        .map(|offsets| offsets.keys().cloned().collect())
        .unwrap_or_default();
    if let Err(error) = forget_offsets(shard, group, committed).await {
        return Some(error);
    }
    shard.groups.groups.borrow_mut().remove(group);
    shard.groups.consumer.borrow_mut().remove(group);
    shard.groups.offsets.borrow_mut().remove(group);
    info!(group, "group deleted");
    None
}

pub async fn delete_groups(
    shard: &Rc<Shard>,
    request: DeleteGroupsRequest,
    _version: i16,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group in &request.groups_names {
        let id = group.to_string();
        let unavailable = Some(ResponseError::CoordinatorNotAvailable);
        let error = on_coordinator(shard, &id, unavailable, DeleteGroup(id.clone())).await;
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group.clone())
                .with_error_code(error.map_or(0, |e| e.code())),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

pub async fn offset_delete(
    shard: &Rc<Shard>,
    request: OffsetDeleteRequest,
    _version: i16,
) -> OffsetDeleteResponse {
    // Kafka refuses an empty group id here before looking for a coordinator.
    if request.group_id.is_empty() {
        return OffsetDeleteResponse::default()
            .with_error_code(ResponseError::InvalidGroupId.code());
    }
    let unavailable = OffsetDeleteResponse::default()
        .with_error_code(ResponseError::CoordinatorNotAvailable.code());
    let group = request.group_id.to_string();
    on_coordinator(shard, &group, unavailable, DeleteOffsets(request)).await
}

/// The topics whose offsets OffsetDelete must keep because members consume them.
#[derive(Debug, PartialEq, Eq)]
enum Subscribed {
    Topics(HashSet<String>),
    /// The members' subscriptions cannot be read: Kafka then keeps every topic.
    All,
}

impl Subscribed {
    fn contains(&self, topic: &str) -> bool {
        match self {
            Subscribed::Topics(topics) => topics.contains(topic),
            Subscribed::All => true,
        }
    }
}

/// Kafka's `Group.validateOffsetDelete` and `isSubscribedToTopic`: an unknown group is
/// GROUP_ID_NOT_FOUND; a classic group with members that does not speak the consumer protocol
/// is NON_EMPTY_GROUP; otherwise the topics its members subscribe to (none when empty).
fn offset_delete_guard(
    coordinator: &Coordinator,
    group: &str,
) -> Result<Subscribed, ResponseError> {
    if let Some(classic) = coordinator.groups.borrow().get(group) {
        return classic_subscriptions(classic);
    }
    if let Some(consumer) = coordinator.consumer.borrow().get(group) {
        let topics = consumer
            .members
            .values()
            .flat_map(|m| m.subscribed.iter().cloned())
            .collect();
        return Ok(Subscribed::Topics(topics));
    }
    if coordinator.offsets.borrow().contains_key(group) {
        return Ok(Subscribed::Topics(HashSet::new()));
    }
    Err(ResponseError::GroupIdNotFound)
}

/// A classic group's subscribed topics, decoded from each member's metadata for the chosen
/// protocol as Kafka does (`ClassicGroup.computeSubscribedTopics`): the ConsumerProtocol
/// version, then the subscription read as version 0, the prefix of every later version.
fn classic_subscriptions(group: &Group) -> Result<Subscribed, ResponseError> {
    if group.members.is_empty() {
        return Ok(Subscribed::Topics(HashSet::new()));
    }
    if group.protocol_type.as_deref() != Some("consumer") {
        return Err(ResponseError::NonEmptyGroup);
    }
    let Some(protocol) = &group.protocol else {
        return Ok(Subscribed::All);
    };
    let mut topics = HashSet::new();
    for member in group.members.values() {
        let Some((_, metadata)) = member.protocols.iter().find(|(name, _)| name == protocol) else {
            return Ok(Subscribed::All);
        };
        let mut metadata = metadata.clone();
        if metadata.len() < 2 {
            return Ok(Subscribed::All);
        }
        metadata.advance(2);
        let Ok(subscription) = ConsumerProtocolSubscription::decode(&mut metadata, 0) else {
            return Ok(Subscribed::All);
        };
        topics.extend(subscription.topics.iter().map(|t| t.to_string()));
    }
    Ok(Subscribed::Topics(topics))
}

/// Whether `topic` has partition `partition`, per this shard's catalog.
fn partition_exists(shard: &Shard, topic: &str, partition: i32) -> bool {
    let catalog = shard.catalog.borrow();
    catalog
        .topics
        .get(topic)
        .is_some_and(|t| usize::try_from(partition).is_ok_and(|p| p < t.partitions.len()))
}

async fn offset_delete_local(shard: &Shard, request: &OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group = request.group_id.to_string();
    let subscribed = match offset_delete_guard(&shard.groups, &group) {
        Ok(subscribed) => subscribed,
        Err(error) => return OffsetDeleteResponse::default().with_error_code(error.code()),
    };
    // Per partition: an unknown topic or partition, a topic the members consume, or deleted
    // (a tombstone only where an offset is committed, as Kafka writes them).
    let mut doomed = Vec::new();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let index = p.partition_index;
            let error = if !partition_exists(shard, &name, index) {
                Some(ResponseError::UnknownTopicOrPartition)
            } else if subscribed.contains(&name) {
                Some(ResponseError::GroupSubscribedToTopic)
            } else {
                if committed_exists(&shard.groups, &group, &name, index) {
                    doomed.push((name.clone(), index));
                }
                None
            };
            partitions.push(
                OffsetDeleteResponsePartition::default()
                    .with_partition_index(index)
                    .with_error_code(error.map_or(0, |e| e.code())),
            );
        }
        topics.push(
            OffsetDeleteResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    if let Err(error) = forget_offsets(shard, &group, doomed).await {
        return OffsetDeleteResponse::default().with_error_code(error.code());
    }
    OffsetDeleteResponse::default().with_topics(topics)
}

fn committed_exists(coordinator: &Coordinator, group: &str, topic: &str, partition: i32) -> bool {
    coordinator
        .offsets
        .borrow()
        .get(group)
        .is_some_and(|offsets| offsets.contains_key(&(topic.to_owned(), partition)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_partitions_follow_java_string_hash_code() {
        // "".hashCode() == 0; "a" == 97; Kafka's partitionFor masks the sign bit.
        assert_eq!(offsets_partition("", 50), 0);
        assert_eq!(offsets_partition("a", 50), 97 % 50);
        // "polygenelubricants".hashCode() == i32::MIN: masked to 0.
        assert_eq!(offsets_partition("polygenelubricants", 50), 0);
    }

    #[test]
    fn offset_records_round_trip() {
        let committed = Committed {
            offset: 42,
            leader_epoch: 3,
            metadata: Some("meta".to_owned()),
        };
        let key = offset_key("group", "orders", 7);
        let value = offset_value(&committed);
        let decoded = decode_record(&key, Some(&value));
        assert_eq!(
            decoded,
            Some(("group".into(), "orders".into(), 7, Some(committed)))
        );
        assert_eq!(
            decode_record(&key, None),
            Some(("group".into(), "orders".into(), 7, None))
        );
        assert_eq!(decode_record(&key[..3], Some(&value)), None);
    }

    fn member(order: u64, protocols: &[&str]) -> Member {
        Member {
            instance_id: None,
            client: ClientInfo::default(),
            protocols: protocols
                .iter()
                .map(|p| ((*p).to_owned(), Bytes::new()))
                .collect(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            assignment: Bytes::new(),
            joined: true,
            awaiting: true,
            last_seen: Instant::now(),
            join_order: order,
        }
    }

    /// Member metadata as consumers send it: the ConsumerProtocol version, then the
    /// subscription at that version.
    fn subscription(version: i16, topics: &[&str]) -> Bytes {
        use kafka_protocol::protocol::Encodable;
        let subscription = ConsumerProtocolSubscription::default()
            .with_topics(topics.iter().map(|t| str_bytes(*t)).collect());
        let mut out = bytes::BytesMut::new();
        out.extend_from_slice(&version.to_be_bytes());
        subscription.encode(&mut out, version).expect("encode");
        out.freeze()
    }

    #[test]
    fn offset_delete_reads_classic_members_subscriptions_like_kafka() {
        let mut group = Group::new(Instant::now());
        assert_eq!(
            classic_subscriptions(&group),
            Ok(Subscribed::Topics(HashSet::new()))
        );
        group.protocol_type = Some("consumer".into());
        group.protocol = Some("range".into());
        let mut a = member(1, &["range"]);
        a.protocols[0].1 = subscription(3, &["orders", "payments"]);
        let mut b = member(2, &["range"]);
        b.protocols[0].1 = subscription(0, &["audit"]);
        group.members.insert("a".into(), a);
        group.members.insert("b".into(), b);
        let topics = ["orders", "payments", "audit"].map(String::from).into();
        assert_eq!(
            classic_subscriptions(&group),
            Ok(Subscribed::Topics(topics))
        );

        // Metadata that does not parse: Kafka keeps every topic.
        group.members.get_mut("b").expect("b").protocols[0].1 = Bytes::from_static(b"meta");
        assert_eq!(classic_subscriptions(&group), Ok(Subscribed::All));
        // No protocol chosen yet (the first rebalance): the same.
        group.protocol = None;
        assert_eq!(classic_subscriptions(&group), Ok(Subscribed::All));
        // Another protocol type with members: the whole request is refused.
        group.protocol_type = Some("connect".into());
        assert_eq!(
            classic_subscriptions(&group),
            Err(ResponseError::NonEmptyGroup)
        );
    }

    #[test]
    fn completing_a_join_drops_absent_members_and_picks_a_common_protocol() {
        let mut group = Group::new(Instant::now());
        group
            .members
            .insert("a".into(), member(1, &["cooperative-sticky", "range"]));
        group
            .members
            .insert("b".into(), member(2, &["range", "roundrobin"]));
        group.start_rebalance(Instant::now(), Duration::ZERO);
        group.members.get_mut("a").expect("a").joined = true;
        group.members.get_mut("b").expect("b").joined = true;
        group.members.insert("c".into(), member(3, &["range"]));
        group.members.get_mut("c").expect("c").joined = false;
        group.complete_join();
        assert_eq!(group.state, State::CompletingRebalance);
        assert_eq!(group.generation, 1);
        assert_eq!(group.protocol.as_deref(), Some("range"));
        assert_eq!(group.leader.as_deref(), Some("a"));
        assert!(!group.members.contains_key("c"));
    }

    fn static_member(order: u64, instance: &str, protocols: &[&str]) -> Member {
        Member {
            instance_id: Some(instance.to_owned()),
            ..member(order, protocols)
        }
    }

    #[test]
    fn a_static_members_requests_are_fenced_once_its_instance_has_another_member_id() {
        let mut group = Group::new(Instant::now());
        group
            .members
            .insert("i1-new".into(), static_member(1, "i1", &["range"]));
        group.members.insert("dyn".into(), member(2, &["range"]));
        // The instance's current member id, with or without the instance id.
        assert_eq!(group.validate_member("i1-new", Some("i1")), Ok(()));
        assert_eq!(group.validate_member("i1-new", None), Ok(()));
        assert_eq!(group.validate_member("dyn", None), Ok(()));
        // The member id the instance had before a newer consumer took it over: fenced.
        assert_eq!(
            group.validate_member("i1-old", Some("i1")),
            Err(ResponseError::FencedInstanceId)
        );
        // An instance the group does not have, or an unknown dynamic member: unknown.
        assert_eq!(
            group.validate_member("dyn", Some("i2")),
            Err(ResponseError::UnknownMemberId)
        );
        assert_eq!(
            group.validate_member("gone", None),
            Err(ResponseError::UnknownMemberId)
        );
        // A replaced member's pending JoinGroup or SyncGroup ends fenced; a dynamic one that
        // was removed ends unknown.
        assert_eq!(
            group.gone_error(Some("i1")),
            ResponseError::FencedInstanceId
        );
        assert_eq!(group.gone_error(Some("i2")), ResponseError::UnknownMemberId);
        assert_eq!(group.gone_error(None), ResponseError::UnknownMemberId);
    }

    #[test]
    fn leave_group_removes_by_instance_id_and_judges_each_member_like_kafka() {
        let mut group = Group::new(Instant::now());
        group
            .members
            .insert("a-1".into(), static_member(1, "a", &["range"]));
        group
            .members
            .insert("b-1".into(), static_member(2, "b", &["range"]));
        group
            .members
            .insert("c-1".into(), static_member(3, "c", &["range"]));
        group.members.insert("dyn".into(), member(4, &["range"]));
        group.pending.insert("pending".into());
        // By instance id alone (an administrator's removal).
        assert_eq!(group.leave("", Some("a")), Ok(Some("a-1".into())));
        assert!(!group.members.contains_key("a-1"));
        // An unknown instance, or neither id.
        assert_eq!(
            group.leave("", Some("zzz")),
            Err(ResponseError::UnknownMemberId)
        );
        assert_eq!(group.leave("", None), Err(ResponseError::UnknownMemberId));
        // The instance with a member id that is no longer its own: fenced, and it stays.
        assert_eq!(
            group.leave("b-0", Some("b")),
            Err(ResponseError::FencedInstanceId)
        );
        assert!(group.members.contains_key("b-1"));
        // Both ids matching.
        assert_eq!(group.leave("b-1", Some("b")), Ok(Some("b-1".into())));
        // A static member by member id alone, a dynamic one, a pending one, an unknown one.
        assert_eq!(group.leave("c-1", None), Ok(Some("c-1".into())));
        assert_eq!(group.leave("dyn", None), Ok(Some("dyn".into())));
        assert_eq!(group.leave("pending", None), Ok(None));
        assert!(group.pending.is_empty());
        assert_eq!(
            group.leave("dyn", None),
            Err(ResponseError::UnknownMemberId)
        );
        assert!(group.members.is_empty());
    }

    #[test]
    fn a_static_rejoin_keeps_the_protocol_unless_the_selection_would_change() {
        let mut group = Group::new(Instant::now());
        group.members.insert(
            "a-1".into(),
            static_member(1, "a", &["range", "roundrobin"]),
        );
        group.members.insert(
            "b-1".into(),
            static_member(2, "b", &["range", "roundrobin"]),
        );
        group.start_rebalance(Instant::now(), Duration::ZERO);
        for m in group.members.values_mut() {
            m.joined = true;
        }
        group.complete_join();
        assert_eq!(group.protocol.as_deref(), Some("range"));
        // "a" comes back with other metadata but the same protocols: the selection stays, so
        // no rebalance is needed (Kafka compares the selected protocol).
        let mut back = static_member(1, "a", &["range", "roundrobin"]);
        back.protocols[0].1 = Bytes::from_static(b"other metadata");
        group.members.remove("a-1");
        group.members.insert("a-2".into(), back);
        assert_eq!(group.select_protocol(), group.protocol);
        // Back preferring roundrobin only: the selection changes, a rebalance is due.
        group.members.remove("a-2");
        group
            .members
            .insert("a-3".into(), static_member(1, "a", &["roundrobin"]));
        assert_eq!(group.select_protocol().as_deref(), Some("roundrobin"));
        assert_ne!(group.select_protocol(), group.protocol);
    }
}
