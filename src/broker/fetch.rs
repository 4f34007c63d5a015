//! Fetch: read each partition on its owner, wait (long poll) until `min_bytes` are there or
//! `max_wait_ms` has passed, and trim the answer to `max_bytes`.
//!
//! Every round reads all requested partitions (one call per owning shard). When the round
//! found fewer than `min_bytes`, each owner is asked to wait until one of its partitions grows
//! past the offset asked for, or the deadline; the first owner to report new data ends the
//! wait and the next round reads again. Fetch sessions (KIP-227) are not kept: every response
//! has session id 0, which tells clients to send full fetch requests.
//!
//! From v13 a request names topics by id (KIP-516), and the answer names them the same way;
//! an id this broker's catalog does not have is UNKNOWN_TOPIC_ID for each of its partitions.
//! From v15 a follower names itself in `replica_state` (KIP-903): its node id and the broker
//! epoch of its process, which the leader's state machine uses to tell a dead process's
//! fetch from its successor's.
//!
//! Partitions owned by this shard are read into pieces that stay where the engine holds them
//! (the tail cache's buffers, O_DIRECT read buffers) and are written to the socket from there
//! (`ringlog_net::response`). Partitions of other shards come back through the mesh as a copy:
//! those buffers belong to the other executor's thread.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use event_listener::Event;
use kafka_protocol::messages::fetch_request::FetchTopic;
use kafka_protocol::messages::fetch_response::{
    EpochEndOffset, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use kafka_protocol::ResponseError;
use ringlog_engine::FetchedRecords;
use ringlog_net::errors;
use ringlog_net::response::{FetchAnswer, Piece};
use ringlog_replication::{Diverging, FollowerRefusal};

use super::mesh::{self, ByOwner, Call};
use super::replica::check_current_epoch;
use super::Shard;

/// Longest long poll honoured, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

/// A requested partition: its owner and what to ask it, or why it cannot be read.
type Resolved = Result<(usize, FetchPart), ResponseError>;

/// One partition to read, sent to its owner.
#[derive(Debug, Clone)]
pub struct FetchPart {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub max_bytes: usize,
    /// The leader epoch the fetcher believes current (-1: unchecked), KIP-320.
    pub current_leader_epoch: i32,
    /// A follower's fetch. Followers read up to the log end and report their progress;
    /// consumers read below the high watermark.
    pub follower: Option<FollowerFetch>,
}

/// What a follower's fetch says besides a consumer's.
#[derive(Debug, Clone, Copy)]
pub struct FollowerFetch {
    pub replica: i32,
    /// The broker epoch of the follower's process (Fetch v15's `replica_state.replica_epoch`),
    /// `None` when the request does not say (before v15, or -1).
    pub broker_epoch: Option<u64>,
    /// The epoch of the follower's last batch (KIP-279's divergence check).
    pub last_fetched_epoch: i32,
    /// When the request arrived, on this broker's clock.
    pub request_ms: i64,
}

/// What one partition read returned: `records` are pieces of memory on this shard, or
/// (`Bytes`) a copy that came through the mesh.
#[derive(Debug, Clone)]
pub struct FetchOutcome<R = Vec<Piece>> {
    pub error: Option<ResponseError>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// A follower's log diverges from the leader's here (KIP-279): it truncates, no records.
    pub diverging: Option<Diverging>,
    pub records: R,
}

/// A partition read on another shard, sent back through the mesh.
pub type RemoteOutcome = FetchOutcome<Bytes>;

impl<R: Default> FetchOutcome<R> {
    fn failed(error: ResponseError) -> Self {
        Self {
            error: Some(error),
            high_watermark: -1,
            log_start_offset: -1,
            diverging: None,
            records: R::default(),
        }
    }
}

impl FetchOutcome {
    fn record_bytes(&self) -> usize {
        self.records.iter().map(|p| p.as_bytes().len()).sum()
    }
}

impl<R> FetchOutcome<R> {
    /// The same outcome with its records in another form.
    fn map<S>(self, convert: impl FnOnce(R) -> S) -> FetchOutcome<S> {
        FetchOutcome {
            error: self.error,
            high_watermark: self.high_watermark,
            log_start_offset: self.log_start_offset,
            diverging: self.diverging,
            records: convert(self.records),
        }
    }
}

impl From<RemoteOutcome> for FetchOutcome {
    fn from(remote: RemoteOutcome) -> Self {
        remote.map(|bytes| vec![Piece::Bytes(bytes)])
    }
}

pub async fn fetch(shard: &Rc<Shard>, request: FetchRequest, version: i16) -> FetchAnswer {
    let started = shard.env.clock.now();
    let max_wait =
        Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0)).min(MAX_WAIT_CAP);
    let deadline = started + max_wait;
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let max_bytes = match usize::try_from(request.max_bytes) {
        Ok(0) | Err(_) => usize::MAX,
        Ok(bytes) => bytes,
    };
    // A follower's fetch (Fetch v15 moves the replica id into ReplicaState, with the
    // follower's broker epoch; a consumer's is -1, as is an unknown epoch).
    let (replica_id, broker_epoch) = if version >= 15 {
        let state = &request.replica_state;
        (state.replica_id.0, u64::try_from(state.replica_epoch).ok())
    } else {
        (request.replica_id.0, None)
    };
    let follower = (replica_id >= 0).then_some(replica_id);
    let request_ms = shard.env.clock.now_ms();
    // Where each requested partition is answered from, in request order.
    let mut parts: Vec<(usize, usize, Resolved)> = Vec::new();
    for (topic_index, topic) in request.topics.iter().enumerate() {
        let named = topic_named(shard, version, topic);
        for (partition_index, wanted) in topic.partitions.iter().enumerate() {
            let resolved = named.clone().and_then(|name| {
                let owner = shard.route(&name, wanted.partition)?;
                Ok((owner, name))
            });
            let resolved = resolved.map(|(owner, name)| {
                // No partition reads past the response's own limit (KIP-74): the first
                // partition with data then fits it, unless its first batch alone is larger
                // (returned whole, so a consumer always makes progress).
                let partition_max_bytes = usize::try_from(wanted.partition_max_bytes).unwrap_or(0);
                let part = FetchPart {
                    topic: name,
                    partition: wanted.partition,
                    offset: wanted.fetch_offset,
                    max_bytes: partition_max_bytes.min(max_bytes),
                    current_leader_epoch: wanted.current_leader_epoch,
                    follower: follower.map(|replica| FollowerFetch {
                        replica,
                        broker_epoch,
                        last_fetched_epoch: wanted.last_fetched_epoch,
                        request_ms,
                    }),
                };
                (owner, part)
            });
            parts.push((topic_index, partition_index, resolved));
        }
    }
    let mut by_owner: ByOwner<usize, FetchPart> = ByOwner::default();
    for (position, (_, _, resolved)) in parts.iter().enumerate() {
        if let Ok((owner, part)) = resolved {
            by_owner.add(*owner, position, part.clone());
        }
    }
    let mut outcomes: Vec<Option<FetchOutcome>>;
    loop {
        outcomes = vec![None; parts.len()];
        let mut remote = by_owner.clone();
        let local = remote.take(shard.id);
        let read_here = async {
            let Some((positions, owned)) = local else {
                return Vec::new();
            };
            let outcomes = read_local(shard, owned).await;
            positions.into_iter().zip(outcomes).collect()
        };
        let read_there = mesh::scatter(shard, remote, Read, RemoteOutcome::failed);
        let (here, there) = futures_lite::future::zip(read_here, read_there).await;
        for (position, outcome) in here {
            outcomes[position] = Some(outcome);
        }
        for (position, outcome) in there {
            outcomes[position] = Some(outcome.into());
        }
        let bytes: usize = outcomes
            .iter()
            .flatten()
            .map(FetchOutcome::record_bytes)
            .sum();
        let failed = parts.iter().any(|(_, _, resolved)| resolved.is_err())
            || outcomes
                .iter()
                .flatten()
                .any(|o| o.error.is_some() || o.diverging.is_some());
        let now = shard.env.clock.now();
        if bytes >= min_bytes.max(1) || failed || now >= deadline || by_owner.is_empty() {
            break;
        }
        // Wait for any owner to see its partitions grow, or the deadline.
        let woken = Rc::new(Event::new());
        let listener = woken.listen();
        let mut waiters = Vec::with_capacity(by_owner.len());
        for (owner, _, owned) in by_owner.iter() {
            let watched: Vec<Watched> = owned
                .iter()
                .map(|part| Watched {
                    topic: part.topic.clone(),
                    partition: part.partition,
                    offset: part.offset,
                    follower: part.follower.is_some(),
                })
                .collect();
            let shard = Rc::clone(shard);
            let woken = Rc::clone(&woken);
            let remaining = deadline - now;
            waiters.push(glommio::spawn_local(async move {
                let call = WaitForData {
                    watched,
                    timeout: remaining,
                };
                let grew = shard.call(owner, call).await;
                if matches!(grew, Ok(true)) {
                    woken.notify(usize::MAX);
                }
            }));
        }
        let stopping = Rc::clone(&shard.stopping);
        futures_lite::future::or(
            futures_lite::future::or(listener, shard.env.clock.sleep(deadline - now)),
            async move { stopping.wait().await },
        )
        .await;
        if shard.stopping.is_triggered() {
            break;
        }
        // Waiters still running end by the deadline on their own; their answer is not needed.
        for waiter in waiters {
            waiter.detach();
        }
    }
    build_response(version, &request, &parts, outcomes, max_bytes)
}

