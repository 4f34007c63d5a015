//! The durable metadata log of one controller: Raft's entries, its hard state (term, vote,
//! commit index) and the latest snapshot, in `DATA_DIR/cluster-metadata/`.
//!
//! `raft.log` is append-only: a sequence of frames, each
//! `[length: u32 LE][crc32c: u32 LE][kind: u8][body]`, the CRC over kind and body, the length
//! counting both. Kinds: an entry (index u64, term u64, data), a hard state (term u64, vote u64,
//! commit u64), and a truncation (every entry from an index on is void: Raft overwrote an
//! uncommitted tail). [`MetadataLog::sync`] makes everything appended durable (fdatasync); the
//! quorum counts a vote or an entry only after that. Opening reads the frames in order and
//! stops at the first that is short or fails its CRC: a crash mid-append leaves a torn tail,
//! which is cut off (it was never synced, so never counted).
//!
//! `snapshot` holds `[crc32c: u32 LE][index u64][term u64][data]`, replaced whole (temporary
//! file, fsync, rename). Saving a snapshot compacts `raft.log` to the entries after it, the
//! same way, so replay at start is bounded by the quorum's compaction interval. The log keeps
//! those entries in memory too (the quorum's own [`Recovered`], folded batch by batch with
//! `Recovered::absorb`), which is what it rewrites. The byte layout is also
//! drawn in `docs/metadata-log.md`.
//!
//! All calls block: the controller runs on its own thread, never on a shard's executor.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ringlog_cluster::log::{HardStateRecord, SnapshotRecord};
use ringlog_cluster::quorum::{LogEntry, PersistBatch, Recovered};
use thiserror::Error;

/// Directory of the metadata log under the data directory.
pub const METADATA_DIR: &str = "cluster-metadata";
const LOG_FILE: &str = "raft.log";
const SNAPSHOT_FILE: &str = "snapshot";
/// Largest frame accepted on reading: a metadata entry is far smaller, so a bigger length is
/// damage, not data.
const FRAME_BYTES_MAX: usize = 16 << 20;
const FRAME_HEADER_BYTES: usize = 8;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_TRUNCATE: u8 = 3;

#[derive(Debug, Error)]
pub enum MetadataLogError {
    #[error("metadata log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("metadata snapshot {path} is damaged (its CRC does not match)")]
    DamagedSnapshot { path: PathBuf },
    #[error("metadata log {path}: entry {index} does not follow {expected} (the log is damaged)")]
    Gap {
        path: PathBuf,
        index: u64,
        expected: u64,
    },
}

/// One controller's durable log; see the module doc.
pub struct MetadataLog {
    dir: PathBuf,
    file: File,
    /// What is on disk (after the last sync): what a restart would recover.
    durable: Recovered,
    /// Bytes of a torn tail cut off at open.
    torn_bytes: u64,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> MetadataLogError + '_ {
    move |source| MetadataLogError::Io {
        path: path.to_owned(),
        source,
    }
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let length = u32::try_from(1 + body.len()).expect("metadata frames are small");
    let mut crc = crc32c::crc32c(&[kind]);
    crc = crc32c::crc32c_append(crc, body);
    let mut bytes = Vec::with_capacity(FRAME_HEADER_BYTES + 1 + body.len());
    bytes.extend_from_slice(&length.to_le_bytes());
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.push(kind);
    bytes.extend_from_slice(body);
    bytes
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let slice = bytes.get(at..at + 8)?;
    Some(u64::from_le_bytes(slice.try_into().ok()?))
}

fn entry_frame(entry: &LogEntry) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + entry.data.len());
    body.extend_from_slice(&entry.index.to_le_bytes());
    body.extend_from_slice(&entry.term.to_le_bytes());
    body.extend_from_slice(&entry.data);
    frame(KIND_ENTRY, &body)
}

fn hard_state_frame(state: HardStateRecord) -> Vec<u8> {
    let body: Vec<u8> = [state.term, state.vote, state.commit]
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    frame(KIND_HARD_STATE, &body)
}

/// The frames of `bytes` in order, as (kind, body), and how many bytes they span: reading stops
/// at the first frame that is short, oversized or fails its CRC.
fn frames(bytes: &[u8]) -> (Vec<(u8, &[u8])>, usize) {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER_BYTES) {
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if length == 0 || length > FRAME_BYTES_MAX {
            break;
        }
        let start = at + FRAME_HEADER_BYTES;
        let Some(content) = bytes.get(start..start + length) else {
            break;
        };
        if crc32c::crc32c(content) != crc {
            break;
        }
        found.push((content[0], &content[1..]));
        at = start + length;
    }
    (found, at)
}

