//! One segment: a `.log` file of record batches and its sparse `.index` and `.timeindex`.
//!
//! A segment lives on the shard that owns its partition. Its `.log` is a glommio DMA file
//! (O_DIRECT on that shard's io_uring ring); readers hold an `Rc<Segment>` so a segment that
//! retention deletes stays readable (the file stays open) until the last reader drops it.
//! `meta` describes only bytes whose write has completed: readers never see beyond
//! `meta.size_bytes`.
//!
//! # Zeroing ahead
//! A preallocated block is *unwritten* until data lands in it. On ext4 a direct write into
//! unwritten blocks converts them when it completes: an extent-tree update, run by a kernel
//! worker or inside the submitting `io_uring_enter`, which can free a tree block, and on a
//! filesystem mounted `discard` that free waits for a discard (measured here: about 1,000 a
//! second at 50,000 records/s, up to 4 ms inside the shard's own submission). A write that
//! covers a written block and unwritten ones is also no overwrite to ext4, so io_uring hands
//! it to a worker thread.
//!
//! So while a segment's appends are small (each write at most [`ZERO_AHEAD_MAX_WRITE_BYTES`]),
//! the segment keeps a runway of zeros written ahead of them: one write of
//! [`ZERO_STEP_BYTES`] at a time, whenever less than [`ZERO_RUNWAY_BYTES`] lies zeroed past the
//! furthest append. Appends then overwrite written blocks: one conversion per step instead of
//! one per append. Large appends (high throughput) start none: zeroing would double what they
//! write, and their conversions are few.
//!
//! Safety: a zero write must never land after an append's data in the same block.
//! - A step starts at or after the furthest append already handed to the disk; a step that
//!   starts a new runway (the appends have passed the old one) starts [`ZERO_GAP_BYTES`]
//!   further on, so appends seldom reach it while it is in flight.
//! - One step is in flight at a time, holding the segment's zero lock from the moment it is
//!   claimed (synchronously) until its write completes. An append whose range meets the step
//!   in flight takes the lock before its write goes out, so it waits for the zeros to land.
//! - Truncation takes the lock too, and resets the runway.
//!
//! Recovery is unchanged: past the last batch a segment reads as zeros, written or unwritten.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};
use glommio::sync::{Semaphore, StaticPermit};

use crate::batch::BatchHeader;
use crate::config::LogConfig;
use crate::error::{IoFailure, OpenError};
use crate::index::{MmapIndex, OffsetEntry, TimeEntry};
use crate::scan::{self, Step, StopReason};

/// Block size that O_DIRECT positions and lengths are aligned to.
pub const BLOCK_BYTES: u64 = 4096;
/// Bytes read at a time when scanning a segment.
const SCAN_CHUNK_BYTES: usize = 4 << 20;
/// A bound on a stored batch's declared size while scanning: larger is corruption.
pub(crate) const MAX_STORED_BATCH_BYTES: usize = i32::MAX as usize;

pub fn file_name(base_offset: i64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}

/// What is known about a segment's visible (written) contents.
#[derive(Debug, Clone, Copy)]
pub struct SegmentMeta {
    pub size_bytes: u64,
    pub next_offset: i64,
    /// Largest batch max timestamp, -1 when empty.
    pub max_timestamp: i64,
    /// Last offset of the batch holding `max_timestamp`.
    pub offset_of_max_timestamp: i64,
    /// Wall clock when the segment was created (or opened, for an old one): drives segment.ms.
    pub created_ms: i64,
    bytes_since_index_entry: u64,
}

