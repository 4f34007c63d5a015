//! The active controller's decisions, as a state machine that does no I/O: given a request and
//! the time, it answers and returns the records to propose. The caller (the controller's
//! shell) proposes them to the quorum and, once committed, applies them with
//! [`Controller::apply`]; it runs one decision at a time, so every decision is made against
//! the image its records will be applied to, and a record the controller writes is always
//! valid where it commits.
//!
//! What it decides: broker registration (a second live process with a host id refused),
//! heartbeats and fencing after `session_timeout_ms`, controlled shutdown, topic creation
//! with replica placement, deletion, partitions added, config changes, and leader elections
//! when a host is fenced, shuts down or comes back.
//!
//! Eligible leader replicas (Kafka's KIP-966): a replica taken out of the ISR while the ISR
//! is below `min.insync.replicas` joins the partition's ELR. Leaders advance the high
//! watermark only while the ISR is at `min.insync.replicas` (`ringlog_replication`'s
//! `LeaderState`), so an ELR member has every acknowledged record, and the ISR may become
//! empty: a fenced last in-sync replica moves to the ELR, and when the ISR is empty the first
//! live ELR member leads. A host that registers after an unclean shutdown (it may have lost
//! its unflushed tail) leaves every ELR, so a replica that lost acknowledged records is never
//! elected while one that has them may still come back.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kafka_protocol::ResponseError;

use crate::image::MetadataImage;
use crate::node::{HostId, NodeId};
use crate::records::{MetadataRecord, PartitionRecord, RecordBatch, Registration, TopicId};

/// Kafka's limit on topic name length.
const TOPIC_NAME_CHARS_MAX: usize = 249;
/// Partitions one CreateTopics or CreatePartitions may ask for per topic: a limit, so a request
/// cannot make the controller log an unbounded batch.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 100_000;

/// A leader's ISR change (see [`Controller::alter_partition`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AlterPartition {
    pub topic: String,
    pub partition: u32,
    pub leader: NodeId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<NodeId>,
    /// The broker epochs of ISR members, as the leader knows them from their fetches
    /// (KIP-903; Kafka's NewIsrWithEpochs): a replica the request adds to the ISR whose host
    /// has registered again since (another broker epoch) is refused with INELIGIBLE_REPLICA,
    /// since what its old process fetched says nothing of what the new one has (an emptied
    /// disk). A member without an entry is not checked (a leader that does not know it).
    ///
    /// Last, so a controller of the build before it still decodes a request that has it
    /// (postcard ignores trailing bytes) and checks as before.
    pub broker_epochs: Vec<(NodeId, u64)>,
}

#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// A host silent this long is fenced (`broker.session.timeout.ms`).
    pub session_timeout_ms: u64,
    /// `min.insync.replicas` of a topic that does not set it (the brokers'
    /// `--min-insync-replicas`): decides when replicas leaving the ISR join the ELR. It must be
    /// the value the brokers' leaders use, which stop advancing the high watermark below it.
    pub min_insync_replicas: usize,
    /// How often the active controller moves leaderships back to preferred replicas where a
    /// node leads too few of the partitions it prefers (`auto.leader.rebalance.enable` with
    /// `leader.imbalance.check.interval.seconds`); `None`: never.
    pub leader_imbalance_check_interval_ms: Option<u64>,
    /// A node whose share of preferred partitions it does not lead is above this percentage
    /// gets them back (`leader.imbalance.per.broker.percentage`).
    pub leader_imbalance_per_broker_percentage: u32,
    /// `unclean.leader.election.enable` of topics that do not set it (the brokers'
    /// `--unclean-leader-election-enable`; Kafka's default false).
    pub unclean_leader_election: bool,
}

impl ControllerSettings {
    pub fn new(session_timeout_ms: u64) -> Self {
        Self {
            session_timeout_ms,
            min_insync_replicas: 1,
            // Kafka's defaults: enabled, every 300 s, 10 %.
            leader_imbalance_check_interval_ms: Some(300_000),
            leader_imbalance_per_broker_percentage: 10,
            unclean_leader_election: false,
        }
    }
}

/// One partition's answer to an ElectLeaders request.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Election {
    pub topic: String,
    pub partition: u32,
    pub result: Result<(), Refusal>,
}

/// A refusal, as Kafka reports it. On a controller link the code travels as its Kafka number.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    #[serde(with = "kafka_code")]
    pub code: ResponseError,
    pub message: String,
}

/// `ResponseError` as its Kafka code; a code this build does not know reads as
/// UNKNOWN_SERVER_ERROR rather than failing the whole message.
mod kafka_code {
    use kafka_protocol::ResponseError;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        code: &ResponseError,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_i16(code.code())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<ResponseError, D::Error> {
        let code = i16::deserialize(deserializer)?;
        Ok(ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError))
    }
}