impl MetadataLog {
    /// Opens (creating if new) the metadata log under `data_dir` and recovers it.
    pub fn open(data_dir: &Path) -> Result<Self, MetadataLogError> {
        let dir = data_dir.join(METADATA_DIR);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let mut durable = Recovered {
            snapshot: read_snapshot(&dir)?.unwrap_or_default(),
            ..Recovered::default()
        };
        let path = dir.join(LOG_FILE);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes).map_err(io_error(&path))?;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(MetadataLogError::Io { path, source }),
        }
        let (found, valid_bytes) = frames(&bytes);
        let after = durable.snapshot.index;
        for (kind, body) in found {
            match kind {
                KIND_ENTRY => {
                    let (Some(index), Some(term)) = (u64_at(body, 0), u64_at(body, 8)) else {
                        break;
                    };
                    if index <= after {
                        continue;
                    }
                    durable.entries.retain(|entry| entry.index < index);
                    let expected = durable.entries.last().map_or(after + 1, |e| e.index + 1);
                    if index != expected {
                        return Err(MetadataLogError::Gap {
                            path,
                            index,
                            expected,
                        });
                    }
                    durable.entries.push(LogEntry {
                        index,
                        term,
                        data: body[16..].to_vec(),
                    });
                }
                KIND_HARD_STATE => {
                    let (Some(term), Some(vote), Some(commit)) =
                        (u64_at(body, 0), u64_at(body, 8), u64_at(body, 16))
                    else {
                        break;
                    };
                    durable.hard_state = HardStateRecord { term, vote, commit };
                }
                KIND_TRUNCATE => {
                    let Some(from) = u64_at(body, 0) else {
                        break;
                    };
                    durable.entries.retain(|entry| entry.index < from);
                }
                // A kind this build does not know: written by a newer one; stop reading here
                // rather than guess.
                _ => break,
            }
        }
        // Cut the torn tail now, so what is appended next follows valid frames.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let torn_bytes = (bytes.len() - valid_bytes) as u64;
        if torn_bytes > 0 {
            file.set_len(valid_bytes as u64).map_err(io_error(&path))?;
            file.sync_data().map_err(io_error(&path))?;
        }
        Ok(Self {
            dir,
            file,
            durable,
            torn_bytes,
        })
    }

    /// What the log held when opened, folded with every batch persisted since.
    pub fn recovered(&self) -> &Recovered {
        &self.durable
    }

    /// Bytes of a torn tail cut off when the log was opened.
    pub fn torn_bytes(&self) -> u64 {
        self.torn_bytes
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Makes `batch` durable (fdatasync, or the replace-and-fsync of a snapshot) before it
    /// returns: the quorum may then count it. In order: the snapshot, the entries (one at an
    /// index already held replaces it and everything after), the hard state.
    pub fn persist(&mut self, batch: &PersistBatch) -> Result<(), MetadataLogError> {
        if batch.is_empty() {
            return Ok(());
        }
        let last_index = self
            .durable
            .entries
            .last()
            .map_or(self.durable.snapshot.index, |entry| entry.index);
        self.durable.absorb(batch);
        if batch.snapshot.is_some() {
            return self.rewrite();
        }
        let mut bytes = Vec::new();
        if let Some(first) = batch.entries.first() {
            if first.index <= last_index {
                bytes.extend(frame(KIND_TRUNCATE, &first.index.to_le_bytes()));
            }
        }
        for entry in &batch.entries {
            bytes.extend(entry_frame(entry));
        }
        if let Some(state) = batch.hard_state {
            bytes.extend(hard_state_frame(state));
        }
        let path = self.log_path();
        self.file.write_all(&bytes).map_err(io_error(&path))?;
        self.file.sync_data().map_err(io_error(&path))
    }

    /// Writes the snapshot, then the log as the hard state and the entries after the snapshot,
    /// each replaced whole. A crash between the two leaves the new snapshot and the old log,
    /// whose entries it covers are skipped at open.
    fn rewrite(&mut self) -> Result<(), MetadataLogError> {
        let snapshot = &self.durable.snapshot;
        let mut body = Vec::with_capacity(16 + snapshot.data.len());
        body.extend_from_slice(&snapshot.index.to_le_bytes());
        body.extend_from_slice(&snapshot.term.to_le_bytes());
        body.extend_from_slice(&snapshot.data);
        let mut contents = crc32c::crc32c(&body).to_le_bytes().to_vec();
        contents.extend_from_slice(&body);
        crate::broker::durable::replace_file(&self.dir, SNAPSHOT_FILE, &contents)
            .map_err(io_error(&self.dir.join(SNAPSHOT_FILE)))?;
        let mut log = hard_state_frame(self.durable.hard_state);
        for entry in &self.durable.entries {
            log.extend(entry_frame(entry));
        }
        crate::broker::durable::replace_file(&self.dir, LOG_FILE, &log)
            .map_err(io_error(&self.log_path()))?;
        let path = self.log_path();
        self.file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        Ok(())
    }
}

