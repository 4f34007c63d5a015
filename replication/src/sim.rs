//! A deterministic simulation of one partition's replication (ISR, high watermark, leader
//! epochs, acks=all), from one seed, driving the same pure state machines the broker uses:
//! [`LeaderState`], [`divergence`] / [`truncation_offset`], [`EpochCache`], and the real
//! [`Controller`] of `ringlog-cluster` for registration, heartbeats, fencing, leader election
//! and AlterPartition.
//!
//! # The model
//!
//! `hosts` replica hosts (3 by default) each hold one replica of one partition (RF = number of
//! hosts, `min.insync.replicas` 2). The controller commits its decisions at once (one record
//! batch per decision, applied with [`Controller::apply`]); hosts learn them by reading the
//! image every [`METADATA_INTERVAL_MS`] while they reach the controller. A replica's log is a
//! vector of records (offset = index, each with its leader epoch and a unique record id), an
//! epoch cache, a flushed prefix (what survives a crash), a high watermark and its checkpoint,
//! and a role: leader with a [`LeaderState`], follower of a node in an epoch, or unknown (after
//! a restart, until it registered and read the image).
//!
//! Producers send batches with acks=all to the leader the image names; the leader refuses with
//! NOT_ENOUGH_REPLICAS below `min.insync.replicas`, and acknowledges once its high watermark
//! reaches the batch's end while it still leads in the epoch it appended in (else NOT_LEADER;
//! a lost request times out and the same records are sent again, so records may be written
//! twice: there is no idempotent producer in this model). A consumer reads below the leader's
//! high watermark and remembers every (offset, record) it was served.
//!
//! Followers fetch (fetch offset = log end, last fetched epoch, current leader epoch, and the
//! host's broker epoch, as Fetch v15's ReplicaState: KIP-903); the
//! leader answers FENCED_LEADER_EPOCH / UNKNOWN_LEADER_EPOCH on an epoch mismatch, a diverging
//! epoch (KIP-279), or records and its high watermark. Leaders propose ISR changes
//! ([`LeaderState::isr_proposal`], with the broker epochs they were decided on) through the
//! network to [`Controller::alter_partition`], and tell their [`LeaderState`] each follower's
//! registered broker epoch whenever they read the image.
//!
//! Faults (seeded): message delay (1-10 ms, sometimes 50-500 ms, so messages reorder), loss and
//! duplication; a host cut off from its peers and clients and/or from the controller, healed
//! later; a host paused (SIGSTOP: its events wait); a host crashed and restarted, losing its
//! unflushed tail (and, sometimes, its whole disk: KIP-903). Messages a host sent before a crash
//! may still arrive; messages to its old incarnation are lost.
//!
//! Registrations say whether the host's previous process stopped cleanly (KIP-966): a crash
//! never does, so the controller takes a restarted host's replicas out of every ELR; a process
//! that registers again without having crashed names its broker epoch (nothing lost).
//!
//! Random crashes stay within what `min.insync.replicas`=2 covers, one replica losing its
//! unflushed tail at a time: a host crashes only while every member of the image's ISR and ELR
//! is up in the process the image knows, and another of them would still be in the ISR or the
//! ELR were the crashing leader's ISR change in flight to commit. Cuts and pauses are not
//! limited: a host fenced with its log intact joins the ELR when the ISR falls below the
//! minimum, so fencing never leaves the replicas that lost a tail as the only ones eligible.
//! Two crashes of the ISR and ELR at once lose acknowledged records by design.
//!
//! # Checkers
//!
//! Continuously: a leader's high watermark never moves back within its epoch; an offset a
//! consumer was served never changes; replicas agree below their smaller high watermark (log
//! matching). After healing everything and running quiet: every acknowledged record is in the
//! final leader's log below its high watermark, every served (offset, record) is still there,
//! and every replica caught up with the leader.
//!
//! Left out: more than one partition, retention, segments, the metadata quorum itself (see
//! `ringlog_cluster::sim`), idempotent producers (duplicates are counted, not checked), disk
//! full, controlled shutdown, preferred leader election, reassignment.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ringlog_cluster::controller::{AlterPartition, Controller, ControllerSettings, NewTopic};
use ringlog_cluster::image::MetadataImage;
use ringlog_cluster::records::{Endpoint, PartitionRecord, RecordBatch, Registration};
use ringlog_cluster::rng::Rng;
use ringlog_cluster::{HostId, NodeId};

use crate::epochs::EpochCache;
use crate::follower::{divergence, truncation_offset, Diverging};
use crate::leader::{LeaderStart, LeaderState};
use crate::ReplicaId;

pub const TOPIC: &str = "sim";
const TOPIC_ID: u128 = 0x51;
pub const MIN_INSYNC_REPLICAS: usize = 2;
pub const SESSION_TIMEOUT_MS: u64 = 2_000;
const HEARTBEAT_INTERVAL_MS: u64 = 250;
const CONTROLLER_TICK_MS: u64 = 100;
pub const METADATA_INTERVAL_MS: u64 = 50;
const FETCH_CHECK_MS: u64 = 50;
/// A fetch without an answer after this long is sent again.
const FETCH_TIMEOUT_MS: u64 = 500;
/// A fetch the leader has no records for waits there this long (the long poll,
/// `replica.fetch.wait.max.ms`), then is answered (and its offset reported) again.
const FETCH_MAX_WAIT_MS: u64 = 20;
/// A follower whose fetch failed waits this long before the next one.
const FETCH_BACKOFF_MS: u64 = 20;
const ISR_CHECK_MS: u64 = 100;
const LAG_TIME_MAX_MS: i64 = 1_000;
/// An AlterPartition without an answer after this long is given up (and decided again).
const ALTER_TIMEOUT_MS: u64 = 1_000;
const HW_CHECKPOINT_MS: u64 = 500;
const PRODUCE_TIMEOUT_MS: u64 = 1_000;
const FETCH_RECORDS_MAX: usize = 50;
const CONSUME_RECORDS_MAX: usize = 20;
const CHECK_INTERVAL_MS: u64 = 100;
/// A run stops with a failure past this many events: a livelock, not a long run.
const EVENTS_MAX: u64 = 5_000_000;

/// A scripted fault, at a time set in [`SimConfig::script`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The host's process dies: its unflushed tail is lost, and with `wipe` its whole disk.
    Crash {
        host: usize,
        wipe: bool,
        restart_after_ms: Option<u64>,
    },
    Restart(usize),
    Cut {
        host: usize,
        peers: bool,
        controller: bool,
        heal_after_ms: u64,
    },
    Pause {
        host: usize,
        ms: u64,
    },
    /// The next fetch the host sends, when the leader has no records for it, waits at the
    /// leader this long (a long poll with a long wait), then is answered: the leader counts its
    /// fetch offset when it arrives and again when it wakes, as of when it arrived.
    HoldNextFetch {
        host: usize,
        ms: u64,
    },
    /// The host flushes nothing until restarted (its flush is slow: page cache only).
    StopFlushing(usize),
    /// Producers send nothing more.
    StopProducers,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub hosts: usize,
    /// Random faults happen until then (none when `random_faults` is false).
    pub chaos_ms: u64,
    /// Then everything heals, producers stop, and the cluster runs quiet this long.
    pub quiet_ms: u64,
    pub random_faults: bool,
    pub script: Vec<(u64, Action)>,
    pub producers: usize,
    pub flush_interval_ms: (u64, u64),
    /// Prints what happens (role changes, faults, the image's partition), for a replay.
    pub verbose: bool,
}

impl SimConfig {
    /// A random run: faults and their rates drawn from the seed.
    pub fn from_seed(seed: u64) -> Self {
        Self {
            seed,
            hosts: 3,
            chaos_ms: 15_000,
            quiet_ms: 10_000,
            random_faults: true,
            script: Vec::new(),
            producers: 2,
            flush_interval_ms: (10, 300),
            verbose: false,
        }
    }