impl Refusal {
    pub fn new(code: ResponseError, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A topic to create: its id is drawn by the caller (this state machine draws nothing).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewTopic {
    pub name: String,
    pub id: TopicId,
    pub partitions: u32,
    pub replication_factor: u16,
    /// Replicas of each partition, when the client placed them (then `partitions` and
    /// `replication_factor` must agree with it).
    pub assignment: Option<Vec<Vec<NodeId>>>,
    pub configs: BTreeMap<String, String>,
}

/// What a heartbeat is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeartbeatAnswer {
    pub fenced: bool,
    /// The host asked to shut down and leads nothing any more: it may stop.
    pub may_shut_down: bool,
}

pub struct Controller {
    settings: ControllerSettings,
    image: MetadataImage,
    /// When each host last heartbeat (soft state: a new controller starts every live host's
    /// session at its activation).
    last_heartbeat_ms: HashMap<HostId, u64>,
    /// When the next leader imbalance check is due (soft state, from the activation).
    next_imbalance_check_ms: u64,
}

impl Controller {
    pub fn new(settings: ControllerSettings, image: MetadataImage) -> Self {
        Self {
            settings,
            image,
            last_heartbeat_ms: HashMap::new(),
            // Set by `activate`: a controller that never became active never rebalances.
            next_imbalance_check_ms: u64::MAX,
        }
    }

    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// Applies a committed batch (every controller, active or not, applies every batch).
    pub fn apply(&mut self, index: u64, batch: &RecordBatch) {
        self.image.apply(index, batch);
    }

    /// This controller became the active one at `now_ms`: every registered host's session
    /// starts now, as the previous controller's heartbeat times are not known here.
    pub fn activate(&mut self, now_ms: u64) {
        self.last_heartbeat_ms = self
            .image
            .brokers
            .keys()
            .map(|&host| (host, now_ms))
            .collect();
        self.next_imbalance_check_ms = now_ms
            + self
                .settings
                .leader_imbalance_check_interval_ms
                .unwrap_or(0);
    }

    fn session_alive(&self, host: HostId, now_ms: u64) -> bool {
        self.last_heartbeat_ms
            .get(&host)
            .is_some_and(|&last| now_ms.saturating_sub(last) < self.settings.session_timeout_ms)
    }

    /// A host (re)registers. Refused while another process with its host id is alive.
    ///
    /// Unless its previous process stopped cleanly (the registration names the broker epoch
    /// the controller has for it), the host may have lost its unflushed tail: its replicas
    /// leave every ISR (with its old process's leaderships) and then every ELR.
    pub fn register(
        &mut self,
        registration: Registration,
        now_ms: u64,
    ) -> Result<RecordBatch, Refusal> {
        check_registration(&registration)?;
        let host = registration.host;
        let mut records = Vec::new();
        if let Some(current) = self.image.brokers.get(&host) {
            let same_process = current.registration.incarnation == registration.incarnation;
            if !same_process && !current.fenced && self.session_alive(host, now_ms) {
                return Err(Refusal::new(
                    ResponseError::DuplicateBrokerRegistration,
                    format!("node id {host} is already registered and alive (another process)"),
                ));
            }
            let clean = registration.clean_shutdown_epoch == Some(current.epoch);
            // Whatever the old process led moves away before the new one is fenced in; then,
            // decided against the image with that applied, an unclean one leaves the ELRs.
            let mut scratch = self.image.clone();
            let moved = move_leadership_from(&scratch, host, &self.settings);
            let next_index = scratch.applied_index + 1;
            scratch.apply(next_index, &RecordBatch::new(moved.clone()));
            records.extend(moved);
            if !clean {
                records.extend(forget_unclean_replicas(&scratch, host));
            }
        }
        records.push(MetadataRecord::RegisterBroker(registration));
        self.last_heartbeat_ms.insert(host, now_ms);
        Ok(RecordBatch::new(records))
    }

    /// A heartbeat from `host` registered at `epoch`. `caught_up`: it has applied the metadata
    /// log up to its registration, so it may be unfenced. `shutting_down`: controlled
    /// shutdown, its leaderships move away first.
    pub fn heartbeat(
        &mut self,
        host: HostId,
        epoch: u64,
        caught_up: bool,
        shutting_down: bool,
        now_ms: u64,
    ) -> Result<(RecordBatch, HeartbeatAnswer), Refusal> {
        let Some(broker) = self.image.brokers.get(&host) else {
            return Err(Refusal::new(
                ResponseError::BrokerIdNotRegistered,
                format!("node id {host} is not registered"),
            ));
        };
        if broker.epoch != epoch {
            return Err(Refusal::new(
                ResponseError::StaleBrokerEpoch,
                format!(
                    "broker epoch {epoch} is not the current one, {}",
                    broker.epoch
                ),
            ));
        }
        self.last_heartbeat_ms.insert(host, now_ms);
        let mut records = Vec::new();
        let fenced = broker.fenced;
        if shutting_down {
            if !broker.shut_down {
                records.extend(self.move_leadership_from(host));
                records.push(MetadataRecord::ShutDownBroker { host, epoch });
            }
            let answer = HeartbeatAnswer {
                fenced: true,
                may_shut_down: true,
            };
            return Ok((RecordBatch::new(records), answer));
        }
        if fenced && caught_up {
            records.push(MetadataRecord::UnfenceBroker { host, epoch });
            records.extend(self.restore_leadership_to(host));
        }
        let answer = HeartbeatAnswer {
            fenced: fenced && !caught_up,
            may_shut_down: false,
        };
        Ok((RecordBatch::new(records), answer))
    }

    /// Fences every host whose session expired by `now_ms`, moving its leaderships.
    pub fn tick(&mut self, now_ms: u64) -> RecordBatch {
        let expired: Vec<(HostId, u64)> = self
            .image
            .brokers
            .values()
            .filter(|broker| !broker.fenced)
            .filter(|broker| !self.session_alive(broker.registration.host, now_ms))
            .map(|broker| (broker.registration.host, broker.epoch))
            .collect();
        let mut records = Vec::new();
        if expired.is_empty() {
            return self.rebalance_if_due(now_ms);
        }
        // Each host's changes are decided against the image with the previous hosts' changes
        // applied: a partition whose replicas all expire at once must not get back a leader
        // that was fenced a record earlier.
        let mut scratch = self.image.clone();
        for (host, epoch) in expired {
            let mut fenced = move_leadership_from(&scratch, host, &self.settings);
            fenced.push(MetadataRecord::FenceBroker { host, epoch });
            let next_index = scratch.applied_index + 1;
            scratch.apply(next_index, &RecordBatch::new(fenced.clone()));
            records.extend(fenced);
        }
        RecordBatch::new(records)
    }

