//! Sparse offset and time indexes, memory-mapped with memmap2, entries as bytemuck `Pod` structs.
//!
//! The byte layout is Kafka's, big-endian, so operators' tools read it the same way:
//! `.index` entries are (relative offset u32, position u32), 8 bytes; `.timeindex` entries are
//! (timestamp i64, relative offset u32), 12 bytes. The entries have alignment 1 (byte arrays),
//! so a slice of them is a plain cast of the mapped bytes.
//!
//! Invariants: entries are appended in increasing relative offset and position (and
//! non-decreasing timestamp); only the first `len` entries are meaningful. Which entries
//! survive a crash is decided by recovery, not by this type.
//!
//! # Sizing: sparse, allocated as the entries grow
//! The active segment's index files are set to their capacity (`segment.index.bytes`) with
//! `ftruncate` and never fallocated whole, as Kafka does: an idle partition's indexes are holes
//! and cost no disk blocks, where fallocating them cost 25 MiB per partition (issue 17). A
//! sealed segment's files are trimmed to their entries.
//!
//! A store into a mapped page of a hole needs a block, and on a full disk that is a SIGBUS,
//! not an error. So before an entry is stored its bytes are allocated with `fallocate`, a step
//! ([`ALLOCATE_STEP_BYTES`]) at a time ahead of the entries: a full disk then makes `push`
//! return false (the index stays sparser, as when it is full), never a signal. A step is a
//! small blocking syscall, once per a few thousand entries (megabytes of log).
//!
//! The unused tail of the file (hole or allocated, after a crash possibly stale entries past
//! the trusted ones) is never read as entries: only the first `len` are, and recovery decides
//! `len`. Tools that read the whole file see the hole as zeros, as they saw the zeroed blocks
//! of a fallocated file.

use std::fs::{File, OpenOptions};
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};
use memmap2::MmapMut;

/// Bytes of an index file allocated at a time ahead of its entries: 2,048 offset entries,
/// about 8 MiB of log at Kafka's default `index.interval.bytes`.
pub const ALLOCATE_STEP_BYTES: usize = 16 << 10;

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
    /// The file's first `allocated_bytes` have blocks: entries may be stored there without a
    /// fault needing one. Reset to 0 by every resize (a re-fallocate of allocated blocks is
    /// cheap and asks for none), so it never claims more than is true.
    allocated_bytes: usize,
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
            allocated_bytes: 0,
            _entry: PhantomData,
        };
        index.resize_file(capacity_bytes.max(index.len * Self::ENTRY_BYTES))?;
        Ok(index)
    }

    /// Entries a sealed index file holds.
    pub fn file_entries(path: &Path) -> io::Result<usize> {
        Ok(std::fs::metadata(path)?.len() as usize / Self::ENTRY_BYTES)
    }

    /// Sets the file's length (growing leaves a hole: see "Sizing") and maps it.
    fn resize_file(&mut self, bytes: usize) -> io::Result<()> {
        let bytes = bytes / Self::ENTRY_BYTES * Self::ENTRY_BYTES;
        self.map = None;
        self.allocated_bytes = 0;
        self.file.set_len(bytes as u64)?;
        if bytes > 0 {
            // SAFETY: the file is private to this shard's partition directory; nothing else
            // truncates it while mapped (every resize drops the map first). Stores go only to
            // allocated bytes (`push`), so a hole never faults on a full disk.
            self.map = Some(unsafe { MmapMut::map_mut(&self.file)? });
        }
        Ok(())
    }

    /// Makes sure the file's first `end` bytes have blocks, allocating up to the next step
    /// boundary (within the mapped length). False when they cannot be allocated (a full disk).
    fn allocate_through(&mut self, end: usize) -> bool {
        if end <= self.allocated_bytes {
            return true;
        }
        let mapped_bytes = self.map.as_ref().map_or(0, |m| m.len());
        let target = end.next_multiple_of(ALLOCATE_STEP_BYTES).min(mapped_bytes);
        if target < end {
            return false;
        }
        // A failure is not reported: the index only stays sparser, and the full disk shows up
        // as an error on the log's own writes.
        if allocate(&self.file, self.allocated_bytes, target).is_err() {
            return false;
        }
        self.allocated_bytes = target;
        true
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

    /// Appends an entry; returns false (and keeps the index sparser) when it is full or its
    /// bytes cannot be allocated.
    pub fn push(&mut self, entry: E) -> bool {
        if self.len >= self.capacity() {
            return false;
        }
        let at = self.len * Self::ENTRY_BYTES;
        if !self.allocate_through(at + Self::ENTRY_BYTES) {
            return false;
        }
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

/// Allocates blocks for `[from, to)` of `file`, within its length (mode 0 never changes the
/// length of a file already that long, and leaves allocated blocks and their data alone).
fn allocate(file: &File, from: usize, to: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let too_big = |_: std::num::TryFromIntError| io::Error::from_raw_os_error(libc::EFBIG);
    let offset = libc::off_t::try_from(from).map_err(too_big)?;
    let len = libc::off_t::try_from(to - from).map_err(too_big)?;
    // SAFETY: a plain syscall on a file descriptor this struct owns.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) };
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

    /// An active index is set to its capacity but takes blocks only as entries arrive, a step
    /// at a time; sealing trims it to its entries.
    #[test]
    fn an_active_index_is_a_hole_until_entries_fill_it() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.index");
        let allocated_bytes =
            |path: &Path| std::fs::metadata(path).expect("metadata").blocks() * 512;
        let capacity_bytes = 10 << 20;
        let mut index = MmapIndex::<OffsetEntry>::open(&path, capacity_bytes, 0).expect("open");
        assert_eq!(
            std::fs::metadata(&path).expect("metadata").len(),
            capacity_bytes as u64
        );
        assert_eq!(
            allocated_bytes(&path),
            0,
            "no blocks before the first entry"
        );
        assert!(index.entries().is_empty());
        assert!(index.push(OffsetEntry::new(1, 4096)));
        let step = ALLOCATE_STEP_BYTES as u64;
        assert!(allocated_bytes(&path) <= step, "one step for one entry");
        let per_step = ALLOCATE_STEP_BYTES / 8;
        for i in 1..=per_step as u32 {
            assert!(index.push(OffsetEntry::new(1 + i, 4096 * (1 + i))));
        }
        assert!(
            allocated_bytes(&path) <= 2 * step,
            "two steps for one step's entries + 1"
        );
        assert_eq!(index.len(), per_step + 1);
        index.seal().expect("seal");
        assert_eq!(
            MmapIndex::<OffsetEntry>::file_entries(&path).expect("len"),
            per_step + 1
        );
        // Unsealed again, the file is a hole past its entries and the entries are intact.
        index.unseal(capacity_bytes).expect("unseal");
        assert!(allocated_bytes(&path) <= 2 * step);
        assert_eq!(
            index.last(),
            Some(OffsetEntry::new(
                1 + per_step as u32,
                4096 * (1 + per_step as u32)
            ))
        );
        assert!(index.push(OffsetEntry::new(1 << 20, 1 << 30)));
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
