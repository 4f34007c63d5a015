//! A deterministic simulation of the controller quorum and its brokers, from one seed.
//!
//! 3 or 5 [`ControllerNode`]s and 3 to 5 brokers run on a virtual clock; an event queue
//! ordered by (time, sequence) decides what happens next, and one seeded [`Rng`] decides every
//! delay, drop and fault, so a seed replays exactly (`trace_hash` is the proof). Faults:
//! messages delayed 1-20 ms and dropped (2 %), a voter cut off the network for a while, a
//! voter crashed (it loses whatever its disk had not made durable: the disk holds only the
//! batches whose `Persisted` was delivered) and restarted with [`ControllerNode::restore`],
//! a broker crashed (it stops heartbeating) and maybe restarted with a new incarnation.
//! Clients create topics through whichever voter they think leads.
//!
//! When the faults stop, every voter and pending broker restarts, cuts heal and the network
//! stops dropping messages (it still delays them).
//!
//! Checked after every event: at most one leader per term; a committed batch never changes
//! (every voter's applied batches against one global record). After the faults stop and the
//! cluster runs quiet: every voter's image is identical (and equal to the global record
//! applied in order), every live broker is unfenced, every dead one fenced and leading
//! nothing, and every partition's leader is a live member of its ISR (or -1), its ISR within
//! its replicas.
//!
//! Simplifications: a broker reads committed batches (`committed_since`) from the voter it
//! believes leads directly, without a network hop; replies travel the network but are not
//! dropped at random (a request lost to a cut or crash times out and is retried).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kafka_protocol::ResponseError;

use crate::controller::{ControllerSettings, NewTopic};
use crate::image::MetadataImage;
use crate::log::Recovered;
use crate::node::{HostId, NodeId};
use crate::quorum::{
    CatchUp, Command, CommandError, ControllerNode, Input, Output, PersistBatch, QuorumSettings,
    Reply, RequestId,
};
use crate::records::{Endpoint, MetadataRecord, RecordBatch, Registration};
use crate::rng::Rng;

/// How often a voter's clock is fed (`Input::Tick`); raft ticks every 50 ms of it.
const TICK_INPUT_MS: u64 = 25;
const HEARTBEAT_INTERVAL_MS: u64 = 250;
const SESSION_TIMEOUT_MS: u64 = 2_000;
/// A client request without a reply after this long is sent again.
const REQUEST_TIMEOUT_MS: u64 = 1_500;
/// A broker's heartbeat without a reply after this long is sent again: two heartbeat
/// intervals, so a few lost requests do not cost a broker its session.
const BROKER_REQUEST_TIMEOUT_MS: u64 = 2 * HEARTBEAT_INTERVAL_MS;
const DROP_PER_MILLE: u64 = 20;
const BROKER_HOST_BASE: u32 = 100;

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub voters: usize,
    pub brokers: usize,
    /// Faults happen until then.
    pub chaos_ms: u64,
    /// Then everything heals and runs quiet this long before the final checks.
    pub quiet_ms: u64,
}

impl SimConfig {
    /// Voters and brokers drawn from the seed.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x5eed);
        Self {
            seed,
            voters: if rng.chance(500) { 3 } else { 5 },
            brokers: rng.range(3, 6) as usize,
            chaos_ms: 20_000,
            quiet_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub seed: u64,
    pub trace_hash: u64,
    pub events: u64,
    pub batches_committed: u64,
    pub topics_created: u64,
    pub voter_crashes: u64,
    pub snapshots_installed: u64,
    pub peer_messages_dropped: u64,
    /// From an active leader's crash to the next CreateTopics committed, per crash.
    pub failover_ms: Vec<u64>,
    /// From a crashed broker's last heartbeat to its fence record committing, per crash.
    pub fence_ms: Vec<u64>,
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
            "seed {} failed at {} ms: {} (replay with SIM_SEED={})",
            self.seed, self.at_ms, self.message, self.seed
        )
    }
}

impl std::error::Error for SimFailure {}

pub fn settings() -> QuorumSettings {
    QuorumSettings {
        tick_interval_ms: 50,
        election_ticks: 6,
        heartbeat_ticks: 2,
        // Small, so snapshots, compaction and catching up from a snapshot happen every run.
        compact_entries: 32,
        queued_commands_max: 64,
        controller: ControllerSettings::new(SESSION_TIMEOUT_MS),
    }
}

