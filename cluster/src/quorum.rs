//! One voter of the controller quorum: raft-rs's `RawNode` over an in-memory [`LogView`], and
//! the [`Controller`] state machine applied to what commits. It does no I/O: a driver (the
//! server, or [`crate::sim`]) feeds it [`Input`]s and carries out each [`Output`].
//!
//! Durability is the driver's: an output's `persist` batch must be durable before the
//! output's `send_after_persist` messages go out and before `Persisted { number }` comes back
//! (raft-rs's asynchronous ready). Until then raft-rs does not count the batch's entries as
//! this voter's, so nothing is committed, applied or answered on the strength of a write that
//! a crash could lose. A leader's own replication messages are sent at once (Raft thesis
//! 10.2.1); a follower's answers wait for the disk, and so do answers produced while an
//! earlier batch is still being written (`held`).
//!
//! Decisions: the leader runs one client command at a time. It decides against the image of
//! everything committed so far, proposes the records, and only after they are applied takes
//! the next command, so a decision is always made against the image its records apply to. A
//! new leader first waits until it has applied an entry of its own term (raft-rs's no-op),
//! so its image holds everything any earlier leader committed, then activates the
//! controller (every broker's session starts anew). Client commands are answered once their
//! records are applied, with the controller's per-item results.
//!
//! Determinism: raft-rs draws each randomized election timeout from the thread's RNG. After
//! every call into raft-rs, whenever the election clock was just reset
//! (`election_elapsed == 0`), the timeout is drawn again from this voter's seeded [`Rng`]
//! (the spike's finding: 100/100 seeds reproducible with the redraw, 0/100 without).
//!
//! Bytes from peers are decoded by [`codec`] and checked (sender, recipient, message type,
//! every entry and snapshot decodes) before raft-rs sees them: garbage is dropped and
//! counted, never a panic, and everything applied later is known to decode.

use std::collections::{BTreeMap, VecDeque};

use kafka_protocol::ResponseError;
use raft::prelude::{Entry, EntryType, Message, MessageType};
use raft::{RawNode, StateRole};
use thiserror::Error;

use crate::codec;
use crate::controller::{
    AlterPartition, Controller, ControllerSettings, Election, HeartbeatAnswer, NewTopic, Refusal,
};
use crate::image::MetadataImage;
use crate::log::{to_log_entry, HardStateRecord, LogView, SnapshotRecord};
use crate::node::{HostId, NodeId};
use crate::records::{RecordBatch, Registration, TopicId};
use crate::rng::Rng;

pub use crate::log::{LogEntry, PersistBatch, Recovered};

/// A client request, numbered by the driver (unique among its outstanding requests).
pub type RequestId = u64;

/// Voters a quorum may have: a limit, and raft-rs's ids fit easily.
pub const VOTERS_MAX: usize = 9;
/// Batches one [`ControllerNode::committed_since`] returns.
pub const CATCH_UP_BATCHES_MAX: usize = 1024;

#[derive(Debug, Clone)]
pub struct QuorumSettings {
    /// Raft's clock: one raft tick per interval of `Tick { now_ms }`.
    pub tick_interval_ms: u64,
    /// Election timeout, in ticks: drawn from `[election_ticks, 2 * election_ticks)`.
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// A snapshot of the image is taken, and the entries it covers dropped, every this many
    /// applied entries: it bounds the log replayed on restart.
    pub compact_entries: u64,
    /// Client commands waiting for the leader's decision loop; more are refused (retriable).
    pub queued_commands_max: usize,
    pub controller: ControllerSettings,
}

