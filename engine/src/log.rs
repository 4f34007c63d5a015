//! The partition log: ordered appends on O_DIRECT writes, reads, retention, truncation,
//! checkpoints and crash recovery.
//!
//! # Threading
//! A `PartitionLog` lives on the shard (glommio executor) that owns its partition and is used
//! only from that thread: state is in `RefCell`s, never borrowed across an `.await`.
//!
//! # The write path
//! `append` validates the batch, assigns its offsets and queues it (synchronously, so offsets
//! follow call order), then [`pump`] copies queued batches, with their stamped headers, into
//! 4 KiB-aligned DMA buffers from the shard's io_uring buffer arena and issues writes:
//!
//! - a buffer that is full is written at once; several full buffers may be in flight;
//! - a partly filled buffer is written ("partial flush", zero-padded to the next block) only
//!   when no earlier partial write is in flight, so under load batches coalesce into large
//!   writes and when idle an append is written immediately;
//! - after a partial flush, the unfinished last block is copied to the head of the next buffer
//!   and written again, in place, by the next write. That write waits for the partial write it
//!   overlaps: two writes covering the same block are never in flight together.
//!
//! Writes complete out of order; the visible end advances only over a contiguous prefix of
//! completed writes. An append completes when its bytes are written (and, under group commit,
//! after an fdatasync issued after that). A failed write fails every append not yet visible,
//! the tail is cut back to the visible end, and the log keeps serving.
//!
//! # Durability and recovery
//! See `checkpoint.rs`: sealed segments plus a checkpointed prefix of the active segment are
//! trusted; recovery CRC-checks and re-indexes everything after it, and truncates at the first
//! invalid byte.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_listener::Event;
use glommio::io::{DmaBuffer, ReadResult};
use glommio::sync::Semaphore;
use ringlog_replication::epochs::EpochCache;

use crate::batch::{self, BatchHeader, StampedHeader, TimestampType, HEADER_BYTES};
use crate::cache::TailCache;
use crate::checkpoint::{self, Checkpoint};
use crate::config::LogConfig;
use crate::error::{
    AppendError, CheckedAppendError, IoFailure, LogError, OpenError, ReadError, ReplicaAppendError,
};
use crate::fetch::{self, FetchedRecords, ReadSource, RecordPiece};
use crate::leader_epochs;
use crate::scan::StopReason;
use crate::segment::{self, Segment, BLOCK_BYTES};
use ringlog_env::{Clock, SystemClock};

/// What a completed append reports back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// Set when the topic uses LogAppendTime.
    pub log_append_time_ms: Option<i64>,
    pub log_start_offset: i64,
}

/// Whole batches read from one segment, as one contiguous byte range of the file.
pub struct FetchedBatches {
    data: Option<ReadResult>,
    /// Base offset of the first batch (may be below the requested offset, as in Kafka).
    pub first_offset: i64,
    /// Offset after the last batch returned: where the next read continues.
    pub next_offset: i64,
    pub batch_count: usize,
    /// File position after the last batch returned.
    end_position: u64,
}

impl FetchedBatches {
    fn empty(next_offset: i64) -> Self {
        Self {
            data: None,
            first_offset: next_offset,
            next_offset,
            batch_count: 0,
            end_position: 0,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.as_deref().unwrap_or(&[])
    }

    pub fn is_empty(&self) -> bool {
        self.batch_count == 0
    }
}

/// Counters of the write path since the log was opened, for benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Data writes issued (each one O_DIRECT write of one buffer).
    pub writes: u64,
    /// Bytes those writes carried, padding and rewritten tail blocks included.
    pub bytes_written: u64,
    /// fdatasyncs issued for appends (group commit, flush.messages, flush.ms).
    pub syncs: u64,
    /// Deferred partial-flush tasks scheduled: each should lead to a write, so this stays
    /// within the number of writes (a runaway count is the executor spinning).
    pub flush_tasks: u64,
}

/// The first offset at or after a timestamp, as ListOffsets needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampOffset {
    pub offset: i64,
    pub timestamp: i64,
    /// False when the batch is compressed: `offset` is then its base offset, and the exact
    /// record is found by decompressing it (a layer above the engine).
    pub exact: bool,
}

/// Where recovery found damage and what it did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub segment_base_offset: i64,
    pub position: u64,
    pub reason: StopReason,
    /// Bytes after `position` in that segment that were cut off.
    pub discarded_bytes: u64,
}

/// What opening a log found.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    pub clean_shutdown: bool,
    pub segments: usize,
    /// Bytes read and CRC-checked by the recovery scan.
    pub scanned_bytes: u64,
    pub corruption: Option<Corruption>,
    /// Segments after the damage, deleted because nothing after it may be exposed.
    pub dropped_segments: Vec<i64>,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    pub duration: Duration,
}

/// Injects a failure into the write path: called before each data write with the segment's
/// base offset, the file position and the length; an error fails that write as if the device
/// had returned it. For tests of disk-full and I/O-error handling.
pub type WriteFault = Rc<dyn Fn(i64, u64, usize) -> Option<std::io::Error>>;

/// How to open a log besides its directory and config.
#[derive(Clone)]
pub struct OpenOptions {
    pub clock: Rc<dyn Clock>,
    pub write_fault: Option<WriteFault>,
    /// The glommio task queue for work no append waits on (sealing rolled-over segments,
    /// repairing after a failed write), so it can be given fewer shares than client requests.
    /// `None` runs it in the queue of whoever triggers it.
    pub background_queue: Option<glommio::TaskQueueHandle>,
    /// The shard's tail cache: written buffers are kept there and tail reads served from it
    /// (see `cache.rs`). `None`: every read goes to the disk.
    pub tail_cache: Option<Rc<TailCache>>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            clock: Rc::new(SystemClock),
            write_fault: None,
            background_queue: None,
            tail_cache: None,
        }
    }
}

/// A one-shot result cell an appender waits on.
#[derive(Default)]
struct Slot {
    result: Cell<Option<Result<AppendInfo, AppendError>>>,
    waker: Cell<Option<Waker>>,
}