    /// A scripted run: no random faults, a reliable network, only `script`.
    pub fn scripted(seed: u64, chaos_ms: u64, script: Vec<(u64, Action)>) -> Self {
        Self {
            seed,
            hosts: 3,
            chaos_ms,
            quiet_ms: 10_000,
            random_faults: false,
            script,
            producers: 1,
            flush_interval_ms: (50, 100),
            verbose: false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub events: u64,
    pub acked_records: u64,
    pub produced_records: u64,
    pub faults: u64,
    pub crashes: u64,
    /// Leader epochs the image went through after the first.
    pub failovers: u64,
    /// Leaders elected from the ELR (the ISR was empty; KIP-966).
    pub elr_elections: u64,
    /// Replicas taken out of the ELR by the unclean shutdown of their host.
    pub unclean_elr_removals: u64,
    /// The most records one truncation removed from a replica's log.
    pub max_truncation: u64,
    /// Truncations by a diverging epoch (KIP-101/279).
    pub divergence_truncations: u64,
    /// Records written more than once (a retried, non-idempotent batch).
    pub duplicate_records: u64,
    pub consumed_records: u64,
    pub final_leader_epoch: i32,
    pub final_isr: Vec<i32>,
    pub trace_hash: u64,
}

#[derive(Debug, Clone)]
pub struct SimFailure {
    pub seed: u64,
    pub at_ms: u64,
    pub message: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "seed {} failed at {} ms: {} (replay with SIM_SEED={} cargo test -p \
             ringlog-replication --test sim)",
            self.seed, self.at_ms, self.message, self.seed
        )
    }
}

/// Runs one simulation to the end and checks it.
pub fn run(config: &SimConfig) -> Result<SimReport, SimFailure> {
    let mut sim = Sim::new(config);
    sim.run()?;
    Ok(sim.report)
}

/// One record in a replica's log; its offset is its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    epoch: i32,
    record: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addr {
    Host(usize),
    Controller,
    Producer(usize),
    Consumer,
}

#[derive(Debug, Clone)]
enum FetchResult {
    Records {
        entries: Vec<Entry>,
        high_watermark: i64,
    },
    Diverging(Diverging),
    FencedLeaderEpoch,
    UnknownLeaderEpoch,
    NotLeader,
    Refused,
}

#[derive(Debug, Clone)]
enum Message {
    Fetch {
        from: usize,
        /// The follower's request id: it takes only the answer to its latest request, as a
        /// fetcher matches a response to its request by correlation id (an answer to an older
        /// request, duplicated or late, may look like the current one: same epoch, same offset).
        request: u64,
        replica: ReplicaId,
        fetch_offset: i64,
        last_fetched_epoch: i32,
        leader_epoch: i32,
        max_wait_ms: u64,
        /// The follower's broker epoch (Kafka's ReplicaState.ReplicaEpoch, KIP-903): the
        /// leader counts this fetch only for that process.
        broker_epoch: Option<u64>,
    },
    FetchResponse {
        request: u64,
        leader_epoch: i32,
        fetch_offset: i64,
        result: FetchResult,
    },
    Produce {
        producer: usize,
        request: u64,
        records: Vec<u64>,
    },
    ProduceResponse {
        request: u64,
        result: Result<(), &'static str>,
    },
    Consume {
        offset: i64,
    },
    ConsumeResponse {
        offset: i64,
        served: Vec<u64>,
    },
    AlterPartition {
        from: usize,
        sequence: u64,
        request: AlterPartition,
    },
    AlterPartitionResponse {
        sequence: u64,
        leader_epoch: i32,
        result: Result<PartitionRecord, String>,
    },
}

#[derive(Debug, Clone, Copy)]
enum Timer {
    Register,
    Heartbeat,
    Metadata,
    Fetch,
    /// One fetch now, not periodic.
    FetchNow,
    Isr,
    Flush,
    CheckpointHighWatermark,
}

#[derive(Debug, Clone)]
enum Event {
    Deliver {
        to: Addr,
        incarnation: u64,
        message: Message,
    },
    Timer {
        host: usize,
        incarnation: u64,
        timer: Timer,
    },
    /// A fetch parked at a leader (the long poll) wakes: it is answered as of `request_ms`,
    /// when it arrived.
    FetchWakes {
        host: usize,
        incarnation: u64,
        request_ms: i64,
        fetch: Message,
    },
    ControllerTick,
    Produce(usize),
    Consume,
    Fault,
    Restart(usize),
    Heal(usize),
    Script(usize),
    EndChaos,
    Check,
}

enum Role {
    /// After a (re)start, until the image says what this replica is.
    Unknown,
    Leader(Box<LeaderState>),
    Follower {
        leader: ReplicaId,
        epoch: i32,
    },
}

struct PendingAck {
    end_offset: i64,
    producer: usize,
    request: u64,
}

struct Host {
    id: HostId,
    replica: ReplicaId,
    up: bool,
    incarnation: u64,
    paused_until_ms: u64,
    cut_peers: bool,
    cut_controller: bool,
    flushing: bool,
    broker_epoch: Option<u64>,
    /// The broker epoch of this process's last registration, until it crashes: registering
    /// again, it says it lost nothing (a clean shutdown, for the controller).
    clean_epoch: Option<u64>,
    log: Vec<Entry>,
    flushed: usize,
    cache: EpochCache,
    high_watermark: i64,
    high_watermark_checkpoint: i64,
    role: Role,
    /// The fetch in flight: (request id, when sent).
    fetch_sent: Option<(u64, u64)>,
    fetch_sequence: u64,
    hold_next_fetch_ms: u64,
    alter_in_flight: Option<(u64, u64)>,
    alter_sequence: u64,
    pending: Vec<PendingAck>,
    /// (leader epoch, high watermark) last seen while leading: it may not move back.
    led: Option<(i32, i64)>,
}

impl Host {
    fn log_end(&self) -> i64 {
        self.log.len() as i64
    }

    fn leader_epoch(&self) -> Option<i32> {
        match &self.role {
            Role::Leader(state) => Some(state.leader_epoch()),
            Role::Follower { epoch, .. } => Some(*epoch),
            Role::Unknown => None,
        }
    }
}

#[derive(Default)]
struct Producer {
    batch: Option<Vec<u64>>,
    in_flight: Option<(u64, u64)>,
}

struct Sim {
    config: SimConfig,
    rng: Rng,
    now_ms: u64,
    sequence: u64,
    queue: BTreeMap<(u64, u64), Event>,
    controller: Controller,
    metadata_index: u64,
    hosts: Vec<Host>,
    producers: Vec<Producer>,
    next_record: u64,
    next_request: u64,
    acked: BTreeSet<u64>,
    consumer_offset: i64,
    consumer_in_flight: Option<u64>,
    /// Every (offset, record) a consumer was served.
    served: BTreeMap<i64, u64>,
    chaos: bool,
    producing: bool,
    drop_per_mille: u64,
    duplicate_per_mille: u64,
    slow_per_mille: u64,
    last_image_epoch: i32,
    report: SimReport,
}