pub struct Segment {
    pub base_offset: i64,
    pub(crate) log_path: PathBuf,
    pub(crate) file: Rc<DmaFile>,
    pub(crate) index: RefCell<MmapIndex<OffsetEntry>>,
    pub(crate) time_index: RefCell<MmapIndex<TimeEntry>>,
    pub(crate) meta: RefCell<SegmentMeta>,
    /// Length the `.log` file has been (or is being) preallocated to (see `reserve_ahead`); 0
    /// when nothing is known to be (an opened segment).
    allocated: Cell<u64>,
    /// One unit, held by a fallocate in flight and by a truncation.
    reserving: Semaphore,
    /// The last preallocation failed (a full disk): logged once until one succeeds.
    preallocation_failing: Cell<bool>,
    /// The runway of zeros ahead of the appends (see "Zeroing ahead").
    zero: ZeroAhead,
}

/// Zeroing-ahead state of a segment (see the module doc).
struct ZeroAhead {
    /// `[from, to)` of the file is written with zeros by completed steps (or by appends since).
    from: Cell<u64>,
    to: Cell<u64>,
    /// The furthest end of any append handed to the disk.
    appended: Cell<u64>,
    /// The step in flight, `[start, end)`.
    inflight: Cell<Option<(u64, u64)>>,
    /// One unit, held by the step in flight and by a truncation.
    lock: Rc<Semaphore>,
    /// A step failed: no more zeroing for this segment (appends do not depend on it).
    failed: Cell<bool>,
}

impl ZeroAhead {
    fn new() -> Self {
        Self {
            from: Cell::new(0),
            to: Cell::new(0),
            appended: Cell::new(0),
            inflight: Cell::new(None),
            lock: Rc::new(Semaphore::new(1)),
            failed: Cell::new(false),
        }
    }
}

/// An append must wait for the zero step in flight before its write goes out.
#[must_use]
pub(crate) struct MustWait(bool);

/// Appends of at most this many bytes per write keep a runway of zeros ahead (module doc).
pub const ZERO_AHEAD_MAX_WRITE_BYTES: u64 = 64 * 1024;
/// Zeros written per step.
pub const ZERO_STEP_BYTES: u64 = 256 * 1024;
/// A step is started when less than this lies zeroed past the furthest append.
pub const ZERO_RUNWAY_BYTES: u64 = 1 << 20;
/// A new runway starts this far past the furthest append.
pub const ZERO_GAP_BYTES: u64 = 64 * 1024;

thread_local! {
    /// The zeros every step writes (the kernel only reads them).
    static ZEROS: Rc<DmaBuffer> = {
        let mut zeros = glommio::allocate_dma_buffer(ZERO_STEP_BYTES as usize);
        zeros.as_bytes_mut().fill(0);
        Rc::new(zeros)
    };
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("base_offset", &self.base_offset)
            .field("meta", &*self.meta.borrow())
            .finish()
    }
}

fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(glommio::GlommioError<()>) -> IoFailure + 'a {
    move |e| IoFailure::new(op, path, e.into())
}