/// Runs one seed.
pub fn run(config: &SimConfig) -> Result<SimReport, SimFailure> {
    let mut sim = Sim::new(config)?;
    sim.run()?;
    sim.final_checks()?;
    Ok(sim.report())
}

enum Event {
    Tick(usize),
    Deliver {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    Persisted {
        voter: usize,
        generation: u64,
        batch: PersistBatch,
        after: Vec<(HostId, Vec<u8>)>,
    },
    Request {
        voter: usize,
        id: RequestId,
        command: Command,
    },
    Reply {
        id: RequestId,
        result: Result<Reply, CommandError>,
    },
    BrokerBeat(usize),
    ClientSend(usize),
    Fault,
    RestartVoter(usize),
    RestartBroker(usize),
    Heal(usize),
    EndChaos,
}

struct Voter {
    host: HostId,
    node: Option<ControllerNode>,
    generation: u64,
    disk: Recovered,
    disk_free_ms: u64,
    cut: bool,
    applied_index: u64,
}

struct Broker {
    host: HostId,
    incarnation: u128,
    alive: bool,
    restart_pending: bool,
    epoch: Option<u64>,
    image: MetadataImage,
    leader_guess: usize,
    last_heartbeat_ms: u64,
    outstanding: Option<(RequestId, u64)>,
}

struct Client {
    leader_guess: usize,
    next_topic: u32,
    outstanding: Option<(RequestId, u64)>,
}

#[derive(Clone, Copy)]
enum Requester {
    Broker(usize),
    Client(usize),
}

struct Sim {
    config: SimConfig,
    settings: QuorumSettings,
    rng: Rng,
    now_ms: u64,
    sequence: u64,
    events: BTreeMap<(u64, u64), Event>,
    voters: Vec<Voter>,
    voter_hosts: Vec<HostId>,
    brokers: Vec<Broker>,
    clients: Vec<Client>,
    chaos: bool,
    next_request: RequestId,
    requests: BTreeMap<RequestId, Requester>,
    leaders_by_term: BTreeMap<u64, HostId>,
    committed: BTreeMap<u64, RecordBatch>,
    trace: u64,
    report: SimReport,
    leader_crashed_ms: Option<u64>,
    awaiting_fence: BTreeMap<HostId, (u64, u64)>,
}

impl Sim {
    fn new(config: &SimConfig) -> Result<Self, SimFailure> {
        let settings = settings();
        let voter_hosts: Vec<HostId> = (0..config.voters as u32).map(HostId).collect();
        let mut sim = Self {
            config: config.clone(),
            settings,
            rng: Rng::new(config.seed),
            now_ms: 0,
            sequence: 0,
            events: BTreeMap::new(),
            voters: Vec::new(),
            voter_hosts: voter_hosts.clone(),
            brokers: Vec::new(),
            clients: Vec::new(),
            chaos: true,
            next_request: 1,
            requests: BTreeMap::new(),
            leaders_by_term: BTreeMap::new(),
            committed: BTreeMap::new(),
            trace: 0xcbf2_9ce4_8422_2325,
            report: SimReport {
                seed: config.seed,
                ..Default::default()
            },
            leader_crashed_ms: None,
            awaiting_fence: BTreeMap::new(),
        };
        for &host in &voter_hosts {
            let node = sim.start_voter(host, &Recovered::default(), 0)?;
            sim.voters.push(Voter {
                host,
                node: Some(node),
                generation: 0,
                disk: Recovered::default(),
                disk_free_ms: 0,
                cut: false,
                applied_index: 0,
            });
        }
        for voter in 0..config.voters {
            let phase = sim.rng.range(0, TICK_INPUT_MS);
            sim.schedule(phase, Event::Tick(voter));
        }
        for broker in 0..config.brokers {
            let leader_guess = sim.rng.index(config.voters);
            sim.brokers.push(Broker {
                host: HostId(BROKER_HOST_BASE + broker as u32),
                incarnation: 1,
                alive: true,
                restart_pending: false,
                epoch: None,
                image: MetadataImage::default(),
                leader_guess,
                last_heartbeat_ms: 0,
                outstanding: None,
            });
            let phase = sim.rng.range(0, HEARTBEAT_INTERVAL_MS);
            sim.schedule(phase, Event::BrokerBeat(broker));
        }
        for client in 0..2 {
            let leader_guess = sim.rng.index(config.voters);
            sim.clients.push(Client {
                leader_guess,
                next_topic: 0,
                outstanding: None,
            });
            let start = sim.rng.range(1_000, 2_000);
            sim.schedule(start, Event::ClientSend(client));
        }
        let first_fault = sim.rng.range(1_000, 3_000);
        sim.schedule(first_fault, Event::Fault);
        sim.schedule(config.chaos_ms, Event::EndChaos);
        Ok(sim)
    }