impl Sim {
    fn new(config: &SimConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let (drop_per_mille, duplicate_per_mille, slow_per_mille) = if config.random_faults {
            (rng.range(0, 40), rng.range(0, 20), rng.range(0, 30))
        } else {
            (0, 0, 0)
        };
        let settings = ControllerSettings {
            min_insync_replicas: MIN_INSYNC_REPLICAS,
            ..ControllerSettings::new(SESSION_TIMEOUT_MS)
        };
        let hosts = (0..config.hosts)
            .map(|index| {
                let id = HostId(index as u32);
                Host {
                    id,
                    replica: NodeId::of(id, 0).0,
                    up: true,
                    incarnation: 1,
                    paused_until_ms: 0,
                    cut_peers: false,
                    cut_controller: false,
                    flushing: true,
                    broker_epoch: None,
                    clean_epoch: None,
                    log: Vec::new(),
                    flushed: 0,
                    cache: EpochCache::new(),
                    high_watermark: 0,
                    high_watermark_checkpoint: 0,
                    role: Role::Unknown,
                    fetch_sent: None,
                    fetch_sequence: 0,
                    hold_next_fetch_ms: 0,
                    alter_in_flight: None,
                    alter_sequence: 0,
                    pending: Vec::new(),
                    led: None,
                }
            })
            .collect();
        Self {
            config: config.clone(),
            rng,
            now_ms: 0,
            sequence: 0,
            queue: BTreeMap::new(),
            controller: Controller::new(settings, MetadataImage::default()),
            metadata_index: 0,
            hosts,
            producers: (0..config.producers).map(|_| Producer::default()).collect(),
            next_record: 1,
            next_request: 1,
            acked: BTreeSet::new(),
            consumer_offset: 0,
            consumer_in_flight: None,
            served: BTreeMap::new(),
            chaos: true,
            producing: true,
            drop_per_mille,
            duplicate_per_mille,
            slow_per_mille,
            last_image_epoch: 0,
            report: SimReport::default(),
        }
    }

    fn failure(&self, message: String) -> SimFailure {
        SimFailure {
            seed: self.config.seed,
            at_ms: self.now_ms,
            message,
        }
    }

    fn say(&self, what: impl FnOnce() -> String) {
        if self.config.verbose {
            println!("{:>6} ms  {}", self.now_ms, what());
        }
    }

    fn schedule(&mut self, at_ms: u64, event: Event) {
        self.sequence += 1;
        self.queue.insert((at_ms, self.sequence), event);
    }

    fn trace(&mut self, word: u64) {
        // FNV-1a over the words of the run: two runs of one seed must agree.
        let mut hash = self.report.trace_hash ^ word;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        self.report.trace_hash = hash;
    }

    // ---------------------------------------------------------------- set-up and the loop

    /// Every host registers and is unfenced, then the topic is created with host 0 leading.
    fn bootstrap(&mut self) -> Result<(), SimFailure> {
        for host in 0..self.hosts.len() {
            self.register(host);
            let epoch = self.hosts[host].broker_epoch;
            let epoch = epoch.ok_or_else(|| self.failure(format!("host {host} not registered")))?;
            let id = self.hosts[host].id;
            match self.controller.heartbeat(id, epoch, true, false, 0) {
                Ok((batch, _)) => self.commit(batch),
                Err(refusal) => return Err(self.failure(format!("heartbeat: {refusal:?}"))),
            }
        }
        let replicas: Vec<NodeId> = self.hosts.iter().map(|h| NodeId(h.replica)).collect();
        let topic = NewTopic {
            name: TOPIC.into(),
            id: TOPIC_ID,
            partitions: 1,
            replication_factor: replicas.len() as u16,
            assignment: Some(vec![replicas]),
            configs: BTreeMap::new(),
        };
        let (results, batch) = self.controller.create_topics(vec![topic]);
        if let Some(Err(refusal)) = results.first() {
            return Err(self.failure(format!("create topic: {refusal:?}")));
        }
        self.commit(batch);
        for host in 0..self.hosts.len() {
            self.start_timers(host);
        }
        self.schedule(CONTROLLER_TICK_MS, Event::ControllerTick);
        for producer in 0..self.producers.len() {
            self.schedule(10 + producer as u64, Event::Produce(producer));
        }
        self.schedule(30, Event::Consume);
        self.schedule(CHECK_INTERVAL_MS, Event::Check);
        if self.config.random_faults {
            self.schedule(500, Event::Fault);
        }
        for index in 0..self.config.script.len() {
            let at_ms = self.config.script[index].0;
            self.schedule(at_ms, Event::Script(index));
        }
        self.schedule(self.config.chaos_ms, Event::EndChaos);
        Ok(())
    }

    fn start_timers(&mut self, host: usize) {
        let incarnation = self.hosts[host].incarnation;
        let now = self.now_ms;
        let timers = [
            Timer::Heartbeat,
            Timer::Metadata,
            Timer::Fetch,
            Timer::Isr,
            Timer::Flush,
            Timer::CheckpointHighWatermark,
        ];
        for timer in timers {
            let jitter = self.rng.range(1, 20);
            self.schedule(
                now + jitter,
                Event::Timer {
                    host,
                    incarnation,
                    timer,
                },
            );
        }
    }

    fn run(&mut self) -> Result<(), SimFailure> {
        self.bootstrap()?;
        let end_ms = self.config.chaos_ms + self.config.quiet_ms;
        while let Some(((at_ms, _), event)) = self.queue.pop_first() {
            if at_ms > end_ms {
                break;
            }
            self.now_ms = at_ms;
            self.report.events += 1;
            if self.report.events > EVENTS_MAX {
                return Err(self.failure("too many events: a livelock?".into()));
            }
            self.trace(at_ms);
            self.step(event)?;
        }
        self.now_ms = end_ms;
        self.final_checks()
    }

    fn step(&mut self, event: Event) -> Result<(), SimFailure> {
        match event {
            Event::Deliver {
                to,
                incarnation,
                message,
            } => self.deliver(to, incarnation, message),
            Event::Timer {
                host,
                incarnation,
                timer,
            } => self.timer(host, incarnation, timer),
            Event::FetchWakes {
                host,
                incarnation,
                request_ms,
                fetch,
            } => {
                if !self.hosts[host].up || self.hosts[host].incarnation != incarnation {
                    return Ok(());
                }
                let event = Event::FetchWakes {
                    host,
                    incarnation,
                    request_ms,
                    fetch,
                };
                if self.deferred(host, event.clone()) {
                    return Ok(());
                }
                let Event::FetchWakes { fetch, .. } = event else {
                    unreachable!("built above");
                };
                self.answer_fetch_request(host, fetch, request_ms, false)
            }
            Event::ControllerTick => {
                let batch = self.controller.tick(self.now_ms);
                self.commit(batch);
                self.schedule(self.now_ms + CONTROLLER_TICK_MS, Event::ControllerTick);
                Ok(())
            }
            Event::Produce(producer) => {
                self.produce(producer);
                Ok(())
            }
            Event::Consume => {
                self.consume();
                Ok(())
            }
            Event::Fault => {
                self.random_fault();
                Ok(())
            }
            Event::Restart(host) => {
                self.restart(host);
                Ok(())
            }
            Event::Heal(host) => {
                self.hosts[host].cut_peers = false;
                self.hosts[host].cut_controller = false;
                Ok(())
            }
            Event::Script(index) => {
                let action = self.config.script[index].1.clone();
                self.act(action);
                Ok(())
            }
            Event::EndChaos => {
                self.end_chaos();
                Ok(())
            }
            Event::Check => {
                self.check_log_matching()?;
                self.schedule(self.now_ms + CHECK_INTERVAL_MS, Event::Check);
                Ok(())
            }
        }
    }

    /// Whether a host's events wait (paused), in which case the event is put back.
    fn deferred(&mut self, host: usize, event: Event) -> bool {
        let until = self.hosts[host].paused_until_ms;
        if until <= self.now_ms {
            return false;
        }
        self.schedule(until, event);
        true
    }

    // ---------------------------------------------------------------- the controller

