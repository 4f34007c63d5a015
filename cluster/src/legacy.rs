//! The metadata log's shapes of record version 1, before eligible leader replicas (KIP-966),
//! and their conversion to the current ones: a metadata log or snapshot written by an older
//! build still loads.
//!
//! Postcard writes a struct's fields one after another with no names or count, so a field
//! added to [`Registration`] or [`PartitionRecord`] cannot be read as absent from older bytes:
//! the older shape is decoded by its own types (copies of the old definitions, field for field),
//! then converted. New fields take the value that changes nothing: no eligible leader
//! replicas, and a registration that says nothing about its previous shutdown (which only
//! matters when the controller decides on a new registration, never when one is replayed).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::image::{Broker, MetadataImage, TopicImage};
use crate::node::{HostId, NodeId};
use crate::records::{
    Endpoint, MetadataRecord, PartitionRecord, RecordBatch, Registration, TopicId,
};

#[derive(Deserialize)]
pub(crate) struct RegistrationV1 {
    host: HostId,
    incarnation: u128,
    endpoints: Vec<Endpoint>,
    rack: Option<String>,
    cores: u32,
}

#[derive(Deserialize)]
pub(crate) struct PartitionRecordV1 {
    topic: TopicId,
    partition: u32,
    replicas: Vec<NodeId>,
    leader: NodeId,
    leader_epoch: i32,
    partition_epoch: i32,
    isr: Vec<NodeId>,
}

/// Variants in the order of version 1 (postcard encodes the variant's index).
#[derive(Deserialize)]
pub(crate) enum MetadataRecordV1 {
    RegisterBroker(RegistrationV1),
    UnfenceBroker {
        host: HostId,
        epoch: u64,
    },
    FenceBroker {
        host: HostId,
        epoch: u64,
    },
    ShutDownBroker {
        host: HostId,
        epoch: u64,
    },
    Topic {
        name: String,
        id: TopicId,
    },
    Partition(PartitionRecordV1),
    TopicConfig {
        topic: TopicId,
        name: String,
        value: Option<String>,
    },
    RemoveTopic {
        id: TopicId,
    },
}

#[derive(Deserialize)]
pub(crate) struct RecordBatchV1 {
    records: Vec<MetadataRecordV1>,
}

#[derive(Deserialize)]
pub(crate) struct BrokerV1 {
    registration: RegistrationV1,
    epoch: u64,
    fenced: bool,
    shut_down: bool,
}

#[derive(Deserialize)]
pub(crate) struct TopicImageV1 {
    name: String,
    id: TopicId,
    partitions: Vec<PartitionRecordV1>,
    configs: BTreeMap<String, String>,
}

#[derive(Deserialize)]
pub(crate) struct MetadataImageV1 {
    brokers: BTreeMap<HostId, BrokerV1>,
    topics: BTreeMap<TopicId, TopicImageV1>,
    topic_ids: BTreeMap<String, TopicId>,
    applied_index: u64,
    skipped_records: u64,
}

impl From<RegistrationV1> for Registration {
    fn from(old: RegistrationV1) -> Self {
        Self {
            host: old.host,
            incarnation: old.incarnation,
            endpoints: old.endpoints,
            rack: old.rack,
            cores: old.cores,
            clean_shutdown_epoch: None,
        }
    }
}

impl From<PartitionRecordV1> for PartitionRecord {
    fn from(old: PartitionRecordV1) -> Self {
        Self {
            topic: old.topic,
            partition: old.partition,
            replicas: old.replicas,
            leader: old.leader,
            leader_epoch: old.leader_epoch,
            partition_epoch: old.partition_epoch,
            isr: old.isr,
            elr: Vec::new(),
            last_known_elr: Vec::new(),
        }
    }
}

impl From<MetadataRecordV1> for MetadataRecord {
    fn from(old: MetadataRecordV1) -> Self {
        match old {
            MetadataRecordV1::RegisterBroker(registration) => {
                Self::RegisterBroker(registration.into())
            }
            MetadataRecordV1::UnfenceBroker { host, epoch } => Self::UnfenceBroker { host, epoch },
            MetadataRecordV1::FenceBroker { host, epoch } => Self::FenceBroker { host, epoch },
            MetadataRecordV1::ShutDownBroker { host, epoch } => {
                Self::ShutDownBroker { host, epoch }
            }
            MetadataRecordV1::Topic { name, id } => Self::Topic { name, id },
            MetadataRecordV1::Partition(partition) => Self::Partition(partition.into()),
            MetadataRecordV1::TopicConfig { topic, name, value } => {
                Self::TopicConfig { topic, name, value }
            }
            MetadataRecordV1::RemoveTopic { id } => Self::RemoveTopic { id },
        }
    }
}

impl From<RecordBatchV1> for RecordBatch {
    fn from(old: RecordBatchV1) -> Self {
        Self::new(old.records.into_iter().map(Into::into).collect())
    }
}

