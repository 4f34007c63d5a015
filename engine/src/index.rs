//! Sparse offset and time indexes, memory-mapped with memmap2, entries as bytemuck `Pod` structs.
//!
//! The byte layout is Kafka's, big-endian, so operators' tools read it the same way:
//! `.index` entries are (relative offset u32, position u32), 8 bytes; `.timeindex` entries are
//! (timestamp i64, relative offset u32), 12 bytes. The entries have alignment 1 (byte arrays),
//! so a slice of them is a plain cast of the mapped bytes.
//!
//! Invariants: entries are appended in increasing relative offset and position (and
//! non-decreasing timestamp); only the first `len` entries are meaningful. The active
//! segment's index files are preallocated to their capacity; a sealed segment's are trimmed to
//! their entries. Which entries survive a crash is decided by recovery, not by this type.

use std::fs::{File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};
use memmap2::MmapMut;

/// One `.index` entry: the batch starting at `position` has base offset `base + relative`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq)]
pub struct OffsetEntry {
    relative_offset: [u8; 4],
    position: [u8; 4],
}

impl OffsetEntry {
    pub fn new(relative_offset: u32, position: u32) -> Self {
        Self {
            relative_offset: relative_offset.to_be_bytes(),
            position: position.to_be_bytes(),
        }
    }
    pub fn relative_offset(&self) -> u32 {
        u32::from_be_bytes(self.relative_offset)
    }
    pub fn position(&self) -> u32 {
        u32::from_be_bytes(self.position)
    }
}

impl std::fmt::Debug for OffsetEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(+{} @{})", self.relative_offset(), self.position())
    }
}

/// One `.timeindex` entry: no batch at or before the one at `base + relative` has a max
/// timestamp above `timestamp`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, PartialEq, Eq)]
pub struct TimeEntry {
    timestamp: [u8; 8],
    relative_offset: [u8; 4],
}

impl TimeEntry {
    pub fn new(timestamp: i64, relative_offset: u32) -> Self {
        Self {
            timestamp: timestamp.to_be_bytes(),
            relative_offset: relative_offset.to_be_bytes(),
        }
    }
    pub fn timestamp(&self) -> i64 {
        i64::from_be_bytes(self.timestamp)
    }
    pub fn relative_offset(&self) -> u32 {
        u32::from_be_bytes(self.relative_offset)
    }
}

impl std::fmt::Debug for TimeEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(ts {} +{})", self.timestamp(), self.relative_offset())
    }
}

/// A memory-mapped array of index entries backed by one file.
pub struct MmapIndex<E> {
    path: PathBuf,
    file: File,
    map: Option<MmapMut>,
    len: usize,
    _entry: PhantomData<E>,
}

impl<E: Pod> MmapIndex<E> {
    const ENTRY_BYTES: usize = std::mem::size_of::<E>();