impl Slot {
    fn complete(&self, result: Result<AppendInfo, AppendError>) {
        self.result.set(Some(result));
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

struct SlotFuture(Rc<Slot>);

impl Future for SlotFuture {
    type Output = Result<AppendInfo, AppendError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                self.0.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

/// A queued batch's write, from [`PartitionLog::enqueue_checked`]: resolves as `append` does
/// once the batch is written (and synced, under group commit). Dropping it does not unqueue the
/// batch; it is written all the same.
pub struct Appending(SlotFuture);

impl Future for Appending {
    type Output = Result<AppendInfo, AppendError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// A batch queued for writing.
struct Pending {
    header: StampedHeader,
    data: Bytes,
    info: BatchHeader,
    /// Bytes of this batch already copied into write buffers.
    copied: usize,
    position: u64,
    /// This batch starts a new segment.
    roll: bool,
    log_append_time_ms: Option<i64>,
    slot: Rc<Slot>,
}

/// A batch copied into write buffers, waiting for its writes (and maybe a sync).
struct Copied {
    position: u64,
    info: BatchHeader,
    log_append_time_ms: Option<i64>,
    slot: Rc<Slot>,
}

impl Copied {
    fn end(&self) -> u64 {
        self.position + self.info.total_bytes() as u64
    }
}

/// An aligned buffer being filled; it covers the file from `file_pos`.
struct WriteBuf {
    buf: DmaBuffer,
    file_pos: u64,
    filled: usize,
    /// Bytes at the head that an earlier write already carries (the re-written tail block).
    submitted: usize,
}

impl WriteBuf {
    fn new(capacity: usize, file_pos: u64) -> Self {
        debug_assert_eq!(file_pos % BLOCK_BYTES, 0);
        Self {
            buf: glommio::allocate_dma_buffer(capacity),
            file_pos,
            filled: 0,
            submitted: 0,
        }
    }

    fn space(&self) -> usize {
        self.buf.len() - self.filled
    }

    fn unsubmitted(&self) -> usize {
        self.filled - self.submitted
    }
}

struct InFlight {
    id: u64,
    end_pos: u64,
    result: Option<Result<(), IoFailure>>,
}

/// A slow step that runs as its own task while the pump waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Busy {
    Rolling,
    Repairing,
}

/// The physical write state of the active segment.
struct Writer {
    segment: Rc<Segment>,
    cur: Option<WriteBuf>,
    /// Where the next fresh buffer starts when `cur` is `None`.
    next_buf_pos: u64,
    next_write_id: u64,
    inflight: VecDeque<InFlight>,
    /// The partial write that `cur`'s first block overlaps.
    blocked_by: Option<u64>,
    copied: VecDeque<Copied>,
    awaiting_sync: VecDeque<Copied>,
    written_pos: u64,
    sync_in_flight: bool,
    stats: Rc<RefCell<LogStats>>,
    unsynced_messages: u64,
    oldest_unsynced_ms: Option<i64>,
    busy: Option<Busy>,
    failure: Option<IoFailure>,
}

impl Writer {
    fn stats_mut(&self) -> std::cell::RefMut<'_, LogStats> {
        self.stats.borrow_mut()
    }
}

impl Writer {
    fn new(
        segment: Rc<Segment>,
        cur: Option<WriteBuf>,
        next_buf_pos: u64,
        stats: Rc<RefCell<LogStats>>,
    ) -> Self {
        let written_pos = segment.meta().size_bytes;
        Self {
            segment,
            cur,
            next_buf_pos,
            next_write_id: 0,
            inflight: VecDeque::new(),
            blocked_by: None,
            copied: VecDeque::new(),
            awaiting_sync: VecDeque::new(),
            written_pos,
            sync_in_flight: false,
            stats,
            unsynced_messages: 0,
            oldest_unsynced_ms: None,
            busy: None,
            failure: None,
        }
    }

    fn write_in_flight(&self, id: u64) -> bool {
        self.inflight
            .iter()
            .any(|w| w.id == id && w.result.is_none())
    }

    fn cur_blocked(&self) -> bool {
        self.blocked_by.is_some_and(|id| self.write_in_flight(id))
    }

    fn unsubmitted(&self) -> usize {
        self.cur.as_ref().map_or(0, WriteBuf::unsubmitted)
    }
}

struct State {
    segments: Vec<Rc<Segment>>,
    log_start_offset: i64,
    /// Next offset to assign, counting queued appends.
    next_offset: i64,
    /// The segment queued appends go to: its base, logical size and creation time.
    tail_base: i64,
    tail_bytes: u64,
    tail_created_ms: i64,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    writer: Writer,
    /// A task that writes the buffer's partial contents is queued.
    flush_scheduled: bool,
    /// The `PartitionLog` was dropped without `close`: background tasks stop touching files
    /// and state, as they would in a crash (writes already handed to the kernel still land).
    abandoned: bool,
    /// The last write failed (a full disk, say) and none has succeeded since: the failure is
    /// logged as a warning once, its repetitions (every retried append) at debug level.
    failing_writes: bool,
    /// Rolled-over segments not yet sealed, oldest first, and whether the sealer task runs.
    seal_queue: VecDeque<SealJob>,
    sealer_running: bool,
    /// Truncation or close in progress: new appends wait.
    blocked: bool,
    closed: bool,
    /// An fdatasync failed: what was written may not be durable, so no more appends.
    poisoned: Option<IoFailure>,
    /// Which leader epoch wrote which offsets, queued batches included; kept equal to the
    /// `leader-epoch-checkpoint` file (see `leader_epochs.rs`).
    epochs: EpochCache,
    /// The epoch stamped on leader appends, once [`PartitionLog::set_leader_epoch`] was called.
    leader_epoch: Option<i32>,
}

impl State {
    fn active(&self) -> &Rc<Segment> {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    fn log_end_offset(&self) -> i64 {
        self.active().meta().next_offset
    }

    fn idle(&self) -> bool {
        let w = &self.writer;
        self.pending.is_empty()
            && w.copied.is_empty()
            && w.awaiting_sync.is_empty()
            && w.inflight.is_empty()
            && w.unsubmitted() == 0
            && w.busy.is_none()
            && !w.sync_in_flight
            && self.seal_queue.is_empty()
            && !self.sealer_running
    }

    fn segment_index(&self, offset: i64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1)
    }
}

struct Inner {
    dir: PathBuf,
    config: RefCell<LogConfig>,
    clock: Rc<dyn Clock>,
    write_fault: Option<WriteFault>,
    background_queue: Option<glommio::TaskQueueHandle>,
    state: RefCell<State>,
    /// Notified whenever the pump ran: appenders waiting for room, and idle waiters, re-check.
    progress: Event,
    /// Serializes administrative operations (truncate, retention, checkpoint, close).
    admin: Semaphore,
    /// The shard's tail cache and this log's id in it.
    cache: Option<(Rc<TailCache>, u64)>,
    /// Sequential readers' read-ahead (see `fetch.rs`).
    read_ahead: RefCell<crate::fetch::ReadAheads>,
}

impl Inner {
    fn forget_cached(&self) {
        if let Some((cache, id)) = &self.cache {
            cache.forget(*id);
        }
        self.read_ahead.borrow_mut().clear();
    }
}

/// A partition's log. Lives on one shard; see the module documentation.
pub struct PartitionLog {
    inner: Rc<Inner>,
}

/// Schedules `future` on the current task queue without running it now. glommio's
/// `spawn_local` polls a new task immediately, which would re-enter the log's state while the
/// caller still has it borrowed.
fn spawn_deferred(future: impl Future<Output = ()> + 'static) {
    spawn_in(None, future);
}

/// Schedules `future` (without running it now) in `queue`, or in the current one.
fn spawn_in(queue: Option<glommio::TaskQueueHandle>, future: impl Future<Output = ()> + 'static) {
    let queue = queue.unwrap_or_else(|| glommio::executor().current_task_queue());
    match glommio::spawn_local_into(future, queue) {
        Ok(task) => task.detach(),
        Err(error) => unreachable!("the log's task queues exist while it does: {error}"),
    };
}

fn align_down(pos: u64) -> u64 {
    pos / BLOCK_BYTES * BLOCK_BYTES
}

fn align_up(pos: u64) -> u64 {
    pos.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

fn open_error_to_io(error: OpenError) -> IoFailure {
    match error {
        OpenError::Io(e) => e,
        OpenError::NoDirectIo { path } => IoFailure::new(
            "opening",
            path,
            std::io::Error::from_raw_os_error(libc::EINVAL),
        ),
    }
}

/// Reads the last partial block of a segment of `size` bytes into a fresh write buffer, so the
/// next write rewrites it whole.
async fn load_tail(
    segment: &Segment,
    size: u64,
    capacity: usize,
) -> Result<(Option<WriteBuf>, u64), IoFailure> {
    let tail = (size % BLOCK_BYTES) as usize;
    if tail == 0 {
        return Ok((None, size));
    }
    let block_pos = align_down(size);
    let block = segment.read(block_pos, tail).await?;
    if block.len() < tail {
        return Err(IoFailure::new(
            "reading tail block of",
            segment.log_path(),
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "segment shorter than its size",
            ),
        ));
    }
    let mut buf = WriteBuf::new(capacity, block_pos);
    buf.buf.as_bytes_mut()[..tail].copy_from_slice(&block[..tail]);
    buf.filled = tail;
    buf.submitted = tail;
    Ok((Some(buf), block_pos))
}

/// Moves the write path forward as far as it can without waiting: retires completed writes,
/// records and acknowledges written batches, starts syncs, copies queued batches into buffers
/// and issues writes. Called after every event (append, write/sync completion, roll).
fn pump(inner: &Rc<Inner>) {
    if inner.state.borrow().abandoned {
        return;
    }
    {
        let config = inner.config.borrow();
        let mut guard = inner.state.borrow_mut();
        let st = &mut *guard;
        if retire_writes(st) && std::mem::take(&mut st.failing_writes) {
            tracing::warn!(dir = %inner.dir.display(), "writes succeed again");
        }
        acknowledge_written(st, &config, inner.clock.now_ms(), inner.cache.as_ref());
        if st.writer.failure.is_some() {
            handle_failure(inner, st);
        }
        maybe_sync(inner, st, &config);
        fill_and_submit(inner, st, &config);
    }
    inner.progress.notify(usize::MAX);
}

/// Retires the completed writes at the front; true when one of them succeeded.
fn retire_writes(st: &mut State) -> bool {
    let w = &mut st.writer;
    let mut succeeded = false;
    while w.inflight.front().is_some_and(|f| f.result.is_some()) {
        let Some(done) = w.inflight.pop_front() else {
            break;
        };
        match done.result {
            Some(Ok(())) if w.failure.is_none() => {
                assert!(done.end_pos >= w.written_pos, "writes retire in order");
                w.written_pos = done.end_pos;
                succeeded = true;
            }
            Some(Ok(())) => {}
            Some(Err(error)) => {
                w.failure.get_or_insert(error);
            }
            None => unreachable!("only completed writes are popped"),
        }
    }
    succeeded
}

fn acknowledge_written(
    st: &mut State,
    config: &LogConfig,
    now_ms: i64,
    cache: Option<&(Rc<TailCache>, u64)>,
) {
    let log_start_offset = st.log_start_offset;
    let w = &mut st.writer;
    while w.copied.front().is_some_and(|c| c.end() <= w.written_pos) {
        let Some(batch) = w.copied.pop_front() else {
            break;
        };
        w.segment
            .record_batch(batch.position, &batch.info, config.index_interval_bytes);
        if let Some((cache, id)) = cache {
            let offsets = (batch.info.base_offset, batch.info.last_offset());
            let len = batch.info.total_bytes();
            cache.record_batch(*id, w.segment.base_offset, batch.position, offsets, len);
        }
        w.unsynced_messages += batch.info.records_count as u64;
        w.oldest_unsynced_ms.get_or_insert(now_ms);
        if config.group_commit() {
            w.awaiting_sync.push_back(batch);
        } else {
            complete_ok(&batch, log_start_offset);
        }
    }
}

fn complete_ok(batch: &Copied, log_start_offset: i64) {
    batch.slot.complete(Ok(AppendInfo {
        base_offset: batch.info.base_offset,
        last_offset: batch.info.last_offset(),
        log_append_time_ms: batch.log_append_time_ms,
        log_start_offset,
    }));
}

/// A write failed: once the writes still in flight have landed, fail every append that is not
/// visible, rewind offsets to the visible end and cut the file back to it.
fn handle_failure(inner: &Rc<Inner>, st: &mut State) {
    if !st.writer.inflight.is_empty() || st.writer.busy.is_some() {
        return;
    }
    let Some(error) = st.writer.failure.take() else {
        return;
    };
    // Bytes after the visible end are rewritten by the repair: nothing cached may outlive it.
    inner.forget_cached();
    if std::mem::replace(&mut st.failing_writes, true) {
        tracing::debug!(dir = %inner.dir.display(), %error, "write failed again; failing unwritten appends");
    } else {
        tracing::warn!(dir = %inner.dir.display(), %error, "write failed; failing unwritten appends (later failures of this partition are logged at debug level until a write succeeds)");
    }
    let failed = AppendError::Io(error);
    for batch in st.writer.copied.drain(..) {
        batch.slot.complete(Err(failed.clone()));
    }
    for batch in st.pending.drain(..) {
        batch.slot.complete(Err(failed.clone()));
    }
    st.pending_bytes = 0;
    let segment = st.writer.segment.clone();
    // Writes end anywhere, batches are recorded whole: the visible end is the last whole
    // batch, and bytes written after it are cut off.
    let meta = segment.meta();
    st.writer.written_pos = meta.size_bytes;
    st.next_offset = meta.next_offset;
    // Epochs the failed batches started describe nothing now. Only memory changes here (the
    // file is rewritten with the next change, and opening trims a file that is ahead); a
    // leader re-records its epoch with its next append.
    st.epochs.truncate_from_end(meta.next_offset);
    st.tail_base = segment.base_offset;
    st.tail_bytes = meta.size_bytes;
    st.writer.cur = None;
    st.writer.blocked_by = None;
    st.writer.busy = Some(Busy::Repairing);
    spawn_in(
        inner.background_queue,
        repair(inner.clone(), segment, meta.size_bytes),
    );
}

/// Cuts the active segment's file back to its visible size and reloads its tail block.
async fn repair(inner: Rc<Inner>, segment: Rc<Segment>, size: u64) {
    if inner.state.borrow().abandoned {
        return;
    }
    let config = inner.config.borrow().clone();
    let result = async {
        segment.truncate_file(size).await?;
        segment.prepare_for_appends(&config).await?;
        load_tail(&segment, size, config.write_buffer_bytes).await
    }
    .await;
    {
        let mut st = inner.state.borrow_mut();
        st.writer.busy = None;
        match result {
            Ok((cur, next_buf_pos)) => {
                st.writer.cur = cur;
                st.writer.next_buf_pos = next_buf_pos;
            }
            Err(error) => {
                tracing::error!(%error, "cannot repair the active segment; the log refuses appends");
                st.poisoned = Some(error);
            }
        }
    }
    pump(&inner);
}

fn maybe_sync(inner: &Rc<Inner>, st: &mut State, config: &LogConfig) {
    let now = inner.clock.now_ms();
    let w = &mut st.writer;
    if w.sync_in_flight || w.busy.is_some() || w.unsynced_messages == 0 {
        return;
    }
    let due = (config.group_commit() && !w.awaiting_sync.is_empty())
        || w.unsynced_messages >= config.flush_messages
        || w.oldest_unsynced_ms
            .is_some_and(|t| now.saturating_sub(t) >= config.flush_ms);
    if !due {
        return;
    }
    w.sync_in_flight = true;
    w.stats_mut().syncs += 1;
    w.unsynced_messages = 0;
    w.oldest_unsynced_ms = None;
    let target = w.written_pos;
    spawn_deferred(sync_segment(inner.clone(), w.segment.clone(), target));
}

/// One fdatasync, covering every append written before it started (group commit).
async fn sync_segment(inner: Rc<Inner>, segment: Rc<Segment>, target: u64) {
    let result = segment.file.fdatasync().await;
    {
        let mut guard = inner.state.borrow_mut();
        let st = &mut *guard;
        st.writer.sync_in_flight = false;
        let log_start_offset = st.log_start_offset;
        match result {
            Ok(()) => {
                let w = &mut st.writer;
                while w.awaiting_sync.front().is_some_and(|c| c.end() <= target) {
                    if let Some(batch) = w.awaiting_sync.pop_front() {
                        complete_ok(&batch, log_start_offset);
                    }
                }
            }
            Err(e) => {
                let error = IoFailure::new("syncing", segment.log_path(), e.into());
                tracing::error!(%error, "fdatasync failed; the log refuses appends");
                for batch in st.writer.awaiting_sync.drain(..) {
                    batch.slot.complete(Err(AppendError::Io(error.clone())));
                }
                st.poisoned = Some(error);
            }
        }
    }
    pump(&inner);
}

fn fill_and_submit(inner: &Rc<Inner>, st: &mut State, config: &LogConfig) {
    if st.writer.busy.is_some() || st.writer.failure.is_some() {
        return;
    }
    while let Some(front) = st.pending.front_mut() {
        if front.roll {
            start_roll_when_drained(inner, st, config);
            return;
        }
        let w = &mut st.writer;
        if w.cur.as_ref().is_some_and(|c| c.space() == 0) {
            if !try_submit(inner, w, config, false) {
                return;
            }
            continue;
        }
        let next_buf_pos = w.next_buf_pos;
        let cur = w
            .cur
            .get_or_insert_with(|| WriteBuf::new(config.write_buffer_bytes, next_buf_pos));
        if front.copied == 0 {
            front.position = cur.file_pos + cur.filled as u64;
        }
        copy_into(front, cur);
        if front.copied == front.data.len() {
            let Some(done) = st.pending.pop_front() else {
                break;
            };
            st.pending_bytes -= done.data.len();
            st.writer.copied.push_back(Copied {
                position: done.position,
                info: done.info,
                log_append_time_ms: done.log_append_time_ms,
                slot: done.slot,
            });
        }
    }
    schedule_partial_flush(inner, st, config);
}

/// Nothing more is queued: the buffer's partial contents should be written. Not now, but from
/// a task queued behind the tasks already runnable: appenders woken by the same completion
/// (or arriving in the same scheduling round) add their batches first, and one write carries
/// them all instead of one write each. If an overlapping write is still in flight when the
/// task runs, the batches wait and go with the next write.
fn schedule_partial_flush(inner: &Rc<Inner>, st: &mut State, config: &LogConfig) {
    // Only when the write could be issued: while it is blocked, the completion that unblocks
    // it pumps again (scheduling regardless would spin the executor until then).
    if st.flush_scheduled || !can_submit(&st.writer, config) {
        return;
    }
    st.flush_scheduled = true;
    st.writer.stats_mut().flush_tasks += 1;
    let inner = inner.clone();
    spawn_deferred(async move {
        {
            let config = inner.config.borrow();
            let mut st = inner.state.borrow_mut();
            st.flush_scheduled = false;
            if st.writer.busy.is_none() && st.writer.failure.is_none() && !st.abandoned {
                try_submit(&inner, &mut st.writer, &config, true);
            }
        }
        pump(&inner);
    });
}

/// Copies as much of `batch` as fits: the stamped header first, then the body.
fn copy_into(batch: &mut Pending, cur: &mut WriteBuf) {
    let out = cur.buf.as_bytes_mut();
    while batch.copied < batch.data.len() && cur.filled < out.len() {
        let source: &[u8] = if batch.copied < HEADER_BYTES {
            &batch.header.bytes[batch.copied..]
        } else {
            &batch.data[batch.copied..]
        };
        let n = source.len().min(out.len() - cur.filled);
        out[cur.filled..cur.filled + n].copy_from_slice(&source[..n]);
        cur.filled += n;
        batch.copied += n;
    }
}

/// Issues a write of `cur` if allowed: full buffers when fewer than the limit are in flight,
/// partial ones when nothing they overlap is in flight. Returns whether it wrote.
/// Whether `cur` holds unwritten bytes and may be written now: nothing it overlaps is in flight
/// and fewer than the limit of writes are.
fn can_submit(w: &Writer, config: &LogConfig) -> bool {
    w.unsubmitted() > 0 && !w.cur_blocked() && w.inflight.len() < config.max_writes_in_flight
}

fn try_submit(inner: &Rc<Inner>, w: &mut Writer, config: &LogConfig, partial: bool) -> bool {
    if !can_submit(w, config) {
        return false;
    }
    let Some(cur) = w.cur.as_ref() else {
        return false;
    };
    if !partial && cur.space() != 0 {
        return false;
    }
    let Some(mut cur) = w.cur.take() else {
        return false;
    };
    let id = w.next_write_id;
    w.next_write_id += 1;
    let end_pos = cur.file_pos + cur.filled as u64;
    let filled = cur.filled as u64;
    let padded = align_up(filled) as usize;
    w.blocked_by = None;
    // Zero the padding so the bytes after the data on disk read as unwritten.
    cur.buf.as_bytes_mut()[cur.filled..padded].fill(0);
    cur.buf.trim_to_size(padded);
    let keep_from = align_down(filled);
    if keep_from < filled {
        // The last block is unfinished: the next buffer starts with it and rewrites it.
        let mut next = WriteBuf::new(config.write_buffer_bytes, cur.file_pos + keep_from);
        let tail = &cur.buf.as_bytes()[keep_from as usize..cur.filled];
        next.buf.as_bytes_mut()[..tail.len()].copy_from_slice(tail);
        next.filled = tail.len();
        next.submitted = tail.len();
        w.cur = Some(next);
        w.blocked_by = Some(id);
    } else {
        w.next_buf_pos = end_pos;
    }
    {
        let mut stats = w.stats_mut();
        stats.writes += 1;
        stats.bytes_written += padded as u64;
    }
    w.inflight.push_back(InFlight {
        id,
        end_pos,
        result: None,
    });
    let rewrites_head = cur.submitted > 0;
    let written = Written {
        buffer: Rc::new(cur.buf),
        file_pos: cur.file_pos,
        len: cur.filled,
        capacity: config.write_buffer_bytes,
    };
    spawn_deferred(write_buffer(
        inner.clone(),
        w.segment.clone(),
        written,
        id,
        rewrites_head,
    ));
    true
}

/// Writes after a partial flush up to this size are split in two (see [`write_at`]).
const SPLIT_WRITE_MAX_BYTES: usize = 64 * 1024;

/// A buffer handed to a write: it covers the file from `file_pos`, `len` bytes of data (then
/// zero padding to the block), and was allocated `capacity` bytes.
struct Written {
    buffer: Rc<DmaBuffer>,
    file_pos: u64,
    len: usize,
    capacity: usize,
}

/// `rewrites_head`: the buffer starts with the unfinished block of an earlier (completed)
/// partial write.
async fn write_buffer(
    inner: Rc<Inner>,
    segment: Rc<Segment>,
    written: Written,
    id: u64,
    rewrites_head: bool,
) {
    let pos = written.file_pos;
    let len = written.buffer.len();
    let end = pos + len as u64;
    let (reservation, must_wait) = {
        let config = inner.config.borrow();
        let reservation = segment.reserve_ahead(end, &config);
        (reservation, segment.claim_append(pos, end, &config))
    };
    if let Some(reservation) = reservation {
        reservation.await;
    }
    segment.wait_for_zeros(must_wait).await;
    let fault = inner
        .write_fault
        .as_ref()
        .and_then(|fault| fault(segment.base_offset, pos, len));
    let result = match fault {
        Some(error) => Err(error),
        None => {
            let split = rewrites_head && !segment.zeroed(pos, end);
            write_at(&segment, &written.buffer, pos, split).await
        }
    };
    if result.is_ok() && !inner.state.borrow().abandoned {
        cache_written(&inner, &segment, written);
    }
    {
        let mut st = inner.state.borrow_mut();
        if let Some(slot) = st.writer.inflight.iter_mut().find(|w| w.id == id) {
            slot.result =
                Some(result.map_err(|e| IoFailure::new("writing", segment.log_path(), e)));
        }
    }
    pump(&inner);
}

/// Writes `buf` at `pos`. With `split_head`, a small buffer that starts by rewriting the
/// unfinished block of a completed partial write is written as two writes at once, that block
/// and the rest: as one write it covers a written block and unwritten (preallocated) ones,
/// which ext4 does not take as an overwrite, so io_uring hands it to a worker thread (a context
/// switch each way, most of the broker's CPU at moderate rates, where almost every write
/// follows a partial flush). Not needed where the rest is zeroed ahead (see
/// [`crate::segment`]). Larger writes stay whole: the hand-off is small next to them, and
/// splitting copies the rest.
async fn write_at(
    segment: &Segment,
    buf: &Rc<DmaBuffer>,
    pos: u64,
    split_head: bool,
) -> std::io::Result<()> {
    let block = BLOCK_BYTES as usize;
    let len = buf.len();
    if !split_head || len <= block || len > SPLIT_WRITE_MAX_BYTES {
        return write_whole(segment, Rc::clone(buf), pos).await;
    }
    let mut head = glommio::allocate_dma_buffer(block);
    head.as_bytes_mut()
        .copy_from_slice(&buf.as_bytes()[..block]);
    let mut rest = glommio::allocate_dma_buffer(len - block);
    rest.as_bytes_mut()
        .copy_from_slice(&buf.as_bytes()[block..]);
    let (head, rest) = futures_lite::future::zip(
        write_whole(segment, Rc::new(head), pos),
        write_whole(segment, Rc::new(rest), pos + BLOCK_BYTES),
    )
    .await;
    head.and(rest)
}

async fn write_whole(segment: &Segment, buf: Rc<DmaBuffer>, pos: u64) -> std::io::Result<()> {
    let len = buf.len();
    match segment.file.write_rc_at(buf, pos).await {
        Ok(written) if written == len => Ok(()),
        Ok(written) => Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write: {written} of {len} bytes"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Offers a buffer whose write completed to the tail cache. Under-filled buffers (an idle
/// log writes each append from a fresh one) are copied into a right-sized buffer first.
fn cache_written(inner: &Inner, segment: &Segment, written: Written) {
    let Some((cache, id)) = &inner.cache else {
        return;
    };
    let Written {
        mut buffer,
        file_pos,
        len,
        mut capacity,
    } = written;
    if TailCache::should_compact(capacity, len) {
        let mut compact = glommio::allocate_dma_buffer(align_up(len as u64) as usize);
        compact.as_bytes_mut()[..len].copy_from_slice(&buffer.as_bytes()[..len]);
        capacity = compact.len();
        buffer = Rc::new(compact);
        cache.note_compacted();
    }
    cache.insert(*id, segment.base_offset, file_pos, buffer, len, capacity);
}

/// The next queued batch starts a new segment: flush what the old one has, and once every
/// write and sync of it is done, seal it and create the new one.
fn start_roll_when_drained(inner: &Rc<Inner>, st: &mut State, config: &LogConfig) {
    try_submit(inner, &mut st.writer, config, true);
    let w = &st.writer;
    let drained =
        w.inflight.is_empty() && w.copied.is_empty() && w.unsubmitted() == 0 && !w.sync_in_flight;
    if !drained {
        return;
    }
    let Some(front) = st.pending.front_mut() else {
        return;
    };
    front.roll = false;
    let new_base = front.info.base_offset;
    st.writer.busy = Some(Busy::Rolling);
    let old = st.writer.segment.clone();
    spawn_deferred(roll(inner.clone(), old, new_base));
}

/// Switches appends to a new segment, then seals the old one in the background: creating the
/// new segment is all appends wait for; the old segment's trim and fdatasync (milliseconds on
/// a large segment) no longer stall them.
async fn roll(inner: Rc<Inner>, old: Rc<Segment>, new_base: i64) {
    if inner.state.borrow().abandoned {
        return;
    }
    let config = inner.config.borrow().clone();
    let now_ms = inner.clock.now_ms();
    let result = Segment::create(&inner.dir, new_base, &config, now_ms)
        .await
        .map_err(open_error_to_io);
    {
        let mut guard = inner.state.borrow_mut();
        let st = &mut *guard;
        st.writer.busy = None;
        match result {
            Ok(new) => {
                let awaiting: Vec<Copied> = st.writer.awaiting_sync.drain(..).collect();
                st.segments.push(new.clone());
                let stats = st.writer.stats.clone();
                st.writer = Writer::new(new, None, 0, stats);
                st.seal_queue.push_back(SealJob {
                    segment: old,
                    awaiting,
                    next_base: new_base,
                });
                if !st.sealer_running {
                    st.sealer_running = true;
                    spawn_in(inner.background_queue, sealer(inner.clone()));
                }
            }
            Err(error) => {
                // The old segment stays active; the failure path fails what was queued and
                // repairs it.
                st.writer.failure = Some(error);
            }
        }
    }
    pump(&inner);
}

/// A rolled-over segment waiting to be sealed, with the group-commit appends its fdatasync
/// makes durable.
struct SealJob {
    segment: Rc<Segment>,
    awaiting: Vec<Copied>,
    /// Base of the segment after it: once this one is sealed, a checkpoint may name that one.
    next_base: i64,
}

/// Seals rolled-over segments one at a time, in roll order, so a checkpoint naming segment N
/// is written only once every segment before N is sealed (recovery trusts them unscanned).
async fn sealer(inner: Rc<Inner>) {
    loop {
        let job = {
            let mut st = inner.state.borrow_mut();
            if st.abandoned {
                st.seal_queue.clear();
            }
            st.seal_queue.pop_front()
        };
        let Some(job) = job else { break };
        let result = job.segment.seal().await;
        let checkpoint = {
            let mut guard = inner.state.borrow_mut();
            let st = &mut *guard;
            let log_start_offset = st.log_start_offset;
            match result {
                Ok(()) => {
                    for batch in &job.awaiting {
                        complete_ok(batch, log_start_offset);
                    }
                    Some(Checkpoint {
                        log_start_offset,
                        segment_base_offset: job.next_base,
                        segment_position: 0,
                        next_offset: job.next_base,
                        index_entries: 0,
                        time_index_entries: 0,
                    })
                }
                Err(error) => {
                    // The segment's data may not be durable: like a failed fdatasync, this
                    // stops appends; recovery at the next open rescans it.
                    tracing::error!(%error, "sealing a segment failed; the log refuses appends");
                    for batch in &job.awaiting {
                        batch.slot.complete(Err(AppendError::Io(error.clone())));
                    }
                    st.poisoned = Some(error);
                    None
                }
            }
        };
        if let Some(checkpoint) = checkpoint {
            if let Err(error) = checkpoint.write(&inner.dir) {
                tracing::warn!(%error, "writing the recovery checkpoint after a roll failed");
            }
        }
    }
    inner.state.borrow_mut().sealer_running = false;
    pump(&inner);
}

/// Segment files in `dir`, by base offset; deletes index files whose log is gone.
fn list_segments(dir: &Path) -> Result<Vec<i64>, IoFailure> {
    let mut bases = Vec::new();
    let mut orphans = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| IoFailure::new("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| IoFailure::new("listing", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((stem, extension)) = name.split_once('.') else {
            continue;
        };
        if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(base) = stem.parse::<i64>() else {
            continue;
        };
        match extension {
            "log" => bases.push(base),
            "index" | "timeindex" => orphans.push((base, entry.path())),
            _ => {}
        }
    }
    for (base, path) in orphans {
        if !bases.contains(&base) {
            tracing::warn!(path = %path.display(), "deleting index without a log segment");
            std::fs::remove_file(&path).map_err(|e| IoFailure::new("removing", &path, e))?;
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn remove_segment_files(dir: &Path, base: i64) -> Result<(), IoFailure> {
    // Indexes first: a crash in between leaves a log without indexes, which recovery rebuilds.
    for extension in ["index", "timeindex", "log"] {
        let path = dir.join(segment::file_name(base, extension));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(IoFailure::new("removing", &path, e)),
        }
    }
    Ok(())
}

/// Brings one segment's visible extent up to date: keeps the trusted index entries, scans (and
/// re-indexes) from the last of them to the end of the file. Returns where and why the scan
/// stopped early, if it did, and the bytes it scanned.
async fn recover_segment(
    segment: &Segment,
    config: &LogConfig,
    grow_indexes: bool,
) -> Result<(Option<(u64, StopReason)>, u64), IoFailure> {
    let path = segment.log_path().to_path_buf();
    let file_len = segment
        .file
        .file_size()
        .await
        .map_err(|e| IoFailure::new("measuring", &path, e.into()))?;
    {
        // Entries pointing past the end of the file cannot be trusted.
        let mut index = segment.index.borrow_mut();
        let keep = index
            .entries()
            .partition_point(|e| u64::from(e.position()) < file_len);
        index.truncate(keep);
        let last_relative = index.last().map(|e| e.relative_offset());
        let mut time_index = segment.time_index.borrow_mut();
        let keep_time = match last_relative {
            Some(last) => time_index
                .entries()
                .partition_point(|e| e.relative_offset() <= last),
            None => 0,
        };
        time_index.truncate(keep_time);
    }
    if grow_indexes {
        segment.prepare_for_appends(config).await?;
    }
    let (start_offset, start_pos) = match segment.index.borrow().last() {
        Some(e) => (
            segment.base_offset + i64::from(e.relative_offset()),
            u64::from(e.position()),
        ),
        None => (segment.base_offset, 0),
    };
    let trusted_max = segment
        .time_index
        .borrow()
        .last()
        .map_or((-1, segment.base_offset), |e| {
            (
                e.timestamp(),
                segment.base_offset + i64::from(e.relative_offset()),
            )
        });
    segment.reset_meta(start_pos, start_offset, trusted_max);
    let interval = config.index_interval_bytes;
    let scan = segment::scan_file(
        &segment.file,
        &path,
        start_pos,
        file_len,
        start_offset,
        |position, header| segment.record_batch(position, header, interval),
    )
    .await?;
    let meta = segment.meta();
    assert_eq!(meta.size_bytes, scan.valid_end);
    let stop = scan
        .stop
        .filter(|(_, reason)| *reason != StopReason::ZeroFill);
    Ok((stop, scan.bytes_read))
}

/// How a queued batch's header is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    /// A producer batch on the leader: the log assigns its base offset, LogAppendTime when
    /// the topic uses it, and the leader epoch once one is set.
    Leader,
    /// A batch copied from the leader: stored as it is.
    Replica,
}

/// When the epoch cache in memory changes relative to its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EpochWrite {
    /// Only once the file is written: the entry is for a batch about to be queued, which is
    /// refused if the write fails, so memory and file stay equal.
    FileFirst,
    /// Before the file is written: the log already changed (truncation, retention), and the
    /// cache must describe the log even if the file lags; opening repairs a file that is ahead.
    MemoryFirst,
}

/// Splits a replica's `records` into whole batches, each checked as stored data (framing,
/// CRC, at most `max_bytes`), and checks that each starts where the one before it ends.
fn split_replica_batches(
    records: &Bytes,
    max_bytes: usize,
) -> Result<Vec<(Bytes, BatchHeader)>, ReplicaAppendError> {
    let invalid = |error| ReplicaAppendError::Append(AppendError::InvalidBatch(error));
    let mut batches: Vec<(Bytes, BatchHeader)> = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let rest = &records[at..];
        let declared = BatchHeader::decode_checked(rest, max_bytes).map_err(invalid)?;
        let total = declared.total_bytes();
        if total > rest.len() {
            return Err(invalid(batch::BatchError::LengthMismatch {
                declared: i64::from(declared.batch_length),
                actual_bytes: rest.len(),
            }));
        }
        let data = records.slice(at..at + total);
        let header = batch::validate(&data, max_bytes).map_err(invalid)?;
        if let Some((_, previous)) = batches.last() {
            if header.base_offset != previous.next_offset() {
                return Err(ReplicaAppendError::OffsetMismatch {
                    expected: previous.next_offset(),
                    actual: header.base_offset,
                });
            }
        }
        batches.push((data, header));
        at += total;
    }
    Ok(batches)
}

/// The epoch cache at open: the `leader-epoch-checkpoint` trimmed to the recovered log, or,
/// when the file is missing on a non-empty log or unreadable, rebuilt from the batch headers.
async fn load_epochs(
    dir: &Path,
    segments: &[Rc<Segment>],
    log_start_offset: i64,
    log_end_offset: i64,
) -> Result<EpochCache, IoFailure> {
    let stored = match leader_epochs::read(dir) {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "rebuilding the leader-epoch cache from the log");
            None
        }
    };
    let (mut epochs, mut changed) = match stored {
        Some(epochs) => (epochs, false),
        // A fresh log: the file is written now, so a missing one later means it was lost.
        None if log_end_offset <= log_start_offset => (EpochCache::new(), true),
        None => (rebuild_epochs(segments).await?, true),
    };
    // The file is never behind the log but may be ahead of it: a crash before queued batches
    // landed, or between a truncation or retention and the file's update.
    changed |= epochs.truncate_from_end(log_end_offset);
    changed |= epochs.truncate_from_start(log_start_offset);
    if changed {
        leader_epochs::write(dir, &epochs)?;
    }
    Ok(epochs)
}