    fn start_voter(
        &self,
        host: HostId,
        disk: &Recovered,
        generation: u64,
    ) -> Result<ControllerNode, SimFailure> {
        let seed = self.config.seed ^ (generation << 32);
        ControllerNode::restore(
            host,
            &self.voter_hosts,
            disk.clone(),
            self.settings.clone(),
            seed,
        )
        .map_err(|error| self.failure(format!("voter {host} does not restore: {error}")))
    }

    fn failure(&self, message: String) -> SimFailure {
        SimFailure {
            seed: self.config.seed,
            at_ms: self.now_ms,
            message,
        }
    }

    fn schedule(&mut self, at_ms: u64, event: Event) {
        self.sequence += 1;
        self.events.insert((at_ms, self.sequence), event);
    }

    fn trace_word(&mut self, word: u64) {
        for byte in word.to_le_bytes() {
            self.trace ^= u64::from(byte);
            self.trace = self.trace.wrapping_mul(0x100_0000_01b3);
        }
    }

    fn trace_bytes(&mut self, bytes: &[u8]) {
        self.trace_word(bytes.len() as u64);
        for &byte in bytes {
            self.trace ^= u64::from(byte);
            self.trace = self.trace.wrapping_mul(0x100_0000_01b3);
        }
    }

    fn run(&mut self) -> Result<(), SimFailure> {
        let end_ms = self.config.chaos_ms + self.config.quiet_ms;
        while let Some(((at_ms, _), event)) = self.events.pop_first() {
            if at_ms > end_ms {
                break;
            }
            self.now_ms = at_ms;
            self.report.events += 1;
            self.trace_word(at_ms);
            self.step(event)?;
            self.check_leaders()?;
        }
        Ok(())
    }

    fn step(&mut self, event: Event) -> Result<(), SimFailure> {
        match event {
            Event::Tick(voter) => {
                self.trace_word(1);
                let now_ms = self.now_ms;
                self.feed(voter, Input::Tick { now_ms })?;
                self.schedule(now_ms + TICK_INPUT_MS, Event::Tick(voter));
            }
            Event::Deliver { to, from, bytes } => {
                self.trace_word(2);
                self.trace_bytes(&bytes);
                let from = self.voters[from].host;
                self.feed(to, Input::Peer { from, bytes })?;
            }
            Event::Persisted {
                voter,
                generation,
                batch,
                after,
            } => {
                self.trace_word(3);
                if self.voters[voter].generation != generation {
                    return Ok(());
                }
                self.voters[voter].disk.absorb(&batch);
                for (to, bytes) in after {
                    self.send(voter, to, bytes);
                }
                let number = batch.number;
                self.feed(voter, Input::Persisted { number })?;
            }
            Event::Request { voter, id, command } => {
                self.trace_word(4);
                self.feed(voter, Input::Client { id, command })?;
            }
            Event::Reply { id, result } => {
                self.trace_word(5);
                self.reply(id, result);
            }
            Event::BrokerBeat(broker) => self.broker_beat(broker),
            Event::ClientSend(client) => self.client_send(client),
            Event::Fault => self.fault()?,
            Event::RestartVoter(voter) => self.restart_voter(voter)?,
            Event::RestartBroker(broker) => self.restart_broker(broker),
            Event::Heal(voter) => {
                self.trace_word(6);
                self.voters[voter].cut = false;
            }
            Event::EndChaos => self.end_chaos()?,
        }
        Ok(())
    }

    /// Feeds a live voter and carries out its output.
    fn feed(&mut self, voter: usize, input: Input) -> Result<(), SimFailure> {
        let Some(node) = self.voters[voter].node.as_mut() else {
            return Ok(());
        };
        let output = node.handle(input);
        self.carry_out(voter, output)
    }