    fn move_leadership_from(&self, host: HostId) -> Vec<MetadataRecord> {
        move_leadership_from(&self.image, host, &self.settings)
    }

    fn restore_leadership_to(&self, host: HostId) -> Vec<MetadataRecord> {
        restore_leadership_to(&self.image, host, &self.settings)
    }

    /// Creates topics: one result per topic, and the records of those that succeed.
    pub fn create_topics(
        &self,
        topics: Vec<NewTopic>,
    ) -> (Vec<Result<TopicId, Refusal>>, RecordBatch) {
        let mut records = Vec::new();
        let mut taken: BTreeSet<String> = BTreeSet::new();
        let mut load = self.leader_load();
        let results = topics
            .into_iter()
            .map(|topic| {
                if !taken.insert(topic.name.clone()) {
                    return Err(Refusal::new(
                        ResponseError::InvalidRequest,
                        format!("topic '{}' is named twice in the request", topic.name),
                    ));
                }
                let assignment = self.place_topic(&topic, &mut load)?;
                records.push(MetadataRecord::Topic {
                    name: topic.name.clone(),
                    id: topic.id,
                });
                records.extend(partition_records(topic.id, 0, assignment));
                for (name, value) in topic.configs {
                    records.push(MetadataRecord::TopicConfig {
                        topic: topic.id,
                        name,
                        value: Some(value),
                    });
                }
                Ok(topic.id)
            })
            .collect();
        (results, RecordBatch::new(records))
    }

    fn place_topic(
        &self,
        topic: &NewTopic,
        load: &mut BTreeMap<NodeId, u32>,
    ) -> Result<Vec<Vec<NodeId>>, Refusal> {
        check_topic_name(&topic.name)
            .map_err(|reason| Refusal::new(ResponseError::InvalidTopicException, reason))?;
        if self.image.topic(&topic.name).is_some() || self.image.topics.contains_key(&topic.id) {
            return Err(Refusal::new(
                ResponseError::TopicAlreadyExists,
                format!("topic '{}' already exists", topic.name),
            ));
        }
        match &topic.assignment {
            Some(assignment) => {
                self.check_assignment(assignment, None)?;
                Ok(assignment.clone())
            }
            None => {
                if topic.partitions == 0 || topic.partitions > PARTITIONS_PER_TOPIC_MAX {
                    return Err(Refusal::new(
                        ResponseError::InvalidPartitions,
                        format!("the number of partitions must be 1 to {PARTITIONS_PER_TOPIC_MAX}"),
                    ));
                }
                self.place(topic.partitions, topic.replication_factor, load)
            }
        }
    }

    /// Leaders per node, to spread new leaders over hosts and cores.
    fn leader_load(&self) -> BTreeMap<NodeId, u32> {
        let mut load = BTreeMap::new();
        for topic in self.image.topics.values() {
            for partition in &topic.partitions {
                if let Some(first) = partition.replicas.first() {
                    *load.entry(*first).or_default() += 1;
                }
            }
        }
        load
    }