/// Rebuilds the epoch cache by walking every batch header of every segment. Its cost is one
/// sequential read of the whole log, 64 KiB at a time (the recovery scan's pattern, without the
/// CRC work): paid only at an open that finds the file missing or damaged, never on the append
/// path, and bounded by the log's size (retention bounds that). A segment that turns out
/// damaged ends the walk there with a warning; what was found before it is kept.
async fn rebuild_epochs(segments: &[Rc<Segment>]) -> Result<EpochCache, IoFailure> {
    let epochs = RefCell::new(EpochCache::new());
    for segment in segments {
        let end = segment.meta().size_bytes;
        let walk = find_batch(segment, 0, end, 64 << 10, |header| {
            epochs
                .borrow_mut()
                .assign(header.partition_leader_epoch, header.base_offset);
            false
        })
        .await;
        match walk {
            Ok(_) => {}
            Err(ReadError::Io(error)) => return Err(error),
            Err(error) => {
                tracing::warn!(%error, "leader-epoch rebuild stopped at damaged data");
                break;
            }
        }
    }
    Ok(epochs.into_inner())
}

impl PartitionLog {
    /// Opens (creating if needed) the log in `dir`, recovering it if it was not closed cleanly.
    pub async fn open(dir: &Path, config: LogConfig) -> Result<(Self, RecoveryReport), OpenError> {
        Self::open_with(dir, config, OpenOptions::default()).await
    }

