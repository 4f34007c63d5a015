//! The topic catalog: every topic's id, its partitions (replicas, leader, leader epoch,
//! partition epoch, in-sync replicas, and the shard of this broker that owns each) and config
//! overrides, persisted as `topics.json` in the data directory.
//!
//! Replicas, leaders and the ISR are node ids, as clients see them in Metadata. On one host the
//! node of a partition follows from its shard ([`super::Topology::node_of`]), and [`Catalog::fit`]
//! derives it again at every start; a catalog written before these fields existed (each
//! partition stored as its shard number) loads as such a one-host placement.
//!
//! Shard 0 is the controller: it alone changes the catalog, writes the file (to a temporary
//! name, fsynced, renamed over the old one, directory fsynced) and only then tells every shard
//! to apply the change, so what a client was told exists survives a crash. Each shard keeps its
//! own copy for lookups, with no locks.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// File name of the catalog in the data directory.
pub const CATALOG_FILE: &str = "topics.json";

/// One partition's replicas and leadership, and where this broker keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The shard of this broker that owns the partition.
    pub shard: usize,
    /// Node ids of the replicas, the preferred leader first.
    pub replicas: Vec<i32>,
    /// The leader's node id; -1 when the partition has none.
    pub leader: i32,
    /// Bumped whenever the leader changes; every batch a leader appends carries it.
    pub leader_epoch: i32,
    /// Bumped on every change of this state (leader, ISR, replicas), so a request made against
    /// an older state can be told apart (Kafka's AlterPartition).
    pub partition_epoch: i32,
    /// Node ids of the replicas in sync with the leader, the leader among them.
    pub isr: Vec<i32>,
    /// This host keeps a replica of the partition (on `shard`). Always true on a one-node
    /// cluster; in a cluster, the other hosts' partitions are listed (Metadata shows them) but
    /// not opened, and requests for them get NOT_LEADER_OR_FOLLOWER.
    #[serde(default = "kept_here")]
    pub local: bool,
    /// In a cluster: the eligible leader replicas (KIP-966: out of the ISR while it was below
    /// min.insync.replicas, yet holding everything committed) and the last known ones, from
    /// the metadata image, for DescribeTopicPartitions. Empty on a one-node cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elr: Vec<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_known_elr: Vec<i32>,
}

fn kept_here() -> bool {
    true
}

impl PartitionState {
    /// A partition with one replica, on `shard` as node `node`, in its first epoch.
    pub fn single(shard: usize, node: i32) -> Self {
        Self {
            shard,
            replicas: vec![node],
            leader: node,
            leader_epoch: 0,
            partition_epoch: 0,
            isr: vec![node],
            local: true,
            elr: Vec::new(),
            last_known_elr: Vec::new(),
        }
    }

    /// Moves the single replica to `shard` as node `node`: a new leader, so a new leader epoch.
    /// Nothing changes (no epoch is bumped) if that is where it is already.
    fn move_to(&mut self, shard: usize, node: i32) -> bool {
        if self.shard == shard && self.replicas == [node] && self.leader == node {
            return false;
        }
        let leader_changed = self.leader != node;
        self.shard = shard;
        self.replicas = vec![node];
        self.isr = vec![node];
        self.leader = node;
        if leader_changed {
            self.leader_epoch += 1;
        }
        self.partition_epoch += 1;
        true
    }
}

/// A partition as `topics.json` stores it: the state, or (before replicas were recorded) only
/// the owning shard, which loads with no node yet: [`Catalog::fit`] gives it one.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredPartition {
    State(PartitionState),
    Shard(usize),
}

fn load_partitions<'de, D>(deserializer: D) -> Result<Vec<PartitionState>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let stored = Vec::<StoredPartition>::deserialize(deserializer)?;
    Ok(stored
        .into_iter()
        .map(|partition| match partition {
            StoredPartition::State(state) => state,
            StoredPartition::Shard(shard) => PartitionState {
                replicas: Vec::new(),
                leader: -1,
                isr: Vec::new(),
                ..PartitionState::single(shard, -1)
            },
        })
        .collect())
}

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    /// The topic id (Metadata v10+, Fetch v13+), as 32 hex digits.
    pub id: String,
    /// Each partition's replicas, leader and owning shard, by partition index.
    #[serde(deserialize_with = "load_partitions")]
    pub partitions: Vec<PartitionState>,
    /// Config overrides by Kafka name; everything else is the broker default.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