/// The name of a requested topic: the request's up to v12, the catalog's topic of that id from
/// v13 (KIP-516). The nil id is no topic's.
fn topic_named(shard: &Shard, version: i16, topic: &FetchTopic) -> Result<String, ResponseError> {
    if version < 13 {
        return Ok(topic.topic.0.to_string());
    }
    if topic.topic_id.is_nil() {
        return Err(ResponseError::UnknownTopicId);
    }
    shard
        .catalog
        .borrow()
        .by_id(topic.topic_id)
        .map(|(name, _)| name.clone())
        .ok_or(ResponseError::UnknownTopicId)
}

fn build_response(
    version: i16,
    request: &FetchRequest,
    parts: &[(usize, usize, Resolved)],
    outcomes: Vec<Option<FetchOutcome>>,
    max_bytes: usize,
) -> FetchAnswer {
    // Each topic's partitions' records, in the order the partitions are added below.
    let mut records: Vec<Vec<Vec<Piece>>> = vec![Vec::new(); request.topics.len()];
    let mut topics: Vec<FetchableTopicResponse> = request
        .topics
        .iter()
        .map(|topic| {
            // Named as the request named it: by id from v13, by name before.
            let named = if version >= 13 {
                FetchableTopicResponse::default().with_topic_id(topic.topic_id)
            } else {
                FetchableTopicResponse::default().with_topic(topic.topic.clone())
            };
            named.with_partitions(Vec::with_capacity(topic.partitions.len()))
        })
        .collect();
    // The response-wide max_bytes is applied in request order: the first partition with data
    // is always included (KIP-74), later ones only while they fit.
    let mut budget = max_bytes;
    let mut included_any = false;
    for ((topic_index, partition_index, resolved), outcome) in parts.iter().zip(outcomes) {
        let wanted = &request.topics[*topic_index].partitions[*partition_index];
        let outcome = match (resolved, outcome) {
            (Err(error), _) => FetchOutcome::failed(*error),
            (Ok(_), Some(outcome)) => outcome,
            (Ok(_), None) => FetchOutcome::failed(ResponseError::UnknownServerError),
        };
        let len = outcome.record_bytes();
        let mut pieces = outcome.records;
        if len > 0 {
            if included_any && len > budget {
                pieces = Vec::new();
            } else {
                budget = budget.saturating_sub(len);
                included_any = true;
            }
        }
        records[*topic_index].push(pieces);
        // `records` stays unset: the frame carries the pieces in its place.
        let mut data = PartitionData::default()
            .with_partition_index(wanted.partition)
            .with_error_code(outcome.error.map_or(0, |e| e.code()))
            .with_high_watermark(outcome.high_watermark)
            .with_last_stable_offset(outcome.high_watermark);
        if version >= 5 {
            data = data.with_log_start_offset(outcome.log_start_offset);
        }
        if version >= 4 {
            data = data.with_aborted_transactions(Some(Vec::new()));
        }
        if version >= 11 {
            data = data.with_preferred_read_replica(BrokerId(-1));
        }
        if let (Some(diverging), true) = (outcome.diverging, version >= 12) {
            data = data.with_diverging_epoch(
                EpochEndOffset::default()
                    .with_epoch(diverging.epoch)
                    .with_end_offset(diverging.end_offset),
            );
        }
        topics[*topic_index].partitions.push(data);
    }
    FetchAnswer {
        response: FetchResponse::default().with_responses(topics),
        records: records.into_iter().flatten().collect(),
    }
}