impl From<MetadataImageV1> for MetadataImage {
    fn from(old: MetadataImageV1) -> Self {
        let brokers = old
            .brokers
            .into_iter()
            .map(|(host, broker)| {
                let broker = Broker {
                    registration: broker.registration.into(),
                    epoch: broker.epoch,
                    fenced: broker.fenced,
                    shut_down: broker.shut_down,
                };
                (host, broker)
            })
            .collect();
        let topics = old
            .topics
            .into_iter()
            .map(|(id, topic)| {
                let topic = TopicImage {
                    name: topic.name,
                    id: topic.id,
                    partitions: topic.partitions.into_iter().map(Into::into).collect(),
                    configs: topic.configs,
                };
                (id, topic)
            })
            .collect();
        Self {
            brokers,
            topics,
            topic_ids: old.topic_ids,
            applied_index: old.applied_index,
            skipped_records: old.skipped_records,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::image::MetadataImage;
    use crate::node::{HostId, NodeId};
    use crate::records::{DecodeError, MetadataRecord, RecordBatch};

    /// Bytes as the build before ELR wrote them (version 1): a registration of host 1 (node
    /// 1024 at 127.0.0.2:9093, rack r1, one core), topic "orders" (id 42), its partition 0 on
    /// nodes 1024 and 0 with ISR [1024, 0], and a config removed. Postcard by hand: variant
    /// index, then each field (unsigned varints; signed ones zigzag, so node 1024 is [128, 16];
    /// strings and vectors length first).
    const BATCH_V1: &[u8] = &[
        1, // version
        4, // records
        0, 1, 7, 1, 128, 16, 9, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'2', 133, 71, 1,
        2, b'r', b'1', 1, // RegisterBroker
        4, 6, b'o', b'r', b'd', b'e', b'r', b's', 42, // Topic
        5, 42, 0, 2, 128, 16, 0, 128, 16, 0, 0, 2, 128, 16, 0, // Partition
        6, 42, 12, b'r', b'e', b't', b'e', b'n', b't', b'i', b'o', b'n', b'.', b'm', b's',
        0, // TopicConfig
    ];

    #[test]
    fn a_version_1_batch_loads_with_no_elr_and_no_clean_shutdown() {
        let batch = RecordBatch::decode(BATCH_V1).expect("version 1 decodes");
        assert_eq!(batch.records.len(), 4);
        let MetadataRecord::RegisterBroker(registration) = &batch.records[0] else {
            panic!("{batch:?}");
        };
        assert_eq!(registration.host, HostId(1));
        assert_eq!(registration.incarnation, 7);
        assert_eq!(registration.endpoints[0].node, NodeId(1024));
        assert_eq!(registration.endpoints[0].host, "127.0.0.2");
        assert_eq!(registration.endpoints[0].port, 9093);
        assert_eq!(registration.rack.as_deref(), Some("r1"));
        assert_eq!(registration.clean_shutdown_epoch, None);
        let MetadataRecord::Partition(partition) = &batch.records[2] else {
            panic!("{batch:?}");
        };
        assert_eq!(partition.replicas, vec![NodeId(1024), NodeId(0)]);
        assert_eq!(partition.leader, NodeId(1024));
        assert_eq!(partition.isr, vec![NodeId(1024), NodeId(0)]);
        assert!(partition.elr.is_empty() && partition.last_known_elr.is_empty());
        assert!(matches!(
            &batch.records[3],
            MetadataRecord::TopicConfig {
                topic: 42,
                value: None,
                ..
            }
        ));
        // Applied, it makes the image the old build made.
        let mut image = MetadataImage::default();
        image.apply(1, &batch);
        assert_eq!(image.skipped_records, 0);
        assert_eq!(image.topic("orders").map(|t| t.partitions.len()), Some(1));
        // Cut short, it is refused, never half-read.
        for cut in 1..BATCH_V1.len() {
            assert!(
                RecordBatch::decode(&BATCH_V1[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_version_1_image_loads() {
        // Version 1 of the image holding the batch above, applied at index 1: brokers (host 1,
        // its registration, epoch 1, fenced, not shut down), topics, topic ids, applied index,
        // skipped records.
        let mut bytes = vec![1, 1, 1];
        bytes.extend_from_slice(&BATCH_V1[3..25]); // the registration's fields
        bytes.extend_from_slice(&[1, 1, 0]); // epoch, fenced, shut_down
        bytes.extend_from_slice(&[1, 42, 6, b'o', b'r', b'd', b'e', b'r', b's', 42]);
        bytes.extend_from_slice(&[1]); // one partition
        bytes.extend_from_slice(&BATCH_V1[35..49]); // its fields
        bytes.extend_from_slice(&[0]); // no configs
        bytes.extend_from_slice(&[1, 6, b'o', b'r', b'd', b'e', b'r', b's', 42]);
        bytes.extend_from_slice(&[1, 0]); // applied index, skipped records
        let image = MetadataImage::decode(&bytes).expect("version 1 image decodes");
        let mut expected = MetadataImage::default();
        expected.apply(1, &RecordBatch::decode(BATCH_V1).expect("decodes"));
        assert_eq!(image, expected);
        assert_eq!(
            MetadataImage::decode(&image.encode()),
            Ok(expected),
            "written again as the current version"
        );
        let mut unknown = bytes.clone();
        unknown[0] = 0;
        assert_eq!(
            MetadataImage::decode(&unknown),
            Err(DecodeError::Version(0))
        );
    }
}