    pub async fn open_with(
        dir: &Path,
        config: LogConfig,
        options: OpenOptions,
    ) -> Result<(Self, RecoveryReport), OpenError> {
        let started = Instant::now();
        let config = config.normalized();
        std::fs::create_dir_all(dir).map_err(|e| IoFailure::new("creating", dir, e))?;
        let now_ms = options.clock.now_ms();
        let bases = list_segments(dir)?;
        let checkpoint = Checkpoint::read(dir);
        let clean = checkpoint.is_some() && checkpoint::has_clean_marker(dir);
        let mut report = RecoveryReport {
            clean_shutdown: clean,
            segments: 0,
            scanned_bytes: 0,
            corruption: None,
            dropped_segments: Vec::new(),
            log_start_offset: 0,
            log_end_offset: 0,
            duration: Duration::ZERO,
        };
        let mut segments: Vec<Rc<Segment>> = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            if report.corruption.is_some() {
                remove_segment_files(dir, base)?;
                report.dropped_segments.push(base);
                continue;
            }
            let trusted_fully = clean || checkpoint.is_some_and(|c| base < c.segment_base_offset);
            let trusted = match checkpoint {
                _ if trusted_fully => (usize::MAX, usize::MAX),
                Some(c) if c.segment_base_offset == base => {
                    (c.index_entries as usize, c.time_index_entries as usize)
                }
                _ => (0, 0),
            };
            let segment = Segment::open(dir, base, trusted, now_ms).await?;
            let is_last = i + 1 == bases.len();
            let (stop, scanned) = recover_segment(&segment, &config, !trusted_fully).await?;
            report.scanned_bytes += scanned;
            if let Some(previous) = segments.last() {
                if previous.meta().next_offset > base {
                    // Overlaps its predecessor: not a segment this log wrote. Drop it and
                    // everything after it.
                    report.corruption = Some(Corruption {
                        segment_base_offset: base,
                        position: 0,
                        reason: StopReason::OffsetGap {
                            expected: previous.meta().next_offset,
                            found: base,
                        },
                        discarded_bytes: segment.meta().size_bytes,
                    });
                    drop(segment);
                    remove_segment_files(dir, base)?;
                    report.dropped_segments.push(base);
                    continue;
                }
            }
            if let Some((position, reason)) = stop {
                let file_len = segment.file.file_size().await.unwrap_or(position);
                tracing::warn!(
                    dir = %dir.display(), segment = base, position, %reason,
                    "corrupt or torn data found; truncating the log there"
                );
                report.corruption = Some(Corruption {
                    segment_base_offset: base,
                    position,
                    reason,
                    discarded_bytes: file_len.saturating_sub(position),
                });
            }
            if !is_last && !trusted_fully && report.corruption.is_none() {
                segment.seal().await?;
            }
            segments.push(segment);
        }
        if segments.is_empty() {
            let base = checkpoint.map_or(0, |c| c.log_start_offset);
            segments.push(Segment::create(dir, base, &config, now_ms).await?);
        }
        checkpoint::remove_clean_marker(dir)?;
        let active = segments.last().expect("at least one segment").clone();
        let size = active.meta().size_bytes;
        // Cut whatever follows the valid data first: truncating would also free preallocation.
        active.truncate_file(size).await?;
        active.prepare_for_appends(&config).await?;
        let (cur, next_buf_pos) = load_tail(&active, size, config.write_buffer_bytes).await?;
        let log_start_offset = checkpoint
            .map_or(i64::MIN, |c| c.log_start_offset)
            .max(segments[0].base_offset);
        let meta = active.meta();
        report.segments = segments.len();
        report.log_start_offset = log_start_offset;
        report.log_end_offset = meta.next_offset;
        let epochs = load_epochs(dir, &segments, log_start_offset, meta.next_offset).await?;
        let state = State {
            segments,
            log_start_offset,
            next_offset: meta.next_offset,
            tail_base: active.base_offset,
            tail_bytes: meta.size_bytes,
            tail_created_ms: meta.created_ms,
            pending: VecDeque::new(),
            pending_bytes: 0,
            writer: Writer::new(active, cur, next_buf_pos, Rc::default()),
            flush_scheduled: false,
            abandoned: false,
            failing_writes: false,
            seal_queue: VecDeque::new(),
            sealer_running: false,
            blocked: false,
            closed: false,
            poisoned: None,
            epochs,
            leader_epoch: None,
        };
        let log = Self {
            inner: Rc::new(Inner {
                dir: dir.to_path_buf(),
                config: RefCell::new(config),
                clock: options.clock,
                write_fault: options.write_fault,
                background_queue: options.background_queue,
                state: RefCell::new(state),
                progress: Event::new(),
                admin: Semaphore::new(1),
                cache: options.tail_cache.map(|cache| {
                    let id = cache.register();
                    (cache, id)
                }),
                read_ahead: RefCell::new(crate::fetch::ReadAheads::default()),
            }),
        };
        // Everything is verified now: checkpoint it so the next recovery starts here.
        log.write_checkpoint().await?;
        report.duration = started.elapsed();
        Ok((log, report))
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn config(&self) -> LogConfig {
        self.inner.config.borrow().clone()
    }