impl Topic {
    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::parse_str(&self.id).unwrap_or_default()
    }

    /// The shard owning `partition`, if the topic has it.
    pub fn owner(&self, partition: i32) -> Option<usize> {
        usize::try_from(partition)
            .ok()
            .and_then(|index| self.partitions.get(index))
            .map(|state| state.shard)
    }

    /// The state of `partition`, if the topic has it.
    pub fn partition(&self, partition: i32) -> Option<&PartitionState> {
        usize::try_from(partition)
            .ok()
            .and_then(|index| self.partitions.get(index))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub topics: BTreeMap<String, Topic>,
    /// In a cluster, every live broker node (node id, host, port), from the metadata image;
    /// `None` on a one-node cluster, whose nodes are this broker's own (`Topology::nodes`).
    #[serde(skip)]
    pub brokers: Option<Vec<(i32, String, u16)>>,
    /// In a cluster, the broker node of the host whose controller is active, when that host
    /// is also a live broker (Metadata's and DescribeCluster's controller id).
    #[serde(skip)]
    pub controller: Option<i32>,
    /// In a cluster, the broker epoch each registered host's nodes are at (node id -> epoch),
    /// fenced hosts included: a leader forgets what a follower's earlier process reported
    /// once its host registered again (KIP-903).
    #[serde(skip)]
    pub broker_epochs: BTreeMap<i32, u64>,
}

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid topic catalog: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl Catalog {
    /// Loads the catalog of `data_dir`; a missing file is an empty catalog (a new broker).
    pub fn load(data_dir: &Path) -> Result<Self, CatalogError> {
        let path = data_dir.join(CATALOG_FILE);
        let mut text = String::new();
        match fs::File::open(&path) {
            Ok(mut file) => {
                file.read_to_string(&mut text)
                    .map_err(|source| CatalogError::Read {
                        path: path.clone(),
                        source,
                    })?
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(CatalogError::Read { path, source }),
        };
        serde_json::from_str(&text).map_err(|source| CatalogError::Parse { path, source })
    }

    /// Writes the catalog durably: temporary file, fsync, rename, fsync of the directory.
    pub fn save(&self, data_dir: &Path) -> Result<(), CatalogError> {
        let write_error = |source| CatalogError::Write {
            path: data_dir.join(CATALOG_FILE),
            source,
        };
        let text = serde_json::to_vec_pretty(self).map_err(|error| write_error(error.into()))?;
        super::durable::replace_file(data_dir, CATALOG_FILE, &text).map_err(write_error)
    }

    /// Fits the catalog to this one-host broker at start: every partition placed on a shard
    /// that no longer exists (the broker was restarted with fewer cores) moves to the least
    /// loaded shard, and every partition's node is the node of its shard (`node_of`), which
    /// changes with the number of nodes the broker shows (`--node-per-shard`). A partition
    /// whose leader changes gets a new leader epoch. Returns whether anything changed.
    pub fn fit(&mut self, shards: usize, node_of: impl Fn(usize) -> i32) -> bool {
        let mut load = self.load_per_shard(shards);
        let mut changed = false;
        for topic in self.topics.values_mut() {
            for partition in &mut topic.partitions {
                let mut shard = partition.shard;
                if shard >= shards {
                    shard = least_loaded(&load);
                    load[shard] += 1;
                }
                changed |= partition.move_to(shard, node_of(shard));
            }
        }
        changed
    }

    /// Partitions owned by each shard.
    pub fn load_per_shard(&self, shards: usize) -> Vec<usize> {
        let mut load = vec![0; shards.max(1)];
        for topic in self.topics.values() {
            for partition in &topic.partitions {
                if let Some(count) = load.get_mut(partition.shard) {
                    *count += 1;
                }
            }
        }
        load
    }

    /// Places `count` new partitions, each on the shard owning the fewest so far.
    pub fn place(&self, shards: usize, count: usize) -> Vec<usize> {
        let mut load = self.load_per_shard(shards);
        (0..count)
            .map(|_| {
                let shard = least_loaded(&load);
                load[shard] += 1;
                shard
            })
            .collect()
    }

    pub fn by_id(&self, id: uuid::Uuid) -> Option<(&String, &Topic)> {
        // Every Fetch from v13 looks its topics up by id: compare the stored text (ids are
        // written as 32 lowercase hex digits) without parsing each topic's id.
        let mut buffer = uuid::Uuid::encode_buffer();
        let wanted: &str = id.simple().encode_lower(&mut buffer);
        self.topics.iter().find(|(_, topic)| {
            if topic.id.len() == wanted.len() {
                topic.id.eq_ignore_ascii_case(wanted)
            } else {
                topic.uuid() == id
            }
        })
    }
}

/// The catalog of host `host` as a metadata image describes the cluster: every topic, and for
/// each partition its replicas, leader, epochs and ISR, with the shard of this host that keeps
/// its replica (the core of the replica's node; a partition with no replica here is not
/// `local`), and every live broker node.
pub fn from_image(
    image: &ringlog_cluster::MetadataImage,
    host: ringlog_cluster::HostId,
) -> Catalog {
    let topics = image
        .topics
        .values()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|record| {
                    let here = record.replicas.iter().find_map(|node| match node.split() {
                        Some((h, core)) if h == host => usize::try_from(core).ok(),
                        _ => None,
                    });
                    let ids =
                        |nodes: &[ringlog_cluster::NodeId]| nodes.iter().map(|n| n.0).collect();
                    PartitionState {
                        shard: here.unwrap_or(0),
                        replicas: ids(&record.replicas),
                        leader: record.leader.0,
                        leader_epoch: record.leader_epoch,
                        partition_epoch: record.partition_epoch,
                        isr: ids(&record.isr),
                        local: here.is_some(),
                        elr: ids(&record.elr),
                        last_known_elr: ids(&record.last_known_elr),
                    }
                })
                .collect();
            let entry = Topic {
                id: uuid::Uuid::from_u128(topic.id).simple().to_string(),
                partitions,
                configs: topic.configs.clone(),
            };
            (topic.name.clone(), entry)
        })
        .collect();
    let brokers = image
        .live_hosts()
        .flat_map(|broker| broker.registration.endpoints.iter())
        .map(|endpoint| (endpoint.node.0, endpoint.host.clone(), endpoint.port))
        .collect();
    let broker_epochs = image
        .brokers
        .values()
        .flat_map(|broker| {
            let epoch = broker.epoch;
            broker
                .registration
                .endpoints
                .iter()
                .map(move |endpoint| (endpoint.node.0, epoch))
        })
        .collect();
    Catalog {
        topics,
        brokers: Some(brokers),
        controller: None,
        broker_epochs,
    }
}