    fn commit(&mut self, batch: RecordBatch) {
        if batch.records.is_empty() {
            return;
        }
        let before = self.partition();
        self.metadata_index += 1;
        self.controller.apply(self.metadata_index, &batch);
        if let (Some(before), Some(after)) = (before, self.partition()) {
            if after.leader != before.leader && before.elr.contains(&after.leader) {
                self.report.elr_elections += 1;
            }
            // Left the ELR for neither the ISR nor a cleared ELR (the ISR back at the minimum).
            let cleared = after.isr.len() >= MIN_INSYNC_REPLICAS;
            self.report.unclean_elr_removals += before
                .elr
                .iter()
                .filter(|node| !cleared && !after.isr.contains(node) && !after.elr.contains(node))
                .count() as u64;
        }
        self.trace(0xc0 ^ self.metadata_index);
        self.say(|| format!("commit {}: {:?}", self.metadata_index, batch.records));
        if let Some(partition) = self.partition() {
            if partition.leader_epoch > self.last_image_epoch {
                self.report.failovers += (partition.leader_epoch - self.last_image_epoch) as u64;
                self.last_image_epoch = partition.leader_epoch;
            }
        }
    }

    fn partition(&self) -> Option<PartitionRecord> {
        self.controller
            .image()
            .topic(TOPIC)
            .and_then(|topic| topic.partitions.first())
            .cloned()
    }

    fn register(&mut self, host: usize) {
        let id = self.hosts[host].id;
        let registration = Registration {
            host: id,
            incarnation: u128::from(self.hosts[host].incarnation),
            endpoints: vec![Endpoint {
                node: NodeId::of(id, 0),
                host: format!("10.0.0.{host}"),
                port: 9092,
            }],
            rack: None,
            cores: 1,
            clean_shutdown_epoch: self.hosts[host].clean_epoch,
        };
        if let Ok(batch) = self.controller.register(registration, self.now_ms) {
            self.commit(batch);
            self.hosts[host].broker_epoch = Some(self.metadata_index);
            self.hosts[host].clean_epoch = Some(self.metadata_index);
        }
    }

    fn controller_reachable(&self, host: usize) -> bool {
        !self.hosts[host].cut_controller
    }

    // ---------------------------------------------------------------- the network

    fn linked(&self, from: Addr, to: Addr) -> bool {
        let cut = |addr: Addr, other: Addr| match addr {
            Addr::Host(h) => match other {
                Addr::Controller => self.hosts[h].cut_controller,
                _ => self.hosts[h].cut_peers,
            },
            _ => false,
        };
        !cut(from, to) && !cut(to, from)
    }

    fn send(&mut self, from: Addr, to: Addr, message: Message) {
        if !self.linked(from, to) {
            return;
        }
        if self.rng.chance(self.drop_per_mille) {
            return;
        }
        let incarnation = match to {
            Addr::Host(h) => self.hosts[h].incarnation,
            _ => 0,
        };
        let copies = if self.rng.chance(self.duplicate_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.rng.range(1, 10);
            if self.rng.chance(self.slow_per_mille) {
                delay += self.rng.range(50, 500);
            }
            self.schedule(
                self.now_ms + delay,
                Event::Deliver {
                    to,
                    incarnation,
                    message: message.clone(),
                },
            );
        }
    }

    fn deliver(&mut self, to: Addr, incarnation: u64, message: Message) -> Result<(), SimFailure> {
        match to {
            Addr::Host(host) => {
                if !self.hosts[host].up || self.hosts[host].incarnation != incarnation {
                    return Ok(());
                }
                let event = Event::Deliver {
                    to,
                    incarnation,
                    message,
                };
                if self.deferred(host, event.clone()) {
                    return Ok(());
                }
                let Event::Deliver { message, .. } = event else {
                    unreachable!("built above");
                };
                self.host_receives(host, message)
            }
            Addr::Controller => {
                if let Message::AlterPartition {
                    from,
                    sequence,
                    request,
                } = message
                {
                    self.alter_partition(from, sequence, request);
                }
                Ok(())
            }
            Addr::Producer(producer) => {
                if let Message::ProduceResponse { request, result } = message {
                    self.produce_answered(producer, request, result);
                }
                Ok(())
            }
            Addr::Consumer => {
                if let Message::ConsumeResponse { offset, served } = message {
                    return self.consumed(offset, served);
                }
                Ok(())
            }
        }
    }

    fn host_receives(&mut self, host: usize, message: Message) -> Result<(), SimFailure> {
        match message {
            fetch @ Message::Fetch { .. } => {
                let request_ms = self.now_ms as i64;
                self.answer_fetch_request(host, fetch, request_ms, true)
            }
            Message::FetchResponse {
                request,
                leader_epoch,
                fetch_offset,
                result,
            } => {
                self.fetched(host, request, leader_epoch, fetch_offset, result);
                Ok(())
            }
            Message::Produce {
                producer,
                request,
                records,
            } => {
                let result = self.append_as_leader(host, producer, request, &records);
                if let Err(error) = result {
                    let response = Message::ProduceResponse {
                        request,
                        result: Err(error),
                    };
                    self.send(Addr::Host(host), Addr::Producer(producer), response);
                }
                self.leader_moved(host)
            }
            Message::Consume { offset } => {
                self.serve_consumer(host, offset);
                Ok(())
            }
            Message::AlterPartitionResponse {
                sequence,
                leader_epoch,
                result,
            } => {
                self.alter_answered(host, sequence, leader_epoch, result);
                self.leader_moved(host)
            }
            _ => Ok(()),
        }
    }

    /// A leader answers a fetch that arrived at `request_ms`. `first`: it just arrived, and
    /// when there are no records for it, it is parked (the long poll) and answered again when
    /// it wakes, with the time it arrived.
    fn answer_fetch_request(
        &mut self,
        host: usize,
        fetch: Message,
        request_ms: i64,
        first: bool,
    ) -> Result<(), SimFailure> {
        let Message::Fetch {
            from,
            request,
            replica,
            fetch_offset,
            last_fetched_epoch,
            leader_epoch,
            max_wait_ms,
            broker_epoch,
        } = fetch
        else {
            return Ok(());
        };
        let result = self.answer_fetch(
            host,
            (replica, broker_epoch),
            fetch_offset,
            last_fetched_epoch,
            leader_epoch,
            request_ms,
        );
        let nothing = matches!(&result, FetchResult::Records { entries, .. } if entries.is_empty());
        if first && nothing {
            let incarnation = self.hosts[host].incarnation;
            self.schedule(
                self.now_ms + max_wait_ms,
                Event::FetchWakes {
                    host,
                    incarnation,
                    request_ms,
                    fetch,
                },
            );
        } else {
            let response = Message::FetchResponse {
                request,
                leader_epoch,
                fetch_offset,
                result,
            };
            self.send(Addr::Host(host), Addr::Host(from), response);
        }
        self.leader_moved(host)
    }

    // ---------------------------------------------------------------- host timers

    fn timer(&mut self, host: usize, incarnation: u64, timer: Timer) -> Result<(), SimFailure> {
        if !self.hosts[host].up || self.hosts[host].incarnation != incarnation {
            return Ok(());
        }
        let event = Event::Timer {
            host,
            incarnation,
            timer,
        };
        if self.deferred(host, event) {
            return Ok(());
        }
        let period = match timer {
            Timer::Register => {
                if self.controller_reachable(host) {
                    self.register(host);
                }
                if self.hosts[host].broker_epoch.is_some() {
                    self.start_timers(host);
                    return Ok(());
                }
                HEARTBEAT_INTERVAL_MS
            }
            Timer::Heartbeat => {
                self.heartbeat(host);
                HEARTBEAT_INTERVAL_MS
            }
            Timer::Metadata => {
                self.read_image(host)?;
                METADATA_INTERVAL_MS
            }
            Timer::Fetch => {
                self.maybe_fetch(host);
                FETCH_CHECK_MS
            }
            Timer::FetchNow => {
                self.maybe_fetch(host);
                return Ok(());
            }
            Timer::Isr => {
                self.propose_isr(host);
                self.leader_moved(host)?;
                ISR_CHECK_MS
            }
            Timer::Flush => {
                let state = &mut self.hosts[host];
                if state.flushing {
                    state.flushed = state.log.len();
                }
                let (low, high) = self.config.flush_interval_ms;
                self.rng.range(low, high + 1)
            }
            Timer::CheckpointHighWatermark => {
                let state = &mut self.hosts[host];
                if state.flushing {
                    state.high_watermark_checkpoint = state.high_watermark;
                }
                HW_CHECKPOINT_MS
            }
        };
        self.schedule(
            self.now_ms + period,
            Event::Timer {
                host,
                incarnation,
                timer,
            },
        );
        Ok(())
    }