thread_local! {
    /// Devices whose io_uring poll support this thread has already probed correctly.
    static PROBED_DEVICES: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// glommio decides once per thread and device whether O_DIRECT reads may use the IOPOLL ring,
/// by reading the first block of the first file opened there. When that file is empty the
/// read "succeeds" (EOF), the device is wrongly marked pollable, and every later read fails
/// with EOPNOTSUPP on devices without poll queues (virtio here). So before the first real
/// open on a device, open a one-block file, which makes the probe do a real read.
async fn prime_poll_probe(dir: &Path) -> Result<(), OpenError> {
    use std::os::unix::fs::MetadataExt;
    let device = std::fs::metadata(dir)
        .map_err(|e| IoFailure::new("inspecting", dir, e))?
        .dev();
    if PROBED_DEVICES.with(|d| d.borrow().contains(&device)) {
        return Ok(());
    }
    let probe = dir.join(format!(".iopoll-probe-{}", std::process::id()));
    std::fs::write(&probe, [0u8; BLOCK_BYTES as usize])
        .map_err(|e| IoFailure::new("writing", &probe, e))?;
    let opened = DmaFile::open(&probe).await;
    let _ = std::fs::remove_file(&probe);
    match opened {
        Ok(file) => {
            let _ = file.close().await;
        }
        Err(e) => {
            let e: std::io::Error = e.into();
            if e.raw_os_error() == Some(libc::EINVAL) {
                return Err(OpenError::NoDirectIo {
                    path: dir.to_path_buf(),
                });
            }
            return Err(IoFailure::new("probing", &probe, e).into());
        }
    }
    PROBED_DEVICES.with(|d| d.borrow_mut().push(device));
    Ok(())
}

async fn open_dma(path: &Path, create: bool) -> Result<DmaFile, OpenError> {
    if let Some(dir) = path.parent() {
        prime_poll_probe(dir).await?;
    }
    let result = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .dma_open(path)
        .await;
    result.map_err(|e| {
        let e: std::io::Error = e.into();
        if e.raw_os_error() == Some(libc::EINVAL) {
            OpenError::NoDirectIo {
                path: path.to_path_buf(),
            }
        } else {
            OpenError::Io(IoFailure::new("opening", path, e))
        }
    })
}

/// The most of a segment's blocks allocated at once as it fills (`preallocate`).
pub const PREALLOCATE_CHUNK_BYTES_MAX: u64 = 32 << 20;
/// The least: twice the zero runway, so that the runway (which stays within the preallocated
/// length) is never cut short by it.
pub const PREALLOCATE_CHUNK_BYTES_MIN: u64 = 2 * ZERO_RUNWAY_BYTES;

impl Segment {
    /// Creates an empty segment with its files, preallocated as configured.
    pub async fn create(
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
        now_ms: i64,
    ) -> Result<Rc<Self>, OpenError> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let file = open_dma(&log_path, true).await?;
        file.truncate(0)
            .await
            .map_err(io("truncating", &log_path))?;
        let segment = Self::assemble(dir, base_offset, log_path, file, (0, 0), now_ms)?;
        segment.prepare_for_appends(config).await?;
        Ok(segment)
    }

    /// Opens an existing segment keeping `trusted_entries` index entries (offset, time).
    pub(crate) async fn open(
        dir: &Path,
        base_offset: i64,
        trusted_entries: (usize, usize),
        now_ms: i64,
    ) -> Result<Rc<Self>, OpenError> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let file = open_dma(&log_path, false).await?;
        Self::assemble(dir, base_offset, log_path, file, trusted_entries, now_ms)
    }

    fn assemble(
        dir: &Path,
        base_offset: i64,
        log_path: PathBuf,
        file: DmaFile,
        (index_entries, time_entries): (usize, usize),
        now_ms: i64,
    ) -> Result<Rc<Self>, OpenError> {
        let index_path = dir.join(file_name(base_offset, "index"));
        let time_path = dir.join(file_name(base_offset, "timeindex"));
        // Sealed indexes keep their size; the active segment's are given room in
        // `prepare_for_appends`.
        let index = MmapIndex::open(&index_path, 0, index_entries)
            .map_err(|e| IoFailure::new("opening", &index_path, e))?;
        let time_index = MmapIndex::open(&time_path, 0, time_entries)
            .map_err(|e| IoFailure::new("opening", &time_path, e))?;
        Ok(Rc::new(Self {
            base_offset,
            log_path,
            file: Rc::new(file),
            index: RefCell::new(index),
            time_index: RefCell::new(time_index),
            allocated: Cell::new(0),
            reserving: Semaphore::new(1),
            preallocation_failing: Cell::new(false),
            zero: ZeroAhead::new(),
            meta: RefCell::new(SegmentMeta {
                size_bytes: 0,
                next_offset: base_offset,
                max_timestamp: -1,
                offset_of_max_timestamp: base_offset,
                created_ms: now_ms,
                bytes_since_index_entry: 0,
            }),
        }))
    }

    pub fn meta(&self) -> SegmentMeta {
        *self.meta.borrow()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Gives the indexes room to grow (sparse files: no blocks until entries arrive). The
    /// log's blocks are not reserved here but by the first write ([`Self::reserve_ahead`]), so
    /// a partition that is opened or rolled and never written costs no disk.
    pub(crate) async fn prepare_for_appends(&self, config: &LogConfig) -> Result<(), IoFailure> {
        for result in [
            self.index.borrow_mut().unseal(config.segment_index_bytes),
            self.time_index
                .borrow_mut()
                .unseal(config.segment_index_bytes / 8 * 12),
        ] {
            result.map_err(|e| IoFailure::new("growing index of", &self.log_path, e))?;
        }
        Ok(())
    }

    /// Makes the file `len` bytes long with its blocks allocated (fallocate without
    /// keep_size); the caller has already recorded `len` in `allocated`. Failure only costs
    /// speed: writes then extend the file.
    ///
    /// Not keep_size: the file gets its length now, so no write extends it. On ext4 a direct
    /// write that extends the file runs under the exclusive inode lock and waits for the
    /// previous one (io_uring hands it to a worker thread): with keep_size, 16 KiB appends got
    /// 15% of fio's throughput and 1 MiB appends did not scale past one write in flight. The
    /// cost: after a crash the active segment ends in zeros up to its allocated length;
    /// recovery stops at the first zero chunk it reads.
    async fn reserve(&self, len: u64) {
        let _one_at_a_time = self.reserving.acquire_permit(1).await;
        if len > self.allocated.get() {
            return; // truncated since it was asked for: the blocks are not wanted
        }
        match self.file.pre_allocate(len, false).await {
            Err(e) if self.preallocation_failing.replace(true) => {
                tracing::debug!(path = %self.log_path.display(), error = %e, "preallocation failed again");
            }
            Err(e) => {
                tracing::warn!(path = %self.log_path.display(), error = %e, "preallocation failed (logged once until one succeeds)");
            }
            Ok(()) => self.preallocation_failing.set(false),
        }
    }

    /// Called before each write ending at `end`. When the write comes within half a chunk of
    /// the allocated length, the next chunk is allocated: in a task of its own while the write
    /// still lies in allocated blocks (writes keep landing there without waiting for it), or,
    /// when the write lies past them (the first write of a segment, or one that outran the
    /// chunks), by the writer before its write goes out: the returned future. Waiting for a
    /// fallocate costs less than a write that extends the file, which ext4 serializes.
    ///
    /// A segment takes disk space only once it is written, and as it fills: chunks grow with
    /// the segment (its written length, between [`PREALLOCATE_CHUNK_BYTES_MIN`] and
    /// [`PREALLOCATE_CHUNK_BYTES_MAX`]), so a lightly written partition reserves 2 MiB, not
    /// 32 MiB, and what is reserved but unused is at most about the segment's size. Sealing
    /// and closing truncate the file to its data, which releases it.
    pub(crate) fn reserve_ahead(
        self: &Rc<Self>,
        end: u64,
        config: &LogConfig,
    ) -> Option<impl std::future::Future<Output = ()> + 'static> {
        let allocated = self.allocated.get();
        let chunk = end.clamp(PREALLOCATE_CHUNK_BYTES_MIN, PREALLOCATE_CHUNK_BYTES_MAX);
        if !config.preallocate || allocated >= config.segment_bytes || end + chunk / 2 <= allocated
        {
            return None;
        }
        let target = (end.max(allocated) + chunk)
            .next_multiple_of(BLOCK_BYTES)
            .min(config.segment_bytes);
        // Recorded now, not when the fallocate completes: later writes do not ask again, and
        // zero steps may be planned up to it (a write racing the fallocate is still correct,
        // only slower).
        self.allocated.set(target);
        let segment = Rc::clone(self);
        let reservation = async move { segment.reserve(target).await };
        if end <= allocated {
            glommio::spawn_local(reservation).detach();
            return None;
        }
        Some(reservation)
    }

    /// Closes the segment's file now if nobody else holds the segment (otherwise the last
    /// holder's drop closes it).
    pub(crate) async fn close_if_unused(self: Rc<Self>) {
        if let Ok(segment) = Rc::try_unwrap(self) {
            let _ = segment.file.close_rc().await;
        }
    }

    /// Cuts the `.log` file to `size` bytes (this also frees its preallocation, so the next
    /// write reserves again). Waits for a zero step in flight first, and starts the runway
    /// afresh.
    pub(crate) async fn truncate_file(&self, size: u64) -> Result<(), IoFailure> {
        let _step = self.zero.lock.acquire_permit(1).await;
        // A fallocate in flight would extend the file again after the cut; one not yet started
        // sees the lower `allocated` and does nothing.
        let _reserving = self.reserving.acquire_permit(1).await;
        self.allocated.set(self.allocated.get().min(size));
        let zero = &self.zero;
        zero.from.set(0);
        zero.to.set(0);
        zero.appended
            .set(zero.appended.get().min(size.next_multiple_of(BLOCK_BYTES)));
        self.file
            .truncate(size)
            .await
            .map_err(io("truncating", &self.log_path))
    }

    /// Called as an append's write of `[pos, end)` is handed to the disk, before it goes out:
    /// records how far appends reach, starts a zero step if the runway is short, and says
    /// whether the write must first wait for the step in flight ([`Self::wait_for_zeros`]).
    pub(crate) fn claim_append(
        self: &Rc<Self>,
        pos: u64,
        end: u64,
        config: &LogConfig,
    ) -> MustWait {
        let zero = &self.zero;
        zero.appended.set(zero.appended.get().max(end));
        let must_wait = zero
            .inflight
            .get()
            .is_some_and(|(start, stop)| pos < stop && start < end);
        if config.preallocate
            && config.zero_ahead
            && end - pos <= ZERO_AHEAD_MAX_WRITE_BYTES
            && zero.inflight.get().is_none()
            && !zero.failed.get()
        {
            self.start_zero_step();
        }
        MustWait(must_wait)
    }

    /// Waits until the zero step in flight (if `must`) has landed.
    pub(crate) async fn wait_for_zeros(&self, must: MustWait) {
        if must.0 {
            let _step = self.zero.lock.acquire_permit(1).await;
        }
    }

    /// Whether `[pos, end)` lies in blocks already written with zeros: an overwrite.
    pub(crate) fn zeroed(&self, pos: u64, end: u64) -> bool {
        self.zero.from.get() <= pos && end <= self.zero.to.get()
    }

    fn start_zero_step(self: &Rc<Self>) {
        let zero = &self.zero;
        let appended = zero.appended.get();
        if zero.to.get() >= appended + ZERO_RUNWAY_BYTES {
            return;
        }
        let start = if zero.to.get() >= appended {
            zero.to.get()
        } else {
            (appended + ZERO_GAP_BYTES).next_multiple_of(BLOCK_BYTES)
        };
        // Within the preallocated length only: a step never extends the file.
        let end = (start + ZERO_STEP_BYTES).min(self.allocated.get());
        if start >= end {
            return;
        }
        let Ok(permit) = zero.lock.try_acquire_static_permit(1) else {
            return; // a truncation holds it
        };
        zero.inflight.set(Some((start, end)));
        let segment = Rc::clone(self);
        glommio::spawn_local(async move { segment.zero_step(start, end, permit).await }).detach();
    }

    async fn zero_step(self: Rc<Self>, start: u64, end: u64, permit: StaticPermit) {
        let zeros = ZEROS.with(Rc::clone);
        let len = (end - start) as usize;
        let result = if len == zeros.len() {
            self.file.write_rc_at(zeros, start).await
        } else {
            let mut part = glommio::allocate_dma_buffer(len);
            part.as_bytes_mut().fill(0);
            self.file.write_rc_at(Rc::new(part), start).await
        };
        let zero = &self.zero;
        match result {
            Ok(written) if written == len => {
                if zero.to.get() != start {
                    zero.from.set(start);
                }
                zero.to.set(end);
            }
            outcome => {
                zero.failed.set(true);
                let error = match outcome {
                    Ok(written) => format!("short write: {written} of {len} bytes"),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(path = %self.log_path.display(), %error,
                    "zeroing ahead failed; appends go on without it");
            }
        }
        zero.inflight.set(None);
        drop(permit);
    }

    /// Trims the log to its visible size, seals the indexes and syncs everything: after this
    /// the segment is immutable and trusted by recovery without a scan.
    pub(crate) async fn seal(&self) -> Result<(), IoFailure> {
        let size = self.meta().size_bytes;
        self.truncate_file(size).await?;
        self.file
            .fdatasync()
            .await
            .map_err(io("syncing", &self.log_path))?;
        self.sync_indexes(true)
    }

    pub(crate) fn sync_indexes(&self, seal: bool) -> Result<(), IoFailure> {
        let fail = |e| IoFailure::new("syncing index of", &self.log_path, e);
        let mut index = self.index.borrow_mut();
        let mut time_index = self.time_index.borrow_mut();
        if seal {
            index.seal().map_err(fail)?;
            time_index.seal().map_err(fail)
        } else {
            index.flush().map_err(fail)?;
            time_index.flush().map_err(fail)
        }
    }

    /// Records a batch whose bytes are now on disk at `position`: extends the visible size and
    /// adds sparse index entries. Batches must arrive in log order.
    pub(crate) fn record_batch(&self, position: u64, header: &BatchHeader, interval_bytes: u64) {
        let mut meta = self.meta.borrow_mut();
        assert_eq!(position, meta.size_bytes, "batches are recorded in order");
        assert_eq!(
            header.base_offset, meta.next_offset,
            "offsets are contiguous"
        );
        if header.max_timestamp > meta.max_timestamp {
            meta.max_timestamp = header.max_timestamp;
            meta.offset_of_max_timestamp = header.last_offset();
        }
        if position > 0 && meta.bytes_since_index_entry >= interval_bytes {
            let relative = (header.base_offset - self.base_offset) as u32;
            // A full index stays sparser (lookups scan further); the interval restarts either
            // way so the time index is not tried on every batch.
            self.index
                .borrow_mut()
                .push(OffsetEntry::new(relative, position as u32));
            meta.bytes_since_index_entry = 0;
            let mut time_index = self.time_index.borrow_mut();
            let newer = time_index
                .last()
                .is_none_or(|e| meta.max_timestamp > e.timestamp());
            if newer {
                time_index.push(TimeEntry::new(meta.max_timestamp, relative));
            }
        }
        meta.bytes_since_index_entry += header.total_bytes() as u64;
        meta.size_bytes = position + header.total_bytes() as u64;
        meta.next_offset = header.next_offset();
    }

    /// Sets the visible extent after a scan or truncation, with the index entries that survive.
    pub(crate) fn reset_meta(&self, size_bytes: u64, next_offset: i64, max_timestamp: (i64, i64)) {
        let mut meta = self.meta.borrow_mut();
        let last_entry = self
            .index
            .borrow()
            .last()
            .map_or(0, |e| u64::from(e.position()));
        meta.size_bytes = size_bytes;
        meta.next_offset = next_offset;
        meta.max_timestamp = max_timestamp.0;
        meta.offset_of_max_timestamp = max_timestamp.1;
        meta.bytes_since_index_entry = size_bytes.saturating_sub(last_entry);
    }

    /// Reads `[position, position + len)` (clamped to the visible size).
    pub(crate) async fn read(&self, position: u64, len: usize) -> Result<ReadResult, IoFailure> {
        self.file
            .read_at(position, len)
            .await
            .map_err(io("reading", &self.log_path))
    }

    /// The last index entry at or before `offset`, as (base offset of that batch, position).
    pub(crate) fn index_floor(&self, offset: i64) -> (i64, u64) {
        let relative = (offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        self.index
            .borrow()
            .floor(relative)
            .map_or((self.base_offset, 0), |e| {
                (
                    self.base_offset + i64::from(e.relative_offset()),
                    u64::from(e.position()),
                )
            })
    }
}

/// Starts reading the chunk at `position` (glommio's `spawn_local` submits it at once).
fn read_ahead(
    file: &Rc<DmaFile>,
    position: u64,
    end: u64,
) -> Option<glommio::Task<Result<ReadResult, glommio::GlommioError<()>>>> {
    if position >= end {
        return None;
    }
    let len = (end - position).min(SCAN_CHUNK_BYTES as u64) as usize;
    let file = file.clone();
    Some(glommio::spawn_local(async move {
        file.read_at(position, len).await
    }))
}

/// Result of scanning a segment's file from some position.
#[derive(Debug, Clone)]
pub(crate) struct FileScan {
    pub valid_end: u64,
    pub next_offset: i64,
    /// (max timestamp, offset of it) over the scanned batches, (-1, _) if none.
    pub max_timestamp: (i64, i64),
    pub stop: Option<(u64, StopReason)>,
    /// Bytes read from the file (the scan stops at the first zero-filled chunk, so this can be
    /// far less than the file's preallocated length).
    pub bytes_read: u64,
}

/// Scans `file` from `start` to `end` (the file length) batch by batch, checking every CRC,
/// calling `visit` for each valid batch. Used by recovery; reads 4 MiB at a time.
pub(crate) async fn scan_file(
    file: &Rc<DmaFile>,
    path: &Path,
    start: u64,
    end: u64,
    expected_offset: i64,
    mut visit: impl FnMut(u64, &BatchHeader),
) -> Result<FileScan, IoFailure> {
    let mut window: Vec<u8> = Vec::new();
    let mut window_pos = start;
    let mut read_pos = start;
    // One chunk is read ahead while the previous one is checked.
    let mut ahead = read_ahead(file, start, end);
    let mut outcome = FileScan {
        valid_end: start,
        next_offset: expected_offset,
        max_timestamp: (-1, expected_offset),
        stop: None,
        bytes_read: 0,
    };
    loop {
        let at_end = read_pos >= end;
        let mut consumed = 0usize;
        let mut need_more = false;
        while consumed < window.len() || at_end {
            let rest = &window[consumed..];
            if rest.is_empty() {
                break;
            }
            match scan::step(
                rest,
                at_end,
                Some(outcome.next_offset),
                MAX_STORED_BATCH_BYTES,
            ) {
                Step::Batch(header) => {
                    let position = window_pos + consumed as u64;
                    visit(position, &header);
                    consumed += header.total_bytes();
                    outcome.next_offset = header.next_offset();
                    outcome.valid_end = window_pos + consumed as u64;
                    if header.max_timestamp > outcome.max_timestamp.0 {
                        outcome.max_timestamp = (header.max_timestamp, header.last_offset());
                    }
                }
                Step::NeedMore(_) => {
                    need_more = true;
                    break;
                }
                Step::Stop(reason) => {
                    outcome.stop = Some((window_pos + consumed as u64, reason));
                    return Ok(outcome);
                }
            }
        }
        if at_end && !need_more {
            return Ok(outcome);
        }
        window.drain(..consumed);
        window_pos += consumed as u64;
        let Some(pending) = ahead.take() else {
            return Ok(outcome);
        };
        let chunk = pending.await.map_err(io("reading", path))?;
        if !chunk.is_empty() {
            ahead = read_ahead(file, read_pos + chunk.len() as u64, end);
        }
        if chunk.is_empty() {
            // The file is shorter than its length said (truncated under us): treat as the end.
            outcome.stop = Some((
                window_pos,
                StopReason::Truncated {
                    needed_bytes: crate::batch::HEADER_BYTES,
                    have_bytes: window.len(),
                },
            ));
            return Ok(outcome);
        }
        window.extend_from_slice(&chunk);
        read_pos += chunk.len() as u64;
        outcome.bytes_read += chunk.len() as u64;
    }
}