    /// Changes the topic settings; they apply to the next appends and retention runs.
    pub fn set_config(&self, config: LogConfig) {
        *self.inner.config.borrow_mut() = config.normalized();
    }

    /// Write-path counters since the log was opened.
    pub fn stats(&self) -> LogStats {
        *self.inner.state.borrow().writer.stats.borrow()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.inner.state.borrow().log_start_offset
    }

    /// The offset after the last visible (written) batch.
    pub fn log_end_offset(&self) -> i64 {
        self.inner.state.borrow().log_end_offset()
    }

    /// Bytes in all segments (visible data).
    pub fn size_bytes(&self) -> u64 {
        let st = self.inner.state.borrow();
        st.segments.iter().map(|s| s.meta().size_bytes).sum()
    }

    pub fn segment_base_offsets(&self) -> Vec<i64> {
        let st = self.inner.state.borrow();
        st.segments.iter().map(|s| s.base_offset).collect()
    }

    /// The largest timestamp in the log and the offset of its batch's last record (ListOffsets
    /// with MAX_TIMESTAMP), or `None` when the log is empty.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        let st = self.inner.state.borrow();
        st.segments
            .iter()
            .map(|s| s.meta())
            .filter(|m| m.size_bytes > 0)
            .max_by_key(|m| m.max_timestamp)
            .map(|m| (m.max_timestamp, m.offset_of_max_timestamp))
    }

    /// Makes this replica the leader in `epoch`: from now on, batches appended through
    /// [`append`](Self::append), [`append_checked`](Self::append_checked) and
    /// [`enqueue_checked`](Self::enqueue_checked) carry `epoch` in their partitionLeaderEpoch
    /// (before the first call they keep whatever the producer sent, -1 in practice). An epoch
    /// above the cache's latest starts at the next offset to assign, queued appends counted,
    /// as Kafka records a new leader's epoch, and the `leader-epoch-checkpoint` is written
    /// (a blocking fsync of a small file) before this returns, so before anything later is
    /// queued. An epoch at or below the latest only changes what is stamped: the controller
    /// never moves a leader's epoch back, and the cache keeps its history if it does.
    pub fn set_leader_epoch(&self, epoch: i32) -> Result<(), LogError> {
        assert!(epoch >= 0, "leader epochs are not negative: {epoch}");
        let next_offset = {
            let st = self.inner.state.borrow();
            if st.closed {
                return Err(LogError::Closed);
            }
            st.next_offset
        };
        self.change_epochs(EpochWrite::FileFirst, |epochs| {
            epochs.assign(epoch, next_offset)
        })?;
        self.inner.state.borrow_mut().leader_epoch = Some(epoch);
        Ok(())
    }

    /// The epoch stamped on leader appends, if [`set_leader_epoch`](Self::set_leader_epoch)
    /// was called on this open log.
    pub fn leader_epoch(&self) -> Option<i32> {
        self.inner.state.borrow().leader_epoch
    }

    /// The latest leader epoch that wrote (or is writing) this log, if any.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.inner.state.borrow().epochs.latest_epoch()
    }

    /// A copy of the leader-epoch cache (a handful of entries).
    pub fn epochs(&self) -> EpochCache {
        self.inner.state.borrow().epochs.clone()
    }

    /// OffsetForLeaderEpoch (KIP-279): the largest epoch at or below `epoch` and its end
    /// offset, the latest epoch ending at the log end offset (see
    /// [`EpochCache::end_offset_for`]). `(-1, -1)` when nothing is known.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let st = self.inner.state.borrow();
        st.epochs.end_offset_for(epoch, st.log_end_offset())
    }

    /// Appends one producer batch: validates it, assigns its offsets and returns once it is
    /// written (and synced, under group commit). Nothing of a refused batch is stored.
    pub async fn append(&self, batch: Bytes) -> Result<AppendInfo, AppendError> {
        self.append_checked(batch, |_, _| Ok::<(), std::convert::Infallible>(()))
            .await
            .map_err(|error| match error {
                CheckedAppendError::Append(error) => error,
                CheckedAppendError::Refused(never) => match never {},
            })
    }

    /// [`append`](Self::append), with `admit` deciding at the last moment whether the batch
    /// goes in: it is called with the validated header and the base offset the batch will get,
    /// synchronously right before the batch is queued, so nothing else can be queued on this
    /// log between the decision and the assignment of offsets. The idempotent producer's
    /// sequence checks need exactly that: the state `admit` consults and updates moves in the
    /// same order as the log. `admit` is not called for a batch refused as invalid, nor when
    /// the log is closed or poisoned.
    pub async fn append_checked<E>(
        &self,
        batch: Bytes,
        admit: impl FnOnce(&BatchHeader, i64) -> Result<(), E>,
    ) -> Result<AppendInfo, CheckedAppendError<E>> {
        let appending = self.enqueue_checked(batch, admit).await?;
        Ok(appending.await?)
    }

    /// The first half of [`append_checked`](Self::append_checked): returns as soon as the
    /// batch has its offsets and its place in the write queue (waiting only while the queue is
    /// full), with the rest, its write, as a future. A batch queued by a later call comes after
    /// it in the log, so a caller can take its next batch while this one is written (a
    /// connection pipelining produce requests keeps their order this way).
    pub async fn enqueue_checked<E>(
        &self,
        batch: Bytes,
        admit: impl FnOnce(&BatchHeader, i64) -> Result<(), E>,
    ) -> Result<Appending, CheckedAppendError<E>> {
        let (max_bytes, max_pending) = {
            let config = self.inner.config.borrow();
            (config.max_message_bytes, config.max_pending_bytes)
        };
        if batch.len() > max_bytes {
            return Err(AppendError::TooLarge {
                size_bytes: batch.len(),
                max_bytes,
            }
            .into());
        }
        let header = batch::validate(&batch, max_bytes).map_err(AppendError::InvalidBatch)?;
        batch::check_producer_batch(&header, &batch).map_err(AppendError::InvalidBatch)?;
        let base_offset = self.wait_for_room(batch.len(), max_pending).await?;
        // Before `admit`: a batch it refuses leaves an entry saying the epoch starts at the
        // next offset, which is true of whatever is appended next, while a file write failing
        // after `admit` would undo a decision the caller already acted on.
        self.assign_leader_epoch_at(base_offset)
            .map_err(AppendError::Io)?;
        admit(&header, base_offset).map_err(CheckedAppendError::Refused)?;
        let slot = self.enqueue(batch, header, Stamp::Leader);
        pump(&self.inner);
        Ok(Appending(SlotFuture(slot)))
    }

    /// Waits until `len` more bytes may be queued and nothing holds appends back; returns the
    /// next offset to assign. The caller queues synchronously after it returns, so that offset
    /// is still the next one then.
    async fn wait_for_room(&self, len: usize, max_pending: usize) -> Result<i64, AppendError> {
        loop {
            let listener = self.inner.progress.listen();
            {
                let st = self.inner.state.borrow();
                if st.closed {
                    return Err(AppendError::Closed);
                }
                if let Some(error) = &st.poisoned {
                    return Err(AppendError::Io(error.clone()));
                }
                let room = st.pending.is_empty() || st.pending_bytes + len <= max_pending;
                if !st.blocked && room {
                    return Ok(st.next_offset);
                }
            }
            listener.await;
        }
    }

    /// Appends batches copied from the leader, offsets and leader epochs already assigned:
    /// `records` holds one or more whole batches. Each is checked (framing, length, CRC, at
    /// most `max.message.bytes`) but not as a producer batch; the first must start at the log
    /// end offset, queued batches counted, and each must start where the one before it ends.
    /// Otherwise nothing is stored. The batches are stored byte for byte, through the same
    /// write queue, group commit, tail cache and segment rolls as leader appends; a batch whose
    /// leader epoch is above the cache's latest starts that epoch in the cache (written to the
    /// `leader-epoch-checkpoint` before the batch is queued). Returns once all are written
    /// (and synced, under group commit), with the first base offset and the last offset.
    pub async fn append_replica(&self, records: Bytes) -> Result<AppendInfo, ReplicaAppendError> {
        let (max_bytes, max_pending) = {
            let config = self.inner.config.borrow();
            (config.max_message_bytes, config.max_pending_bytes)
        };
        let batches = split_replica_batches(&records, max_bytes)?;
        let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
            let empty = batch::BatchError::TooShort { actual_bytes: 0 };
            return Err(AppendError::InvalidBatch(empty).into());
        };
        let (first_offset, last_offset) = (first.1.base_offset, last.1.last_offset());
        let expected = self.wait_for_room(records.len(), max_pending).await?;
        if first_offset != expected {
            return Err(ReplicaAppendError::OffsetMismatch {
                expected,
                actual: first_offset,
            });
        }
        self.change_epochs(EpochWrite::FileFirst, |epochs| {
            batches.iter().fold(false, |changed, (_, header)| {
                epochs.assign(header.partition_leader_epoch, header.base_offset) || changed
            })
        })
        .map_err(AppendError::Io)?;
        let slots: Vec<Rc<Slot>> = batches
            .into_iter()
            .map(|(data, header)| self.enqueue(data, header, Stamp::Replica))
            .collect();
        pump(&self.inner);
        let mut outcome = Ok(());
        for slot in slots {
            // Every slot is awaited, so none is left to complete after the caller moved on.
            if let Err(error) = SlotFuture(slot).await {
                outcome = outcome.and(Err(error));
            }
        }
        outcome?;
        Ok(AppendInfo {
            base_offset: first_offset,
            last_offset,
            log_append_time_ms: None,
            log_start_offset: self.log_start_offset(),
        })
    }

    /// Under a leader epoch new to the cache, records that it starts at `base_offset` (the
    /// batch about to be queued there) and writes the file before the batch is queued.
    fn assign_leader_epoch_at(&self, base_offset: i64) -> Result<(), IoFailure> {
        let epoch = {
            let st = self.inner.state.borrow();
            match st.leader_epoch {
                Some(epoch) if st.epochs.latest_epoch() < Some(epoch) => epoch,
                _ => return Ok(()),
            }
        };
        self.change_epochs(EpochWrite::FileFirst, |epochs| {
            epochs.assign(epoch, base_offset)
        })?;
        Ok(())
    }

    /// Applies `change` to the epoch cache and, if it changed anything, rewrites the
    /// `leader-epoch-checkpoint`. Returns whether it changed. See [`EpochWrite`] for what a
    /// failed write leaves in memory.
    fn change_epochs(
        &self,
        order: EpochWrite,
        change: impl FnOnce(&mut EpochCache) -> bool,
    ) -> Result<bool, IoFailure> {
        let mut epochs = self.inner.state.borrow().epochs.clone();
        if !change(&mut epochs) {
            return Ok(false);
        }
        if order == EpochWrite::MemoryFirst {
            self.inner.state.borrow_mut().epochs = epochs.clone();
        }
        leader_epochs::write(&self.inner.dir, &epochs)?;
        self.inner.state.borrow_mut().epochs = epochs;
        Ok(true)
    }

    fn enqueue(&self, data: Bytes, header: BatchHeader, stamp: Stamp) -> Rc<Slot> {
        let config = self.inner.config.borrow();
        let now_ms = self.inner.clock.now_ms();
        let mut st = self.inner.state.borrow_mut();
        let size = data.len() as u64;
        let span = i64::from(header.last_offset_delta) + 1;
        let relative_end = st.next_offset + span - st.tail_base;
        let roll = st.tail_bytes > 0
            && (st.tail_bytes + size > config.segment_bytes
                || now_ms.saturating_sub(st.tail_created_ms) >= config.segment_ms
                || relative_end > i64::from(u32::MAX));
        if roll {
            st.tail_base = st.next_offset;
            st.tail_bytes = 0;
            st.tail_created_ms = now_ms;
        }
        st.tail_bytes += size;
        let base_offset = st.next_offset;
        st.next_offset += span;
        let (stamped, log_append_time_ms) = match stamp {
            Stamp::Leader => {
                let log_append_time_ms = (config.message_timestamp_type
                    == TimestampType::LogAppendTime)
                    .then_some(now_ms);
                let mut stamped = StampedHeader::stamp(&data, base_offset, log_append_time_ms);
                if let Some(epoch) = st.leader_epoch {
                    stamped.set_partition_leader_epoch(epoch);
                }
                (stamped, log_append_time_ms)
            }
            Stamp::Replica => {
                assert_eq!(
                    header.base_offset, base_offset,
                    "replica batches are checked to continue the log before they are queued"
                );
                (StampedHeader::unchanged(&data), None)
            }
        };
        let info = BatchHeader::decode(&stamped.bytes).expect("61 bytes were given");
        let slot = Rc::new(Slot::default());
        st.pending_bytes += data.len();
        st.pending.push_back(Pending {
            header: stamped,
            data,
            info,
            copied: 0,
            position: 0,
            roll,
            log_append_time_ms,
            slot: slot.clone(),
        });
        slot
    }

    /// Reads whole batches from `offset` on: at least one batch (even if larger than
    /// `max_bytes`, as KIP-74 asks), then more while they fit in `max_bytes`, only batches
    /// entirely below `upper_bound` (exclusive; the high watermark later), from one segment.
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        upper_bound: Option<i64>,
    ) -> Result<FetchedBatches, ReadError> {
        let upper = self.read_bound(offset, upper_bound)?;
        if offset >= upper {
            return Ok(FetchedBatches::empty(offset));
        }
        let Some(segment) = self.segment_from(offset) else {
            return Ok(FetchedBatches::empty(offset));
        };
        let interval = self.inner.config.borrow().index_interval_bytes as usize;
        read_segment(&segment, offset, max_bytes, upper, interval).await
    }

    /// The first segment, from the one `offset` falls in on, that holds batches at or after
    /// `offset`; `None` when no batch does.
    fn segment_from(&self, offset: i64) -> Option<Rc<Segment>> {
        let st = self.inner.state.borrow();
        st.segments[st.segment_index(offset)..]
            .iter()
            .find(|segment| offset < segment.meta().next_offset)
            .cloned()
    }

    /// Starts reading ahead for a reader whose next fetch is at `offset`, at `position` of
    /// `segment`, or at the start of the next segment when that one ends there.
    fn read_ahead_from(&self, segment: Rc<Segment>, offset: i64, position: u64, max_bytes: usize) {
        let mut segment = segment;
        let mut position = position;
        if position >= segment.meta().size_bytes && segment.meta().next_offset == offset {
            let next = self
                .inner
                .state
                .borrow()
                .segments
                .iter()
                .find(|s| s.base_offset == offset)
                .cloned();
            let Some(next) = next else { return };
            segment = next;
            position = 0;
        }
        let window = fetch::window_bytes(max_bytes);
        if let Some(stream) = fetch::start_stream(segment, offset, position, window) {
            self.inner.read_ahead.borrow_mut().put(stream);
        }
    }

    /// Checks that a read may start at `offset` and returns the offset it must stay below.
    fn read_bound(&self, offset: i64, upper_bound: Option<i64>) -> Result<i64, ReadError> {
        let st = self.inner.state.borrow();
        let (log_start, log_end) = (st.log_start_offset, st.log_end_offset());
        if offset < log_start || offset > log_end {
            return Err(ReadError::OffsetOutOfRange {
                offset,
                log_start_offset: log_start,
                log_end_offset: log_end,
            });
        }
        Ok(upper_bound.map_or(log_end, |u| u.min(log_end)))
    }

    /// Reads whole batches for a consumer, as [`PartitionLog::read`] does, from the tail
    /// cache when it holds them, else from a sequential reader's read-ahead, else from the
    /// disk (then starting read-ahead for the next fetch). The bytes are returned in the
    /// buffers they are held or were read into.
    pub async fn fetch(
        &self,
        offset: i64,
        max_bytes: usize,
        upper_bound: Option<i64>,
    ) -> Result<FetchedRecords, ReadError> {
        let upper = self.read_bound(offset, upper_bound)?;
        if offset >= upper {
            return Ok(FetchedRecords::empty(offset));
        }
        if let Some((cache, id)) = &self.inner.cache {
            if let Some(hit) = cache.read(*id, offset, max_bytes, upper) {
                // A reader that caught up with the cache needs no read-ahead any more.
                self.inner.read_ahead.borrow_mut().take(offset);
                return Ok(FetchedRecords {
                    pieces: hit.slices.into_iter().map(RecordPiece::Cached).collect(),
                    first_offset: hit.first_offset,
                    next_offset: hit.next_offset,
                    batch_count: hit.batch_count,
                    bytes: hit.bytes,
                    source: ReadSource::TailCache,
                });
            }
        }
        let stream = self.inner.read_ahead.borrow_mut().take(offset);
        if let Some(stream) = stream {
            if let Some(read) = fetch::read_stream(stream, max_bytes, upper).await? {
                match read.next {
                    Ok(next) => self.inner.read_ahead.borrow_mut().put(next),
                    Err((segment, offset, position)) => {
                        self.read_ahead_from(segment, offset, position, max_bytes);
                    }
                }
                return Ok(read.records);
            }
        }
        self.fetch_from_disk(offset, max_bytes, upper).await
    }

    async fn fetch_from_disk(
        &self,
        offset: i64,
        max_bytes: usize,
        upper: i64,
    ) -> Result<FetchedRecords, ReadError> {
        let Some(segment) = self.segment_from(offset) else {
            return Ok(FetchedRecords::empty(offset));
        };
        let interval = self.inner.config.borrow().index_interval_bytes as usize;
        let read = read_segment(&segment, offset, max_bytes, upper, interval).await?;
        let Some(data) = read.data.filter(|_| read.batch_count > 0) else {
            return Ok(FetchedRecords::empty(offset));
        };
        self.read_ahead_from(segment, read.next_offset, read.end_position, max_bytes);
        Ok(FetchedRecords {
            bytes: data.len(),
            pieces: vec![RecordPiece::Disk(data)],
            first_offset: read.first_offset,
            next_offset: read.next_offset,
            batch_count: read.batch_count,
            source: ReadSource::Disk,
        })
    }

    /// The first offset whose record timestamp is at or after `timestamp` (ListOffsets by
    /// time), or `None` when every record is older.
    pub async fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> Result<Option<TimestampOffset>, ReadError> {
        let segment = {
            let st = self.inner.state.borrow();
            st.segments
                .iter()
                .find(|s| s.meta().size_bytes > 0 && s.meta().max_timestamp >= timestamp)
                .cloned()
        };
        let Some(segment) = segment else {
            return Ok(None);
        };
        let start = {
            let time_index = segment.time_index.borrow();
            match time_index.last_before(timestamp) {
                Some(entry) => {
                    segment
                        .index_floor(segment.base_offset + i64::from(entry.relative_offset()))
                        .1
                }
                None => 0,
            }
        };
        let end = segment.meta().size_bytes;
        let found = find_batch(&segment, start, end, 64 << 10, |h| {
            h.max_timestamp >= timestamp
        })
        .await?;
        let Some((_, header, bytes)) = found else {
            return Ok(None);
        };
        let batch_bytes = &bytes[..header.total_bytes()];
        if header.timestamp_type() == TimestampType::LogAppendTime {
            return Ok(Some(TimestampOffset {
                offset: header.base_offset,
                timestamp: header.max_timestamp,
                exact: true,
            }));
        }
        if header.compression() != batch::Compression::None {
            return Ok(Some(TimestampOffset {
                offset: header.base_offset,
                timestamp: header.max_timestamp,
                exact: false,
            }));
        }
        let records = batch::uncompressed_records(batch_bytes).map_err(|e| ReadError::Corrupt {
            segment_base_offset: segment.base_offset,
            position: start,
            reason: StopReason::Invalid(e),
        })?;
        let exact = records.iter().find_map(|r| {
            let ts = header.base_timestamp + r.timestamp_delta;
            (ts >= timestamp).then(|| TimestampOffset {
                offset: header.base_offset + i64::from(r.offset_delta),
                timestamp: ts,
                exact: true,
            })
        });
        Ok(exact)
    }

    /// Serializes administrative operations with each other.
    async fn admin_permit(&self) -> Result<glommio::sync::Permit<'_>, LogError> {
        self.inner
            .admin
            .acquire_permit(1)
            .await
            .map_err(|_| LogError::Closed)
    }

    /// Waits until every queued append is written (and synced, under group commit).
    async fn wait_idle(&self) {
        loop {
            let listener = self.inner.progress.listen();
            if self.inner.state.borrow().idle() {
                return;
            }
            listener.await;
        }
    }

    /// Runs `work` with appends held back and the write path idle, so it may change segments.
    async fn exclusive<T>(
        &self,
        work: impl AsyncFnOnce() -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        let _permit = self.admin_permit().await?;
        if self.inner.state.borrow().closed {
            return Err(LogError::Closed);
        }
        self.inner.state.borrow_mut().blocked = true;
        self.wait_idle().await;
        let result = work().await;
        self.inner.state.borrow_mut().blocked = false;
        self.inner.progress.notify(usize::MAX);
        result
    }

    /// Removes every batch whose last offset is at or after `offset` (replication truncates a
    /// divergent tail with it). A batch containing `offset` goes whole, so the new end may be
    /// below `offset`. At or below the log start, the log is emptied and restarts at `offset`.
    /// Returns the new log end offset.
    pub async fn truncate_to(&self, offset: i64) -> Result<i64, LogError> {
        self.exclusive(async || self.truncate_now(offset).await)
            .await
    }

    async fn truncate_now(&self, offset: i64) -> Result<i64, LogError> {
        let config = self.config();
        let (log_start, log_end) = {
            let st = self.inner.state.borrow();
            (st.log_start_offset, st.log_end_offset())
        };
        if offset >= log_end {
            return Ok(log_end);
        }
        let dir = self.inner.dir.clone();
        if offset <= log_start {
            // Unlink first (open readers keep their inodes), create the new segment, then
            // swap: the state always has an active segment.
            let old = self.segment_base_offsets();
            for base in old {
                remove_segment_files(&dir, base)?;
            }
            let fresh = Segment::create(&dir, offset, &config, self.inner.clock.now_ms())
                .await
                .map_err(open_error_to_io)?;
            self.inner.state.borrow_mut().segments = vec![fresh.clone()];
            self.install_active(fresh, offset, offset).await?;
            self.change_epochs(EpochWrite::MemoryFirst, |epochs| {
                let changed = !epochs.is_empty();
                *epochs = EpochCache::new();
                changed
            })?;
            self.write_checkpoint().await?;
            return Ok(offset);
        }
        let (keep, dropped) = {
            let mut st = self.inner.state.borrow_mut();
            let index = st.segment_index(offset);
            let dropped = st.segments.split_off(index + 1);
            (st.segments[index].clone(), dropped)
        };
        for segment in &dropped {
            remove_segment_files(&dir, segment.base_offset)?;
        }
        // Find the first batch whose last offset reaches `offset`.
        let (_, from) = keep.index_floor(offset);
        let end = keep.meta().size_bytes;
        let found = find_batch(&keep, from, end, 64 << 10, |h| h.last_offset() >= offset)
            .await
            .map_err(|e| match e {
                ReadError::Io(io) => LogError::Io(io),
                other => LogError::Io(IoFailure::new(
                    "truncating",
                    keep.log_path(),
                    std::io::Error::other(other.to_string()),
                )),
            })?;
        let (cut_pos, new_end) = match found {
            Some((position, header, _)) => (position, header.base_offset),
            None => (end, keep.meta().next_offset),
        };
        keep.truncate_file(cut_pos).await?;
        {
            let mut index = keep.index.borrow_mut();
            let keep_entries = index
                .entries()
                .partition_point(|e| u64::from(e.position()) < cut_pos);
            index.truncate(keep_entries);
            let mut time_index = keep.time_index.borrow_mut();
            let relative_end = new_end - keep.base_offset;
            let keep_time = time_index
                .entries()
                .partition_point(|e| i64::from(e.relative_offset()) < relative_end);
            time_index.truncate(keep_time);
        }
        // Re-derive the visible extent (and max timestamp) by scanning from the last entry.
        keep.prepare_for_appends(&config).await?;
        recover_segment(&keep, &config, false).await?;
        assert_eq!(keep.meta().size_bytes, cut_pos);
        let log_start = self.inner.state.borrow().log_start_offset;
        self.install_active(keep, new_end, log_start).await?;
        self.change_epochs(EpochWrite::MemoryFirst, |epochs| {
            epochs.truncate_from_end(new_end)
        })?;
        self.write_checkpoint().await?;
        Ok(new_end)
    }

    /// Makes `segment` the active one (it must be last in the list, or the list is empty).
    async fn install_active(
        &self,
        segment: Rc<Segment>,
        next_offset: i64,
        log_start_offset: i64,
    ) -> Result<(), IoFailure> {
        // The file is rewritten from here on (truncation): nothing cached may outlive that.
        self.inner.forget_cached();
        let capacity = self.inner.config.borrow().write_buffer_bytes;
        let size = segment.meta().size_bytes;
        let (cur, next_buf_pos) = load_tail(&segment, size, capacity).await?;
        let mut st = self.inner.state.borrow_mut();
        if st.segments.last().is_none_or(|s| !Rc::ptr_eq(s, &segment)) {
            st.segments.push(segment.clone());
        }
        st.log_start_offset = log_start_offset;
        st.next_offset = next_offset;
        st.tail_base = segment.base_offset;
        st.tail_bytes = size;
        st.tail_created_ms = segment.meta().created_ms;
        let stats = st.writer.stats.clone();
        st.writer = Writer::new(segment, cur, next_buf_pos, stats);
        Ok(())
    }

    /// Deletes whole segments that retention.ms or retention.bytes expire (never the active
    /// one) and advances the log start offset. Readers already inside a deleted segment finish
    /// reading it (the file stays open until they drop it). Returns the deleted base offsets.
    pub async fn enforce_retention(&self) -> Result<Vec<i64>, LogError> {
        let config = self.config();
        let now_ms = self.inner.clock.now_ms();
        self.drop_leading_segments(|meta, total_after| {
            let newest = if meta.max_timestamp >= 0 {
                meta.max_timestamp
            } else {
                meta.created_ms
            };
            let expired_by_time =
                config.retention_ms >= 0 && now_ms.saturating_sub(newest) > config.retention_ms;
            let over_size = config.retention_bytes >= 0 && total_after >= config.retention_bytes;
            expired_by_time || over_size
        })
        .await
    }

    /// Deletes the oldest segments whose every offset is below `offset` (never the active
    /// one) and moves the log start offset to the first remaining segment: for logs whose
    /// owner knows everything before `offset` is superseded (the consumer-offsets topic after
    /// it rewrote its live entries). Returns the base offsets of the deleted segments.
    pub async fn delete_segments_before(&self, offset: i64) -> Result<Vec<i64>, LogError> {
        self.drop_leading_segments(|meta, _| meta.next_offset <= offset)
            .await
    }

    /// Deletes leading non-active segments while `doomed(meta, bytes left after deleting it)`
    /// holds.
    async fn drop_leading_segments(
        &self,
        mut doomed: impl FnMut(&segment::SegmentMeta, i64) -> bool,
    ) -> Result<Vec<i64>, LogError> {
        let _permit = self.admin_permit().await?;
        let deleted: Vec<Rc<Segment>> = {
            let mut st = self.inner.state.borrow_mut();
            let mut total: i64 = st.segments.iter().map(|s| s.meta().size_bytes as i64).sum();
            let mut count = 0;
            for segment in &st.segments[..st.segments.len() - 1] {
                let meta = segment.meta();
                if !doomed(&meta, total - meta.size_bytes as i64) {
                    break;
                }
                total -= meta.size_bytes as i64;
                count += 1;
            }
            let deleted: Vec<_> = st.segments.drain(..count).collect();
            if let Some(first) = st.segments.first() {
                st.log_start_offset = st.log_start_offset.max(first.base_offset);
            }
            deleted
        };
        let bases: Vec<i64> = deleted.iter().map(|s| s.base_offset).collect();
        if let (Some((cache, id)), Some(&last)) = (&self.inner.cache, bases.last()) {
            // Slices already handed out keep their buffers until their sends finish.
            cache.forget_segments_before(*id, last + 1);
        }
        for segment in deleted {
            remove_segment_files(&self.inner.dir, segment.base_offset)?;
            // The space comes back only when the last descriptor closes; readers still inside
            // the segment keep it open until they finish.
            segment.close_if_unused().await;
        }
        if !bases.is_empty() {
            let log_start_offset = self.log_start_offset();
            let trimmed = self.change_epochs(EpochWrite::MemoryFirst, |epochs| {
                epochs.truncate_from_start(log_start_offset)
            });
            if let Err(error) = trimmed {
                // Opening trims a file that is ahead of the log start the same way.
                tracing::warn!(%error, "leader-epoch checkpoint after retention not written");
            }
            // Recovery derives the same log start from the first remaining segment, so a
            // checkpoint that cannot be written (a full disk) loses nothing.
            if let Err(error) = self.write_checkpoint().await {
                tracing::warn!(%error, "checkpoint after retention not written");
            }
        }
        Ok(bases)
    }

    /// Syncs the active segment and its indexes and records a recovery checkpoint there, so a
    /// crash recovery scans only what is written after it. Run periodically (Kafka's
    /// `log.flush.offset.checkpoint.interval.ms`).
    pub async fn checkpoint(&self) -> Result<(), LogError> {
        let _permit = self.admin_permit().await?;
        Ok(self.write_checkpoint().await?)
    }

    async fn write_checkpoint(&self) -> Result<(), IoFailure> {
        let (segment, checkpoint) = {
            let st = self.inner.state.borrow();
            let segment = st.active().clone();
            let meta = segment.meta();
            let checkpoint = Checkpoint {
                log_start_offset: st.log_start_offset,
                segment_base_offset: segment.base_offset,
                segment_position: meta.size_bytes,
                next_offset: meta.next_offset,
                index_entries: segment.index.borrow().len() as u32,
                time_index_entries: segment.time_index.borrow().len() as u32,
            };
            (segment, checkpoint)
        };
        segment
            .file
            .fdatasync()
            .await
            .map_err(|e| IoFailure::new("syncing", segment.log_path(), e.into()))?;
        segment.sync_indexes(false)?;
        checkpoint.write(&self.inner.dir)
    }

    /// Runs time-driven work: an fdatasync when `flush.ms` is due. Call it periodically from a
    /// background task queue.
    pub fn tick(&self) {
        pump(&self.inner);
    }

    /// Writes everything queued, seals nothing but trims the active segment to its data, writes
    /// a checkpoint covering the whole log and the clean-shutdown marker. Later appends fail
    /// with `Closed`.
    pub async fn close(&self) -> Result<(), LogError> {
        self.exclusive(async || {
            let segment = self.inner.state.borrow().active().clone();
            let size = segment.meta().size_bytes;
            segment.truncate_file(size).await?;
            segment.sync_indexes(true)?;
            self.write_checkpoint().await?;
            checkpoint::write_clean_marker(&self.inner.dir)?;
            self.inner.state.borrow_mut().closed = true;
            Ok(())
        })
        .await
    }
}