    fn heartbeat(&mut self, host: usize) {
        if !self.controller_reachable(host) {
            return;
        }
        let Some(epoch) = self.hosts[host].broker_epoch else {
            return;
        };
        let id = self.hosts[host].id;
        match self
            .controller
            .heartbeat(id, epoch, true, false, self.now_ms)
        {
            Ok((batch, _)) => self.commit(batch),
            // A stale broker epoch: the process registers again, as the broker does.
            Err(_) => {
                self.hosts[host].broker_epoch = None;
                self.register(host);
            }
        }
    }

    /// The host reads the image (when it reaches the controller) and takes the role it names.
    fn read_image(&mut self, host: usize) -> Result<(), SimFailure> {
        if !self.controller_reachable(host) || self.hosts[host].broker_epoch.is_none() {
            return Ok(());
        }
        let Some(partition) = self.partition() else {
            return Ok(());
        };
        let now = self.now_ms;
        let state = &mut self.hosts[host];
        let me = state.replica;
        let replicas: Vec<ReplicaId> = partition.replicas.iter().map(|n| n.0).collect();
        let isr: Vec<ReplicaId> = partition.isr.iter().map(|n| n.0).collect();
        let known_epoch = state.leader_epoch();
        if known_epoch.is_some_and(|epoch| epoch > partition.leader_epoch) {
            return Ok(());
        }
        // The broker epoch each replica's host is registered in (KIP-903): a leader forgets
        // what a replica's older process reported.
        let image = self.controller.image();
        let registered: Vec<(ReplicaId, u64)> = replicas
            .iter()
            .filter_map(|&replica| {
                let host = NodeId(replica).host()?;
                Some((replica, image.brokers.get(&host)?.epoch))
            })
            .collect();
        let state = &mut self.hosts[host];
        if partition.leader.0 == me {
            if let Role::Leader(leader) = &mut state.role {
                if leader.leader_epoch() == partition.leader_epoch {
                    leader.committed(partition.partition_epoch, &replicas, &isr, now as i64);
                    for &(replica, epoch) in &registered {
                        leader.broker_registered(replica, epoch, now as i64);
                    }
                    // A proposal made against an older partition epoch is settled by this
                    // one; one made against this epoch is still in flight.
                    if leader.proposal().is_none() {
                        state.alter_in_flight = None;
                    }
                    return self.leader_moved(host);
                }
            }
            if known_epoch == Some(partition.leader_epoch) {
                // A follower in the epoch it is told to lead: cannot happen (an epoch has one
                // leader), but it is not ours to lead twice.
                return Ok(());
            }
            self.become_leader(host, &partition, &replicas, &isr);
            if let Role::Leader(leader) = &mut self.hosts[host].role {
                for &(replica, epoch) in &registered {
                    leader.broker_registered(replica, epoch, now as i64);
                }
            }
            return self.leader_moved(host);
        }
        let follows = matches!(state.role, Role::Follower { leader, epoch }
            if leader == partition.leader.0 && epoch == partition.leader_epoch);
        if !follows {
            self.become_follower(host, partition.leader.0, partition.leader_epoch);
        }
        Ok(())
    }

    fn become_leader(
        &mut self,
        host: usize,
        partition: &PartitionRecord,
        replicas: &[ReplicaId],
        isr: &[ReplicaId],
    ) {
        self.step_down(host);
        let now = self.now_ms as i64;
        let state = &mut self.hosts[host];
        let leader = LeaderState::new(LeaderStart {
            leader: state.replica,
            leader_epoch: partition.leader_epoch,
            partition_epoch: partition.partition_epoch,
            replicas,
            isr,
            log_end_offset: state.log_end(),
            high_watermark: state.high_watermark,
            lag_time_max_ms: LAG_TIME_MAX_MS,
            min_insync_replicas: MIN_INSYNC_REPLICAS,
            now_ms: now,
        });
        let end = state.log_end();
        state.cache.assign(partition.leader_epoch, end);
        state.high_watermark = leader.high_watermark();
        state.led = Some((leader.leader_epoch(), leader.high_watermark()));
        state.role = Role::Leader(Box::new(leader));
        state.alter_in_flight = None;
        self.trace(0x1ead ^ host as u64);
        self.say(|| {
            let state = &self.hosts[host];
            format!(
                "host {host} leads epoch {}: log end {}, hw {}, cache {:?}",
                partition.leader_epoch,
                state.log_end(),
                state.high_watermark,
                state.cache.entries()
            )
        });
    }

    fn become_follower(&mut self, host: usize, leader: ReplicaId, epoch: i32) {
        self.step_down(host);
        let state = &mut self.hosts[host];
        state.role = Role::Follower { leader, epoch };
        state.fetch_sent = None;
    }

    /// Leaving a leadership: every write waiting for its acknowledgement is told NOT_LEADER.
    fn step_down(&mut self, host: usize) {
        let pending = std::mem::take(&mut self.hosts[host].pending);
        for ack in pending {
            let response = Message::ProduceResponse {
                request: ack.request,
                result: Err("NOT_LEADER_OR_FOLLOWER"),
            };
            self.send(Addr::Host(host), Addr::Producer(ack.producer), response);
        }
        self.hosts[host].led = None;
    }

    // ---------------------------------------------------------------- the leader

    /// `follower`: the fetching replica and the broker epoch of its host's process.
    fn answer_fetch(
        &mut self,
        host: usize,
        follower: (ReplicaId, Option<u64>),
        fetch_offset: i64,
        last_fetched_epoch: i32,
        leader_epoch: i32,
        request_ms: i64,
    ) -> FetchResult {
        let (replica, broker_epoch) = follower;
        let now = self.now_ms as i64;
        let state = &mut self.hosts[host];
        let Role::Leader(leader) = &mut state.role else {
            return FetchResult::NotLeader;
        };
        if leader_epoch < leader.leader_epoch() {
            return FetchResult::FencedLeaderEpoch;
        }
        if leader_epoch > leader.leader_epoch() {
            return FetchResult::UnknownLeaderEpoch;
        }
        let end = state.log.len() as i64;
        let cache = &state.cache;
        if let Some(diverging) = divergence(
            |epoch| cache.end_offset_for(epoch, end),
            last_fetched_epoch,
            fetch_offset,
        ) {
            return FetchResult::Diverging(diverging);
        }
        if leader
            .follower_fetched(replica, fetch_offset, now, request_ms, broker_epoch)
            .is_err()
        {
            return FetchResult::Refused;
        }
        let from = fetch_offset as usize;
        let to = (from + FETCH_RECORDS_MAX).min(state.log.len());
        FetchResult::Records {
            entries: state.log[from..to].to_vec(),
            high_watermark: leader.high_watermark(),
        }
    }