/// Reads partitions for a connection on another shard (see [`read_for_remote`]): one outcome
/// per part, in order.
pub struct Read(pub Vec<FetchPart>);

impl Call for Read {
    type Reply = Vec<RemoteOutcome>;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        read_for_remote(&shard, self.0).await
    }
}

/// A partition a long poll waits on: it has news when what the fetcher may read (the log
/// end for a follower, the high watermark for a consumer) is past `offset`.
#[derive(Debug, Clone)]
pub struct Watched {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub follower: bool,
}

/// Waits on a partitions' owner until one of them grows (see [`wait_for_data`]).
pub struct WaitForData {
    pub watched: Vec<Watched>,
    pub timeout: Duration,
}

impl Call for WaitForData {
    type Reply = bool;

    async fn run(self, shard: Rc<Shard>) -> bool {
        wait_for_data(&shard, &self.watched, self.timeout).await
    }
}

/// Reads the parts owned by this shard, each up to its own `max_bytes`, as pieces of the
/// engine's buffers.
pub async fn read_local(shard: &Shard, parts: Vec<FetchPart>) -> Vec<FetchOutcome> {
    let mut outcomes = Vec::with_capacity(parts.len());
    for part in parts {
        let outcome = read_one(shard, &part).await;
        outcomes
            .push(outcome.map(|records| records.pieces.into_iter().map(Piece::Records).collect()));
    }
    outcomes
}