/// What changed from `old` to `new`, as the changes every shard applies: topics added or
/// changed (partitions, leaders, configs), then topics removed.
pub fn changes(old: &Catalog, new: &Catalog) -> Vec<super::admin::Change> {
    use super::admin::Change;
    let mut changes: Vec<Change> = new
        .topics
        .iter()
        .filter(|(name, topic)| old.topics.get(*name) != Some(*topic))
        .map(|(name, topic)| Change::Upsert {
            name: name.clone(),
            topic: topic.clone(),
        })
        .collect();
    changes.extend(
        old.topics
            .iter()
            .filter(|(name, topic)| new.topics.get(*name).is_none_or(|t| t.id != topic.id))
            .map(|(name, topic)| Change::Remove {
                name: name.clone(),
                topic: topic.clone(),
            }),
    );
    if new.brokers != old.brokers {
        if let Some(brokers) = &new.brokers {
            changes.push(Change::Brokers(brokers.clone()));
        }
    }
    if new.controller != old.controller {
        changes.push(Change::Controller(new.controller));
    }
    if new.broker_epochs != old.broker_epochs {
        changes.push(Change::BrokerEpochs(new.broker_epochs.clone()));
    }
    changes
}

fn least_loaded(load: &[usize]) -> usize {
    load.iter()
        .enumerate()
        .min_by_key(|&(shard, &count)| (count, shard))
        .map_or(0, |(shard, _)| shard)
}

