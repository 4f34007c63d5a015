//! The quorum's log as raft-rs sees it (an in-memory [`LogView`]), and what a voter makes
//! durable ([`PersistBatch`]) and reads back after a restart ([`Recovered`]).
//!
//! The log is a snapshot (the metadata image at some applied index, encoded by
//! [`crate::MetadataImage::encode`]) followed by the entries after it. Both the in-memory view
//! and the disk follow one rule when a snapshot arrives: the entries after it are kept only
//! when the log holds the snapshot's last entry with the snapshot's term. By Raft's log
//! matching property everything after such an entry agrees with the leader; otherwise the
//! tail is stale and goes. A snapshot taken locally for compaction always matches, so it
//! drops only what it covers.
//!
//! Nothing here is protobuf: entries are stored as `(index, term, bytes)` where the bytes are
//! an encoded [`crate::RecordBatch`] (empty for a leader's no-op entry), so the disk is read
//! by our decoders only.

use raft::prelude::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

/// One log entry as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub index: u64,
    pub term: u64,
    /// An encoded [`crate::RecordBatch`]; empty for a leader's first (no-op) entry.
    pub data: Vec<u8>,
}

/// Raft's hard state: what a voter must never forget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardStateRecord {
    pub term: u64,
    /// The voter (raft id, host + 1) voted for in `term`; 0 for none.
    pub vote: u64,
    pub commit: u64,
}

/// The metadata image at log index `index` (of term `term`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub index: u64,
    pub term: u64,
    /// [`crate::MetadataImage::encode`]; empty for the empty log's snapshot (index 0).
    pub data: Vec<u8>,
}

/// What the driver must make durable, atomically and in `number` order, before it sends the
/// output's `send_after_persist` messages and feeds `Input::Persisted { number }`. Applied to
/// the disk in this order: the snapshot, then the entries (an entry at index `i` replaces the
/// entries from `i` on), then the hard state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersistBatch {
    pub number: u64,
    pub snapshot: Option<SnapshotRecord>,
    pub entries: Vec<LogEntry>,
    pub hard_state: Option<HardStateRecord>,
}

impl PersistBatch {
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty() && self.hard_state.is_none()
    }

    /// Folds a later batch into this one, so one output carries one batch.
    pub(crate) fn merge(&mut self, later: PersistBatch) {
        assert!(later.number >= self.number, "batches merge in order");
        self.number = later.number;
        if let Some(snapshot) = later.snapshot {
            // A snapshot from the leader only comes with the first ready of an input; a local
            // compaction snapshot covers only applied (so already durable) entries, which are
            // below every entry still waiting here.
            assert!(
                self.entries
                    .iter()
                    .all(|entry| entry.index > snapshot.index),
                "snapshot {} would cover entries of the same batch",
                snapshot.index
            );
            self.snapshot = Some(snapshot);
        }
        append(&mut self.entries, later.entries);
        if later.hard_state.is_some() {
            self.hard_state = later.hard_state;
        }
    }
}

/// What a voter read back from its disk: the batches whose `Persisted` was delivered, folded
/// with [`Recovered::absorb`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    pub hard_state: HardStateRecord,
    pub snapshot: SnapshotRecord,
    /// Contiguous, from `snapshot.index + 1`.
    pub entries: Vec<LogEntry>,
}

impl Recovered {
    /// Applies one durable batch, as a disk would.
    pub fn absorb(&mut self, batch: &PersistBatch) {
        if let Some(snapshot) = &batch.snapshot {
            if snapshot.index > self.snapshot.index {
                keep_tail_after(&mut self.entries, snapshot.index, snapshot.term, |e| {
                    (e.index, e.term)
                });
                self.snapshot = snapshot.clone();
            }
        }
        let first = batch
            .entries
            .iter()
            .position(|entry| entry.index > self.snapshot.index);
        if let Some(first) = first {
            append(&mut self.entries, batch.entries[first..].to_vec());
        }
        if let Some(hard_state) = batch.hard_state {
            self.hard_state = hard_state;
        }
        self.hard_state.commit = self.hard_state.commit.max(self.snapshot.index);
    }

    pub fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.snapshot.index, |e| e.index)
    }
}

/// Appends `new` to a contiguous log, replacing the entries from `new[0].index` on.
fn append(log: &mut Vec<LogEntry>, new: Vec<LogEntry>) {
    let Some(first) = new.first() else {
        return;
    };
    if let Some(start) = log.first().map(|e| e.index) {
        assert!(
            first.index >= start && first.index <= log.len() as u64 + start,
            "entry {} leaves a gap after {}..{}",
            first.index,
            start,
            start + log.len() as u64
        );
        log.truncate((first.index - start) as usize);
    }
    log.extend(new);
}

/// The snapshot rule of the module doc: after a snapshot at (`index`, `term`) the log keeps
/// only the entries after `index`, and only when it holds `index` with `term`.
fn keep_tail_after<T>(entries: &mut Vec<T>, index: u64, term: u64, key: impl Fn(&T) -> (u64, u64)) {
    let matches = entries.iter().any(|entry| key(entry) == (index, term));
    if matches {
        entries.retain(|entry| key(entry).0 > index);
    } else {
        entries.clear();
    }
}