    /// Places `count` partitions of `replication_factor` replicas: each partition's replicas
    /// on distinct live hosts (alternating racks where hosts have them), all on one core
    /// index, so replication runs core to core; the preferred leaders (first replicas) go
    /// round the (host, core) nodes, least loaded first, so every topic spreads over them.
    fn place(
        &self,
        count: u32,
        replication_factor: u16,
        load: &mut BTreeMap<NodeId, u32>,
    ) -> Result<Vec<Vec<NodeId>>, Refusal> {
        let hosts: Vec<&Registration> = self
            .image
            .live_hosts()
            .map(|broker| &broker.registration)
            .collect();
        let factor = usize::from(replication_factor);
        if factor == 0 || factor > hosts.len() {
            return Err(Refusal::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {replication_factor} with {} live brokers",
                    hosts.len()
                ),
            ));
        }
        let cores = hosts
            .iter()
            .map(|host| host.cores.max(1))
            .min()
            .unwrap_or(1);
        // Every (host, core) node, least loaded first: the topic's partitions take them in
        // turn, so each topic spreads over every host and core, and new leaders go first
        // where there are fewest.
        let mut nodes: Vec<(usize, u32)> = (0..hosts.len())
            .flat_map(|h| (0..cores).map(move |c| (h, c)))
            .collect();
        nodes.sort_by_key(|&(h, c)| {
            let node = NodeId::of(hosts[h].host, c);
            (load.get(&node).copied().unwrap_or(0), c, h)
        });
        let mut placement = Vec::with_capacity(count as usize);
        for index in 0..count as usize {
            // The leader's followers are on the same core of the next hosts, racks alternating.
            let (leader_host, core) = nodes[index % nodes.len()];
            let order = rack_alternating(&hosts, leader_host);
            let replicas: Vec<NodeId> = order
                .into_iter()
                .take(factor)
                .map(|h| NodeId::of(hosts[h].host, core))
                .collect();
            *load.entry(replicas[0]).or_default() += 1;
            placement.push(replicas);
        }
        Ok(placement)
    }

    /// Checks a client's replica assignment: every partition the same number of replicas,
    /// distinct nodes, each a core of a registered host. `current_factor`: the topic's
    /// replication factor, when adding partitions.
    fn check_assignment(
        &self,
        assignment: &[Vec<NodeId>],
        current_factor: Option<usize>,
    ) -> Result<(), Refusal> {
        let refuse = |message: String| {
            Err(Refusal::new(
                ResponseError::InvalidReplicaAssignment,
                message,
            ))
        };
        let Some(first) = assignment.first() else {
            return refuse("the assignment names no partitions".into());
        };
        if assignment.len() > PARTITIONS_PER_TOPIC_MAX as usize {
            return refuse(format!("more than {PARTITIONS_PER_TOPIC_MAX} partitions"));
        }
        let factor = current_factor.unwrap_or(first.len());
        for (index, replicas) in assignment.iter().enumerate() {
            if replicas.len() != factor || factor == 0 {
                return refuse(format!(
                    "partition {index} has {} replicas, the others {factor}",
                    replicas.len()
                ));
            }
            let distinct: BTreeSet<&NodeId> = replicas.iter().collect();
            if distinct.len() != replicas.len() {
                return refuse(format!("partition {index} names a node twice"));
            }
            for node in replicas {
                let known = node.split().is_some_and(|(host, core)| {
                    self.image
                        .brokers
                        .get(&host)
                        .is_some_and(|broker| core < broker.registration.cores.max(1))
                });
                if !known {
                    return refuse(format!("node {node} is not a registered broker node"));
                }
            }
        }
        Ok(())
    }

    /// Deletes topics by name: one result per name.
    pub fn delete_topics(&self, names: &[String]) -> (Vec<Result<TopicId, Refusal>>, RecordBatch) {
        let mut records = Vec::new();
        let mut deleted = BTreeSet::new();
        let results = names
            .iter()
            .map(|name| {
                let Some(topic) = self.image.topic(name) else {
                    return Err(Refusal::new(
                        ResponseError::UnknownTopicOrPartition,
                        format!("topic '{name}' does not exist"),
                    ));
                };
                if deleted.insert(topic.id) {
                    records.push(MetadataRecord::RemoveTopic { id: topic.id });
                }
                Ok(topic.id)
            })
            .collect();
        (results, RecordBatch::new(records))
    }

    /// Grows a topic to `count` partitions, placed like new ones or as the client assigned.
    pub fn create_partitions(
        &self,
        name: &str,
        count: u32,
        assignment: Option<Vec<Vec<NodeId>>>,
    ) -> Result<RecordBatch, Refusal> {
        let Some(topic) = self.image.topic(name) else {
            return Err(Refusal::new(
                ResponseError::UnknownTopicOrPartition,
                format!("topic '{name}' does not exist"),
            ));
        };
        let current = u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX);
        if count <= current || count > PARTITIONS_PER_TOPIC_MAX {
            return Err(Refusal::new(
                ResponseError::InvalidPartitions,
                format!("topic '{name}' has {current} partitions; asked for {count}"),
            ));
        }
        let factor = topic.partitions.first().map_or(1, |p| p.replicas.len());
        let added = match assignment {
            Some(assignment) => {
                if assignment.len() != (count - current) as usize {
                    return Err(Refusal::new(
                        ResponseError::InvalidReplicaAssignment,
                        format!(
                            "{} assignments for {} new partitions",
                            assignment.len(),
                            count - current
                        ),
                    ));
                }
                self.check_assignment(&assignment, Some(factor))?;
                assignment
            }
            None => {
                let factor = u16::try_from(factor).unwrap_or(u16::MAX);
                self.place(count - current, factor, &mut self.leader_load())?
            }
        };
        Ok(RecordBatch::new(
            partition_records(topic.id, current, added).collect(),
        ))
    }

    /// Sets (`Some`) or removes (`None`) a topic's config overrides (validated by the caller,
    /// which knows the broker's settings).
    pub fn alter_configs(
        &self,
        name: &str,
        changes: Vec<(String, Option<String>)>,
    ) -> Result<RecordBatch, Refusal> {
        let Some(topic) = self.image.topic(name) else {
            return Err(Refusal::new(
                ResponseError::UnknownTopicOrPartition,
                format!("topic '{name}' does not exist"),
            ));
        };
        let mut configs = topic.configs.clone();
        let mut records: Vec<MetadataRecord> = Vec::new();
        for (config, value) in changes {
            match &value {
                Some(value) => configs.insert(config.clone(), value.clone()),
                None => configs.remove(&config),
            };
            records.push(MetadataRecord::TopicConfig {
                topic: topic.id,
                name: config,
                value,
            });
        }
        // A lower min.insync.replicas lets leaders advance the high watermark with the ISR
        // they have: ELR members would miss what is acknowledged from then on, so where the
        // ISR now reaches it, the ELR goes (KIP-966).
        let min_insync = min_insync_of(&configs, &self.settings);
        for partition in &topic.partitions {
            let has_elr = !partition.elr.is_empty() || !partition.last_known_elr.is_empty();
            if has_elr && partition.isr.len() >= effective_min_insync(partition, min_insync) {
                let mut changed = partition.clone();
                changed.elr.clear();
                changed.last_known_elr.clear();
                changed.partition_epoch += 1;
                records.push(MetadataRecord::Partition(changed));
            }
        }
        Ok(RecordBatch::new(records))
    }

    /// A leader's request to change a partition's ISR (Kafka's AlterPartition): accepted only
    /// from the partition's current leader in its current leader epoch, made against the current
    /// partition epoch, naming the leader and replicas of the partition only, and adding only
    /// replicas on live hosts, in the broker epoch the request names for them where it names
    /// one (KIP-903). Returns the partition epoch of the committed state and the
    /// records (none when the ISR is already the one asked for).
    pub fn alter_partition(&self, request: &AlterPartition) -> Result<(i32, RecordBatch), Refusal> {
        let partition = self
            .image
            .topic(&request.topic)
            .and_then(|topic| topic.partitions.get(request.partition as usize))
            .ok_or_else(|| {
                Refusal::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("no partition {}-{}", request.topic, request.partition),
                )
            })?;
        if request.leader != partition.leader {
            return Err(Refusal::new(
                ResponseError::NotLeaderOrFollower,
                format!("node {} does not lead the partition", request.leader),
            ));
        }
        if request.leader_epoch != partition.leader_epoch {
            return Err(Refusal::new(
                ResponseError::FencedLeaderEpoch,
                format!(
                    "leader epoch {} is not the current {}",
                    request.leader_epoch, partition.leader_epoch
                ),
            ));
        }
        if request.partition_epoch != partition.partition_epoch {
            return Err(Refusal::new(
                ResponseError::InvalidUpdateVersion,
                format!(
                    "partition epoch {} is not the current {}",
                    request.partition_epoch, partition.partition_epoch
                ),
            ));
        }
        let mut isr: Vec<NodeId> = request.isr.clone();
        isr.sort();
        isr.dedup();
        if !isr.contains(&partition.leader)
            || isr.iter().any(|node| !partition.replicas.contains(node))
        {
            return Err(Refusal::new(
                ResponseError::InvalidRequest,
                "the ISR must hold the leader and replicas of the partition only",
            ));
        }
        if request
            .broker_epochs
            .iter()
            .any(|(node, _)| !isr.contains(node))
        {
            return Err(Refusal::new(
                ResponseError::InvalidRequest,
                "broker epochs may name members of the ISR only",
            ));
        }
        let added = || isr.iter().filter(|node| !partition.isr.contains(node));
        if let Some(node) = added().find(|node| !self.image.is_live(**node)) {
            return Err(Refusal::new(
                ResponseError::IneligibleReplica,
                format!("replica {node} is on a fenced or unknown host"),
            ));
        }
        // A replica already in the ISR stays on its current registration's terms: a host
        // that registers again after an unclean shutdown leaves every ISR then.
        for &node in added() {
            let registered = node
                .host()
                .and_then(|host| self.image.brokers.get(&host))
                .map(|broker| broker.epoch);
            let mut named = request
                .broker_epochs
                .iter()
                .filter(|(member, _)| *member == node)
                .map(|(_, epoch)| *epoch);
            if let Some(epoch) = named.find(|&epoch| Some(epoch) != registered) {
                return Err(Refusal::new(
                    ResponseError::IneligibleReplica,
                    format!(
                        "replica {node} was fetching in broker epoch {epoch}, its host is \
                         registered in {} now (it restarted)",
                        registered.map_or_else(|| "none".to_string(), |e| e.to_string())
                    ),
                ));
            }
        }
        let mut current = partition.isr.clone();
        current.sort();
        if current == isr {
            return Ok((partition.partition_epoch, RecordBatch::new(Vec::new())));
        }
        let mut changed = partition.clone();
        let min_insync = self.min_insync(&request.topic);
        set_isr(&mut changed, isr, min_insync);
        changed.partition_epoch += 1;
        let epoch = changed.partition_epoch;
        Ok((
            epoch,
            RecordBatch::new(vec![MetadataRecord::Partition(changed)]),
        ))
    }

    fn min_insync(&self, topic: &str) -> usize {
        let configs = self.image.topic(topic).map(|topic| &topic.configs);
        configs.map_or(self.settings.min_insync_replicas.max(1), |configs| {
            min_insync_of(configs, &self.settings)
        })
    }

    /// Answers ElectLeaders: for each asked partition (every partition when `None`), a
    /// preferred election (the first replica leads, if it is live and in sync) or an unclean
    /// one (a partition without a leader gets one: a live in-sync replica, else a live eligible
    /// one, else any live replica, which may lack acknowledged records). Kafka's answers:
    /// ELECTION_NOT_NEEDED, PREFERRED_LEADER_NOT_AVAILABLE, ELIGIBLE_LEADERS_NOT_AVAILABLE,
    /// UNKNOWN_TOPIC_OR_PARTITION. Asked for every partition, only the partitions where an
    /// election happened or failed are answered (not those that needed none).
    pub fn elect_leaders(
        &self,
        asked: Option<&[(String, u32)]>,
        unclean: bool,
    ) -> (Vec<Election>, RecordBatch) {
        let every_partition = asked.is_none();
        let everything: Vec<(String, u32)>;
        let asked = match asked {
            Some(asked) => asked,
            None => {
                everything = self
                    .image
                    .topics
                    .values()
                    .flat_map(|topic| {
                        topic
                            .partitions
                            .iter()
                            .map(|partition| (topic.name.clone(), partition.partition))
                    })
                    .collect();
                &everything
            }
        };
        let mut records = Vec::new();
        let mut answers = Vec::new();
        for (name, index) in asked {
            let current = self
                .image
                .topic(name)
                .and_then(|topic| topic.partitions.get(*index as usize).map(|p| (topic, p)));
            let result = match current {
                None => Err(Refusal::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic '{name}' has no partition {index}"),
                )),
                Some((_, partition)) if unclean => self.unclean_election(partition),
                Some((_, partition)) => self.preferred_election(partition),
            };
            let result = match result {
                Ok(changed) => {
                    records.push(MetadataRecord::Partition(changed));
                    Ok(())
                }
                Err(refusal) => Err(refusal),
            };
            let not_needed =
                matches!(&result, Err(r) if r.code == ResponseError::ElectionNotNeeded);
            if not_needed && every_partition {
                continue;
            }
            answers.push(Election {
                topic: name.clone(),
                partition: *index,
                result,
            });
        }
        (answers, RecordBatch::new(records))
    }

    /// The partition led by its preferred replica, if that one is live and in sync.
    fn preferred_election(&self, partition: &PartitionRecord) -> Result<PartitionRecord, Refusal> {
        let Some(&preferred) = partition.replicas.first() else {
            return Err(Refusal::new(
                ResponseError::PreferredLeaderNotAvailable,
                "the partition has no replicas",
            ));
        };
        if partition.leader == preferred {
            return Err(Refusal::new(
                ResponseError::ElectionNotNeeded,
                format!("node {preferred} (the preferred replica) leads already"),
            ));
        }
        if !partition.isr.contains(&preferred) || !self.image.is_live(preferred) {
            return Err(Refusal::new(
                ResponseError::PreferredLeaderNotAvailable,
                format!("the preferred replica, node {preferred}, is not live and in sync"),
            ));
        }
        let mut changed = partition.clone();
        changed.leader = preferred;
        changed.leader_epoch += 1;
        changed.partition_epoch += 1;
        Ok(changed)
    }

    /// A leader for a partition that has none, as [`elect`] chooses it with unclean election
    /// allowed: a live in-sync or eligible replica when there is one, else any live replica
    /// (what only the others had is lost: the operator asked for it).
    fn unclean_election(&self, partition: &PartitionRecord) -> Result<PartitionRecord, Refusal> {
        if partition.leader.0 >= 0 {
            return Err(Refusal::new(
                ResponseError::ElectionNotNeeded,
                format!("node {} leads already", partition.leader),
            ));
        }
        // The controller's own election, with an out-of-sync replica allowed whatever the
        // topic says: the operator asked for it.
        let mut changed = partition.clone();
        let leader = elect(true, &mut changed, |node| self.image.is_live(node));
        if leader.0 < 0 {
            return Err(Refusal::new(
                ResponseError::EligibleLeadersNotAvailable,
                "no replica of the partition is live",
            ));
        }
        changed.leader = leader;
        changed.leader_epoch += 1;
        changed.partition_epoch += 1;
        Ok(changed)
    }

    /// `auto.leader.rebalance.enable`: every check interval, each node that leads too few of
    /// the partitions it is the preferred replica of (more than
    /// `leader.imbalance.per.broker.percentage` of them led by another) gets them back where
    /// it is live and in sync, as Kafka's controller does.
    fn rebalance_if_due(&mut self, now_ms: u64) -> RecordBatch {
        let Some(interval) = self.settings.leader_imbalance_check_interval_ms else {
            return RecordBatch::new(Vec::new());
        };
        if now_ms < self.next_imbalance_check_ms {
            return RecordBatch::new(Vec::new());
        }
        self.next_imbalance_check_ms = now_ms + interval;
        // Per preferred node: (partitions it prefers, of which another leads).
        let mut counts: BTreeMap<NodeId, (u32, u32)> = BTreeMap::new();
        for topic in self.image.topics.values() {
            for partition in &topic.partitions {
                if let Some(&preferred) = partition.replicas.first() {
                    let count = counts.entry(preferred).or_default();
                    count.0 += 1;
                    count.1 += u32::from(partition.leader != preferred);
                }
            }
        }
        let percentage = u64::from(self.settings.leader_imbalance_per_broker_percentage);
        let imbalanced: BTreeSet<NodeId> = counts
            .into_iter()
            .filter(|(_, (preferred, elsewhere))| {
                u64::from(*elsewhere) * 100 > u64::from(*preferred) * percentage
            })
            .map(|(node, _)| node)
            .collect();
        let mut records = Vec::new();
        for topic in self.image.topics.values() {
            for partition in &topic.partitions {
                let wanted = partition
                    .replicas
                    .first()
                    .is_some_and(|node| imbalanced.contains(node));
                if let (true, Ok(changed)) = (wanted, self.preferred_election(partition)) {
                    records.push(MetadataRecord::Partition(changed));
                }
            }
        }
        RecordBatch::new(records)
    }

    /// Moves leadership of the given partitions (all, when `None`) to their preferred leader,
    /// where it is live and in sync (ElectLeaders, `auto.leader.rebalance.enable`).
    pub fn elect_preferred(&self, only: Option<&[(TopicId, u32)]>) -> RecordBatch {
        let mut records = Vec::new();
        for topic in self.image.topics.values() {
            for partition in &topic.partitions {
                let wanted =
                    only.is_none_or(|only| only.contains(&(partition.topic, partition.partition)));
                if let (true, Ok(changed)) = (wanted, self.preferred_election(partition)) {
                    records.push(MetadataRecord::Partition(changed));
                }
            }
        }
        RecordBatch::new(records)
    }
}