    fn append_as_leader(
        &mut self,
        host: usize,
        producer: usize,
        request: u64,
        records: &[u64],
    ) -> Result<(), &'static str> {
        let state = &mut self.hosts[host];
        let Role::Leader(leader) = &mut state.role else {
            return Err("NOT_LEADER_OR_FOLLOWER");
        };
        if leader.check_min_insync(MIN_INSYNC_REPLICAS).is_err() {
            return Err("NOT_ENOUGH_REPLICAS");
        }
        let epoch = leader.leader_epoch();
        for &record in records {
            state.log.push(Entry { epoch, record });
        }
        let end = state.log.len() as i64;
        leader.leader_appended(end);
        state.pending.push(PendingAck {
            end_offset: end,
            producer,
            request,
        });
        Ok(())
    }

    /// After anything that may move a leader's high watermark: check it did not move back
    /// within the epoch, and acknowledge the writes it now covers.
    fn leader_moved(&mut self, host: usize) -> Result<(), SimFailure> {
        let state = &mut self.hosts[host];
        let Role::Leader(leader) = &state.role else {
            return Ok(());
        };
        let (epoch, high_watermark) = (leader.leader_epoch(), leader.high_watermark());
        if let Some((led_epoch, led_hw)) = state.led {
            if led_epoch == epoch && high_watermark < led_hw {
                let message = format!(
                    "host {host}: high watermark moved back from {led_hw} to {high_watermark} \
                     in leader epoch {epoch}"
                );
                return Err(self.failure(message));
            }
        }
        if high_watermark > state.log_end() {
            let message = format!(
                "host {host}: high watermark {high_watermark} past its log end {}",
                state.log_end()
            );
            return Err(self.failure(message));
        }
        let moved = state.led.is_none_or(|(_, led_hw)| led_hw != high_watermark);
        state.led = Some((epoch, high_watermark));
        state.high_watermark = high_watermark;
        if moved {
            self.say(|| {
                let state = &self.hosts[host];
                let Role::Leader(leader) = &state.role else {
                    return String::new();
                };
                let ends: Vec<(ReplicaId, Option<i64>)> = self
                    .hosts
                    .iter()
                    .map(|h| (h.replica, leader.follower_end(h.replica)))
                    .collect();
                format!(
                    "host {host} hw {high_watermark} in epoch {epoch}: log end {}, isr {:?}, \
                     follower ends {ends:?}",
                    state.log_end(),
                    leader.isr()
                )
            });
        }
        let state = &mut self.hosts[host];
        let (done, waiting): (Vec<PendingAck>, Vec<PendingAck>) =
            std::mem::take(&mut state.pending)
                .into_iter()
                .partition(|ack| ack.end_offset <= high_watermark);
        state.pending = waiting;
        for ack in done {
            let response = Message::ProduceResponse {
                request: ack.request,
                result: Ok(()),
            };
            self.send(Addr::Host(host), Addr::Producer(ack.producer), response);
        }
        Ok(())
    }

    fn propose_isr(&mut self, host: usize) {
        let now = self.now_ms;
        let state = &mut self.hosts[host];
        let Role::Leader(leader) = &mut state.role else {
            return;
        };
        if let Some((_, sent_ms)) = state.alter_in_flight {
            if now.saturating_sub(sent_ms) < ALTER_TIMEOUT_MS {
                return;
            }
        }
        // No answer in time (the request or its answer was lost, or it was refused for a
        // stale epoch and the metadata has not come): the controller may have committed it,
        // so the same proposal goes again (as Kafka's AlterPartitionManager retries), and it
        // keeps counting toward the high watermark until settled.
        let Some(isr) = leader
            .proposal()
            .or_else(|| leader.isr_proposal(now as i64))
        else {
            return;
        };
        state.alter_sequence += 1;
        let sequence = state.alter_sequence;
        state.alter_in_flight = Some((sequence, now));
        let request = AlterPartition {
            topic: TOPIC.into(),
            partition: 0,
            leader: NodeId(leader.leader()),
            leader_epoch: leader.leader_epoch(),
            partition_epoch: leader.partition_epoch(),
            isr: isr.into_iter().map(NodeId).collect(),
            broker_epochs: leader
                .proposal_broker_epochs()
                .into_iter()
                .map(|(replica, epoch)| (NodeId(replica), epoch))
                .collect(),
        };
        let message = Message::AlterPartition {
            from: host,
            sequence,
            request,
        };
        self.send(Addr::Host(host), Addr::Controller, message);
    }

    fn alter_partition(&mut self, from: usize, sequence: u64, request: AlterPartition) {
        let leader_epoch = request.leader_epoch;
        let result = match self.controller.alter_partition(&request) {
            Ok((_, batch)) => {
                self.commit(batch);
                self.partition().ok_or_else(|| "no partition".to_string())
            }
            Err(refusal) => Err(format!("{:?}", refusal.code)),
        };
        let response = Message::AlterPartitionResponse {
            sequence,
            leader_epoch,
            result,
        };
        self.send(Addr::Controller, Addr::Host(from), response);
    }

    fn alter_answered(
        &mut self,
        host: usize,
        sequence: u64,
        leader_epoch: i32,
        result: Result<PartitionRecord, String>,
    ) {
        let now = self.now_ms as i64;
        let state = &mut self.hosts[host];
        if state.alter_in_flight.map(|(s, _)| s) != Some(sequence) {
            return;
        }
        let Role::Leader(leader) = &mut state.role else {
            return;
        };
        if leader.leader_epoch() != leader_epoch {
            return;
        }
        match result {
            Ok(partition) if partition.leader_epoch == leader_epoch => {
                let replicas: Vec<ReplicaId> = partition.replicas.iter().map(|n| n.0).collect();
                let isr: Vec<ReplicaId> = partition.isr.iter().map(|n| n.0).collect();
                leader.committed(partition.partition_epoch, &replicas, &isr, now);
                if leader.proposal().is_none() {
                    state.alter_in_flight = None;
                }
            }
            // Refused after the partition epoch check: not applied, decide again.
            Err(code) if code == "IneligibleReplica" || code == "InvalidRequest" => {
                leader.proposal_failed();
                state.alter_in_flight = None;
            }
            // A stale partition or leader epoch (an earlier copy of this request may be what
            // moved it): wait for the metadata, or send it again after the timeout.
            _ => {}
        }
    }

    fn serve_consumer(&mut self, host: usize, offset: i64) {
        let state = &self.hosts[host];
        if !matches!(state.role, Role::Leader(_)) || offset < 0 {
            return;
        }
        let from = offset as usize;
        let to = (state.high_watermark.max(0) as usize)
            .min(from + CONSUME_RECORDS_MAX)
            .min(state.log.len());
        let served: Vec<u64> = state
            .log
            .get(from..to.max(from))
            .unwrap_or_default()
            .iter()
            .map(|entry| entry.record)
            .collect();
        let response = Message::ConsumeResponse { offset, served };
        self.send(Addr::Host(host), Addr::Consumer, response);
    }

    // ---------------------------------------------------------------- the follower

    fn maybe_fetch(&mut self, host: usize) {
        let now = self.now_ms;
        let state = &self.hosts[host];
        let Role::Follower { leader, epoch } = state.role else {
            return;
        };
        if state
            .fetch_sent
            .is_some_and(|(_, sent)| now.saturating_sub(sent) < FETCH_TIMEOUT_MS)
        {
            return;
        }
        let Some(leader_host) = self.hosts.iter().position(|h| h.replica == leader) else {
            return;
        };
        let request = state.fetch_sequence + 1;
        let message = Message::Fetch {
            from: host,
            request,
            replica: state.replica,
            fetch_offset: state.log_end(),
            last_fetched_epoch: state.cache.latest_epoch().unwrap_or(-1),
            leader_epoch: epoch,
            max_wait_ms: FETCH_MAX_WAIT_MS.max(state.hold_next_fetch_ms),
            broker_epoch: state.broker_epoch,
        };
        let state = &mut self.hosts[host];
        state.hold_next_fetch_ms = 0;
        state.fetch_sequence = request;
        state.fetch_sent = Some((request, now));
        self.send(Addr::Host(host), Addr::Host(leader_host), message);
    }

    fn fetched(
        &mut self,
        host: usize,
        request: u64,
        leader_epoch: i32,
        fetch_offset: i64,
        result: FetchResult,
    ) {
        let state = &mut self.hosts[host];
        let Role::Follower { epoch, .. } = state.role else {
            return;
        };
        // Only the answer to the request in flight is taken: an answer to an older one
        // (duplicated, late, or to a request given up) is ignored.
        if state.fetch_sent.map(|(r, _)| r) != Some(request) {
            return;
        }
        if epoch != leader_epoch || fetch_offset != state.log_end() {
            return;
        }
        state.fetch_sent = None;
        let mut next_ms = FETCH_BACKOFF_MS;
        match result {
            FetchResult::Records {
                entries,
                high_watermark,
            } => {
                // Without records, the leader already waited (the long poll).
                next_ms = 1;
                for entry in entries {
                    let offset = state.log_end();
                    state.cache.assign(entry.epoch, offset);
                    state.log.push(entry);
                }
                state.high_watermark = high_watermark.min(state.log_end());
            }
            FetchResult::Diverging(diverging) => {
                let end = state.log_end();
                let cache = &state.cache;
                let offset = truncation_offset(
                    |e| cache.end_offset_for(e, end),
                    end,
                    state.high_watermark,
                    diverging,
                );
                self.say(|| format!("host {host} diverges: {diverging:?} -> truncate to {offset}"));
                self.truncate(host, offset);
                self.report.divergence_truncations += 1;
                next_ms = 1;
            }
            _ => {}
        }
        let incarnation = self.hosts[host].incarnation;
        // The next fetch: at once after an answer, after a back-off after an error. The periodic
        // fetch timer keeps running beside it (it resends a fetch that timed out).
        self.schedule(
            self.now_ms + next_ms,
            Event::Timer {
                host,
                incarnation,
                timer: Timer::FetchNow,
            },
        );
    }

    fn truncate(&mut self, host: usize, offset: i64) {
        let state = &mut self.hosts[host];
        let offset = offset.clamp(0, state.log_end());
        let removed = state.log_end() - offset;
        state.log.truncate(offset as usize);
        state.cache.truncate_from_end(offset);
        state.flushed = state.flushed.min(state.log.len());
        state.high_watermark = state.high_watermark.min(offset);
        state.high_watermark_checkpoint = state.high_watermark_checkpoint.min(offset);
        self.report.max_truncation = self.report.max_truncation.max(removed as u64);
    }
}