pub use ringlog_cluster::check_topic_name;

/// The directory of one partition, named as Kafka names it.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: usize) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shard `i` is node `10 + i`.
    fn node(shard: usize) -> i32 {
        10 + shard as i32
    }

    fn topic(shards: Vec<usize>) -> Topic {
        Topic {
            id: uuid::Uuid::nil().simple().to_string(),
            partitions: shards
                .into_iter()
                .map(|shard| PartitionState::single(shard, node(shard)))
                .collect(),
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn placement_balances_and_survives_fewer_shards() {
        let mut catalog = Catalog::default();
        catalog.topics.insert("a".into(), topic(vec![0, 1, 2, 3]));
        assert_eq!(catalog.place(4, 3), vec![0, 1, 2]);
        assert!(catalog.fit(2, node));
        assert_eq!(catalog.load_per_shard(2), vec![2, 2]);
        let moved = &catalog.topics["a"].partitions[2];
        assert!(moved.shard < 2);
        assert_eq!(moved.leader, node(moved.shard));
        assert_eq!(moved.replicas, vec![moved.leader]);
        assert_eq!(moved.isr, vec![moved.leader]);
        assert_eq!((moved.leader_epoch, moved.partition_epoch), (1, 1));
        let stayed = &catalog.topics["a"].partitions[1];
        assert_eq!((stayed.leader_epoch, stayed.partition_epoch), (0, 0));
        assert!(!catalog.fit(2, node));
    }

    #[test]
    fn one_node_for_all_shards_keeps_the_leader_and_its_epoch() {
        let mut catalog = Catalog::default();
        catalog.topics.insert("a".into(), topic(vec![0, 1]));
        // Every shard shows as node 10 now: partition 1's leader changes, partition 0's does not.
        assert!(catalog.fit(2, |_| 10));
        let partitions = &catalog.topics["a"].partitions;
        assert_eq!(
            (partitions[0].leader_epoch, partitions[0].partition_epoch),
            (0, 0)
        );
        assert_eq!(
            (partitions[1].leader_epoch, partitions[1].partition_epoch),
            (1, 1)
        );
        assert_eq!(partitions[1].shard, 1);
    }

    #[test]
    fn a_catalog_of_shard_numbers_still_loads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = r#"{"topics":{"orders":{"id":"00000000000000000000000000000000",
            "partitions":[1,0],"configs":{"retention.ms":"1000"}}}}"#;
        std::fs::write(dir.path().join(CATALOG_FILE), old).expect("write");
        let mut catalog = Catalog::load(dir.path()).expect("load");
        let orders = &catalog.topics["orders"];
        assert_eq!(orders.owner(0), Some(1));
        assert_eq!(orders.owner(1), Some(0));
        assert_eq!(orders.partitions[0].leader, -1);
        assert_eq!(orders.configs["retention.ms"], "1000");
        // Given nodes at start, each partition leads on its shard's node.
        assert!(catalog.fit(2, node));
        assert_eq!(catalog.topics["orders"].partitions[0].leader, node(1));
        assert_eq!(catalog.topics["orders"].partitions[0].isr, vec![node(1)]);
        catalog.save(dir.path()).expect("save");
        assert_eq!(Catalog::load(dir.path()).expect("reload"), catalog);
    }

    #[test]
    fn saved_catalog_loads_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            Catalog::load(dir.path()).expect("empty"),
            Catalog::default()
        );
        let mut catalog = Catalog::default();
        let mut orders = topic(vec![1, 0]);
        orders.configs.insert("retention.ms".into(), "1000".into());
        catalog.topics.insert("orders".into(), orders);
        catalog.save(dir.path()).expect("save");
        assert_eq!(Catalog::load(dir.path()).expect("load"), catalog);
    }

    #[test]
    fn a_metadata_image_becomes_this_hosts_catalog_and_its_changes() {
        use ringlog_cluster::records::{MetadataRecord, PartitionRecord};
        use ringlog_cluster::{HostId, MetadataImage, NodeId, RecordBatch};

        let partition = |index: u32, replicas: Vec<NodeId>| {
            MetadataRecord::Partition(PartitionRecord {
                topic: 7,
                partition: index,
                leader: replicas[0],
                isr: replicas.clone(),
                replicas,
                leader_epoch: 3,
                partition_epoch: 4,
                elr: Vec::new(),
                last_known_elr: Vec::new(),
            })
        };
        let host = |h: u32, core: u32| NodeId::of(HostId(h), core);
        let mut image = MetadataImage::default();
        image.apply(
            1,
            &RecordBatch::new(vec![
                MetadataRecord::Topic {
                    name: "orders".into(),
                    id: 7,
                },
                partition(0, vec![host(0, 1), host(1, 1)]),
                partition(1, vec![host(1, 0), host(2, 0)]),
            ]),
        );
        let catalog = from_image(&image, HostId(1));
        let orders = &catalog.topics["orders"];
        assert_eq!(orders.uuid(), uuid::Uuid::from_u128(7));
        assert_eq!(
            orders.owner(0),
            Some(1),
            "host 1 keeps partition 0 on core 1"
        );
        assert_eq!(orders.owner(1), Some(0));
        assert_eq!(orders.partitions[0].leader, host(0, 1).0);
        assert_eq!(orders.partitions[0].isr, vec![host(0, 1).0, host(1, 1).0]);
        assert_eq!(orders.partitions[0].leader_epoch, 3);

        let before = catalog.clone();
        let mut moved = image.clone();
        moved.apply(
            2,
            &RecordBatch::new(vec![partition(1, vec![host(2, 0), host(1, 0)])]),
        );
        let after = from_image(&moved, HostId(1));
        let changed = changes(&before, &after);
        assert!(
            matches!(&changed[..], [super::super::admin::Change::Upsert { name, .. }] if name == "orders")
        );
        assert!(changes(&after, &after).is_empty());
        moved.apply(
            3,
            &RecordBatch::new(vec![MetadataRecord::RemoveTopic { id: 7 }]),
        );
        let gone = changes(&after, &from_image(&moved, HostId(1)));
        assert!(
            matches!(&gone[..], [super::super::admin::Change::Remove { name, .. }] if name == "orders")
        );

        // A host that registers (again) gives its nodes a new broker epoch: the log index of
        // its registration, fenced or not. Leaders learn it as a change of its own.
        let register = |host: u32, incarnation: u128| {
            MetadataRecord::RegisterBroker(ringlog_cluster::records::Registration {
                host: HostId(host),
                incarnation,
                endpoints: (0..2)
                    .map(|core| ringlog_cluster::records::Endpoint {
                        node: NodeId::of(HostId(host), core),
                        host: "127.0.0.1".into(),
                        port: 9092,
                    })
                    .collect(),
                rack: None,
                cores: 2,
                clean_shutdown_epoch: None,
            })
        };
        moved.apply(4, &RecordBatch::new(vec![register(2, 1)]));
        let registered = from_image(&moved, HostId(1));
        assert_eq!(registered.broker_epochs.get(&host(2, 1).0), Some(&4));
        assert_eq!(
            registered.brokers,
            Some(Vec::new()),
            "fenced until it caught up"
        );
        moved.apply(5, &RecordBatch::new(vec![register(2, 2)]));
        let again = from_image(&moved, HostId(1));
        assert_eq!(again.broker_epochs.get(&host(2, 0).0), Some(&5));
        assert!(matches!(
            &changes(&registered, &again)[..],
            [super::super::admin::Change::BrokerEpochs(epochs)] if epochs[&host(2, 1).0] == 5
        ));
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(check_topic_name("orders.v2_eu-1").is_ok());
        for bad in ["", ".", "..", "a/b", "spaces no", &"x".repeat(250)] {
            assert!(check_topic_name(bad).is_err(), "{bad}");
        }
    }
}