/// `min.insync.replicas` of a topic with these configs: its own, else the controller's.
fn min_insync_of(configs: &BTreeMap<String, String>, settings: &ControllerSettings) -> usize {
    configs
        .get("min.insync.replicas")
        .and_then(|value| value.trim().parse::<usize>().ok())
        .unwrap_or(settings.min_insync_replicas)
        .max(1)
}

/// Sets a partition's ISR (kept in replica order, the preferred leader first) with the ELR
/// rules: below `min_insync`, the replicas leaving the ISR join the ELR (the leader stops
/// advancing the high watermark, so they keep having everything acknowledged); a replica in
/// the ISR is in neither ELR; at `min_insync` the ELRs are cleared (the high watermark moves
/// again, without them).
fn set_isr(partition: &mut PartitionRecord, isr: Vec<NodeId>, min_insync: usize) {
    let min_insync = effective_min_insync(partition, min_insync);
    let removed: Vec<NodeId> = partition
        .isr
        .iter()
        .copied()
        .filter(|node| !isr.contains(node))
        .collect();
    partition.isr = in_replica_order(&partition.replicas, |node| isr.contains(&node));
    if partition.isr.len() >= min_insync {
        partition.elr.clear();
        partition.last_known_elr.clear();
        return;
    }
    let elr = &partition.elr;
    let joins =
        |node: NodeId| !isr.contains(&node) && (elr.contains(&node) || removed.contains(&node));
    partition.elr = in_replica_order(&partition.replicas, joins);
    let (isr, elr) = (&partition.isr, &partition.elr);
    partition
        .last_known_elr
        .retain(|node| !isr.contains(node) && !elr.contains(node));
}