impl Sim {
    // ---------------------------------------------------------------- clients

    fn leader_host(&self) -> Option<usize> {
        let leader = self.partition()?.leader.0;
        self.hosts.iter().position(|host| host.replica == leader)
    }

    fn produce(&mut self, producer: usize) {
        if !self.chaos || !self.producing {
            return;
        }
        let now = self.now_ms;
        let next_ms = self.rng.range(10, 40);
        self.schedule(now + next_ms, Event::Produce(producer));
        if let Some((_, sent_ms)) = self.producers[producer].in_flight {
            if now.saturating_sub(sent_ms) < PRODUCE_TIMEOUT_MS {
                return;
            }
            // Timed out: the same records go again (they may have been written: no
            // idempotence here).
            self.producers[producer].in_flight = None;
        }
        let records = match self.producers[producer].batch.clone() {
            Some(records) => records,
            None => {
                let count = self.rng.range(1, 4);
                let records: Vec<u64> = (self.next_record..self.next_record + count).collect();
                self.next_record += count;
                self.report.produced_records += count;
                self.producers[producer].batch = Some(records.clone());
                records
            }
        };
        let Some(leader) = self.leader_host() else {
            return;
        };
        let request = self.next_request;
        self.next_request += 1;
        self.producers[producer].in_flight = Some((request, now));
        let message = Message::Produce {
            producer,
            request,
            records,
        };
        self.send(Addr::Producer(producer), Addr::Host(leader), message);
    }

    fn produce_answered(&mut self, producer: usize, request: u64, result: Result<(), &str>) {
        let state = &mut self.producers[producer];
        if state.in_flight.map(|(r, _)| r) != Some(request) {
            return;
        }
        state.in_flight = None;
        if result.is_ok() {
            let records = state.batch.take().unwrap_or_default();
            self.report.acked_records += records.len() as u64;
            self.acked.extend(records);
        }
    }

    fn consume(&mut self) {
        let now = self.now_ms;
        self.schedule(now + 30, Event::Consume);
        if self
            .consumer_in_flight
            .is_some_and(|sent_ms| now.saturating_sub(sent_ms) < 500)
        {
            return;
        }
        let Some(leader) = self.leader_host() else {
            return;
        };
        // Now and then the consumer reads again from an earlier offset, so a prefix that
        // shrank or changed is seen as it happens, not only at the end.
        let offset = if self.rng.chance(100) {
            self.rng.range(0, self.consumer_offset as u64 + 1) as i64
        } else {
            self.consumer_offset
        };
        self.consumer_in_flight = Some(now);
        self.send(
            Addr::Consumer,
            Addr::Host(leader),
            Message::Consume { offset },
        );
    }