impl Drop for PartitionLog {
    /// Dropping without `close` is a crash as far as the files are concerned: nothing more is
    /// written for this log (see `State::abandoned`), and the next open recovers it.
    fn drop(&mut self) {
        if let Ok(mut st) = self.inner.state.try_borrow_mut() {
            st.abandoned = true;
        }
        if let Some((cache, id)) = &self.inner.cache {
            cache.unregister(*id);
        }
    }
}

/// Finds the first batch at or after `start` matching `want`, reading `chunk_bytes` at a time.
/// Returns its position, header and the bytes from its start (the whole batch at least).
async fn find_batch(
    segment: &Segment,
    mut position: u64,
    end: u64,
    chunk_bytes: usize,
    want: impl Fn(&BatchHeader) -> bool,
) -> Result<Option<(u64, BatchHeader, ReadResult)>, ReadError> {
    let corrupt = |position, reason| ReadError::Corrupt {
        segment_base_offset: segment.base_offset,
        position,
        reason,
    };
    while position < end {
        let len = (end - position).min(chunk_bytes.max(HEADER_BYTES) as u64) as usize;
        let chunk = segment.read(position, len).await?;
        if chunk.len() < HEADER_BYTES {
            return Err(corrupt(
                position,
                StopReason::Truncated {
                    needed_bytes: HEADER_BYTES,
                    have_bytes: chunk.len(),
                },
            ));
        }
        let mut at = 0usize;
        while at + HEADER_BYTES <= chunk.len() {
            let header = BatchHeader::decode_checked(&chunk[at..], segment::MAX_STORED_BATCH_BYTES)
                .map_err(|e| corrupt(position + at as u64, StopReason::Invalid(e)))?;
            let total = header.total_bytes();
            if want(&header) {
                let batch_pos = position + at as u64;
                let whole = if at + total <= chunk.len() {
                    ReadResult::slice(&chunk, at, chunk.len() - at)
                } else {
                    Some(segment.read(batch_pos, total).await?)
                };
                let whole = whole.filter(|b| b.len() >= total).ok_or_else(|| {
                    corrupt(
                        batch_pos,
                        StopReason::Truncated {
                            needed_bytes: total,
                            have_bytes: chunk.len() - at,
                        },
                    )
                })?;
                return Ok(Some((batch_pos, header, whole)));
            }
            at += total;
        }
        // `at` is the next batch's start, possibly past this chunk.
        position += at as u64;
    }
    Ok(None)
}