/// Kafka's effective `min.insync.replicas`: at most the replication factor (the leaders'
/// `LeaderState` counts the same way), so a partition of fewer replicas keeps no ELR.
fn effective_min_insync(partition: &PartitionRecord, min_insync: usize) -> usize {
    min_insync.min(partition.replicas.len()).max(1)
}

fn in_replica_order(replicas: &[NodeId], keep: impl Fn(NodeId) -> bool) -> Vec<NodeId> {
    replicas
        .iter()
        .copied()
        .filter(|&node| keep(node))
        .collect()
}

/// Elects a leader for a partition whose leader is gone (its ISR, ELR and last known ELR
/// already updated), among the replicas `can_lead` accepts (live ones): an in-sync replica;
/// when the ISR is empty, an eligible one (KIP-966), which becomes the ISR alone; when the ELR
/// is empty too, the last known ELR member (the last replica known to have had everything,
/// which lost only its unflushed tail: nobody else can have more), as a last resort; when
/// none of these can lead and `unclean` allows it (the topic's or controller's
/// `unclean.leader.election.enable`, or an unclean ElectLeaders), any replica. `NodeId(-1)`
/// when none may lead. The epochs are the caller's.
fn elect(
    unclean: bool,
    partition: &mut PartitionRecord,
    can_lead: impl Fn(NodeId) -> bool,
) -> NodeId {
    let first = |candidates: &[NodeId]| {
        partition
            .replicas
            .iter()
            .copied()
            .find(|&node| candidates.contains(&node) && can_lead(node))
    };
    if !partition.isr.is_empty() {
        if let Some(node) = first(&partition.isr) {
            return node;
        }
    } else if let Some(node) = first(&partition.elr) {
        partition.isr = vec![node];
        partition.elr.retain(|&other| other != node);
        return node;
    } else if let Some(node) = first(&partition.last_known_elr).filter(|_| partition.elr.is_empty())
    {
        partition.isr = vec![node];
        partition.last_known_elr.clear();
        return node;
    }
    // Unclean: only when no replica of the ISR or the ELR can lead.
    let eligible_live = partition
        .isr
        .iter()
        .chain(&partition.elr)
        .any(|&node| can_lead(node));
    if unclean && !eligible_live {
        if let Some(node) = first(&partition.replicas) {
            partition.isr = vec![node];
            partition.elr.clear();
            partition.last_known_elr.clear();
            return node;
        }
    }
    NodeId(-1)
}

