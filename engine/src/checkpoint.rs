//! The recovery checkpoint and the clean-shutdown marker of a partition directory.
//!
//! `recovery.checkpoint` (48 bytes, big-endian) records a point up to which the log is known to
//! be durable: every byte of segment `segment_base_offset` before `segment_position` was
//! fdatasync'ed and its first `index_entries`/`time_index_entries` index entries msync'ed, and
//! every older segment is sealed. Recovery after a crash trusts that prefix and scans only what
//! comes after it.
//!
//! ```text
//!  0  4  magic "RLCP"
//!  4  4  version (1)
//!  8  8  log_start_offset
//! 16  8  segment_base_offset
//! 24  8  segment_position
//! 32  8  next_offset            (the offset at segment_position)
//! 40  4  index_entries
//! 44  4  time_index_entries
//! 48  4  crc32c of bytes 0..48
//! ```
//! It is replaced atomically: written to a temporary file, synced, renamed, directory synced.
//! `.clean_shutdown` exists only between a clean close and the next open; its presence means
//! the checkpoint covers the whole log and nothing needs scanning.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::IoFailure;

pub const CHECKPOINT_FILE: &str = "recovery.checkpoint";
pub const CLEAN_SHUTDOWN_FILE: &str = ".clean_shutdown";
const MAGIC: &[u8; 4] = b"RLCP";
const VERSION: u32 = 1;
const BYTES: usize = 52;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub log_start_offset: i64,
    pub segment_base_offset: i64,
    pub segment_position: u64,
    pub next_offset: i64,
    pub index_entries: u32,
    pub time_index_entries: u32,
}

impl Checkpoint {
    fn encode(&self) -> [u8; BYTES] {
        let mut out = [0u8; BYTES];
        out[0..4].copy_from_slice(MAGIC);
        out[4..8].copy_from_slice(&VERSION.to_be_bytes());
        out[8..16].copy_from_slice(&self.log_start_offset.to_be_bytes());
        out[16..24].copy_from_slice(&self.segment_base_offset.to_be_bytes());
        out[24..32].copy_from_slice(&self.segment_position.to_be_bytes());
        out[32..40].copy_from_slice(&self.next_offset.to_be_bytes());
        out[40..44].copy_from_slice(&self.index_entries.to_be_bytes());
        out[44..48].copy_from_slice(&self.time_index_entries.to_be_bytes());
        let crc = crc32c::crc32c(&out[..48]);
        out[48..52].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != BYTES || &bytes[0..4] != MAGIC {
            return None;
        }
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
        let i64_at = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        if u32_at(4) != VERSION || u32_at(48) != crc32c::crc32c(&bytes[..48]) {
            return None;
        }
        Some(Self {
            log_start_offset: i64_at(8),
            segment_base_offset: i64_at(16),
            segment_position: i64_at(24) as u64,
            next_offset: i64_at(32),
            index_entries: u32_at(40),
            time_index_entries: u32_at(44),
        })
    }

    /// The checkpoint in `dir`, or `None` if it is missing or fails its CRC (then recovery
    /// scans everything).
    pub fn read(dir: &Path) -> Option<Self> {
        fs::read(dir.join(CHECKPOINT_FILE))
            .ok()
            .and_then(|bytes| Self::decode(&bytes))
    }

    pub fn write(&self, dir: &Path) -> Result<(), IoFailure> {
        let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        let io = |op, e| IoFailure::new(op, dir.join(CHECKPOINT_FILE), e);
        let mut file = File::create(&tmp).map_err(|e| io("creating", e))?;
        file.write_all(&self.encode())
            .and_then(|()| file.sync_data())
            .map_err(|e| io("writing", e))?;
        fs::rename(&tmp, dir.join(CHECKPOINT_FILE)).map_err(|e| io("renaming", e))?;
        sync_dir(dir)
    }
}

pub fn sync_dir(dir: &Path) -> Result<(), IoFailure> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| IoFailure::new("syncing directory", dir, e))
}

pub fn has_clean_marker(dir: &Path) -> bool {
    dir.join(CLEAN_SHUTDOWN_FILE).exists()
}

pub fn write_clean_marker(dir: &Path) -> Result<(), IoFailure> {
    let path = dir.join(CLEAN_SHUTDOWN_FILE);
    File::create(&path)
        .and_then(|f| f.sync_all())
        .map_err(|e| IoFailure::new("creating", &path, e))?;
    sync_dir(dir)
}

/// Removes the marker durably: a crash after this open must not be mistaken for a clean stop.
pub fn remove_clean_marker(dir: &Path) -> Result<(), IoFailure> {
    let path = dir.join(CLEAN_SHUTDOWN_FILE);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoFailure::new("removing", &path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoint = Checkpoint {
            log_start_offset: 5,
            segment_base_offset: 100,
            segment_position: 8192,
            next_offset: 150,
            index_entries: 2,
            time_index_entries: 1,
        };
        checkpoint.write(dir.path()).expect("write");
        assert_eq!(Checkpoint::read(dir.path()), Some(checkpoint));
        let path = dir.path().join(CHECKPOINT_FILE);
        let mut bytes = fs::read(&path).expect("read");
        bytes[20] ^= 1;
        fs::write(&path, &bytes).expect("write");
        assert_eq!(Checkpoint::read(dir.path()), None);
    }
}
