//! The partition's `leader-epoch-checkpoint`: the leader-epoch cache
//! ([`ringlog_replication::epochs::EpochCache`]) in Kafka's text format, so a follower can answer
//! OffsetForLeaderEpoch after a restart without reading its log.
//!
//! The file is replaced atomically, like `recovery.checkpoint`: written to a temporary file,
//! synced, renamed, directory synced. These are blocking calls on the shard's thread, as the
//! recovery checkpoint's are; they happen only when an epoch starts, a truncation or retention
//! removes entries, and at open, never per append.
//!
//! The log writes the file *before* queueing a batch that needs the new entry, so the file is
//! never behind the log; it may be ahead (a crash before the batch landed, a truncation whose
//! file update did not happen), which opening repairs by dropping entries at or after the
//! recovered log end offset.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use ringlog_replication::epochs::{EpochCache, EpochCheckpointError};
use thiserror::Error;

use crate::checkpoint::sync_dir;
use crate::error::IoFailure;

pub const LEADER_EPOCH_FILE: &str = "leader-epoch-checkpoint";

/// Why the file on disk cannot be used; opening rebuilds the cache from the log then.
#[derive(Debug, Error)]
pub enum EpochFileError {
    #[error("reading {LEADER_EPOCH_FILE}: {0}")]
    Io(std::io::Error),
    #[error("{LEADER_EPOCH_FILE} is not UTF-8")]
    NotText,
    #[error("{LEADER_EPOCH_FILE} is malformed: {0}")]
    Malformed(EpochCheckpointError),
}

/// The cache stored in `dir`: `Ok(None)` when there is no file.
pub fn read(dir: &Path) -> Result<Option<EpochCache>, EpochFileError> {
    let bytes = match fs::read(dir.join(LEADER_EPOCH_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EpochFileError::Io(e)),
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| EpochFileError::NotText)?;
    EpochCache::decode(text)
        .map(Some)
        .map_err(EpochFileError::Malformed)
}

/// Replaces the file in `dir` with `cache`, durably.
pub fn write(dir: &Path, cache: &EpochCache) -> Result<(), IoFailure> {
    let path = dir.join(LEADER_EPOCH_FILE);
    let tmp = dir.join(format!("{LEADER_EPOCH_FILE}.tmp"));
    let io = |op, e| IoFailure::new(op, &path, e);
    let mut file = File::create(&tmp).map_err(|e| io("creating", e))?;
    file.write_all(cache.encode().as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(|e| io("writing", e))?;
    fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reports_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(read(dir.path()), Ok(None)));
        let mut cache = EpochCache::new();
        cache.assign(2, 0);
        cache.assign(4, 17);
        write(dir.path(), &cache).expect("write");
        assert_eq!(read(dir.path()).expect("read"), Some(cache));
        fs::write(dir.path().join(LEADER_EPOCH_FILE), "0\n2\n2 0\n").expect("write");
        assert!(matches!(
            read(dir.path()),
            Err(EpochFileError::Malformed(_))
        ));
        fs::write(dir.path().join(LEADER_EPOCH_FILE), [0xff, 0xfe]).expect("write");
        assert!(matches!(read(dir.path()), Err(EpochFileError::NotText)));
    }
}