/// Partition changes that take `host` out of every leadership and ISR: each partition it leads
/// gets a new leader ([`elect`]; none: leader -1). Below `min.insync.replicas` the host's
/// replica joins the ELR, so it may lead again, even as the last in-sync replica, when it
/// returns with its log intact.
fn move_leadership_from(
    image: &MetadataImage,
    host: HostId,
    settings: &ControllerSettings,
) -> Vec<MetadataRecord> {
    let on_host = |node: &NodeId| node.host() == Some(host);
    let mut records = Vec::new();
    for topic in image.topics.values() {
        let min_insync = min_insync_of(&topic.configs, settings);
        for partition in &topic.partitions {
            let leads = on_host(&partition.leader);
            let in_isr = partition.isr.iter().any(on_host);
            if !leads && !in_isr {
                continue;
            }
            let mut changed = partition.clone();
            let remaining: Vec<NodeId> = partition
                .isr
                .iter()
                .copied()
                .filter(|node| !on_host(node))
                .collect();
            set_isr(&mut changed, remaining, min_insync);
            changed.partition_epoch += 1;
            if leads {
                changed.leader = elect(unclean_allowed(topic, settings), &mut changed, |node| {
                    !on_host(&node) && image.is_live(node)
                });
                changed.leader_epoch += 1;
            }
            records.push(MetadataRecord::Partition(changed));
        }
    }
    records
}

