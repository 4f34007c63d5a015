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
//! same way, so replay at start is bounded by the compaction interval. The byte layout is also
//! drawn in `docs/metadata-log.md`.
//!
//! All calls block: the controller runs on its own thread, never on a shard's executor.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

/// What a controller recovers at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, contiguous and in index order.
    pub entries: Vec<Entry>,
    /// Bytes of a torn tail cut off at open (0 after a clean stop).
    pub torn_bytes: u64,
}

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

pub struct MetadataLog {
    dir: PathBuf,
    file: File,
    /// Index of the last entry appended (or the snapshot's, when there is none after it).
    last_index: u64,
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

fn entry_body(entry: &Entry) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + entry.data.len());
    body.extend_from_slice(&entry.index.to_le_bytes());
    body.extend_from_slice(&entry.term.to_le_bytes());
    body.extend_from_slice(&entry.data);
    body
}

fn hard_state_body(state: HardState) -> Vec<u8> {
    [state.term, state.vote, state.commit]
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
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
    pub fn open(data_dir: &Path) -> Result<(Self, Recovered), MetadataLogError> {
        let dir = data_dir.join(METADATA_DIR);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let snapshot = read_snapshot(&dir)?;
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
        let mut recovered = Recovered {
            snapshot,
            torn_bytes: (bytes.len() - valid_bytes) as u64,
            ..Recovered::default()
        };
        let after = recovered.snapshot.as_ref().map_or(0, |s| s.index);
        for (kind, body) in found {
            match kind {
                KIND_ENTRY => {
                    let (Some(index), Some(term)) = (u64_at(body, 0), u64_at(body, 8)) else {
                        break;
                    };
                    if index <= after {
                        continue;
                    }
                    recovered.entries.retain(|entry| entry.index < index);
                    let expected = recovered.entries.last().map_or(after + 1, |e| e.index + 1);
                    if index != expected {
                        return Err(MetadataLogError::Gap {
                            path,
                            index,
                            expected,
                        });
                    }
                    recovered.entries.push(Entry {
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
                    recovered.hard_state = HardState { term, vote, commit };
                }
                KIND_TRUNCATE => {
                    let Some(from) = u64_at(body, 0) else {
                        break;
                    };
                    recovered.entries.retain(|entry| entry.index < from);
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
        if recovered.torn_bytes > 0 {
            file.set_len(valid_bytes as u64).map_err(io_error(&path))?;
            file.sync_data().map_err(io_error(&path))?;
        }
        let last_index = recovered
            .entries
            .last()
            .map(|entry| entry.index)
            .unwrap_or(after);
        Ok((
            Self {
                dir,
                file,
                last_index,
            },
            recovered,
        ))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Appends entries; an entry at or below the last one replaces it and everything after it
    /// (Raft overwriting an uncommitted tail). Durable after [`MetadataLog::sync`].
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), MetadataLogError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        if first.index <= self.last_index {
            bytes.extend(frame(KIND_TRUNCATE, &first.index.to_le_bytes()));
        }
        let mut expected = first.index;
        for entry in entries {
            assert_eq!(entry.index, expected, "entries appended in index order");
            expected += 1;
            bytes.extend(frame(KIND_ENTRY, &entry_body(entry)));
        }
        let path = self.log_path();
        self.file.write_all(&bytes).map_err(io_error(&path))?;
        self.last_index = expected - 1;
        Ok(())
    }

    pub fn set_hard_state(&mut self, state: HardState) -> Result<(), MetadataLogError> {
        let path = self.log_path();
        self.file
            .write_all(&frame(KIND_HARD_STATE, &hard_state_body(state)))
            .map_err(io_error(&path))
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<(), MetadataLogError> {
        let path = self.log_path();
        self.file.sync_data().map_err(io_error(&path))
    }

    /// Saves `snapshot` durably and compacts the log to `entries` (those after it) and `state`.
    pub fn save_snapshot(
        &mut self,
        snapshot: &Snapshot,
        state: HardState,
        entries: &[Entry],
    ) -> Result<(), MetadataLogError> {
        let mut contents = Vec::with_capacity(20 + snapshot.data.len());
        let mut body = Vec::with_capacity(16 + snapshot.data.len());
        body.extend_from_slice(&snapshot.index.to_le_bytes());
        body.extend_from_slice(&snapshot.term.to_le_bytes());
        body.extend_from_slice(&snapshot.data);
        contents.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        contents.extend_from_slice(&body);
        crate::broker::durable::replace_file(&self.dir, SNAPSHOT_FILE, &contents)
            .map_err(io_error(&self.dir.join(SNAPSHOT_FILE)))?;
        // The snapshot is durable: the entries it covers may go. A crash before the log is
        // replaced leaves the old log, whose covered entries are skipped at open.
        let mut log = frame(KIND_HARD_STATE, &hard_state_body(state));
        for entry in entries.iter().filter(|entry| entry.index > snapshot.index) {
            log.extend(frame(KIND_ENTRY, &entry_body(entry)));
        }
        crate::broker::durable::replace_file(&self.dir, LOG_FILE, &log)
            .map_err(io_error(&self.log_path()))?;
        let path = self.log_path();
        self.file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        self.last_index = entries
            .last()
            .map_or(snapshot.index, |entry| entry.index.max(snapshot.index));
        Ok(())
    }
}

fn read_snapshot(dir: &Path) -> Result<Option<Snapshot>, MetadataLogError> {
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
    Ok(Some(Snapshot {
        index,
        term,
        data: body[16..].to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("record {index}@{term}").into_bytes(),
        }
    }

    #[test]
    fn entries_and_hard_state_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut log, recovered) = MetadataLog::open(dir.path()).expect("open");
        assert_eq!(recovered, Recovered::default());
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .expect("append");
        let state = HardState {
            term: 2,
            vote: 3,
            commit: 2,
        };
        log.set_hard_state(state).expect("state");
        // A new leader overwrote the uncommitted entry 3.
        log.append(&[entry(3, 2), entry(4, 2)]).expect("overwrite");
        log.sync().expect("sync");
        drop(log);
        let (_, recovered) = MetadataLog::open(dir.path()).expect("reopen");
        assert_eq!(recovered.hard_state, state);
        assert_eq!(
            recovered.entries,
            vec![entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)]
        );
        assert_eq!(recovered.torn_bytes, 0);
    }

    #[test]
    fn a_torn_tail_is_cut_at_every_length() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut log, _) = MetadataLog::open(dir.path()).expect("open");
        log.append(&[entry(1, 1)]).expect("append");
        log.sync().expect("sync");
        let synced = std::fs::metadata(dir.path().join(METADATA_DIR).join(LOG_FILE))
            .expect("stat")
            .len();
        log.append(&[entry(2, 1)]).expect("append");
        drop(log);
        let path = dir.path().join(METADATA_DIR).join(LOG_FILE);
        let full = std::fs::read(&path).expect("read");
        for cut in synced as usize..full.len() {
            std::fs::write(&path, &full[..cut]).expect("tear");
            let (mut log, recovered) = MetadataLog::open(dir.path()).expect("recovers");
            assert_eq!(recovered.entries, vec![entry(1, 1)], "cut at {cut}");
            assert_eq!(recovered.torn_bytes, cut as u64 - synced);
            // Appending after the cut tail continues the log.
            log.append(&[entry(2, 1)]).expect("append");
            log.sync().expect("sync");
            drop(log);
            let (_, again) = MetadataLog::open(dir.path()).expect("reopen");
            assert_eq!(again.entries, vec![entry(1, 1), entry(2, 1)]);
        }
        // A flipped bit in the last frame: the same, never a misread entry.
        let mut flipped = full.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(&path, &flipped).expect("flip");
        let (_, recovered) = MetadataLog::open(dir.path()).expect("recovers");
        assert_eq!(recovered.entries, vec![entry(1, 1)]);
    }

    #[test]
    fn a_snapshot_compacts_the_log_and_bounds_replay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut log, _) = MetadataLog::open(dir.path()).expect("open");
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
        log.append(&entries).expect("append");
        let state = HardState {
            term: 1,
            vote: 1,
            commit: 10,
        };
        log.set_hard_state(state).expect("state");
        log.sync().expect("sync");
        let snapshot = Snapshot {
            index: 8,
            term: 1,
            data: b"image at 8".to_vec(),
        };
        log.save_snapshot(&snapshot, state, &entries)
            .expect("snapshot");
        log.append(&[entry(11, 2)]).expect("append after");
        log.sync().expect("sync");
        drop(log);
        let (_, recovered) = MetadataLog::open(dir.path()).expect("reopen");
        assert_eq!(recovered.snapshot, Some(snapshot));
        assert_eq!(recovered.hard_state, state);
        assert_eq!(
            recovered.entries,
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