    fn carry_out(&mut self, voter: usize, output: Output) -> Result<(), SimFailure> {
        for (to, bytes) in output.send_now {
            self.send(voter, to, bytes);
        }
        match output.persist {
            Some(batch) => {
                let delay_ms = self.rng.range(1, 6);
                let done_ms = self.now_ms.max(self.voters[voter].disk_free_ms) + delay_ms;
                self.voters[voter].disk_free_ms = done_ms;
                let generation = self.voters[voter].generation;
                let event = Event::Persisted {
                    voter,
                    generation,
                    batch,
                    after: output.send_after_persist,
                };
                self.schedule(done_ms, event);
            }
            None => {
                if !output.send_after_persist.is_empty() {
                    return Err(self.failure("messages wait for a batch that is not there".into()));
                }
            }
        }
        for (id, result) in output.replies {
            if self.voters[voter].cut {
                continue;
            }
            let delay_ms = self.rng.range(1, 21);
            self.schedule(self.now_ms + delay_ms, Event::Reply { id, result });
        }
        for (index, batch) in output.committed {
            self.check_committed(voter, index, batch)?;
        }
        let applied_index = self.voters[voter]
            .node
            .as_ref()
            .map_or(0, ControllerNode::applied_index);
        if applied_index < self.voters[voter].applied_index {
            return Err(self.failure(format!(
                "voter {voter} applied index went back from {} to {applied_index}",
                self.voters[voter].applied_index
            )));
        }
        self.voters[voter].applied_index = applied_index;
        Ok(())
    }

    fn send(&mut self, from: usize, to: HostId, bytes: Vec<u8>) {
        let Some(to) = self.voter_hosts.iter().position(|&host| host == to) else {
            return;
        };
        if self.voters[from].cut || self.voters[to].cut || self.dropped() {
            return;
        }
        let delay_ms = self.rng.range(1, 21);
        self.schedule(self.now_ms + delay_ms, Event::Deliver { to, from, bytes });
    }

    /// Whether the network loses a message: only while faults happen, so the quiet period
    /// shows where the cluster settles.
    fn dropped(&mut self) -> bool {
        self.chaos && self.rng.chance(DROP_PER_MILLE)
    }

    fn check_committed(
        &mut self,
        voter: usize,
        index: u64,
        batch: RecordBatch,
    ) -> Result<(), SimFailure> {
        self.trace_word(index);
        if let Some(known) = self.committed.get(&index) {
            if *known != batch {
                return Err(self.failure(format!(
                    "voter {voter} committed a different batch at index {index}: {batch:?}, \
                     where {known:?} was committed"
                )));
            }
            return Ok(());
        }
        self.report.batches_committed += 1;
        for record in &batch.records {
            self.observe_first_commit(index, record);
        }
        self.committed.insert(index, batch);
        Ok(())
    }

    /// Figures for the report, from the first time a record commits anywhere.
    fn observe_first_commit(&mut self, _index: u64, record: &MetadataRecord) {
        match record {
            MetadataRecord::Topic { .. } => {
                self.report.topics_created += 1;
                if let Some(crashed_ms) = self.leader_crashed_ms.take() {
                    self.report.failover_ms.push(self.now_ms - crashed_ms);
                }
            }
            MetadataRecord::FenceBroker { host, epoch } => {
                if let Some(&(awaited, last_ms)) = self.awaiting_fence.get(host) {
                    if awaited == *epoch {
                        self.report.fence_ms.push(self.now_ms - last_ms);
                        self.awaiting_fence.remove(host);
                    }
                }
            }
            MetadataRecord::RegisterBroker(registration) => {
                self.awaiting_fence.remove(&registration.host);
            }
            _ => {}
        }
    }

