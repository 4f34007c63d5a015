//! The idempotent producer's state of one partition: for each producer id, its epoch and the
//! sequence ranges and offsets of its last five batches, as Kafka's `ProducerStateManager`
//! keeps them.
//!
//! Lives on the shard owning the partition, beside its log. A produce batch from an idempotent
//! producer (producer id ≥ 0) is checked against it right before the log assigns its offsets
//! ([`PartitionLog::append_checked`]), so the state moves in log order:
//!
//! - a batch equal to one of the producer's last five (same epoch, first and last sequence) is a
//!   retry: it is answered with the original batch's offset and not stored again;
//! - an older epoch is fenced (INVALID_PRODUCER_EPOCH); a newer one must start at sequence 0;
//! - otherwise the first sequence must follow the last one (wrapping after `i32::MAX`), or the
//!   batch is OUT_OF_ORDER_SEQUENCE_NUMBER;
//! - a producer id the partition has no state for is accepted at any sequence, as Kafka does
//!   since KIP-360 (its state may have gone with segments deleted by retention).
//!
//! The state is a pure function of the batch headers in the log, so it survives a restart or a
//! crash by construction: a snapshot (`producer-state.json`, taken at open, every checkpoint and
//! at close, unless the log end has not moved since the last one) holds the state of every
//! batch below its offset, and opening a partition replays the headers of the batches from
//! there to the log end. A snapshot ahead of the log (its tail lost in a crash) is ignored and
//! the whole log replayed.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::Path;

use kafka_protocol::ResponseError;
use ringlog_engine::batch::BatchHeader;
use ringlog_engine::PartitionLog;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::warn;

/// Batches remembered per producer: Kafka's limit on in-flight requests of an idempotent
/// producer (`max.in.flight.requests.per.connection` ≤ 5), so any retry is among them.
pub const BATCHES_KEPT: usize = 5;
/// Producers remembered per partition. Past it, a new producer evicts the one idle longest (whose
/// newest batch is oldest): that one's next batch is then taken as an unknown producer's, as
/// after Kafka's `producer.id.expiration.ms`, which expires by time instead.
pub const PRODUCERS_MAX: usize = 10_000;
/// File name of the snapshot in the partition directory.
pub const SNAPSHOT_FILE: &str = "producer-state.json";
const SNAPSHOT_VERSION: u32 = 1;

/// One remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSequence {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// One producer's state on a partition. `batches` is never empty (an entry without batches is
/// removed), oldest first, at most [`BATCHES_KEPT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub producer_id: i64,
    pub epoch: i16,
    pub batches: VecDeque<BatchSequence>,
}

/// What to do with a batch that passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Store it (and record it with [`ProducerStates::apply`]).
    Append,
    /// A retry of a stored batch: answer with this one's offsets, store nothing.
    Duplicate(BatchSequence),
}

/// Why a batch of an idempotent producer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SequenceError {
    #[error("producer {producer_id} epoch {given} is older than the current epoch {current}")]
    FencedEpoch {
        producer_id: i64,
        given: i16,
        current: i16,
    },
    #[error("producer {producer_id} sent sequence {given}, expected {expected}")]
    OutOfOrder {
        producer_id: i64,
        given: i32,
        expected: i32,
    },
    #[error("producer {producer_id} sent a batch without a sequence or epoch")]
    MissingSequence { producer_id: i64 },
}

impl SequenceError {
    /// The Kafka error code for the partition's Produce response.
    pub fn error_code(&self) -> ResponseError {
        match self {
            Self::FencedEpoch { .. } => ResponseError::InvalidProducerEpoch,
            Self::OutOfOrder { .. } => ResponseError::OutOfOrderSequenceNumber,
            // Kafka's LogValidator refuses such a batch as an invalid record.
            Self::MissingSequence { .. } => ResponseError::InvalidRecord,
        }
    }
}