fn read_snapshot(dir: &Path) -> Result<Option<SnapshotRecord>, MetadataLogError> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(MetadataLogError::Io { path, source }),
    };
    let damaged = || MetadataLogError::DamagedSnapshot { path: path.clone() };
    let crc = bytes
        .get(0..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(damaged)?;
    let body = &bytes[4..];
    if crc32c::crc32c(body) != crc {
        return Err(damaged());
    }
    let (Some(index), Some(term)) = (u64_at(body, 0), u64_at(body, 8)) else {
        return Err(damaged());
    };
    Ok(Some(SnapshotRecord {
        index,
        term,
        data: body[16..].to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> LogEntry {
        LogEntry {
            index,
            term,
            data: format!("record {index}@{term}").into_bytes(),
        }
    }

    fn batch(number: u64, entries: Vec<LogEntry>, state: Option<HardStateRecord>) -> PersistBatch {
        PersistBatch {
            number,
            snapshot: None,
            entries,
            hard_state: state,
        }
    }

    #[test]
    fn entries_and_hard_state_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = MetadataLog::open(dir.path()).expect("open");
        assert_eq!(log.recovered(), &Recovered::default());
        let state = HardStateRecord {
            term: 2,
            vote: 3,
            commit: 2,
        };
        log.persist(&batch(1, vec![entry(1, 1), entry(2, 1), entry(3, 1)], None))
            .expect("persist");
        // A new leader overwrote the uncommitted entry 3.
        log.persist(&batch(2, vec![entry(3, 2), entry(4, 2)], Some(state)))
            .expect("overwrite");
        let expected = log.recovered().clone();
        drop(log);
        let log = MetadataLog::open(dir.path()).expect("reopen");
        assert_eq!(log.recovered(), &expected);
        assert_eq!(log.recovered().hard_state, state);
        assert_eq!(
            log.recovered().entries,
            vec![entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)]
        );
        assert_eq!(log.torn_bytes(), 0);
    }

    #[test]
    fn a_torn_tail_is_cut_at_every_length() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(METADATA_DIR).join(LOG_FILE);
        let mut log = MetadataLog::open(dir.path()).expect("open");
        log.persist(&batch(1, vec![entry(1, 1)], None))
            .expect("persist");
        let synced = std::fs::metadata(&path).expect("stat").len();
        log.persist(&batch(2, vec![entry(2, 1)], None))
            .expect("persist");
        drop(log);
        let full = std::fs::read(&path).expect("read");
        for cut in synced as usize..full.len() {
            std::fs::write(&path, &full[..cut]).expect("tear");
            let mut log = MetadataLog::open(dir.path()).expect("recovers");
            assert_eq!(log.recovered().entries, vec![entry(1, 1)], "cut at {cut}");
            assert_eq!(log.torn_bytes(), cut as u64 - synced);
            // Appending after the cut tail continues the log.
            log.persist(&batch(2, vec![entry(2, 1)], None))
                .expect("persist");
            drop(log);
            let again = MetadataLog::open(dir.path()).expect("reopen");
            assert_eq!(again.recovered().entries, vec![entry(1, 1), entry(2, 1)]);
        }
        // A flipped bit in the last frame: the same, never a misread entry.
        let mut flipped = full.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(&path, &flipped).expect("flip");
        let log = MetadataLog::open(dir.path()).expect("recovers");
        assert_eq!(log.recovered().entries, vec![entry(1, 1)]);
    }

    #[test]
    fn a_snapshot_compacts_the_log_and_bounds_replay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut log = MetadataLog::open(dir.path()).expect("open");
        let state = HardStateRecord {
            term: 1,
            vote: 1,
            commit: 10,
        };
        log.persist(&batch(
            1,
            (1..=10).map(|i| entry(i, 1)).collect(),
            Some(state),
        ))
        .expect("persist");
        let snapshot = SnapshotRecord {
            index: 8,
            term: 1,
            data: b"image at 8".to_vec(),
        };
        let with_snapshot = PersistBatch {
            number: 2,
            snapshot: Some(snapshot.clone()),
            entries: Vec::new(),
            hard_state: None,
        };
        log.persist(&with_snapshot).expect("snapshot");
        log.persist(&batch(3, vec![entry(11, 2)], None))
            .expect("after");
        let expected = log.recovered().clone();
        drop(log);
        let log = MetadataLog::open(dir.path()).expect("reopen");
        assert_eq!(log.recovered(), &expected);
        assert_eq!(log.recovered().snapshot, snapshot);
        assert_eq!(log.recovered().hard_state, state);
        assert_eq!(
            log.recovered().entries,
            vec![entry(9, 1), entry(10, 1), entry(11, 2)]
        );
        // A damaged snapshot is an error, not an empty cluster.
        let path = dir.path().join(METADATA_DIR).join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[10] ^= 0xff;
        std::fs::write(&path, bytes).expect("damage");
        assert!(matches!(
            MetadataLog::open(dir.path()),
            Err(MetadataLogError::DamagedSnapshot { .. })
        ));
    }
}