    fn check_leaders(&mut self) -> Result<(), SimFailure> {
        for voter in &self.voters {
            let Some(node) = &voter.node else { continue };
            if !node.is_leader() {
                if node.describe_quorum().is_some() {
                    return Err(self.failure(format!(
                        "{} describes the quorum without leading it",
                        voter.host
                    )));
                }
                continue;
            }
            // DescribeQuorum as the leader answers it: itself, its term and commit index, every
            // voter once, none ahead of its log, and itself at its log's end.
            let description = node
                .describe_quorum()
                .expect("a leader describes its quorum");
            let ids: Vec<HostId> = description.voters.iter().map(|v| v.id).collect();
            let own = description.voters.iter().find(|v| v.id == voter.host);
            let last = own.map_or(0, |v| v.log_end_offset);
            if description.leader != voter.host
                || description.term != node.term()
                || description.high_watermark != node.commit_index()
                || ids != node.voters()
                || description.voters.iter().any(|v| v.log_end_offset > last)
                || description.high_watermark > last
            {
                return Err(self.failure(format!(
                    "{} describes its quorum wrongly: {description:?}",
                    voter.host
                )));
            }
            let leader = *self
                .leaders_by_term
                .entry(node.term())
                .or_insert(voter.host);
            if leader != voter.host {
                return Err(self.failure(format!(
                    "two leaders in term {}: {leader} and {}",
                    node.term(),
                    voter.host
                )));
            }
        }
        Ok(())
    }

    fn next_request_id(&mut self, requester: Requester) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        self.requests.insert(id, requester);
        id
    }

    /// A request travels to `voter` (lost when either end is cut or by chance).
    fn request(&mut self, voter: usize, id: RequestId, command: Command) {
        if self.voters[voter].cut || self.dropped() {
            return;
        }
        let delay_ms = self.rng.range(1, 21);
        let event = Event::Request { voter, id, command };
        self.schedule(self.now_ms + delay_ms, event);
    }

    fn guess_from(&mut self, error: &CommandError) -> Option<usize> {
        match error {
            CommandError::NotController {
                leader: Some(leader),
            } => self.voter_hosts.iter().position(|host| host == leader),
            CommandError::NotController { leader: None } => {
                Some(self.rng.index(self.voter_hosts.len()))
            }
            _ => None,
        }
    }

    fn reply(&mut self, id: RequestId, result: Result<Reply, CommandError>) {
        let Some(requester) = self.requests.remove(&id) else {
            return;
        };
        match requester {
            Requester::Broker(broker) => self.broker_reply(broker, id, result),
            Requester::Client(client) => self.client_reply(client, id, result),
        }
    }

    fn broker_beat(&mut self, broker: usize) {
        self.trace_word(7);
        if !self.brokers[broker].alive {
            return;
        }
        let next_ms = self.now_ms + HEARTBEAT_INTERVAL_MS;
        self.schedule(next_ms, Event::BrokerBeat(broker));
        self.broker_catch_up(broker);
        let now_ms = self.now_ms;
        let state = &self.brokers[broker];
        if let Some((_, sent_ms)) = state.outstanding {
            if now_ms - sent_ms < BROKER_REQUEST_TIMEOUT_MS {
                return;
            }
        }
        let command = match state.epoch {
            None => Command::Register(registration(state.host, state.incarnation)),
            Some(epoch) => Command::Heartbeat {
                host: state.host,
                epoch,
                caught_up: state.image.applied_index >= epoch,
                shutting_down: false,
            },
        };
        if state.epoch.is_some() {
            self.brokers[broker].last_heartbeat_ms = now_ms;
        }
        let id = self.next_request_id(Requester::Broker(broker));
        self.brokers[broker].outstanding = Some((id, now_ms));
        let voter = self.brokers[broker].leader_guess;
        self.request(voter, id, command);
    }

    /// The broker reads what committed from the voter it talks to.
    fn broker_catch_up(&mut self, broker: usize) {
        let voter = self.brokers[broker].leader_guess;
        let Some(node) = &self.voters[voter].node else {
            return;
        };
        let state = &mut self.brokers[broker];
        let batches = match node.committed_since(state.image.applied_index) {
            CatchUp::Batches(batches) => batches,
            CatchUp::Image { image, then } => {
                if image.applied_index > state.image.applied_index {
                    state.image = *image;
                }
                then
            }
        };
        for (index, batch) in batches {
            if index > state.image.applied_index {
                state.image.apply(index, &batch);
            }
        }
    }