/// The sequence of a batch's last record: its first sequence plus its offset span, wrapping to 0
/// after `i32::MAX` as producers do.
pub fn last_sequence(first_sequence: i32, last_offset_delta: i32) -> i32 {
    debug_assert!(first_sequence >= 0 && last_offset_delta >= 0);
    if first_sequence > i32::MAX - last_offset_delta {
        last_offset_delta - (i32::MAX - first_sequence) - 1
    } else {
        first_sequence + last_offset_delta
    }
}

/// Whether `next` is the sequence right after `last`.
fn in_sequence(last: i32, next: i32) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

/// Every producer's state on one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    #[cfg(test)]
    pub fn entry(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Whether `batch` is still among `producer_id`'s remembered batches (its append has not
    /// failed).
    pub fn remembers(&self, producer_id: i64, batch: BatchSequence) -> bool {
        self.producers
            .get(&producer_id)
            .is_some_and(|entry| entry.batches.contains(&batch))
    }

    /// Checks a producer batch against the state, changing nothing.
    pub fn check(&self, header: &BatchHeader) -> Result<Admission, SequenceError> {
        let producer_id = header.producer_id;
        if producer_id < 0 {
            return Ok(Admission::Append);
        }
        if header.base_sequence < 0 || header.producer_epoch < 0 {
            return Err(SequenceError::MissingSequence { producer_id });
        }
        let Some(entry) = self.producers.get(&producer_id) else {
            return Ok(Admission::Append);
        };
        let first = header.base_sequence;
        if header.producer_epoch < entry.epoch {
            return Err(SequenceError::FencedEpoch {
                producer_id,
                given: header.producer_epoch,
                current: entry.epoch,
            });
        }
        if header.producer_epoch > entry.epoch {
            return if first == 0 {
                Ok(Admission::Append)
            } else {
                Err(SequenceError::OutOfOrder {
                    producer_id,
                    given: first,
                    expected: 0,
                })
            };
        }
        let last = last_sequence(first, header.last_offset_delta);
        if let Some(stored) = entry
            .batches
            .iter()
            .find(|batch| batch.first_sequence == first && batch.last_sequence == last)
        {
            return Ok(Admission::Duplicate(*stored));
        }
        let previous = entry.batches.back().expect("entries are never empty");
        if in_sequence(previous.last_sequence, first) {
            Ok(Admission::Append)
        } else {
            Err(SequenceError::OutOfOrder {
                producer_id,
                given: first,
                expected: previous.last_sequence.wrapping_add(1).max(0),
            })
        }
    }

    /// Records a batch stored at `base_offset` (when appending) or found in the log (when
    /// replaying it at open). Batches without a producer id change nothing.
    pub fn apply(&mut self, header: &BatchHeader, base_offset: i64) {
        if header.producer_id < 0 || header.base_sequence < 0 || header.producer_epoch < 0 {
            return;
        }
        let batch = BatchSequence {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header.base_sequence, header.last_offset_delta),
            base_offset,
            last_offset: base_offset + i64::from(header.last_offset_delta),
        };
        if self.producers.len() >= PRODUCERS_MAX
            && !self.producers.contains_key(&header.producer_id)
        {
            self.evict_idlest();
        }
        let entry = self
            .producers
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                producer_id: header.producer_id,
                epoch: header.producer_epoch,
                batches: VecDeque::with_capacity(BATCHES_KEPT),
            });
        if header.producer_epoch < entry.epoch {
            // Only replay can meet this (a log written before fencing was checked).
            return;
        }
        if header.producer_epoch > entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_KEPT {
            entry.batches.pop_front();
        }
        entry.batches.push_back(batch);
    }

    fn evict_idlest(&mut self) {
        let idlest = self
            .producers
            .values()
            .min_by_key(|entry| {
                entry
                    .batches
                    .back()
                    .map_or(i64::MIN, |batch| batch.last_offset)
            })
            .map(|entry| entry.producer_id);
        if let Some(producer_id) = idlest {
            self.producers.remove(&producer_id);
        }
    }

    /// Undoes [`apply`](Self::apply) for a batch whose append failed: forgets the producer's
    /// batches from `base_offset` on (appends after it failed too: a failed write fails every
    /// append not yet visible), and the producer if none is left.
    pub fn forget(&mut self, producer_id: i64, base_offset: i64) {
        let Some(entry) = self.producers.get_mut(&producer_id) else {
            return;
        };
        entry
            .batches
            .retain(|batch| batch.base_offset < base_offset);
        if entry.batches.is_empty() {
            self.producers.remove(&producer_id);
        }
    }

    /// The state as it was after the batches below `offset`: later batches (appends still in
    /// flight) are left out, so a snapshot never claims what the log may not hold.
    fn below(&self, offset: i64) -> Vec<ProducerEntry> {
        let mut entries: Vec<ProducerEntry> = self
            .producers
            .values()
            .filter_map(|entry| {
                let batches: VecDeque<BatchSequence> = entry
                    .batches
                    .iter()
                    .filter(|batch| batch.last_offset < offset)
                    .copied()
                    .collect();
                (!batches.is_empty()).then(|| ProducerEntry {
                    batches,
                    ..entry.clone()
                })
            })
            .collect();
        entries.sort_by_key(|entry| entry.producer_id);
        entries
    }
}

