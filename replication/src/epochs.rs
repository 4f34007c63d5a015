//! The leader-epoch cache of one partition: which leader epoch wrote which range of offsets
//! (KIP-101), and the answer to OffsetForLeaderEpoch (KIP-279) that lets a follower find where
//! its log diverges from the leader's.
//!
//! Each entry says "epoch `e` began at offset `o`"; the epoch ends where the next one begins,
//! or, for the latest, at the log end offset. Entries are strictly increasing in both epoch
//! and start offset, and every operation keeps them so. The cache follows Kafka's
//! `LeaderEpochFileCache`, with one deliberate difference noted on [`EpochCache::assign`].
//!
//! This module does no I/O: the engine persists [`EpochCache::encode`]'s text as the
//! partition's `leader-epoch-checkpoint`, in Kafka's own format so tools that read Kafka's
//! checkpoints read ours:
//!
//! ```text
//! 0                      version
//! 2                      number of entries
//! 0 0                    epoch, start offset (one line each, separated by a space)
//! 3 150
//! ```

use thiserror::Error;

/// The epoch Kafka answers with when it knows none (OffsetForLeaderEpoch's UNDEFINED_EPOCH).
pub const UNDEFINED_EPOCH: i32 = -1;
/// The end offset Kafka answers with when it knows none (UNDEFINED_EPOCH_OFFSET).
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

/// The only checkpoint version Kafka has written.
const CHECKPOINT_VERSION: u32 = 0;

/// Leader epoch `epoch` wrote the offsets from `start_offset` up to the next entry's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

/// Why a `leader-epoch-checkpoint` text could not be read. The caller rebuilds the cache from
/// the log rather than trust any of it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EpochCheckpointError {
    #[error("the checkpoint ends early: expected {expected}")]
    Truncated { expected: &'static str },
    #[error("unsupported checkpoint version {0:?}")]
    BadVersion(String),
    #[error("bad entry count {0:?}")]
    BadCount(String),
    #[error("malformed entry on line {line}: {text:?}")]
    MalformedEntry { line: usize, text: String },
    #[error("{declared} entries declared, {found} found")]
    CountMismatch { declared: usize, found: usize },
    #[error("entry on line {line} does not increase in epoch and start offset")]
    NotIncreasing { line: usize },
}

/// The leader-epoch cache. Lives beside the partition's log, on the shard that owns it.
///
/// Invariant: `entries` is strictly increasing in `epoch` and in `start_offset`, and holds no
/// negative epoch or offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<EpochEntry>,
}