    fn broker_reply(&mut self, broker: usize, id: RequestId, result: Result<Reply, CommandError>) {
        let state = &self.brokers[broker];
        if !state.alive || state.outstanding.map(|(id, _)| id) != Some(id) {
            return;
        }
        self.brokers[broker].outstanding = None;
        match result {
            Ok(Reply::Registered { epoch }) => self.brokers[broker].epoch = Some(epoch),
            Ok(_) => {}
            Err(CommandError::Refused(refusal)) => {
                let stale = matches!(
                    refusal.code,
                    ResponseError::StaleBrokerEpoch | ResponseError::BrokerIdNotRegistered
                );
                if stale {
                    self.brokers[broker].epoch = None;
                }
            }
            Err(error) => {
                if let Some(guess) = self.guess_from(&error) {
                    self.brokers[broker].leader_guess = guess;
                }
            }
        }
    }

    fn client_send(&mut self, client: usize) {
        self.trace_word(8);
        if !self.chaos {
            return;
        }
        let next_ms = self.now_ms + self.rng.range(200, 600);
        self.schedule(next_ms, Event::ClientSend(client));
        if let Some((_, sent_ms)) = self.clients[client].outstanding {
            if self.now_ms - sent_ms < REQUEST_TIMEOUT_MS {
                return;
            }
        }
        let factor_max = self.config.brokers.min(3) as u64;
        let topic = NewTopic {
            name: format!("t{client}-{}", self.clients[client].next_topic),
            id: (u128::from(self.rng.next_u64()) << 64) | u128::from(self.rng.next_u64()),
            partitions: self.rng.range(1, 9) as u32,
            replication_factor: self.rng.range(1, factor_max + 1) as u16,
            assignment: None,
            configs: BTreeMap::new(),
        };
        let id = self.next_request_id(Requester::Client(client));
        self.clients[client].outstanding = Some((id, self.now_ms));
        let voter = self.clients[client].leader_guess;
        self.request(voter, id, Command::CreateTopics(vec![topic]));
    }

    fn client_reply(&mut self, client: usize, id: RequestId, result: Result<Reply, CommandError>) {
        if self.clients[client].outstanding.map(|(id, _)| id) != Some(id) {
            return;
        }
        self.clients[client].outstanding = None;
        match result {
            // Created, refused (not enough live brokers), or created by an earlier try whose
            // answer was lost: the client moves on to its next topic.
            Ok(_) | Err(CommandError::Refused(_)) => self.clients[client].next_topic += 1,
            Err(error) => {
                if let Some(guess) = self.guess_from(&error) {
                    self.clients[client].leader_guess = guess;
                }
            }
        }
    }

    fn voter_faults(&self) -> usize {
        self.voters
            .iter()
            .filter(|voter| voter.cut || voter.node.is_none())
            .count()
    }

    fn fault(&mut self) -> Result<(), SimFailure> {
        self.trace_word(9);
        if !self.chaos {
            return Ok(());
        }
        let next_ms = self.now_ms + self.rng.range(500, 1_500);
        self.schedule(next_ms, Event::Fault);
        // Faults on voters stay within what a majority survives, so the run makes progress
        // and the failover figures mean something.
        let voter_faults_max = (self.config.voters - 1) / 2;
        let roll = self.rng.range(0, 100);
        let voter = self.rng.index(self.config.voters);
        if roll < 30 && self.voter_faults() < voter_faults_max {
            return self.crash_voter(voter);
        }
        if roll < 55 && self.voter_faults() < voter_faults_max {
            let heal_ms = self.now_ms + self.rng.range(500, 4_000);
            self.voters[voter].cut = true;
            self.schedule(heal_ms, Event::Heal(voter));
            return Ok(());
        }
        if roll < 75 {
            self.crash_broker();
        }
        Ok(())
    }

    fn crash_voter(&mut self, voter: usize) -> Result<(), SimFailure> {
        let Some(node) = self.voters[voter].node.take() else {
            return Ok(());
        };
        self.report.voter_crashes += 1;
        self.report.snapshots_installed += node.stats().snapshots_installed;
        self.report.peer_messages_dropped += node.stats().peer_messages_dropped;
        if node.is_active() && self.leader_crashed_ms.is_none() {
            self.leader_crashed_ms = Some(self.now_ms);
        }
        let state = &mut self.voters[voter];
        state.generation += 1;
        state.disk_free_ms = 0;
        state.applied_index = 0;
        let restart_ms = self.now_ms + self.rng.range(300, 3_000);
        self.schedule(restart_ms, Event::RestartVoter(voter));
        Ok(())
    }