/// The snapshot file: the state of every batch below `offset`.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    offset: i64,
    producers: Vec<ProducerEntry>,
}

/// What [`read_snapshot`] found.
enum SnapshotFile {
    /// None was ever written: the same as an empty snapshot at the log start.
    Missing,
    /// One that cannot be used (reported): the state is rebuilt from the whole log.
    Unusable,
    Found(Snapshot),
}

fn read_snapshot(dir: &Path) -> SnapshotFile {
    let path = dir.join(SNAPSHOT_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return SnapshotFile::Missing,
        Err(error) => {
            warn!(path = %path.display(), "cannot read the producer state snapshot: {error}");
            return SnapshotFile::Unusable;
        }
    };
    match serde_json::from_slice::<Snapshot>(&text) {
        Ok(snapshot) if snapshot.version == SNAPSHOT_VERSION => SnapshotFile::Found(snapshot),
        Ok(snapshot) => {
            warn!(path = %path.display(), version = snapshot.version, "unknown producer state snapshot version; rebuilding from the log");
            SnapshotFile::Unusable
        }
        Err(error) => {
            warn!(path = %path.display(), "damaged producer state snapshot; rebuilding from the log: {error}");
            SnapshotFile::Unusable
        }
    }
}

/// Writes the snapshot of `states` at the log's end durably ([`super::durable`]) and returns
/// that offset. Small (at most five batches per producer), so written with blocking calls as
/// the topic catalog is.
pub fn save(log: &PartitionLog, states: &ProducerStates) -> io::Result<i64> {
    let offset = log.log_end_offset();
    let snapshot = Snapshot {
        version: SNAPSHOT_VERSION,
        offset,
        producers: states.below(offset),
    };
    let text = serde_json::to_vec(&snapshot).map_err(io::Error::other)?;
    super::durable::replace_file(log.dir(), SNAPSHOT_FILE, &text)?;
    Ok(offset)
}

/// A partition's producer state as rebuilt at open.
pub struct Recovered {
    pub states: ProducerStates,
    /// The offset of a snapshot on disk that already holds `states` (the log end offset then),
    /// if there is one: saving again at that offset would write the same state.
    pub snapshot_offset: Option<i64>,
}

