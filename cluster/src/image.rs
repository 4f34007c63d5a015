//! The metadata image: the cluster as the committed metadata log describes it, built by
//! applying each committed [`RecordBatch`] in log order. Every broker keeps one (and hands the
//! changes to its shards); the controller decides against its own.
//!
//! Applying never fails and never panics: the controller only writes records that are valid
//! against the image at the point they commit, and a record that does not fit (a partition of
//! a topic that is gone) is skipped and counted, so one bad record cannot stop a broker.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::node::{HostId, NodeId};
use crate::records::{
    decode_versioned, encode_versioned, DecodeError, MetadataRecord, PartitionRecord, RecordBatch,
    Registration, TopicId,
};

/// The largest encoded image accepted (a snapshot of the quorum's log): far above a cluster
/// of 100k partitions, so a bigger one is damaged or hostile.
pub const IMAGE_BYTES_MAX: usize = 48 << 20;

/// A registered host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broker {
    pub registration: Registration,
    /// The log index of its registration: requests carry it so a stale process is refused.
    pub epoch: u64,
    pub fenced: bool,
    /// It shut down on purpose (and is fenced).
    pub shut_down: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicImage {
    pub name: String,
    pub id: TopicId,
    pub partitions: Vec<PartitionRecord>,
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    pub brokers: BTreeMap<HostId, Broker>,
    pub topics: BTreeMap<TopicId, TopicImage>,
    pub topic_ids: BTreeMap<String, TopicId>,
    /// The log index of the last batch applied.
    pub applied_index: u64,
    /// Records that did not fit the image when applied (see the module doc).
    pub skipped_records: u64,
}

impl MetadataImage {
    /// `[version: u8][postcard-encoded image]`: a snapshot of the metadata log up to
    /// `applied_index`, in the records' encoding version.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_versioned::<Self, crate::legacy::MetadataImageV1>(bytes, IMAGE_BYTES_MAX)
    }

    /// Applies the batch committed at log index `index` (indexes only grow).
    pub fn apply(&mut self, index: u64, batch: &RecordBatch) {
        debug_assert!(index > self.applied_index || self.applied_index == 0);
        for record in &batch.records {
            if !self.apply_record(index, record) {
                self.skipped_records += 1;
            }
        }
        self.applied_index = index;
    }

    fn apply_record(&mut self, index: u64, record: &MetadataRecord) -> bool {
        match record {
            MetadataRecord::RegisterBroker(registration) => {
                let broker = Broker {
                    registration: registration.clone(),
                    epoch: index,
                    fenced: true,
                    shut_down: false,
                };
                self.brokers.insert(registration.host, broker);
                true
            }
            MetadataRecord::UnfenceBroker { host, epoch } => {
                self.with_broker(*host, *epoch, |broker| {
                    broker.fenced = false;
                    broker.shut_down = false;
                })
            }
            MetadataRecord::FenceBroker { host, epoch } => {
                self.with_broker(*host, *epoch, |broker| broker.fenced = true)
            }
            MetadataRecord::ShutDownBroker { host, epoch } => {
                self.with_broker(*host, *epoch, |broker| {
                    broker.fenced = true;
                    broker.shut_down = true;
                })
            }
            MetadataRecord::Topic { name, id } => {
                if self.topic_ids.contains_key(name) || self.topics.contains_key(id) {
                    return false;
                }
                self.topic_ids.insert(name.clone(), *id);
                let topic = TopicImage {
                    name: name.clone(),
                    id: *id,
                    partitions: Vec::new(),
                    configs: BTreeMap::new(),
                };
                self.topics.insert(*id, topic);
                true
            }
            MetadataRecord::Partition(partition) => {
                let Some(topic) = self.topics.get_mut(&partition.topic) else {
                    return false;
                };
                let Ok(index) = usize::try_from(partition.partition) else {
                    return false;
                };
                match index.cmp(&topic.partitions.len()) {
                    std::cmp::Ordering::Less => topic.partitions[index] = partition.clone(),
                    std::cmp::Ordering::Equal => topic.partitions.push(partition.clone()),
                    // Partitions are added in order: a gap is a record out of place.
                    std::cmp::Ordering::Greater => return false,
                }
                true
            }
            MetadataRecord::TopicConfig { topic, name, value } => {
                let Some(topic) = self.topics.get_mut(topic) else {
                    return false;
                };
                match value {
                    Some(value) => topic.configs.insert(name.clone(), value.clone()),
                    None => topic.configs.remove(name),
                };
                true
            }
            MetadataRecord::RemoveTopic { id } => match self.topics.remove(id) {
                Some(topic) => {
                    self.topic_ids.remove(&topic.name);
                    true
                }
                None => false,
            },
        }
    }

    fn with_broker(&mut self, host: HostId, epoch: u64, change: impl FnOnce(&mut Broker)) -> bool {
        match self.brokers.get_mut(&host) {
            Some(broker) if broker.epoch == epoch => {
                change(broker);
                true
            }
            _ => false,
        }
    }

    pub fn topic(&self, name: &str) -> Option<&TopicImage> {
        self.topic_ids.get(name).and_then(|id| self.topics.get(id))
    }

    /// Whether `node` is a core of a registered, unfenced host.
    pub fn is_live(&self, node: NodeId) -> bool {
        node.host()
            .and_then(|host| self.brokers.get(&host))
            .is_some_and(|broker| !broker.fenced)
    }

    /// Unfenced hosts, by id.
    pub fn live_hosts(&self) -> impl Iterator<Item = &Broker> {
        self.brokers.values().filter(|broker| !broker.fenced)
    }
}