/// raft-rs's view of the log: what was handed to the driver to persist (raft-rs tracks which
/// of it is durable), with the voters fixed.
pub struct LogView {
    conf_state: ConfState,
    hard_state: HardState,
    snapshot: SnapshotRecord,
    /// Contiguous, from `snapshot.index + 1`.
    entries: Vec<Entry>,
}

impl LogView {
    pub(crate) fn new(voters: Vec<u64>, recovered: &Recovered) -> Self {
        let mut hard_state = HardState::default();
        hard_state.term = recovered.hard_state.term;
        hard_state.vote = recovered.hard_state.vote;
        // A commit index is only a hint (it is learnt again from the leader); clamping it
        // keeps raft-rs's "commit within the log" check from failing on an odd disk.
        hard_state.commit = recovered
            .hard_state
            .commit
            .clamp(recovered.snapshot.index, recovered.last_index());
        Self {
            conf_state: ConfState::from((voters, vec![])),
            hard_state,
            snapshot: recovered.snapshot.clone(),
            entries: recovered.entries.iter().map(to_raft_entry).collect(),
        }
    }

    pub(crate) fn snapshot_record(&self) -> &SnapshotRecord {
        &self.snapshot
    }

    pub(crate) fn raft_entries(&self) -> &[Entry] {
        &self.entries
    }

    fn first(&self) -> u64 {
        self.snapshot.index + 1
    }

    fn last(&self) -> u64 {
        self.entries.last().map_or(self.snapshot.index, |e| e.index)
    }

    pub(crate) fn append(&mut self, new: &[Entry]) {
        let Some(first) = new.first() else {
            return;
        };
        assert!(
            first.index > self.snapshot.index && first.index <= self.last() + 1,
            "append at {} to a log of {}..={}",
            first.index,
            self.first(),
            self.last()
        );
        self.entries
            .truncate((first.index - self.snapshot.index - 1) as usize);
        self.entries.extend_from_slice(new);
    }

    pub(crate) fn set_hard_state(&mut self, hard_state: &HardState) {
        self.hard_state = hard_state.clone();
    }

    /// Installs a snapshot (from the leader, or taken here to compact).
    pub(crate) fn apply_snapshot(&mut self, snapshot: SnapshotRecord) {
        assert!(
            snapshot.index >= self.snapshot.index,
            "snapshots only move forward"
        );
        keep_tail_after(&mut self.entries, snapshot.index, snapshot.term, |e| {
            (e.index, e.term)
        });
        self.hard_state.commit = self.hard_state.commit.max(snapshot.index);
        self.hard_state.term = self.hard_state.term.max(snapshot.term);
        self.snapshot = snapshot;
    }
}

pub(crate) fn to_raft_entry(entry: &LogEntry) -> Entry {
    Entry {
        entry_type: EntryType::EntryNormal,
        index: entry.index,
        term: entry.term,
        data: bytes::Bytes::copy_from_slice(&entry.data),
        ..Default::default()
    }
}

pub(crate) fn to_log_entry(entry: &Entry) -> LogEntry {
    LogEntry {
        index: entry.index,
        term: entry.term,
        data: entry.data.to_vec(),
    }
}

impl raft::Storage for LogView {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        // raft-rs's contract: it never asks past the end.
        assert!(
            high <= self.last() + 1,
            "entries to {high} past {}",
            self.last()
        );
        let offset = self.first();
        let mut entries = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if index < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(index - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snapshot = Snapshot::default();
        snapshot.data = bytes::Bytes::copy_from_slice(&self.snapshot.data);
        let metadata = snapshot.mut_metadata();
        metadata.index = self.snapshot.index;
        metadata.term = self.snapshot.term;
        metadata.set_conf_state(self.conf_state.clone());
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> LogEntry {
        LogEntry {
            index,
            term,
            data: vec![],
        }
    }

    #[test]
    fn a_disk_replaces_conflicting_entries_and_keeps_a_matching_tail() {
        let mut disk = Recovered::default();
        disk.absorb(&PersistBatch {
            number: 1,
            entries: (1..=5).map(|i| entry(i, 1)).collect(),
            ..Default::default()
        });
        disk.absorb(&PersistBatch {
            number: 2,
            entries: vec![entry(4, 2)],
            ..Default::default()
        });
        assert_eq!(disk.last_index(), 4);
        disk.absorb(&PersistBatch {
            number: 3,
            snapshot: Some(SnapshotRecord {
                index: 3,
                term: 1,
                data: vec![],
            }),
            ..Default::default()
        });
        assert_eq!(disk.entries, vec![entry(4, 2)]);
        // A snapshot whose last entry this log does not hold replaces the whole log.
        disk.absorb(&PersistBatch {
            number: 4,
            snapshot: Some(SnapshotRecord {
                index: 4,
                term: 3,
                data: vec![],
            }),
            ..Default::default()
        });
        assert!(disk.entries.is_empty());
        assert_eq!(disk.hard_state.commit, 4);
    }
}