/// Rebuilds a partition's producer state at open: the snapshot, then every batch after it.
/// A log that cannot be read back is reported and what was rebuilt so far is kept: its
/// producers' retries may then be stored twice, which is what a producer without idempotence
/// gets.
pub async fn recover(log: &PartitionLog) -> Recovered {
    let mut states = ProducerStates::default();
    let log_end = log.log_end_offset();
    let mut from = log.log_start_offset();
    // Where the state on disk ends; a snapshot ahead of the log (its tail lost in a crash)
    // must be overwritten before the log grows past it again.
    let mut snapshot_offset = None;
    match read_snapshot(log.dir()) {
        SnapshotFile::Missing => snapshot_offset = Some(from),
        SnapshotFile::Unusable => {}
        SnapshotFile::Found(snapshot) if snapshot.offset > log_end => {}
        SnapshotFile::Found(snapshot) => {
            from = from.max(snapshot.offset);
            snapshot_offset = Some(snapshot.offset);
            for entry in snapshot.producers {
                if !entry.batches.is_empty() && entry.batches.len() <= BATCHES_KEPT {
                    states.producers.insert(entry.producer_id, entry);
                }
            }
        }
    }
    let replayed = ringlog_engine::scan::visit_batches(log, from, |header, _| {
        states.apply(header, header.base_offset)
    })
    .await;
    if let Err(error) = replayed {
        warn!(dir = %log.dir().display(), "cannot replay producer state from the log: {error}");
    }
    Recovered {
        states,
        snapshot_offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(producer_id: i64, epoch: i16, first_sequence: i32, records: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence: first_sequence,
            records_count: records,
        }
    }

    /// Checks and, when admitted, applies at `offset`; returns what the check said.
    fn produce(
        states: &mut ProducerStates,
        batch: BatchHeader,
        offset: i64,
    ) -> Result<Admission, SequenceError> {
        let admission = states.check(&batch)?;
        if admission == Admission::Append {
            states.apply(&batch, offset);
        }
        Ok(admission)
    }

    #[test]
    fn in_order_batches_are_appended_and_retries_get_their_offsets() {
        let mut states = ProducerStates::default();
        assert_eq!(
            produce(&mut states, header(7, 0, 0, 3), 100),
            Ok(Admission::Append)
        );
        assert_eq!(
            produce(&mut states, header(7, 0, 3, 2), 103),
            Ok(Admission::Append)
        );
        let retry = produce(&mut states, header(7, 0, 0, 3), 999).expect("a duplicate");
        let Admission::Duplicate(original) = retry else {
            panic!("not a duplicate: {retry:?}");
        };
        assert_eq!((original.base_offset, original.last_offset), (100, 102));
        assert!(matches!(
            produce(&mut states, header(7, 0, 3, 2), 999),
            Ok(Admission::Duplicate(BatchSequence {
                base_offset: 103,
                ..
            }))
        ));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut states = ProducerStates::default();
        for sequence in 0..7 {
            produce(&mut states, header(1, 0, sequence, 1), i64::from(sequence)).expect("append");
        }
        assert_eq!(states.entry(1).expect("entry").batches.len(), BATCHES_KEPT);
        // Sequence 1 is no longer remembered: it is out of order, not a duplicate.
        assert!(matches!(
            states.check(&header(1, 0, 1, 1)),
            Err(SequenceError::OutOfOrder { expected: 7, .. })
        ));
        assert!(matches!(
            states.check(&header(1, 0, 2, 1)),
            Ok(Admission::Duplicate(_))
        ));
    }

    #[test]
    fn gaps_are_out_of_order() {
        let mut states = ProducerStates::default();
        produce(&mut states, header(1, 0, 0, 2), 0).expect("append");
        let gap = states.check(&header(1, 0, 3, 1)).expect_err("a gap");
        assert_eq!(gap.error_code(), ResponseError::OutOfOrderSequenceNumber);
        // A partial overlap with a stored batch is not a duplicate either.
        assert!(states.check(&header(1, 0, 1, 1)).is_err());
        assert_eq!(states.check(&header(1, 0, 2, 1)), Ok(Admission::Append));
    }

    #[test]
    fn epochs_fence_and_reset_sequences() {
        let mut states = ProducerStates::default();
        produce(&mut states, header(1, 3, 0, 1), 0).expect("append");
        produce(&mut states, header(1, 3, 1, 1), 1).expect("append");
        let fenced = states.check(&header(1, 2, 2, 1)).expect_err("fenced");
        assert_eq!(fenced.error_code(), ResponseError::InvalidProducerEpoch);
        let bumped = states
            .check(&header(1, 4, 2, 1))
            .expect_err("must restart at 0");
        assert_eq!(bumped.error_code(), ResponseError::OutOfOrderSequenceNumber);
        produce(&mut states, header(1, 4, 0, 1), 2).expect("new epoch");
        assert_eq!(states.entry(1).expect("entry").epoch, 4);
        assert_eq!(states.entry(1).expect("entry").batches.len(), 1);
        assert!(states.check(&header(1, 3, 2, 1)).is_err());
    }

    #[test]
    fn unknown_producers_start_anywhere_and_plain_batches_pass() {
        let states = ProducerStates::default();
        assert_eq!(states.check(&header(9, 0, 42, 1)), Ok(Admission::Append));
        assert_eq!(states.check(&header(-1, -1, -1, 5)), Ok(Admission::Append));
        let missing = states.check(&header(9, 0, -1, 1)).expect_err("no sequence");
        assert_eq!(missing.error_code(), ResponseError::InvalidRecord);
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        assert_eq!(last_sequence(i32::MAX - 1, 1), i32::MAX);
        assert_eq!(last_sequence(i32::MAX, 0), i32::MAX);
        assert_eq!(last_sequence(i32::MAX, 1), 0);
        assert_eq!(last_sequence(i32::MAX - 1, 4), 2);
        let mut states = ProducerStates::default();
        produce(&mut states, header(1, 0, i32::MAX - 1, 2), 0).expect("append");
        assert_eq!(states.check(&header(1, 0, 0, 1)), Ok(Admission::Append));
        produce(&mut states, header(1, 0, i32::MAX - 1, 4), 10).expect_err("overlap");
        let mut states = ProducerStates::default();
        produce(&mut states, header(1, 0, i32::MAX - 1, 4), 0).expect("append wrapping");
        assert_eq!(states.check(&header(1, 0, 2, 1)), Ok(Admission::Append));
        assert!(matches!(
            states.check(&header(1, 0, i32::MAX - 1, 4)),
            Ok(Admission::Duplicate(_))
        ));
    }

    #[test]
    fn past_the_limit_the_idlest_producer_is_forgotten() {
        let mut states = ProducerStates::default();
        for producer_id in 0..PRODUCERS_MAX as i64 {
            produce(&mut states, header(producer_id, 0, 0, 1), producer_id).expect("append");
        }
        // Producer 0 is active again; producer 1 is now the idlest.
        produce(&mut states, header(0, 0, 1, 1), 20_000).expect("append");
        produce(&mut states, header(-5, -1, -1, 1), 20_001).expect("plain batch");
        produce(&mut states, header(99_999, 0, 0, 1), 20_002).expect("append");
        assert!(states.entry(1).is_none());
        assert!(states.entry(0).is_some() && states.entry(99_999).is_some());
        assert_eq!(states.producers.len(), PRODUCERS_MAX);
    }

    #[test]
    fn a_failed_append_is_forgotten() {
        let mut states = ProducerStates::default();
        produce(&mut states, header(1, 0, 0, 1), 0).expect("append");
        produce(&mut states, header(1, 0, 1, 1), 1).expect("append");
        states.forget(1, 1);
        // The retry of the failed batch is appended again, not taken for a duplicate.
        assert_eq!(states.check(&header(1, 0, 1, 1)), Ok(Admission::Append));
        states.forget(1, 0);
        assert!(states.is_empty());
    }

    #[test]
    fn snapshots_leave_out_batches_at_or_after_their_offset() {
        let mut states = ProducerStates::default();
        produce(&mut states, header(1, 0, 0, 2), 0).expect("append");
        produce(&mut states, header(1, 0, 2, 2), 2).expect("append");
        produce(&mut states, header(2, 0, 0, 1), 4).expect("append");
        let below = states.below(4);
        assert_eq!(below.len(), 1);
        assert_eq!(below[0].batches.len(), 2);
        let below = states.below(3);
        assert_eq!(below[0].batches.len(), 1);
    }
}