    fn restart_voter(&mut self, voter: usize) -> Result<(), SimFailure> {
        self.trace_word(10);
        if self.voters[voter].node.is_some() {
            return Ok(());
        }
        let state = &self.voters[voter];
        let node = self.start_voter(state.host, &state.disk, state.generation)?;
        self.voters[voter].node = Some(node);
        Ok(())
    }

    fn crash_broker(&mut self) {
        let alive = self.brokers.iter().filter(|broker| broker.alive).count();
        if alive <= 2 {
            return;
        }
        let broker = self.rng.index(self.brokers.len());
        let state = &mut self.brokers[broker];
        if !state.alive {
            return;
        }
        state.alive = false;
        state.outstanding = None;
        if let Some(epoch) = state.epoch {
            self.awaiting_fence
                .insert(state.host, (epoch, state.last_heartbeat_ms));
        }
        if self.rng.chance(500) {
            self.brokers[broker].restart_pending = true;
            let restart_ms = self.now_ms + self.rng.range(1_000, 5_000);
            self.schedule(restart_ms, Event::RestartBroker(broker));
        }
    }

    fn restart_broker(&mut self, broker: usize) {
        self.trace_word(11);
        let state = &mut self.brokers[broker];
        if state.alive || !state.restart_pending {
            return;
        }
        state.alive = true;
        state.restart_pending = false;
        state.incarnation += 1;
        state.epoch = None;
        state.image = MetadataImage::default();
        self.schedule(self.now_ms, Event::BrokerBeat(broker));
    }

    /// Faults stop: every cut heals, every crashed voter and pending broker restarts.
    fn end_chaos(&mut self) -> Result<(), SimFailure> {
        self.trace_word(12);
        self.chaos = false;
        for voter in 0..self.voters.len() {
            self.voters[voter].cut = false;
            self.restart_voter(voter)?;
        }
        for broker in 0..self.brokers.len() {
            self.restart_broker(broker);
        }
        Ok(())
    }

    fn final_checks(&mut self) -> Result<(), SimFailure> {
        let mut reference = MetadataImage::default();
        for (&index, batch) in &self.committed {
            reference.apply(index, batch);
        }
        let leaders = self
            .voters
            .iter()
            .filter_map(|voter| voter.node.as_ref())
            .filter(|node| node.is_active())
            .count();
        if leaders != 1 {
            return Err(self.failure(format!("{leaders} active leaders after the quiet run")));
        }
        let mut first: Option<&MetadataImage> = None;
        for voter in &self.voters {
            let Some(node) = &voter.node else {
                return Err(self.failure(format!("voter {} is down at the end", voter.host)));
            };
            let image = node.image();
            let mut expected = reference.clone();
            expected.applied_index = image.applied_index;
            if *image != expected {
                let applied: Vec<(u64, u64)> = self
                    .voters
                    .iter()
                    .filter_map(|voter| voter.node.as_ref())
                    .map(|node| (node.applied_index(), node.commit_index()))
                    .collect();
                return Err(self.failure(format!(
                    "voter {}'s image (applied {}) differs from the committed batches applied \
                     in order (last committed {:?}; voters' applied and commit {applied:?}): \
                     {}",
                    voter.host,
                    image.applied_index,
                    self.committed.keys().last(),
                    image_difference(image, &expected)
                )));
            }
            if first.is_some_and(|first| first != image) {
                return Err(self.failure(format!("voter {}'s image differs", voter.host)));
            }
            first = Some(image);
        }
        let image = first.expect("voters exist").clone();
        self.check_brokers(&image)?;
        check_partitions(&image).map_err(|message| self.failure(message))?;
        for voter in &self.voters {
            if let Some(node) = &voter.node {
                self.report.snapshots_installed += node.stats().snapshots_installed;
                self.report.peer_messages_dropped += node.stats().peer_messages_dropped;
            }
        }
        Ok(())
    }