/// Reads the parts owned by this shard for a connection on another shard: a copy, since the
/// buffers cannot leave this executor's thread.
pub async fn read_for_remote(shard: &Shard, parts: Vec<FetchPart>) -> Vec<RemoteOutcome> {
    let mut outcomes = Vec::with_capacity(parts.len());
    for part in parts {
        let outcome = read_one(shard, &part).await;
        outcomes.push(outcome.map(|records| Bytes::from(records.to_vec())));
    }
    outcomes
}

async fn read_one(shard: &Shard, part: &FetchPart) -> FetchOutcome<FetchedRecords> {
    let empty = || FetchedRecords::empty(part.offset);
    let failed = |error| FetchOutcome {
        error: Some(error),
        high_watermark: -1,
        log_start_offset: -1,
        diverging: None,
        records: empty(),
    };
    let Some(partition) = shard.partition(&part.topic, part.partition) else {
        return failed(ResponseError::KafkaStorageError);
    };
    let Some(leader_epoch) = partition.leading_epoch() else {
        return failed(ResponseError::NotLeaderOrFollower);
    };
    if let Err(error) = check_current_epoch(part.current_leader_epoch, leader_epoch) {
        return failed(error);
    }
    let log = &partition.log;
    let log_end = log.log_end_offset();
    let upper = match part.follower {
        Some(follower) => {
            let diverging = ringlog_replication::divergence(
                |epoch| log.end_offset_for_epoch(epoch),
                follower.last_fetched_epoch,
                part.offset,
            );
            if let Some(diverging) = diverging {
                return FetchOutcome {
                    error: None,
                    high_watermark: partition.high_watermark(),
                    log_start_offset: log.log_start_offset(),
                    diverging: Some(diverging),
                    records: empty(),
                };
            }
            let now = shard.env.clock.now_ms();
            let progress = partition.follower_fetched(
                follower.replica,
                part.offset,
                now,
                follower.request_ms,
                follower.broker_epoch,
            );
            tracing::trace!(topic = %part.topic, partition = part.partition, replica = follower.replica, broker_epoch = ?follower.broker_epoch, offset = part.offset, ?progress, high_watermark = partition.high_watermark(), "follower fetch");
            match progress {
                Ok(true) => {
                    shard.appended.notify(usize::MAX);
                }
                Ok(false) => {}
                Err(FollowerRefusal::NotAReplica(_)) => {
                    return failed(ResponseError::NotLeaderOrFollower)
                }
                Err(FollowerRefusal::OffsetOutOfRange { .. }) => {
                    let mut outcome = failed(ResponseError::OffsetOutOfRange);
                    outcome.high_watermark = partition.high_watermark();
                    outcome.log_start_offset = log.log_start_offset();
                    return outcome;
                }
            }
            log_end
        }
        None => partition.high_watermark(),
    };
    let mut outcome = FetchOutcome {
        error: None,
        high_watermark: partition.high_watermark(),
        log_start_offset: log.log_start_offset(),
        diverging: None,
        records: empty(),
    };
    // At or past what this fetcher may read, but within the log: nothing yet (a consumer
    // ahead of the high watermark waits, as in Kafka).
    if (part.offset >= upper && part.offset <= log_end) || part.max_bytes == 0 {
        return outcome;
    }
    match log.fetch(part.offset, part.max_bytes, Some(upper)).await {
        Ok(records) => {
            shard.count_read(records.source, records.bytes);
            if part.follower.is_some() {
                shard.count_replication(None, records.bytes);
            }
            outcome.records = records;
        }
        Err(error) => outcome.error = Some(errors::read_error(&error)),
    }
    outcome
}

/// Waits until one of `watched` has data past its offset, or `timeout`; true when data
/// arrived.
pub async fn wait_for_data(shard: &Shard, watched: &[Watched], timeout: Duration) -> bool {
    let deadline = shard.env.clock.now() + timeout;
    loop {
        let listener = shard.appended.listen();
        let grown = watched.iter().any(|watched| {
            shard
                .partition(&watched.topic, watched.partition)
                .is_some_and(|p| {
                    let readable = if watched.follower {
                        p.log.log_end_offset()
                    } else {
                        p.high_watermark()
                    };
                    // A partition that stopped being led here has news too: the next round
                    // answers NOT_LEADER_OR_FOLLOWER at once.
                    readable > watched.offset || p.leading_epoch().is_none()
                })
        });
        if grown {
            return true;
        }
        let now = shard.env.clock.now();
        if now >= deadline || shard.stopping.is_triggered() {
            return false;
        }
        let woke = futures_lite::future::or(
            async {
                listener.await;
                true
            },
            async {
                futures_lite::future::or(
                    shard.env.clock.sleep(deadline - now),
                    shard.stopping.wait(),
                )
                .await;
                false
            },
        )
        .await;
        if !woke {
            return false;
        }
    }
}