impl EpochCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.latest().map(|entry| entry.epoch)
    }

    /// Records that `epoch` starts at `start_offset`; returns whether the cache changed.
    ///
    /// An epoch at or below the latest one is ignored, as are negative values (a batch
    /// written before epochs existed carries -1). Kafka differs for an epoch below the latest:
    /// it drops every entry from that epoch on and records the lower one. Nothing in a correct
    /// protocol run sends that (a follower truncates its cache with its log before it fetches
    /// the new leader's batches), and ignoring it keeps the cache from moving backwards on a
    /// stray batch. Entries starting at or after `start_offset` are removed first, as in Kafka:
    /// they describe offsets the new epoch now owns.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || start_offset < 0 {
            return false;
        }
        if self.latest().is_some_and(|latest| epoch <= latest.epoch) {
            return false;
        }
        let keep = self
            .entries
            .partition_point(|entry| entry.start_offset < start_offset);
        self.entries.truncate(keep);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.debug_check();
        true
    }

    /// The log was truncated to end at `end_offset`: entries starting at or after it go.
    /// Returns whether the cache changed.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        if end_offset < 0 {
            return false;
        }
        let keep = self
            .entries
            .partition_point(|entry| entry.start_offset < end_offset);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// The log now starts at `start_offset` (retention): entries wholly before it go, and the
    /// last entry at or before it is kept with its start moved up to `start_offset`, so the
    /// epoch of the first offset still in the log stays known. Returns whether it changed.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        let at_or_before = self
            .entries
            .partition_point(|entry| entry.start_offset <= start_offset);
        if at_or_before == 0 {
            return false;
        }
        let mut kept = self.entries[at_or_before - 1];
        let changed = at_or_before > 1 || kept.start_offset != start_offset;
        kept.start_offset = start_offset;
        self.entries.drain(..at_or_before - 1);
        self.entries[0] = kept;
        self.debug_check();
        changed
    }

    /// OffsetForLeaderEpoch (KIP-279): the largest epoch at or below `requested_epoch` and the
    /// offset where it ends, as Kafka's `endOffsetFor` answers.
    ///
    /// - the latest epoch: `(latest, log_end_offset)`, since it is still being written;
    /// - an older epoch: the largest known epoch at or below it, ending where the next known
    ///   epoch starts;
    /// - below every known epoch: `(requested_epoch, first entry's start)`, Kafka's answer
    ///   for history already removed by retention, so the follower truncates to the leader's
    ///   start;
    /// - [`UNDEFINED_EPOCH`], an empty cache, or above the latest: `(-1, -1)`.
    pub fn end_offset_for(&self, requested_epoch: i32, log_end_offset: i64) -> (i32, i64) {
        const UNKNOWN: (i32, i64) = (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        if requested_epoch == UNDEFINED_EPOCH {
            return UNKNOWN;
        }
        if self.latest_epoch() == Some(requested_epoch) {
            return (requested_epoch, log_end_offset);
        }
        let higher = self
            .entries
            .partition_point(|entry| entry.epoch <= requested_epoch);
        let Some(next) = self.entries.get(higher) else {
            return UNKNOWN;
        };
        match higher.checked_sub(1) {
            Some(floor) => (self.entries[floor].epoch, next.start_offset),
            None => (requested_epoch, next.start_offset),
        }
    }

    /// The checkpoint text, in Kafka's `leader-epoch-checkpoint` format.
    pub fn encode(&self) -> String {
        let mut out = format!("{CHECKPOINT_VERSION}\n{}\n", self.entries.len());
        for entry in &self.entries {
            out.push_str(&format!("{} {}\n", entry.epoch, entry.start_offset));
        }
        out
    }

    /// Reads [`encode`](Self::encode)'s text. Anything malformed is an error: a version other
    /// than 0, a count that is not a number or does not match, an entry that is not two
    /// numbers, entries out of order or negative, or text after the last entry.
    pub fn decode(text: &str) -> Result<Self, EpochCheckpointError> {
        let mut lines = text.lines();
        let version = lines.next().ok_or(EpochCheckpointError::Truncated {
            expected: "a version line",
        })?;
        if version.trim().parse::<u32>() != Ok(CHECKPOINT_VERSION) {
            return Err(EpochCheckpointError::BadVersion(version.to_owned()));
        }
        let count_line = lines.next().ok_or(EpochCheckpointError::Truncated {
            expected: "an entry count",
        })?;
        let declared: usize = count_line
            .trim()
            .parse()
            .map_err(|_| EpochCheckpointError::BadCount(count_line.to_owned()))?;
        let mut cache = Self::new();
        for (index, text) in lines.enumerate() {
            let line = index + 3;
            let entry = parse_entry(text).ok_or_else(|| EpochCheckpointError::MalformedEntry {
                line,
                text: text.to_owned(),
            })?;
            let increasing = cache.latest().is_none_or(|latest| {
                entry.epoch > latest.epoch && entry.start_offset > latest.start_offset
            });
            if !increasing {
                return Err(EpochCheckpointError::NotIncreasing { line });
            }
            cache.entries.push(entry);
        }
        if cache.entries.len() != declared {
            return Err(EpochCheckpointError::CountMismatch {
                declared,
                found: cache.entries.len(),
            });
        }
        Ok(cache)
    }

    fn debug_check(&self) {
        debug_assert!(
            self.entries.windows(2).all(|pair| {
                pair[0].epoch < pair[1].epoch && pair[0].start_offset < pair[1].start_offset
            }),
            "epoch entries increase in epoch and start offset: {:?}",
            self.entries
        );
    }
}