    fn check_brokers(&self, image: &MetadataImage) -> Result<(), SimFailure> {
        for broker in &self.brokers {
            let registered = image.brokers.get(&broker.host);
            if broker.alive {
                let live = registered.is_some_and(|registered| {
                    !registered.fenced && registered.registration.incarnation == broker.incarnation
                });
                if !live {
                    return Err(self.failure(
                        format!(
                        "live broker {} (epoch {:?}, applied {}, asking voter {}, request {:?}) \
                         is not registered and unfenced: {registered:?}",
                        broker.host,
                        broker.epoch,
                        broker.image.applied_index,
                        broker.leader_guess,
                        broker.outstanding
                    ) + &self.voter_states(),
                    ));
                }
                continue;
            }
            if registered.is_some_and(|registered| !registered.fenced) {
                return Err(self.failure(format!("dead broker {} is unfenced", broker.host)));
            }
            for topic in image.topics.values() {
                for partition in &topic.partitions {
                    if partition.leader.host() == Some(broker.host) {
                        return Err(self.failure(format!(
                            "dead broker {} leads {} partition {}",
                            broker.host, topic.name, partition.partition
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Each voter's state, for a failure message.
    fn voter_states(&self) -> String {
        let states: Vec<String> = self
            .voters
            .iter()
            .filter_map(|voter| voter.node.as_ref())
            .map(|node| {
                format!(
                    "{}: term {} leader {} active {} applied {} commit {} pending {:?}",
                    node.id(),
                    node.term(),
                    node.is_leader(),
                    node.is_active(),
                    node.applied_index(),
                    node.commit_index(),
                    node.decisions_pending()
                )
            })
            .collect();
        format!("; voters: {}", states.join("; "))
    }

    fn report(&self) -> SimReport {
        let mut report = self.report.clone();
        report.trace_hash = self.trace;
        report
    }
}

/// The controller's invariants on partitions: a leader is a live member of the ISR (or -1),
/// the ISR is non-empty and within the replicas.
pub fn check_partitions(image: &MetadataImage) -> Result<(), String> {
    for topic in image.topics.values() {
        for partition in &topic.partitions {
            let name = format!("{} partition {}", topic.name, partition.partition);
            let leader = partition.leader;
            let leader_ok =
                leader == NodeId(-1) || (image.is_live(leader) && partition.isr.contains(&leader));
            if !leader_ok {
                return Err(format!(
                    "{name}: leader {leader} is not a live ISR member ({:?})",
                    partition.isr
                ));
            }
            let replicas: BTreeSet<&NodeId> = partition.replicas.iter().collect();
            // The ISR may be empty (KIP-966: its last member was fenced into the ELR), but then
            // nobody leads; ISR, ELR and last known ELR are apart, within the replicas.
            let (isr, elr, last) = (&partition.isr, &partition.elr, &partition.last_known_elr);
            let within = isr
                .iter()
                .chain(elr)
                .chain(last)
                .all(|n| replicas.contains(n));
            let apart = !elr.iter().any(|n| isr.contains(n))
                && !last.iter().any(|n| isr.contains(n) || elr.contains(n));
            if (isr.is_empty() && leader != NodeId(-1)) || !within || !apart {
                return Err(format!(
                    "{name}: ISR {isr:?}, ELR {elr:?}, last known ELR {last:?} do not fit \
                     replicas {:?} and leader {leader}",
                    partition.replicas
                ));
            }
        }
    }
    Ok(())
}

fn registration(host: HostId, incarnation: u128) -> Registration {
    Registration {
        host,
        incarnation,
        endpoints: vec![Endpoint {
            node: NodeId::of(host, 0),
            host: format!("broker-{host}"),
            port: 9092,
        }],
        rack: None,
        cores: 1,
        clean_shutdown_epoch: None,
    }
}

/// The first difference between two images, for a failure message.
fn image_difference(found: &MetadataImage, expected: &MetadataImage) -> String {
    if found.brokers != expected.brokers {
        return format!("brokers {:?} where {:?}", found.brokers, expected.brokers);
    }
    for (id, topic) in &expected.topics {
        if found.topics.get(id) != Some(topic) {
            return format!("topic {:?} where {topic:?}", found.topics.get(id));
        }
    }
    format!(
        "{} topics where {}; skipped {} where {}",
        found.topics.len(),
        expected.topics.len(),
        found.skipped_records,
        expected.skipped_records
    )
}

/// The value at quantile `q` (0 to 1) of `values`, sorted here; `None` when empty.
pub fn quantile(values: &mut [u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((values.len() - 1) as f64 * q).round() as usize;
    Some(values[rank])
}