/// Partition changes after `host` registered when its previous process did not stop cleanly:
/// it may have lost its unflushed tail, so its replicas leave every ELR (it left every ISR in
/// the same registration). One that leaves the last member of an ELR while the ISR is empty
/// becomes the last known ELR: nobody is known to have more. Leaders do not change (it leads
/// nothing), so leader epochs stay.
fn forget_unclean_replicas(image: &MetadataImage, host: HostId) -> Vec<MetadataRecord> {
    let on_host = |node: &NodeId| node.host() == Some(host);
    let mut records = Vec::new();
    for topic in image.topics.values() {
        for partition in &topic.partitions {
            if !partition.elr.iter().any(on_host) {
                continue;
            }
            let mut changed = partition.clone();
            let (gone, kept): (Vec<NodeId>, Vec<NodeId>) =
                partition.elr.iter().copied().partition(on_host);
            changed.elr = kept;
            if changed.isr.is_empty() && changed.elr.is_empty() {
                changed.last_known_elr = gone;
            }
            changed.partition_epoch += 1;
            records.push(MetadataRecord::Partition(changed));
        }
    }
    records
}

/// Partition changes that give leaderless partitions a leader now that `host` is back
/// ([`elect`], where the host's nodes count as live: the unfencing commits in the same batch).
fn restore_leadership_to(
    image: &MetadataImage,
    host: HostId,
    settings: &ControllerSettings,
) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    for topic in image.topics.values() {
        for partition in &topic.partitions {
            if partition.leader.0 >= 0 {
                continue;
            }
            let mut changed = partition.clone();
            let leader = elect(unclean_allowed(topic, settings), &mut changed, |node| {
                node.host() == Some(host) || image.is_live(node)
            });
            if leader.0 < 0 {
                continue;
            }
            changed.leader = leader;
            changed.leader_epoch += 1;
            changed.partition_epoch += 1;
            records.push(MetadataRecord::Partition(changed));
        }
    }
    records
}

/// Whether the topic lets an out-of-sync replica lead (`unclean.leader.election.enable`: its
/// own setting, else the controller's), trading the records only the lost in-sync replicas
/// had for availability.
fn unclean_allowed(topic: &crate::image::TopicImage, settings: &ControllerSettings) -> bool {
    match topic.configs.get("unclean.leader.election.enable") {
        Some(value) => value.trim().eq_ignore_ascii_case("true"),
        None => settings.unclean_leader_election,
    }
}

/// Host indexes in placement order, starting at `first`: hosts of a rack other than the last
/// one chosen come first, so replicas spread over racks where hosts name them.
fn rack_alternating(hosts: &[&Registration], first: usize) -> Vec<usize> {
    let mut order = vec![first];
    let mut left: Vec<usize> = (1..hosts.len())
        .map(|offset| (first + offset) % hosts.len())
        .collect();
    while !left.is_empty() {
        let used: BTreeSet<&Option<String>> = order.iter().map(|&h| &hosts[h].rack).collect();
        let next = left
            .iter()
            .position(|&h| hosts[h].rack.is_none() || !used.contains(&hosts[h].rack))
            .unwrap_or(0);
        order.push(left.remove(next));
    }
    order
}

fn partition_records(
    topic: TopicId,
    first: u32,
    assignment: Vec<Vec<NodeId>>,
) -> impl Iterator<Item = MetadataRecord> {
    assignment
        .into_iter()
        .enumerate()
        .map(move |(offset, replicas)| {
            MetadataRecord::Partition(PartitionRecord {
                topic,
                partition: first + offset as u32,
                leader: replicas[0],
                isr: replicas.clone(),
                replicas,
                leader_epoch: 0,
                partition_epoch: 0,
                elr: Vec::new(),
                last_known_elr: Vec::new(),
            })
        })
}

fn check_registration(registration: &Registration) -> Result<(), Refusal> {
    let refuse = |message: String| Err(Refusal::new(ResponseError::InvalidRequest, message));
    if registration.host.0 > crate::node::HOST_ID_MAX {
        return refuse(format!("node id {} is out of range", registration.host));
    }
    if registration.cores == 0 || registration.cores > crate::node::CORES_PER_HOST_MAX {
        return refuse(format!("{} cores", registration.cores));
    }
    for endpoint in &registration.endpoints {
        if endpoint.node.host() != Some(registration.host) {
            return refuse(format!(
                "endpoint of node {} is not a node of host {}",
                endpoint.node, registration.host
            ));
        }
    }
    Ok(())
}

/// Kafka's rule for topic names: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn check_topic_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("topic name is empty");
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be \".\" or \"..\"");
    }
    if name.chars().count() > TOPIC_NAME_CHARS_MAX {
        return Err("topic name is longer than 249 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("topic name may only contain ASCII alphanumerics, '.', '_' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AlterPartition as the build before broker epochs sent it.
    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct AlterPartitionV1 {
        topic: String,
        partition: u32,
        leader: NodeId,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<NodeId>,
    }

    #[test]
    fn a_controller_of_the_build_before_broker_epochs_reads_an_alter_partition_with_them() {
        // The request is the last thing in its frame (`Command::AlterPartition` in a
        // `ClientRequest`), and postcard leaves bytes after a value unread: the older
        // controller checks it as before, without the broker epochs.
        let request = AlterPartition {
            topic: "t".into(),
            partition: 3,
            leader: NodeId(1024),
            leader_epoch: 4,
            partition_epoch: 9,
            isr: vec![NodeId(0), NodeId(1024)],
            broker_epochs: vec![(NodeId(0), 17)],
        };
        let bytes = postcard::to_allocvec(&request).expect("encodes");
        let old: AlterPartitionV1 = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(
            old,
            AlterPartitionV1 {
                topic: "t".into(),
                partition: 3,
                leader: NodeId(1024),
                leader_epoch: 4,
                partition_epoch: 9,
                isr: vec![NodeId(0), NodeId(1024)],
            }
        );
    }
}