impl Default for QuorumSettings {
    fn default() -> Self {
        Self {
            tick_interval_ms: 50,
            election_ticks: 6,
            heartbeat_ticks: 2,
            compact_entries: 1024,
            queued_commands_max: 256,
            controller: ControllerSettings::new(9_000),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Input {
    /// The driver's clock; raft ticks once per `tick_interval_ms` that passed.
    Tick {
        now_ms: u64,
    },
    /// Bytes a voter sent (the transport says which).
    Peer {
        from: HostId,
        bytes: Vec<u8>,
    },
    Client {
        id: RequestId,
        command: Command,
    },
    /// The output batch numbered `number`, and every one before it, is durable.
    Persisted {
        number: u64,
    },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Command {
    Register(Registration),
    Heartbeat {
        host: HostId,
        epoch: u64,
        caught_up: bool,
        shutting_down: bool,
    },
    CreateTopics(Vec<NewTopic>),
    DeleteTopics(Vec<String>),
    CreatePartitions {
        name: String,
        count: u32,
        assignment: Option<Vec<Vec<NodeId>>>,
    },
    AlterConfigs {
        name: String,
        changes: Vec<(String, Option<String>)>,
    },
    ElectPreferred,
    /// A partition leader's ISR change.
    AlterPartition(AlterPartition),
    /// ElectLeaders: preferred (or, `unclean`, any live replica for leaderless partitions)
    /// leaders for the named partitions, every partition when `None`.
    ElectLeaders {
        partitions: Option<Vec<(String, u32)>>,
        unclean: bool,
    },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Reply {
    /// The broker epoch: the log index of the entry that registered it.
    Registered {
        epoch: u64,
    },
    Heartbeat(HeartbeatAnswer),
    CreateTopics(Vec<Result<TopicId, Refusal>>),
    DeleteTopics(Vec<Result<TopicId, Refusal>>),
    CreatePartitions,
    AlterConfigs,
    /// Partitions whose leader moved to the preferred replica.
    ElectPreferred {
        changed: usize,
    },
    /// The partition epoch of the partition's state with the asked ISR.
    AlterPartition {
        partition_epoch: i32,
    },
    /// Each asked partition's election (committed with the reply when any was made).
    ElectLeaders(Vec<Election>),
}

/// Why a command as a whole was not carried out.
#[derive(Debug, Clone, PartialEq, Error, serde::Serialize, serde::Deserialize)]
pub enum CommandError {
    /// This voter does not lead (or stopped leading before the command committed; it may
    /// still commit). `leader`: the leader it knows of.
    #[error("not the active controller (leader: {leader:?})")]
    NotController { leader: Option<HostId> },
    /// The decision queue is full: retry later.
    #[error("the controller has {queued} commands queued")]
    Busy { queued: usize },
    /// The controller refused it.
    #[error("{}", .0.message)]
    Refused(Refusal),
}

impl CommandError {
    /// The Kafka error code: both NOT_CONTROLLER and THROTTLING_QUOTA_EXCEEDED are retriable.
    pub fn code(&self) -> ResponseError {
        match self {
            Self::NotController { .. } => ResponseError::NotController,
            Self::Busy { .. } => ResponseError::ThrottlingQuotaExceeded,
            Self::Refused(refusal) => refusal.code,
        }
    }
}

#[derive(Debug, Default)]
pub struct Output {
    /// Must be durable before `send_after_persist` goes out and `Persisted` comes back.
    pub persist: Option<PersistBatch>,
    pub send_after_persist: Vec<(HostId, Vec<u8>)>,
    pub send_now: Vec<(HostId, Vec<u8>)>,
    pub replies: Vec<(RequestId, Result<Reply, CommandError>)>,
    /// Batches applied, in log order (for brokers; a restarted voter applies again from its
    /// snapshot).
    pub committed: Vec<(u64, RecordBatch)>,
}

/// What a broker catching up gets.
#[derive(Debug, Clone, PartialEq)]
pub enum CatchUp {
    /// The batches after the asked index (at most [`CATCH_UP_BATCHES_MAX`]).
    Batches(Vec<(u64, RecordBatch)>),
    /// The asked index was compacted away: the image at the snapshot, then the batches after.
    Image {
        image: Box<MetadataImage>,
        then: Vec<(u64, RecordBatch)>,
    },
}

#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("voter {0} is not one of the voters")]
    NotAVoter(HostId),
    #[error("{0} voters; 1 to {VOTERS_MAX} are supported")]
    Voters(usize),
    #[error("the snapshot does not decode: {0}")]
    Snapshot(crate::records::DecodeError),
    #[error("the snapshot's image is at {image} but the snapshot at {snapshot}")]
    SnapshotIndex { image: u64, snapshot: u64 },
    #[error("entry {index} does not decode: {error}")]
    Entry {
        index: u64,
        error: crate::records::DecodeError,
    },
    #[error("entry {found} follows {expected_before}: the log has a gap")]
    Gap { expected_before: u64, found: u64 },
    #[error("raft-rs refused the recovered state: {0}")]
    Raft(raft::Error),
}

/// Why bytes from a peer were dropped.
#[derive(Debug, Error, PartialEq)]
pub enum PeerError {
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    #[error("message from raft id {claimed} arrived from voter {transport}")]
    WrongSender { claimed: u64, transport: HostId },
    #[error("message for raft id {0} arrived here")]
    WrongRecipient(u64),
    #[error("{0:?} is not a message a voter sends")]
    Type(MessageType),
    #[error("entry {index} is not a metadata batch")]
    Entry { index: u64 },
    #[error("the snapshot at {index} does not decode")]
    Snapshot { index: u64 },
}

/// Counters, for metrics and the simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub peer_messages_dropped: u64,
    pub peer_messages_refused_by_raft: u64,
    pub proposals_dropped: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
}

/// A proposed decision, waiting to be applied.
struct InFlight {
    request: Option<RequestId>,
    index: u64,
    term: u64,
    pending: Pending,
}

enum Pending {
    /// Answered with the entry's index (the broker epoch).
    Register,
    /// Answered as decided, once committed.
    Reply(Reply),
    /// Sessions expired (`Controller::tick`): nobody waits for it.
    Fence,
}

enum Decision {
    Answer(Result<Reply, CommandError>),
    Propose(Pending, RecordBatch),
}

/// Peer message types a voter may send another: local-only types (`MsgHup`, ...) and
/// forwarded proposals are refused, since only the leader's decision loop proposes.
const PEER_MESSAGE_TYPES: [MessageType; 10] = [
    MessageType::MsgAppend,
    MessageType::MsgAppendResponse,
    MessageType::MsgRequestVote,
    MessageType::MsgRequestVoteResponse,
    MessageType::MsgRequestPreVote,
    MessageType::MsgRequestPreVoteResponse,
    MessageType::MsgSnapshot,
    MessageType::MsgHeartbeat,
    MessageType::MsgHeartbeatResponse,
    MessageType::MsgTimeoutNow,
];

pub struct ControllerNode {
    id: HostId,
    voters: Vec<HostId>,
    settings: QuorumSettings,
    raw: RawNode<LogView>,
    controller: Controller,
    rng: Rng,
    now_ms: u64,
    next_tick_ms: Option<u64>,
    applied_index: u64,
    applied_term: u64,
    /// The term this voter leads in, if it does.
    leading_term: Option<u64>,
    /// Leading, and its image holds everything earlier leaders committed.
    active: bool,
    queue: VecDeque<(RequestId, Command)>,
    in_flight: Option<InFlight>,
    /// The highest persist batch number handed out, and the highest reported durable.
    persist_issued: u64,
    persist_done: u64,
    /// Messages waiting for the disk: (batch number that must be durable, to, bytes).
    held: Vec<(u64, HostId, Vec<u8>)>,
    stats: NodeStats,
    /// When each voter last answered this leader's appends or heartbeats, and when it last
    /// did so caught up with this leader's log (DescribeQuorum's timestamps).
    contacts: BTreeMap<HostId, VoterContact>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct VoterContact {
    last_fetch_ms: u64,
    last_caught_up_ms: Option<u64>,
}

/// The quorum as its leader sees it (Kafka's DescribeQuorum): the metadata log's leader,
/// epoch (the raft term) and high watermark (the commit index), and each voter's log end
/// offset and timestamps on the leader's clock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuorumDescription {
    pub leader: HostId,
    pub term: u64,
    pub high_watermark: u64,
    pub voters: Vec<VoterDescription>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VoterDescription {
    pub id: HostId,
    /// The last log index the leader knows it holds.
    pub log_end_offset: u64,
    /// When it last answered the leader (`None`: not since this leader was elected).
    pub last_fetch_ms: Option<u64>,
    /// When it last answered holding everything the leader had.
    pub last_caught_up_ms: Option<u64>,
}

fn raft_id(host: HostId) -> u64 {
    u64::from(host.0) + 1
}

fn host_of(raft_id: u64) -> Option<HostId> {
    let id = raft_id.checked_sub(1)?;
    u32::try_from(id).ok().map(HostId)
}

impl ControllerNode {
    /// A voter with an empty log (a new cluster).
    pub fn new(
        id: HostId,
        voters: &[HostId],
        settings: QuorumSettings,
        seed: u64,
    ) -> Result<Self, RestoreError> {
        Self::restore(id, voters, Recovered::default(), settings, seed)
    }

    /// Rebuilds a voter from what was durable: the image from the snapshot, then raft-rs
    /// replays the committed entries after it through the usual output (`committed`).
    pub fn restore(
        id: HostId,
        voters: &[HostId],
        recovered: Recovered,
        settings: QuorumSettings,
        seed: u64,
    ) -> Result<Self, RestoreError> {
        if voters.is_empty() || voters.len() > VOTERS_MAX {
            return Err(RestoreError::Voters(voters.len()));
        }
        if !voters.contains(&id) {
            return Err(RestoreError::NotAVoter(id));
        }
        let image = if recovered.snapshot.index == 0 {
            MetadataImage::default()
        } else {
            let image =
                MetadataImage::decode(&recovered.snapshot.data).map_err(RestoreError::Snapshot)?;
            if image.applied_index != recovered.snapshot.index {
                return Err(RestoreError::SnapshotIndex {
                    image: image.applied_index,
                    snapshot: recovered.snapshot.index,
                });
            }
            image
        };
        let expected_indexes = recovered.snapshot.index + 1..;
        for (expected, entry) in expected_indexes.zip(&recovered.entries) {
            if entry.index != expected {
                return Err(RestoreError::Gap {
                    expected_before: expected,
                    found: entry.index,
                });
            }
            if !entry.data.is_empty() {
                RecordBatch::decode(&entry.data).map_err(|error| RestoreError::Entry {
                    index: entry.index,
                    error,
                })?;
            }
        }
        let raft_voters = voters.iter().map(|&voter| raft_id(voter)).collect();
        let view = LogView::new(raft_voters, &recovered);
        let config = raft::Config {
            id: raft_id(id),
            election_tick: settings.election_ticks,
            heartbeat_tick: settings.heartbeat_ticks,
            applied: recovered.snapshot.index,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&config, view, &logger).map_err(RestoreError::Raft)?;
        let mut node = Self {
            id,
            voters: voters.to_vec(),
            controller: Controller::new(settings.controller.clone(), image),
            settings,
            raw,
            rng: Rng::new(seed ^ raft_id(id).wrapping_mul(0x2545_f491_4f6c_dd1d)),
            now_ms: 0,
            next_tick_ms: None,
            applied_index: recovered.snapshot.index,
            applied_term: recovered.snapshot.term,
            leading_term: None,
            active: false,
            queue: VecDeque::new(),
            in_flight: None,
            persist_issued: 0,
            persist_done: 0,
            held: Vec::new(),
            stats: NodeStats::default(),
            contacts: BTreeMap::new(),
        };
        node.redraw_election_timeout();
        Ok(node)
    }

    pub fn id(&self) -> HostId {
        self.id
    }

    pub fn voters(&self) -> &[HostId] {
        &self.voters
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Leading, and activated (it decides).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The leader this voter knows of.
    pub fn leader(&self) -> Option<HostId> {
        match self.raw.raft.leader_id {
            raft::INVALID_ID => None,
            id => host_of(id),
        }
    }

    pub fn image(&self) -> &MetadataImage {
        self.controller.image()
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The quorum as this voter sees it while it leads (DescribeQuorum); `None` otherwise.
    pub fn describe_quorum(&self) -> Option<QuorumDescription> {
        if !self.is_leader() {
            return None;
        }
        let last_index = self.raw.raft.raft_log.last_index();
        let voters = self
            .voters
            .iter()
            .map(|&id| {
                if id == self.id {
                    return VoterDescription {
                        id,
                        log_end_offset: last_index,
                        last_fetch_ms: Some(self.now_ms),
                        last_caught_up_ms: Some(self.now_ms),
                    };
                }
                let matched = self
                    .raw
                    .raft
                    .prs()
                    .get(raft_id(id))
                    .map_or(0, |progress| progress.matched);
                let contact = self.contacts.get(&id).copied();
                VoterDescription {
                    id,
                    log_end_offset: matched,
                    last_fetch_ms: contact.map(|c| c.last_fetch_ms),
                    last_caught_up_ms: contact.and_then(|c| c.last_caught_up_ms),
                }
            })
            .collect();
        Some(QuorumDescription {
            leader: self.id,
            term: self.term(),
            high_watermark: self.commit_index(),
            voters,
        })
    }

    /// Commands waiting for a decision, and the log index of the decision in flight.
    pub fn decisions_pending(&self) -> (usize, Option<u64>) {
        let in_flight = self.in_flight.as_ref().map(|in_flight| in_flight.index);
        (self.queue.len(), in_flight)
    }

    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    pub fn handle(&mut self, input: Input) -> Output {
        let mut out = Output::default();
        match input {
            Input::Tick { now_ms } => self.tick(now_ms),
            Input::Peer { from, bytes } => self.receive(from, &bytes),
            Input::Client { id, command } => self.enqueue(id, command, &mut out),
            Input::Persisted { number } => self.persisted(number, &mut out),
        }
        self.redraw_election_timeout();
        loop {
            self.process_ready(&mut out);
            self.track_leadership(&mut out);
            if !self.decide(&mut out) {
                break;
            }
        }
        self.redraw_election_timeout();
        out
    }

    fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let mut next = self.next_tick_ms.unwrap_or(now_ms);
        while next <= self.now_ms {
            next += self.settings.tick_interval_ms;
            self.next_tick_ms = Some(next);
            self.raw.tick();
            // A tick may reset the election clock (a candidate's new term): redraw at once,
            // so the next tick counts against our seeded timeout.
            self.redraw_election_timeout();
        }
    }

    fn receive(&mut self, from: HostId, bytes: &[u8]) {
        let message = match self.admit(from, bytes) {
            Ok(message) => message,
            Err(_) => {
                self.stats.peer_messages_dropped += 1;
                return;
            }
        };
        if self.is_leader()
            && matches!(
                message.get_msg_type(),
                MessageType::MsgAppendResponse | MessageType::MsgHeartbeatResponse
            )
        {
            let caught_up = !message.reject
                && message.get_msg_type() == MessageType::MsgAppendResponse
                && message.index >= self.raw.raft.raft_log.last_index();
            let contact = self.contacts.entry(from).or_default();
            contact.last_fetch_ms = self.now_ms;
            if caught_up {
                contact.last_caught_up_ms = Some(self.now_ms);
            }
        }
        if self.raw.step(message).is_err() {
            self.stats.peer_messages_refused_by_raft += 1;
        }
    }

    /// Decodes and checks a peer's bytes (see the module doc).
    pub fn admit(&self, from: HostId, bytes: &[u8]) -> Result<Message, PeerError> {
        let message = codec::decode(bytes)?;
        if message.from != raft_id(from) || !self.voters.contains(&from) {
            return Err(PeerError::WrongSender {
                claimed: message.from,
                transport: from,
            });
        }
        if message.to != raft_id(self.id) {
            return Err(PeerError::WrongRecipient(message.to));
        }
        if !PEER_MESSAGE_TYPES.contains(&message.msg_type) {
            return Err(PeerError::Type(message.msg_type));
        }
        for entry in message.entries.iter() {
            if !entry_decodes(entry) {
                return Err(PeerError::Entry { index: entry.index });
            }
        }
        if message.msg_type == MessageType::MsgSnapshot {
            let snapshot = message.get_snapshot();
            let index = snapshot.get_metadata().index;
            let decoded = MetadataImage::decode(&snapshot.data);
            if !decoded.is_ok_and(|image| image.applied_index == index) {
                return Err(PeerError::Snapshot { index });
            }
        }
        Ok(message)
    }

    fn persisted(&mut self, number: u64, out: &mut Output) {
        assert!(
            number <= self.persist_issued,
            "batch {number} was never handed out"
        );
        self.persist_done = self.persist_done.max(number);
        self.raw.on_persist_ready(number);
        let done = self.persist_done;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(needed, _, _)| *needed <= done);
        self.held = waiting;
        out.send_now
            .extend(ready.into_iter().map(|(_, to, bytes)| (to, bytes)));
    }

    fn enqueue(&mut self, id: RequestId, command: Command, out: &mut Output) {
        if self.leading_term.is_none() || !self.is_leader() {
            let refusal = CommandError::NotController {
                leader: self.leader(),
            };
            out.replies.push((id, Err(refusal)));
            return;
        }
        if self.queue.len() >= self.settings.queued_commands_max {
            let queued = self.queue.len();
            out.replies.push((id, Err(CommandError::Busy { queued })));
            return;
        }
        self.queue.push_back((id, command));
    }

    fn redraw_election_timeout(&mut self) {
        if self.raw.raft.election_elapsed != 0 {
            return;
        }
        let low = self.settings.election_ticks as u64;
        let timeout = self.rng.range(low, 2 * low);
        self.raw
            .raft
            .set_randomized_election_timeout(timeout as usize);
    }

    /// Hands raft-rs's readies to the driver and applies what committed.
    fn process_ready(&mut self, out: &mut Output) {
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            let mut batch = PersistBatch {
                number: ready.number(),
                ..Default::default()
            };
            let mut snapshots_sent = Vec::new();
            for message in ready.take_messages() {
                if message.msg_type == MessageType::MsgSnapshot {
                    snapshots_sent.push(message.to);
                }
                out.send_now.extend(self.encode_for_peer(&message));
            }
            if !ready.snapshot().is_empty() {
                let snapshot = ready.snapshot();
                let record = SnapshotRecord {
                    index: snapshot.get_metadata().index,
                    term: snapshot.get_metadata().term,
                    data: snapshot.data.to_vec(),
                };
                self.install_snapshot(&record, out);
                batch.snapshot = Some(record);
            }
            let mut committed = ready.take_committed_entries();
            let installs_snapshot = batch.snapshot.is_some();
            if !ready.entries().is_empty() {
                self.raw.mut_store().append(ready.entries());
                batch.entries = ready.entries().iter().map(to_log_entry).collect();
            }
            if let Some(hard_state) = ready.hs() {
                self.raw.mut_store().set_hard_state(hard_state);
                batch.hard_state = Some(HardStateRecord {
                    term: hard_state.term,
                    vote: hard_state.vote,
                    commit: hard_state.commit,
                });
            }
            let mut after_persist = ready.take_persisted_messages();
            if installs_snapshot {
                // raft-rs keeps its applied index below an installed snapshot until told the
                // snapshot is persisted, and an election in between would read the entries
                // the snapshot replaced (a fatal error in raft-rs). So a snapshot's ready
                // counts as persisted in raft-rs at once. That only lets this follower apply
                // what the quorum already committed; what it tells peers still waits for the
                // disk (`send_after_persist` and `held`), so it never acknowledges an entry
                // before it is durable.
                let mut light = self.raw.advance_append(ready);
                committed.extend(light.take_committed_entries());
                after_persist.extend(light.take_messages());
                if let Some(commit) = light.commit_index() {
                    let mut hard_state = self.raw.raft.hard_state();
                    hard_state.commit = commit;
                    self.raw.mut_store().set_hard_state(&hard_state);
                }
                self.raw.advance_apply_to(self.applied_index);
            } else {
                self.raw.advance_append_async(ready);
            }
            // raft-rs pauses a follower's replication after sending it a snapshot until told
            // how that went; a lost snapshot message would stall the follower for good. The
            // transport gives no delivery receipts, so the snapshot counts as delivered: the
            // leader probes, and a follower that lacks it is sent it again.
            for to in snapshots_sent {
                self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
            }
            if !batch.is_empty() {
                self.persist_issued = batch.number;
                match &mut out.persist {
                    Some(earlier) => earlier.merge(batch),
                    None => out.persist = Some(batch),
                }
            }
            for message in after_persist {
                self.send_after_persist(&message, out);
            }
            if !committed.is_empty() {
                self.apply(committed, out);
            }
        }
    }

    /// A follower's message goes out once everything handed to the disk so far is durable.
    fn send_after_persist(&mut self, message: &Message, out: &mut Output) {
        let Some((to, bytes)) = self.encode_for_peer(message) else {
            return;
        };
        if out.persist.is_some() {
            out.send_after_persist.push((to, bytes));
        } else if self.persist_done < self.persist_issued {
            self.held.push((self.persist_issued, to, bytes));
        } else {
            out.send_now.push((to, bytes));
        }
    }

    fn encode_for_peer(&self, message: &Message) -> Option<(HostId, Vec<u8>)> {
        // raft-rs only addresses the voters it was given.
        let to = host_of(message.to).filter(|to| self.voters.contains(to));
        assert!(to.is_some(), "raft-rs addressed raft id {}", message.to);
        to.map(|to| (to, codec::encode(message)))
    }

    fn install_snapshot(&mut self, record: &SnapshotRecord, out: &mut Output) {
        // Checked when the message was admitted: the bytes decode, at the snapshot's index.
        let image = MetadataImage::decode(&record.data).expect("admitted snapshots decode");
        assert_eq!(image.applied_index, record.index);
        assert!(record.index >= self.applied_index, "snapshots move forward");
        self.raw.mut_store().apply_snapshot(record.clone());
        self.controller = Controller::new(self.settings.controller.clone(), image);
        self.applied_index = record.index;
        self.applied_term = record.term;
        self.stats.snapshots_installed += 1;
        // Whatever was in flight was decided on an image that is gone.
        if let Some(in_flight) = self.in_flight.take() {
            self.answer_lost(in_flight, out);
        }
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Output) {
        for entry in entries {
            assert_eq!(
                entry.index,
                self.applied_index + 1,
                "entries apply in order"
            );
            self.applied_index = entry.index;
            self.applied_term = entry.term;
            if entry.data.is_empty() {
                // A leader's no-op still moves the image's applied index, so a snapshot of
                // the image names the entry it was taken at.
                self.controller.apply(entry.index, &RecordBatch::default());
            } else {
                // Every entry was checked on its way in: proposed here, admitted from a peer,
                // or read back in `restore`.
                let batch = RecordBatch::decode(&entry.data).expect("admitted entries decode");
                self.controller.apply(entry.index, &batch);
                out.committed.push((entry.index, batch));
            }
            assert_eq!(self.controller.image().applied_index, self.applied_index);
            self.finish_in_flight(entry.index, entry.term, out);
        }
        self.raw.advance_apply_to(self.applied_index);
        self.compact_if_due(out);
    }

    /// Answers the decision in flight once the entry at its index is applied.
    fn finish_in_flight(&mut self, index: u64, term: u64, out: &mut Output) {
        let Some(in_flight) = &self.in_flight else {
            return;
        };
        if index < in_flight.index {
            return;
        }
        let in_flight = self.in_flight.take().expect("checked above");
        if index == in_flight.index && term == in_flight.term {
            let Some(request) = in_flight.request else {
                return;
            };
            let reply = match in_flight.pending {
                Pending::Register => Reply::Registered { epoch: index },
                Pending::Reply(reply) => reply,
                Pending::Fence => unreachable!("fences have no request"),
            };
            out.replies.push((request, Ok(reply)));
        } else {
            // Another leader's entry took the index: the proposal is lost.
            self.answer_lost(in_flight, out);
        }
    }

    fn answer_lost(&mut self, in_flight: InFlight, out: &mut Output) {
        if let Some(request) = in_flight.request {
            let refusal = CommandError::NotController {
                leader: self.leader(),
            };
            out.replies.push((request, Err(refusal)));
        }
    }

    fn compact_if_due(&mut self, out: &mut Output) {
        let snapshot_index = self.raw.store().snapshot_record().index;
        if self.applied_index - snapshot_index < self.settings.compact_entries {
            return;
        }
        let image = self.controller.image();
        assert_eq!(image.applied_index, self.applied_index);
        let record = SnapshotRecord {
            index: self.applied_index,
            term: self.applied_term,
            data: image.encode(),
        };
        self.raw.mut_store().apply_snapshot(record.clone());
        self.stats.snapshots_taken += 1;
        // Everything it covers is applied, so already durable: it can ride with any batch.
        let batch = PersistBatch {
            number: self.persist_issued,
            snapshot: Some(record),
            ..Default::default()
        };
        match &mut out.persist {
            Some(earlier) => earlier.merge(batch),
            None => out.persist = Some(batch),
        }
    }

    /// Leadership changes: a new leader waits to activate; a deposed one answers everything
    /// it holds with NOT_CONTROLLER.
    fn track_leadership(&mut self, out: &mut Output) {
        let leading = self.is_leader().then_some(self.raw.raft.term);
        if leading == self.leading_term {
            return;
        }
        if self.leading_term.is_some() {
            let leader = self.leader();
            if let Some(in_flight) = self.in_flight.take() {
                self.answer_lost(in_flight, out);
            }
            for (request, _) in self.queue.drain(..) {
                let refusal = CommandError::NotController { leader };
                out.replies.push((request, Err(refusal)));
            }
        }
        self.leading_term = leading;
        self.active = false;
        // A new term's leader knows nothing yet of when the others answered.
        self.contacts.clear();
    }

    /// Runs the leader's decision loop; true when it proposed (so raft-rs has work).
    fn decide(&mut self, out: &mut Output) -> bool {
        let Some(term) = self.leading_term else {
            return false;
        };
        if !self.active {
            // The no-op raft-rs appends on election is of this term: once an entry of this
            // term is applied, so is everything earlier leaders committed.
            if self.applied_term != term {
                return false;
            }
            self.controller.activate(self.now_ms);
            self.active = true;
        }
        while self.in_flight.is_none() {
            let fence = self.controller.tick(self.now_ms);
            if !fence.records.is_empty() {
                return self.propose(None, Pending::Fence, fence, out);
            }
            let Some((request, command)) = self.queue.pop_front() else {
                return false;
            };
            match self.decide_command(command) {
                Decision::Answer(result) => out.replies.push((request, result)),
                Decision::Propose(pending, batch) => {
                    return self.propose(Some(request), pending, batch, out);
                }
            }
        }
        false
    }

    fn decide_command(&mut self, command: Command) -> Decision {
        let now_ms = self.now_ms;
        let refused = |refusal| Decision::Answer(Err(CommandError::Refused(refusal)));
        match command {
            Command::Register(registration) => {
                match self.controller.register(registration, now_ms) {
                    Ok(batch) => Decision::Propose(Pending::Register, batch),
                    Err(refusal) => refused(refusal),
                }
            }
            Command::Heartbeat {
                host,
                epoch,
                caught_up,
                shutting_down,
            } => {
                let decided =
                    self.controller
                        .heartbeat(host, epoch, caught_up, shutting_down, now_ms);
                match decided {
                    Ok((batch, answer)) if batch.records.is_empty() => {
                        Decision::Answer(Ok(Reply::Heartbeat(answer)))
                    }
                    Ok((batch, answer)) => {
                        Decision::Propose(Pending::Reply(Reply::Heartbeat(answer)), batch)
                    }
                    Err(refusal) => refused(refusal),
                }
            }
            Command::CreateTopics(topics) => {
                let (results, batch) = self.controller.create_topics(topics);
                if batch.records.is_empty() {
                    return Decision::Answer(Ok(Reply::CreateTopics(results)));
                }
                Decision::Propose(Pending::Reply(Reply::CreateTopics(results)), batch)
            }
            Command::DeleteTopics(names) => {
                let (results, batch) = self.controller.delete_topics(&names);
                if batch.records.is_empty() {
                    return Decision::Answer(Ok(Reply::DeleteTopics(results)));
                }
                Decision::Propose(Pending::Reply(Reply::DeleteTopics(results)), batch)
            }
            Command::CreatePartitions {
                name,
                count,
                assignment,
            } => match self.controller.create_partitions(&name, count, assignment) {
                Ok(batch) => Decision::Propose(Pending::Reply(Reply::CreatePartitions), batch),
                Err(refusal) => refused(refusal),
            },
            Command::AlterConfigs { name, changes } => {
                match self.controller.alter_configs(&name, changes) {
                    Ok(batch) if batch.records.is_empty() => {
                        Decision::Answer(Ok(Reply::AlterConfigs))
                    }
                    Ok(batch) => Decision::Propose(Pending::Reply(Reply::AlterConfigs), batch),
                    Err(refusal) => refused(refusal),
                }
            }
            Command::ElectPreferred => {
                let batch = self.controller.elect_preferred(None);
                let changed = batch.records.len();
                if changed == 0 {
                    return Decision::Answer(Ok(Reply::ElectPreferred { changed }));
                }
                Decision::Propose(Pending::Reply(Reply::ElectPreferred { changed }), batch)
            }
            Command::ElectLeaders {
                partitions,
                unclean,
            } => {
                let (elections, batch) = self
                    .controller
                    .elect_leaders(partitions.as_deref(), unclean);
                if batch.records.is_empty() {
                    return Decision::Answer(Ok(Reply::ElectLeaders(elections)));
                }
                Decision::Propose(Pending::Reply(Reply::ElectLeaders(elections)), batch)
            }
            Command::AlterPartition(request) => match self.controller.alter_partition(&request) {
                Ok((partition_epoch, batch)) if batch.records.is_empty() => {
                    Decision::Answer(Ok(Reply::AlterPartition { partition_epoch }))
                }
                Ok((partition_epoch, batch)) => Decision::Propose(
                    Pending::Reply(Reply::AlterPartition { partition_epoch }),
                    batch,
                ),
                Err(refusal) => refused(refusal),
            },
        }
    }

    fn propose(
        &mut self,
        request: Option<RequestId>,
        pending: Pending,
        batch: RecordBatch,
        out: &mut Output,
    ) -> bool {
        assert!(self.in_flight.is_none(), "one decision at a time");
        assert!(
            !batch.records.is_empty(),
            "empty batches are answered at once"
        );
        let data = batch.encode();
        // Pair assertion: what goes into the log reads back as what was decided.
        debug_assert_eq!(RecordBatch::decode(&data).as_ref(), Ok(&batch));
        let index_before = self.raw.raft.raft_log.last_index();
        if self.raw.propose(vec![], data).is_err() {
            // raft-rs drops proposals while it transfers leadership or is over its
            // uncommitted-size limit: the client retries.
            self.stats.proposals_dropped += 1;
            if let Some(request) = request {
                let refusal = CommandError::NotController {
                    leader: self.leader(),
                };
                out.replies.push((request, Err(refusal)));
            }
            return false;
        }
        let index = self.raw.raft.raft_log.last_index();
        assert_eq!(index, index_before + 1, "one entry per decision");
        self.in_flight = Some(InFlight {
            request,
            index,
            term: self.raw.raft.term,
            pending,
        });
        true
    }

    /// Committed batches after `index`, for a broker catching up: from the in-memory log, or
    /// the snapshot's image when `index` was compacted away.
    pub fn committed_since(&self, index: u64) -> CatchUp {
        let store = self.raw.store();
        let snapshot = store.snapshot_record();
        let batches_after = |after: u64| -> Vec<(u64, RecordBatch)> {
            store
                .raft_entries()
                .iter()
                .filter(|entry| entry.index > after && entry.index <= self.applied_index)
                .filter(|entry| !entry.data.is_empty())
                .take(CATCH_UP_BATCHES_MAX)
                .map(|entry| {
                    let batch = RecordBatch::decode(&entry.data).expect("admitted entries decode");
                    (entry.index, batch)
                })
                .collect()
        };
        if index >= snapshot.index {
            return CatchUp::Batches(batches_after(index));
        }
        let image = MetadataImage::decode(&snapshot.data).expect("snapshots taken here decode");
        CatchUp::Image {
            image: Box::new(image),
            then: batches_after(snapshot.index),
        }
    }
}

fn entry_decodes(entry: &Entry) -> bool {
    entry.entry_type == EntryType::EntryNormal
        && (entry.data.is_empty() || RecordBatch::decode(&entry.data).is_ok())
}