    /// Opens (creating if needed) an index file, keeps its first `trusted_len` entries (clamped
    /// to what the file holds) and maps it with room for `capacity_bytes`.
    pub fn open(path: &Path, capacity_bytes: usize, trusted_len: usize) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let file_entries = file.metadata()?.len() as usize / Self::ENTRY_BYTES;
        let mut index = Self {
            path: path.to_path_buf(),
            file,
            map: None,
            len: trusted_len.min(file_entries),
            _entry: PhantomData,
        };
        index.resize_file(capacity_bytes.max(index.len * Self::ENTRY_BYTES))?;
        Ok(index)
    }

    /// Entries a sealed index file holds.
    pub fn file_entries(path: &Path) -> io::Result<usize> {
        Ok(std::fs::metadata(path)?.len() as usize / Self::ENTRY_BYTES)
    }

    fn resize_file(&mut self, bytes: usize) -> io::Result<()> {
        let bytes = bytes / Self::ENTRY_BYTES * Self::ENTRY_BYTES;
        self.map = None;
        self.file.set_len(bytes as u64)?;
        if bytes > 0 {
            // Allocate the blocks now: a store into a mapped page of a sparse file that needs
            // a block on a full disk is a SIGBUS, not an error. Failing here is an error.
            allocate(&self.file, bytes)?;
            // SAFETY: the file is private to this shard's partition directory; nothing else
            // truncates it while mapped (every resize drops the map first).
            self.map = Some(unsafe { MmapMut::map_mut(&self.file)? });
        }
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len() / Self::ENTRY_BYTES)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entries(&self) -> &[E] {
        match &self.map {
            Some(map) => bytemuck::cast_slice(&map[..self.len * Self::ENTRY_BYTES]),
            None => &[],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn last(&self) -> Option<E> {
        self.entries().last().copied()
    }

    /// Appends an entry; returns false (and keeps the index sparser) when it is full.
    pub fn push(&mut self, entry: E) -> bool {
        if self.len >= self.capacity() {
            return false;
        }
        let at = self.len * Self::ENTRY_BYTES;
        let Some(map) = self.map.as_mut() else {
            return false;
        };
        map[at..at + Self::ENTRY_BYTES].copy_from_slice(bytemuck::bytes_of(&entry));
        self.len += 1;
        true
    }

    /// Forgets every entry from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Writes the mapped entries back to the file (msync).
    pub fn flush(&self) -> io::Result<()> {
        match &self.map {
            Some(map) if self.len > 0 => map.flush_range(0, self.len * Self::ENTRY_BYTES),
            _ => Ok(()),
        }
    }

    /// Flushes and trims the file to exactly its entries, as a sealed segment keeps it.
    pub fn seal(&mut self) -> io::Result<()> {
        self.flush()?;
        self.resize_file(self.len * Self::ENTRY_BYTES)?;
        self.file.sync_all()
    }

    /// Gives a sealed index room to grow again (its segment became active).
    pub fn unseal(&mut self, capacity_bytes: usize) -> io::Result<()> {
        self.resize_file(capacity_bytes.max(self.len * Self::ENTRY_BYTES))
    }
}

fn allocate(file: &File, bytes: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len =
        libc::off_t::try_from(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: a plain syscall on a file descriptor this struct owns.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    // Filesystems without fallocate keep the sparse file; only space exhaustion is an error.
    match error.raw_os_error() {
        Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(error),
    }
}

impl MmapIndex<OffsetEntry> {
    /// The last entry at or before `relative_offset`: where a forward scan for it may start.
    pub fn floor(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let entries = self.entries();
        let after = entries.partition_point(|e| e.relative_offset() <= relative_offset);
        after.checked_sub(1).map(|i| entries[i])
    }

    /// The last entry at or before `position`.
    pub fn floor_position(&self, position: u32) -> Option<OffsetEntry> {
        let entries = self.entries();
        let after = entries.partition_point(|e| e.position() <= position);
        after.checked_sub(1).map(|i| entries[i])
    }
}

impl MmapIndex<TimeEntry> {
    /// The last entry whose timestamp is below `timestamp`: every batch up to it is older than
    /// `timestamp`, so the first batch at or after it is found by scanning forward from it.
    pub fn last_before(&self, timestamp: i64) -> Option<TimeEntry> {
        let entries = self.entries();
        let after = entries.partition_point(|e| e.timestamp() < timestamp);
        after.checked_sub(1).map(|i| entries[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.index");
        {
            let mut index = MmapIndex::<OffsetEntry>::open(&path, 80, 0).expect("open");
            for i in 0..10u32 {
                assert!(index.push(OffsetEntry::new(i * 10, i * 4096)));
            }
            assert!(!index.push(OffsetEntry::new(100, 1)), "full at capacity");
            assert_eq!(index.floor(35).map(|e| e.position()), Some(3 * 4096));
            assert_eq!(index.floor(0).map(|e| e.position()), Some(0));
            index.truncate(4);
            index.seal().expect("seal");
        }
        assert_eq!(
            MmapIndex::<OffsetEntry>::file_entries(&path).expect("len"),
            4
        );
        let index = MmapIndex::<OffsetEntry>::open(&path, 0, usize::MAX).expect("reopen");
        assert_eq!(index.len(), 4);
        assert_eq!(index.last().map(|e| e.relative_offset()), Some(30));
    }

    #[test]
    fn time_index_finds_last_entry_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.timeindex");
        let mut index = MmapIndex::<TimeEntry>::open(&path, 1200, 0).expect("open");
        for i in 0..5 {
            index.push(TimeEntry::new(100 * i, i as u32));
        }
        assert_eq!(index.last_before(250).map(|e| e.relative_offset()), Some(2));
        assert_eq!(index.last_before(0), None);
        assert_eq!(std::mem::size_of::<TimeEntry>(), 12);
        assert_eq!(std::mem::size_of::<OffsetEntry>(), 8);
    }
}