/// One `<epoch> <start offset>` line, both non-negative.
fn parse_entry(text: &str) -> Option<EpochEntry> {
    let mut fields = text.split_whitespace();
    let epoch: i32 = fields.next()?.parse().ok()?;
    let start_offset: i64 = fields.next()?.parse().ok()?;
    if fields.next().is_some() || epoch < 0 || start_offset < 0 {
        return None;
    }
    Some(EpochEntry {
        epoch,
        start_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cache(entries: &[(i32, i64)]) -> EpochCache {
        let mut cache = EpochCache::new();
        for &(epoch, start_offset) in entries {
            assert!(cache.assign(epoch, start_offset));
        }
        cache
    }

    fn pairs(cache: &EpochCache) -> Vec<(i32, i64)> {
        cache
            .entries()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    }

    #[test]
    fn assign_appends_new_epochs_and_ignores_old_ones() {
        let mut epochs = EpochCache::new();
        assert!(epochs.assign(1, 0));
        assert!(!epochs.assign(1, 5), "the same epoch again changes nothing");
        assert!(!epochs.assign(0, 7), "an older epoch is ignored");
        assert!(
            !epochs.assign(-1, 9),
            "batches without an epoch are ignored"
        );
        assert!(epochs.assign(3, 10));
        assert_eq!(pairs(&epochs), vec![(1, 0), (3, 10)]);
        assert_eq!(
            epochs.latest(),
            Some(EpochEntry {
                epoch: 3,
                start_offset: 10
            })
        );
    }

    #[test]
    fn assign_removes_entries_at_or_after_the_new_start() {
        let mut epochs = cache(&[(1, 0), (2, 10), (3, 20)]);
        assert!(epochs.assign(5, 10));
        assert_eq!(pairs(&epochs), vec![(1, 0), (5, 10)]);
        assert!(epochs.assign(6, 0));
        assert_eq!(pairs(&epochs), vec![(6, 0)]);
    }

    #[test]
    fn truncate_from_end_drops_entries_starting_at_or_after_the_end() {
        let mut epochs = cache(&[(1, 0), (2, 10), (3, 20)]);
        assert!(!epochs.truncate_from_end(25));
        assert!(epochs.truncate_from_end(20));
        assert_eq!(pairs(&epochs), vec![(1, 0), (2, 10)]);
        assert!(epochs.truncate_from_end(5));
        assert_eq!(pairs(&epochs), vec![(1, 0)]);
        assert!(epochs.truncate_from_end(0));
        assert!(epochs.is_empty());
    }

    #[test]
    fn truncate_from_start_moves_the_first_kept_entry_up() {
        let mut epochs = cache(&[(1, 0), (2, 10), (3, 20)]);
        assert!(epochs.truncate_from_start(15));
        assert_eq!(pairs(&epochs), vec![(2, 15), (3, 20)]);
        assert!(!epochs.truncate_from_start(15));
        assert!(epochs.truncate_from_start(20));
        assert_eq!(pairs(&epochs), vec![(3, 20)]);
        assert!(epochs.truncate_from_start(30));
        assert_eq!(pairs(&epochs), vec![(3, 30)]);
        let mut later = cache(&[(4, 50)]);
        assert!(!later.truncate_from_start(10), "nothing starts before 10");
    }

    #[test]
    fn end_offset_for_follows_kafka() {
        let epochs = cache(&[(1, 0), (3, 10), (5, 20)]);
        assert_eq!(epochs.end_offset_for(5, 42), (5, 42), "latest: the LEO");
        assert_eq!(epochs.end_offset_for(3, 42), (3, 20));
        assert_eq!(
            epochs.end_offset_for(4, 42),
            (3, 20),
            "unknown: the one below"
        );
        assert_eq!(epochs.end_offset_for(1, 42), (1, 10));
        assert_eq!(epochs.end_offset_for(2, 42), (1, 10));
        assert_eq!(epochs.end_offset_for(6, 42), (-1, -1), "above the latest");
        assert_eq!(epochs.end_offset_for(-1, 42), (-1, -1));
        let trimmed = cache(&[(3, 10), (5, 20)]);
        assert_eq!(trimmed.end_offset_for(2, 42), (2, 10), "below the first");
        assert_eq!(EpochCache::new().end_offset_for(0, 42), (-1, -1));
    }

    #[test]
    fn checkpoint_text_is_kafkas_format() {
        let epochs = cache(&[(0, 0), (3, 150)]);
        let text = epochs.encode();
        assert_eq!(text, "0\n2\n0 0\n3 150\n");
        assert_eq!(EpochCache::decode(&text), Ok(epochs));
        assert_eq!(EpochCache::decode("0\n0\n"), Ok(EpochCache::new()));
    }

    #[test]
    fn decode_refuses_malformed_text() {
        let bad = [
            "",
            "1\n0\n",
            "0\n",
            "0\nx\n",
            "0\n2\n0 0\n",
            "0\n1\n0 0\n1 5\n",
            "0\n1\n0\n",
            "0\n1\n0 0 0\n",
            "0\n1\na b\n",
            "0\n1\n-1 0\n",
            "0\n2\n1 0\n1 5\n",
            "0\n2\n1 5\n2 5\n",
            "0\n2\n2 5\n1 9\n",
        ];
        for text in bad {
            assert!(EpochCache::decode(text).is_err(), "{text:?} was accepted");
        }
    }

    /// A model of Kafka's cache as a plain list, each operation written the obvious way.
    fn model_end_offset(entries: &[(i32, i64)], requested: i32, leo: i64) -> (i32, i64) {
        if requested == UNDEFINED_EPOCH {
            return (-1, -1);
        }
        if entries.last().map(|e| e.0) == Some(requested) {
            return (requested, leo);
        }
        let higher = entries.iter().find(|e| e.0 > requested);
        let floor = entries.iter().rev().find(|e| e.0 <= requested);
        match (floor, higher) {
            (_, None) => (-1, -1),
            (None, Some(h)) => (requested, h.1),
            (Some(f), Some(h)) => (f.0, h.1),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Assign(i32, i64),
        TruncateEnd(i64),
        TruncateStart(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (-1i32..30, -1i64..200).prop_map(|(e, o)| Op::Assign(e, o)),
            1 => (0i64..200).prop_map(Op::TruncateEnd),
            1 => (0i64..200).prop_map(Op::TruncateStart),
        ]
    }

    proptest! {
        #[test]
        fn the_cache_stays_increasing_and_answers_like_the_model(
            ops in proptest::collection::vec(op(), 0..40),
            requested in -1i32..32,
            leo in 0i64..250,
        ) {
            let mut epochs = EpochCache::new();
            let mut model: Vec<(i32, i64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Assign(e, o) => {
                        let takes = e >= 0 && o >= 0 && model.last().is_none_or(|l| e > l.0);
                        if takes {
                            model.retain(|m| m.1 < o);
                            model.push((e, o));
                        }
                        prop_assert_eq!(epochs.assign(e, o), takes);
                    }
                    Op::TruncateEnd(end) => {
                        model.retain(|m| m.1 < end);
                        epochs.truncate_from_end(end);
                    }
                    Op::TruncateStart(start) => {
                        if let Some(last_before) = model.iter().rev().find(|m| m.1 <= start).copied() {
                            model.retain(|m| m.1 > start);
                            model.insert(0, (last_before.0, start));
                        }
                        epochs.truncate_from_start(start);
                    }
                }
                let entries = epochs.entries();
                let increasing = entries.windows(2).all(|p| {
                    p[0].epoch < p[1].epoch && p[0].start_offset < p[1].start_offset
                });
                prop_assert!(increasing);
                prop_assert_eq!(pairs(&epochs), model.clone());
            }
            prop_assert_eq!(
                epochs.end_offset_for(requested, leo),
                model_end_offset(&model, requested, leo)
            );
            prop_assert_eq!(EpochCache::decode(&epochs.encode()), Ok(epochs));
        }

        #[test]
        fn decode_never_panics(text in "[0-9 \\-\n]{0,40}") {
            let _ = EpochCache::decode(&text);
        }
    }
}