    fn consumed(&mut self, offset: i64, served: Vec<u64>) -> Result<(), SimFailure> {
        self.consumer_in_flight = None;
        for (index, &record) in served.iter().enumerate() {
            let at = offset + index as i64;
            if let Some(previous) = self.served.insert(at, record) {
                if previous != record {
                    let message = format!(
                        "offset {at} was served to a consumer as record {previous}, now as \
                         {record}"
                    );
                    return Err(self.failure(message));
                }
            }
        }
        let end = offset + served.len() as i64;
        if offset <= self.consumer_offset && end > self.consumer_offset {
            self.report.consumed_records += (end - self.consumer_offset) as u64;
            self.consumer_offset = end;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- faults

    fn random_fault(&mut self) {
        if !self.chaos {
            return;
        }
        let next_ms = self.rng.range(200, 1_000);
        self.schedule(self.now_ms + next_ms, Event::Fault);
        let host = self.rng.index(self.hosts.len());
        if !self.hosts[host].up {
            return;
        }
        self.report.faults += 1;
        match self.rng.range(0, 10) {
            0..=2 => {
                let peers = self.rng.chance(700);
                let controller = !peers || self.rng.chance(500);
                let heal_after_ms = self.rng.range(300, 4_000);
                self.act(Action::Cut {
                    host,
                    peers,
                    controller,
                    heal_after_ms,
                });
            }
            3..=4 => {
                let ms = self.rng.range(100, 3_500);
                self.act(Action::Pause { host, ms });
            }
            5..=7 => {
                // A second replica losing its tail while one that did is still eligible is a
                // second failure, which min.insync.replicas=2 does not cover.
                if self.data_loss_eligible() || !self.another_copy_survives(host) {
                    return;
                }
                let wipe = self.rng.chance(100);
                let restart_after_ms = Some(self.rng.range(100, 4_000));
                self.act(Action::Crash {
                    host,
                    wipe,
                    restart_after_ms,
                });
            }
            _ => {
                let ms = self.rng.range(100, 2_000);
                self.act(Action::HoldNextFetch { host, ms });
            }
        }
    }

    /// Whether the image's ISR or ELR names a host whose process crashed (losing its unflushed
    /// tail) and that the controller has not yet seen come back: it counts as a copy it may
    /// not be, until its new registration takes it out.
    fn data_loss_eligible(&self) -> bool {
        let Some(partition) = self.partition() else {
            return false;
        };
        partition
            .isr
            .iter()
            .chain(&partition.elr)
            .any(|node| !self.intact(node.0))
    }

    /// Whether `replica`'s host is up in the process the image knows: it lost nothing since
    /// the controller last heard from it (a paused or cut-off host counts: its log is whole).
    fn intact(&self, replica: ReplicaId) -> bool {
        let image = self.controller.image();
        self.hosts.iter().any(|state| {
            let current = image.brokers.get(&state.id).map(|broker| broker.epoch);
            state.replica == replica
                && state.up
                && state.broker_epoch.is_some()
                && state.broker_epoch == current
        })
    }

    /// Whether another intact replica stays eligible (in the ISR or the ELR) if `host` crashes:
    /// then the crash is one failure, which min.insync.replicas=2 covers, and must not lose
    /// an acknowledged record. Fencing does not take it out: below the minimum it moves to the
    /// ELR.
    ///
    /// A leader's ISR change in flight may still commit after it crashed (seed 1428). One that
    /// leaves the ISR at the minimum clears the ELR and takes the replicas it drops out of
    /// both, so the other copy must then be in the proposal; one below the minimum moves the
    /// replicas it drops to the ELR, where they stay eligible.
    fn another_copy_survives(&self, host: usize) -> bool {
        let Some(partition) = self.partition() else {
            return false;
        };
        let proposed = match &self.hosts[host].role {
            Role::Leader(leader) => leader.proposal(),
            _ => None,
        };
        let me = self.hosts[host].replica;
        let mut eligible: Vec<ReplicaId> = partition
            .isr
            .iter()
            .chain(&partition.elr)
            .map(|node| node.0)
            .collect();
        // Whether it commits or not, the copy must be eligible.
        if let Some(isr) = proposed.filter(|isr| isr.len() >= MIN_INSYNC_REPLICAS) {
            eligible.retain(|replica| isr.contains(replica));
        }
        eligible
            .iter()
            .any(|&replica| replica != me && self.intact(replica))
    }

    fn act(&mut self, action: Action) {
        self.trace(0xfa17);
        self.say(|| format!("fault: {action:?}"));
        match action {
            Action::Crash {
                host,
                wipe,
                restart_after_ms,
            } => {
                self.crash(host, wipe);
                if let Some(after_ms) = restart_after_ms {
                    self.schedule(self.now_ms + after_ms, Event::Restart(host));
                }
            }
            Action::Restart(host) => self.restart(host),
            Action::Cut {
                host,
                peers,
                controller,
                heal_after_ms,
            } => {
                self.hosts[host].cut_peers |= peers;
                self.hosts[host].cut_controller |= controller;
                self.schedule(self.now_ms + heal_after_ms, Event::Heal(host));
            }
            Action::Pause { host, ms } => {
                let until = self.now_ms + ms;
                let state = &mut self.hosts[host];
                state.paused_until_ms = state.paused_until_ms.max(until);
            }
            Action::HoldNextFetch { host, ms } => self.hosts[host].hold_next_fetch_ms = ms,
            Action::StopFlushing(host) => self.hosts[host].flushing = false,
            Action::StopProducers => self.producing = false,
        }
    }

    fn crash(&mut self, host: usize, wipe: bool) {
        if !self.hosts[host].up {
            return;
        }
        self.report.crashes += 1;
        let state = &mut self.hosts[host];
        state.up = false;
        if wipe {
            state.flushed = 0;
            state.high_watermark_checkpoint = 0;
        }
        state.log.truncate(state.flushed);
        // Recovery rebuilds the epoch cache from the batches that survived.
        state.cache = EpochCache::new();
        for (offset, entry) in state.log.iter().enumerate() {
            state.cache.assign(entry.epoch, offset as i64);
        }
        state.high_watermark = state.high_watermark_checkpoint.min(state.log_end());
        state.role = Role::Unknown;
        state.pending.clear();
        state.broker_epoch = None;
        state.clean_epoch = None;
        state.alter_in_flight = None;
        state.fetch_sent = None;
        state.led = None;
        state.paused_until_ms = 0;
        state.hold_next_fetch_ms = 0;
        self.say(|| {
            let state = &self.hosts[host];
            format!(
                "host {host} crashed: log end {}, hw {}",
                state.log_end(),
                state.high_watermark
            )
        });
    }

    fn restart(&mut self, host: usize) {
        let state = &mut self.hosts[host];
        if state.up {
            return;
        }
        state.up = true;
        state.flushing = true;
        state.incarnation += 1;
        let incarnation = state.incarnation;
        self.schedule(
            self.now_ms,
            Event::Timer {
                host,
                incarnation,
                timer: Timer::Register,
            },
        );
    }

    /// The faults stop: cuts heal, paused hosts resume, crashed ones restart, the network
    /// stops losing messages, and producers stop.
    fn end_chaos(&mut self) {
        self.chaos = false;
        self.drop_per_mille = 0;
        self.duplicate_per_mille = 0;
        self.slow_per_mille = 0;
        for host in 0..self.hosts.len() {
            let state = &mut self.hosts[host];
            state.cut_peers = false;
            state.cut_controller = false;
            state.paused_until_ms = state.paused_until_ms.min(self.now_ms);
            state.flushing = true;
            self.restart(host);
        }
    }

    // ---------------------------------------------------------------- checks

    /// Log matching: two live replicas hold the same records below the smaller of their high
    /// watermarks.
    fn check_log_matching(&self) -> Result<(), SimFailure> {
        for (a, first) in self.hosts.iter().enumerate() {
            if first.high_watermark > first.log_end() {
                let message = format!(
                    "host {a}: high watermark {} past its log end {}",
                    first.high_watermark,
                    first.log_end()
                );
                return Err(self.failure(message));
            }
            for (b, second) in self.hosts.iter().enumerate().skip(a + 1) {
                if !first.up || !second.up {
                    continue;
                }
                let agreed = first.high_watermark.min(second.high_watermark).max(0) as usize;
                let differs = (0..agreed).find(|&o| first.log[o] != second.log[o]);
                if let Some(offset) = differs {
                    let message = format!(
                        "hosts {a} and {b} differ at offset {offset} below both high watermarks \
                         ({} and {}): {:?} vs {:?}",
                        first.high_watermark,
                        second.high_watermark,
                        first.log[offset],
                        second.log[offset]
                    );
                    return Err(self.failure(message));
                }
            }
        }
        Ok(())
    }

    fn final_checks(&mut self) -> Result<(), SimFailure> {
        self.check_log_matching()?;
        let partition = self
            .partition()
            .ok_or_else(|| self.failure("the partition is gone".into()))?;
        self.report.final_leader_epoch = partition.leader_epoch;
        self.report.final_isr = partition.isr.iter().map(|n| n.0).collect();
        let Some(leader) = self.leader_host() else {
            let message = format!("no leader after settling: {partition:?}");
            return Err(self.failure(message));
        };
        let state = &self.hosts[leader];
        let leads =
            matches!(&state.role, Role::Leader(l) if l.leader_epoch() == partition.leader_epoch);
        if !state.up || !leads {
            let message = format!("host {leader} is the image's leader but does not lead");
            return Err(self.failure(message));
        }
        let committed = &state.log[..state.high_watermark as usize];
        let present: BTreeSet<u64> = committed.iter().map(|entry| entry.record).collect();
        self.report.duplicate_records = (committed.len() - present.len()) as u64;
        let lost: Vec<u64> = self.acked.difference(&present).copied().collect();
        if !lost.is_empty() {
            let message = format!(
                "{} acknowledged records lost (first {:?}); final leader host {leader} in epoch \
                 {}, high watermark {}, log end {}, ISR {:?}",
                lost.len(),
                &lost[..lost.len().min(5)],
                partition.leader_epoch,
                state.high_watermark,
                state.log_end(),
                self.report.final_isr
            );
            return Err(self.failure(message));
        }
        for (&offset, &record) in &self.served {
            let now = committed.get(offset as usize).map(|entry| entry.record);
            if now != Some(record) {
                let message = format!(
                    "offset {offset} was served to a consumer as record {record}; the final \
                     leader (host {leader}, high watermark {}) has {now:?}",
                    state.high_watermark
                );
                return Err(self.failure(message));
            }
        }
        for (index, host) in self.hosts.iter().enumerate() {
            if host.log_end() != state.log_end() {
                let message = format!(
                    "host {index} did not catch up after settling: log end {} vs the leader's {}",
                    host.log_end(),
                    state.log_end()
                );
                return Err(self.failure(message));
            }
        }
        Ok(())
    }
}
