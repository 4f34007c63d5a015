//! The metadata log's records: everything the controller decides, in the order the quorum
//! committed it. A broker's view of the cluster is these records applied in order to an empty
//! [`crate::MetadataImage`]. Each Raft entry holds one [`RecordBatch`]: the records of one
//! decision, applied together or not at all. The byte layout is drawn in `docs/metadata-log.md`.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::node::{HostId, NodeId};

/// A Kafka topic id (a UUID as 128 bits).
pub type TopicId = u128;

/// The version of the record encoding this build writes. It also reads version 1 (before
/// eligible leader replicas), whose records it converts ([`crate::legacy`]).
pub const RECORD_VERSION: u8 = 2;
/// The oldest record encoding this build reads.
pub const RECORD_VERSION_OLDEST: u8 = 1;
/// The largest batch accepted when decoding: a metadata entry is never near this, so a bigger
/// size means a damaged or hostile entry.
pub const BATCH_BYTES_MAX: usize = 8 << 20;

/// A listener a broker core serves Kafka clients on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub node: NodeId,
    pub host: String,
    pub port: u16,
}

/// A host's registration: who it is and how its cores are reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub host: HostId,
    /// Random per process start: a second process with the same host id is told apart.
    pub incarnation: u128,
    /// One endpoint per Kafka node of the host (per core, or one for the whole host).
    pub endpoints: Vec<Endpoint>,
    pub rack: Option<String>,
    pub cores: u32,
    /// The broker epoch of the host's previous process when that process stopped cleanly
    /// (it wrote everything it had to disk: KIP-966's clean shutdown), `None` when it did not,
    /// or when the host has no record of it. The controller trusts it only when it is the
    /// epoch it has registered for the host: a replica whose host lost its unflushed tail
    /// must not stay eligible to lead.
    pub clean_shutdown_epoch: Option<u64>,
}

/// One partition's replicas and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub topic: TopicId,
    pub partition: u32,
    /// Preferred leader first.
    pub replicas: Vec<NodeId>,
    /// `NodeId(-1)` when the partition has no leader.
    pub leader: NodeId,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    /// In replica order. May be empty (KIP-966): the last in-sync replica, fenced, moves to
    /// the ELR instead of staying in the ISR.
    pub isr: Vec<NodeId>,
    /// Eligible leader replicas (KIP-966), in replica order: replicas that left the ISR while
    /// it was below `min.insync.replicas`. The high watermark does not advance while the ISR
    /// is that small, so each of them has everything acknowledged and may lead when the ISR
    /// is empty. Cleared when the ISR is back at `min.insync.replicas`.
    pub elr: Vec<NodeId>,
    /// Replicas that left the ELR because their host stopped uncleanly while the ISR was
    /// empty (KIP-966's last known ELR): when the ISR and the ELR are both empty, nobody is
    /// known to have every acknowledged record, and one of these, the last to have had them,
    /// leads as a last resort (what happened before ELR). Cleared with the ELR.
    pub last_known_elr: Vec<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataRecord {
    /// A host registered (or re-registered after a restart); it starts fenced. Its broker
    /// epoch is the log index of the entry holding this record.
    RegisterBroker(Registration),
    /// A host may lead and serve partitions again (it caught up with the metadata log).
    UnfenceBroker {
        host: HostId,
        epoch: u64,
    },
    /// A host missed its session or shut down: it leads nothing until unfenced.
    FenceBroker {
        host: HostId,
        epoch: u64,
    },
    /// A host is shutting down on purpose: its leaderships have moved (in the same batch).
    ShutDownBroker {
        host: HostId,
        epoch: u64,
    },
    Topic {
        name: String,
        id: TopicId,
    },
    Partition(PartitionRecord),
    /// A topic config override set (`Some`) or removed (`None`).
    TopicConfig {
        topic: TopicId,
        name: String,
        value: Option<String>,
    },
    RemoveTopic {
        id: TopicId,
    },
}

/// The records of one decision: one Raft entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBatch {
    pub records: Vec<MetadataRecord>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("metadata entry or image of {0} bytes is over its limit")]
    TooLarge(usize),
    #[error("metadata entry is empty")]
    Empty,
    #[error(
        "metadata entry has record version {0}; this build reads versions {RECORD_VERSION_OLDEST} \
         to {RECORD_VERSION}"
    )]
    Version(u8),
    #[error("metadata entry does not decode: {0}")]
    Malformed(String),
}

impl RecordBatch {
    pub fn new(records: Vec<MetadataRecord>) -> Self {
        Self { records }
    }

    /// `[version: u8][postcard-encoded batch]`.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_versioned::<Self, crate::legacy::RecordBatchV1>(bytes, BATCH_BYTES_MAX)
    }
}

/// `[version: u8][postcard]`: the metadata log's encoding, of a batch or a whole image.
pub(crate) fn encode_versioned<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![RECORD_VERSION];
    let encoded = postcard::to_allocvec(value).expect("records and images always encode");
    bytes.extend_from_slice(&encoded);
    bytes
}

/// Decodes the current version as `T`, and version 1 as its shape then, `V1`, converted.
/// Postcard is not self-describing (a field added to a struct is not skipped when absent), so
/// an older shape is decoded by its own type.
pub(crate) fn decode_versioned<T, V1>(bytes: &[u8], bytes_max: usize) -> Result<T, DecodeError>
where
    T: for<'de> Deserialize<'de>,
    V1: for<'de> Deserialize<'de> + Into<T>,
{
    if bytes.len() > bytes_max {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    let malformed = |error: postcard::Error| DecodeError::Malformed(error.to_string());
    match version {
        RECORD_VERSION => postcard::from_bytes(body).map_err(malformed),
        1 => postcard::from_bytes::<V1>(body)
            .map(Into::into)
            .map_err(malformed),
        _ => Err(DecodeError::Version(version)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RecordBatch {
        RecordBatch::new(vec![
            MetadataRecord::RegisterBroker(Registration {
                host: HostId(1),
                incarnation: 7,
                endpoints: vec![Endpoint {
                    node: NodeId(1024),
                    host: "127.0.0.2".into(),
                    port: 9093,
                }],
                rack: Some("r1".into()),
                cores: 1,
                clean_shutdown_epoch: Some(3),
            }),
            MetadataRecord::Topic {
                name: "orders".into(),
                id: 42,
            },
            MetadataRecord::Partition(PartitionRecord {
                topic: 42,
                partition: 0,
                replicas: vec![NodeId(1024), NodeId(0)],
                leader: NodeId(1024),
                leader_epoch: 0,
                partition_epoch: 0,
                isr: vec![NodeId(1024)],
                elr: vec![NodeId(0)],
                last_known_elr: Vec::new(),
            }),
            MetadataRecord::TopicConfig {
                topic: 42,
                name: "retention.ms".into(),
                value: None,
            },
        ])
    }

    #[test]
    fn batches_round_trip() {
        let batch = sample();
        assert_eq!(RecordBatch::decode(&batch.encode()), Ok(batch));
    }

    #[test]
    fn damaged_entries_are_refused_not_misread() {
        let bytes = sample().encode();
        assert_eq!(RecordBatch::decode(&[]), Err(DecodeError::Empty));
        let mut newer = bytes.clone();
        newer[0] = RECORD_VERSION + 1;
        assert_eq!(
            RecordBatch::decode(&newer),
            Err(DecodeError::Version(RECORD_VERSION + 1))
        );
        for cut in 1..bytes.len() {
            assert!(RecordBatch::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = RecordBatch::decode(&bytes);
        }
    }
}