async fn read_segment(
    segment: &Segment,
    offset: i64,
    max_bytes: usize,
    upper: i64,
    index_interval_bytes: usize,
) -> Result<FetchedBatches, ReadError> {
    let (_, start) = segment.index_floor(offset);
    let end = segment.meta().size_bytes;
    let chunk_bytes = max_bytes.max(HEADER_BYTES) + index_interval_bytes;
    let found = find_batch(segment, start, end, chunk_bytes, |h| {
        h.last_offset() >= offset
    })
    .await?;
    let Some((position, first, mut data)) = found else {
        return Ok(FetchedBatches::empty(offset));
    };
    if first.last_offset() >= upper {
        return Ok(FetchedBatches::empty(offset));
    }
    let want = max_bytes
        .max(first.total_bytes())
        .min((end - position) as usize);
    if data.len() < want && data.len() < max_bytes {
        data = segment.read(position, want).await?;
    }
    let taken = fetch::take_batches(
        &data,
        segment.base_offset,
        position,
        offset,
        max_bytes,
        upper,
    )?;
    Ok(FetchedBatches {
        data: ReadResult::slice(&data, 0, taken.bytes),
        first_offset: first.base_offset,
        next_offset: taken.next_offset,
        batch_count: taken.count,
        end_position: position + taken.bytes as u64,
    })
}
