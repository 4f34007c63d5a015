//! The tail cache: recently written batches kept in the aligned buffers the appender wrote
//! them from, so a consumer at the tail is answered from memory without touching the disk.
//!
//! # Ownership and threading
//! One `TailCache` per shard (glommio executor), shared by every `PartitionLog` the shard owns
//! through an `Rc`; used only from that thread. Each log registers once and gets a `log_id`.
//!
//! # What is cached
//! - *Chunks*: after a write of a DMA buffer completes, the appender hands the buffer (an
//!   `Rc<DmaBuffer>`, the very one `write_rc_at` wrote from: no copy) to the cache with the
//!   segment and file range it covers. Consecutive chunks of a segment may overlap by one block
//!   (the unfinished tail block is rewritten by the next write); both copies hold the same
//!   bytes.
//! - *Batches*: when a batch becomes visible (its write completed, in log order), its offsets
//!   and file range. A read finds the batch holding its offset and maps the byte range of the
//!   batches it takes onto chunks.
//!
//! # Budget, eviction, pinning
//! Every chunk is charged its whole allocation, every batch entry [`BATCH_ENTRY_BYTES`]; the
//! sum never exceeds the budget. To make room the oldest chunk (insertion order, across all the
//! shard's logs) that no reader holds is evicted, with the batch entries it alone covered. A
//! read returns [`CachedSlice`]s that *pin* their chunk until dropped (the send completed, and
//! for a zero-copy send, the kernel's notification came): a pinned chunk is never evicted, so
//! its memory is never freed or reused under a send. When only pinned chunks are left, a new
//! chunk is not cached (its buffer is freed after the write, as without a cache).
//!
//! Truncation and write failures drop a log's entries (its file is rewritten there); retention
//! drops the entries of deleted segments, but slices already handed out keep their chunk alive.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use glommio::io::DmaBuffer;

/// Bytes charged for each cached batch entry (its bookkeeping, not its data).
pub const BATCH_ENTRY_BYTES: usize = 48;

/// A written buffer held by the cache: `buffer[..len]` is the segment's file from `file_pos`.
pub struct Chunk {
    segment_base: i64,
    file_pos: u64,
    len: usize,
    /// What this chunk costs the budget: the buffer's whole allocation.
    charge_bytes: usize,
    buffer: Rc<DmaBuffer>,
    /// Slices handed out and not yet dropped.
    pins: Cell<usize>,
}

impl Chunk {
    fn end(&self) -> u64 {
        self.file_pos + self.len as u64
    }

    /// Where the chunk sorts among a log's chunks.
    fn key(&self) -> (i64, u64) {
        (self.segment_base, self.file_pos)
    }
}

/// Part of a cached chunk, handed to a reader. Holding it pins the chunk: it cannot be evicted
/// and its buffer is not freed until every slice of it is dropped.
pub struct CachedSlice {
    chunk: Rc<Chunk>,
    start: usize,
    len: usize,
}

impl CachedSlice {
    fn new(chunk: &Rc<Chunk>, start: usize, len: usize) -> Self {
        assert!(start + len <= chunk.len, "a slice stays inside its chunk");
        chunk.pins.set(chunk.pins.get() + 1);
        Self {
            chunk: Rc::clone(chunk),
            start,
            len,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.chunk.buffer.as_bytes()[self.start..self.start + self.len]
    }
}

impl Clone for CachedSlice {
    fn clone(&self) -> Self {
        Self::new(&self.chunk, self.start, self.len)
    }
}

impl Drop for CachedSlice {
    fn drop(&mut self) {
        let pins = self.chunk.pins.get();
        assert!(pins > 0, "every slice pinned its chunk");
        self.chunk.pins.set(pins - 1);
    }
}

impl std::fmt::Debug for CachedSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedSlice")
            .field("segment_base", &self.chunk.segment_base)
            .field("file_pos", &(self.chunk.file_pos + self.start as u64))
            .field("len", &self.len)
            .finish()
    }
}

/// A visible batch: its offsets and where it lies in its segment's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CachedBatch {
    base_offset: i64,
    last_offset: i64,
    segment_base: i64,
    position: u64,
    len: usize,
}

impl CachedBatch {
    fn end(&self) -> u64 {
        self.position + self.len as u64
    }
}

/// What the cache holds of one log.
#[derive(Default)]
struct LogEntries {
    /// In write order: by segment, then by file position.
    chunks: VecDeque<Rc<Chunk>>,
    /// In offset order; contiguous except where entries could not be recorded.
    batches: VecDeque<CachedBatch>,
}

impl LogEntries {
    /// The last chunk of segment `segment_base` that starts at or before `position`, by index.
    /// Chunks are sorted by (segment, file position), and a later write of a segment never ends
    /// before an earlier one (a buffer starts with the unfinished tail block of the one before,
    /// then holds more), so this is the chunk holding `position` if any does; were that ever
    /// not so, a read would miss the cache, never return wrong bytes. Every read and every
    /// acknowledged batch asks, and a log may hold thousands of small chunks: the newest chunk
    /// answers a batch just written without a search, others take a binary search (each probe
    /// follows a chunk's `Rc`, which showed in profiles at 50,000 small batches a second).
    fn chunk_at_or_before(&self, segment_base: i64, position: u64) -> Option<usize> {
        let after = self.sorted_position(segment_base, position);
        let at = after.checked_sub(1)?;
        (self.chunks[at].segment_base == segment_base).then_some(at)
    }

    /// Where a chunk with key `(segment_base, position)` goes to keep the chunks sorted, after
    /// any with the same key: the end when it sorts last (the usual case, chunks arrive in write
    /// order), else by binary search.
    fn sorted_position(&self, segment_base: i64, position: u64) -> usize {
        let key = (segment_base, position);
        match self.chunks.back() {
            Some(last) if last.key() <= key => self.chunks.len(),
            _ => self.chunks.partition_point(|c| c.key() <= key),
        }
    }

    /// Removes `chunk`: the first one when it is (eviction takes the oldest), else found by
    /// its sort key, then by identity.
    fn remove_chunk(&mut self, chunk: &Rc<Chunk>) {
        if self.chunks.front().is_some_and(|c| Rc::ptr_eq(c, chunk)) {
            self.chunks.pop_front();
            return;
        }
        let from = self.chunks.partition_point(|c| c.key() < chunk.key());
        let found = self.chunks.range(from..).position(|c| Rc::ptr_eq(c, chunk));
        if let Some(at) = found {
            self.chunks.remove(from + at);
        }
    }

    /// Drops leading batch entries no remaining chunk covers; returns how many.
    fn prune_batches(&mut self) -> usize {
        let before = self.batches.len();
        match self.chunks.front() {
            None => self.batches.clear(),
            Some(first) => {
                let (segment, position) = (first.segment_base, first.file_pos);
                while self
                    .batches
                    .front()
                    .is_some_and(|b| (b.segment_base, b.position) < (segment, position))
                {
                    self.batches.pop_front();
                }
            }
        }
        before - self.batches.len()
    }
}

/// Counters since the shard started, for benchmarks, tests and `ringlog` logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub budget_bytes: usize,
    pub used_bytes: usize,
    pub chunks: usize,
    /// Cached chunks that readers hold (in-flight sends, zero-copy sends until the kernel's
    /// notification): they cannot be evicted.
    pub pinned_chunks: usize,
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads the cache could not answer (they went to the disk).
    pub misses: u64,
    pub hit_bytes: u64,
    pub chunks_inserted: u64,
    pub chunks_evicted: u64,
    /// Chunks not cached because everything evictable was gone (or the chunk is over budget).
    pub chunks_refused: u64,
    /// Under-filled buffers copied into a right-sized one before caching.
    pub chunks_compacted: u64,
}

struct CacheState {
    budget_bytes: usize,
    used_bytes: usize,
    next_log_id: u64,
    logs: HashMap<u64, LogEntries>,
    /// Every cached chunk with its log, oldest first: the eviction order.
    order: VecDeque<(u64, Rc<Chunk>)>,
    stats: CacheStats,
}

/// The batches a cached read returns: slices in file order, together the whole batches from
/// `first_offset` to `next_offset` (exclusive).
#[derive(Debug)]
pub struct CachedRead {
    pub slices: Vec<CachedSlice>,
    pub first_offset: i64,
    pub next_offset: i64,
    pub batch_count: usize,
    pub bytes: usize,
}

/// A shard's tail cache. See the module documentation.
pub struct TailCache {
    state: RefCell<CacheState>,
}

impl std::fmt::Debug for TailCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl TailCache {
    /// A cache that holds at most `budget_bytes` (0 disables it).
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            state: RefCell::new(CacheState {
                budget_bytes,
                used_bytes: 0,
                next_log_id: 0,
                logs: HashMap::new(),
                order: VecDeque::new(),
                stats: CacheStats {
                    budget_bytes,
                    ..CacheStats::default()
                },
            }),
        }
    }

    pub fn stats(&self) -> CacheStats {
        let st = self.state.borrow();
        CacheStats {
            used_bytes: st.used_bytes,
            chunks: st.order.len(),
            pinned_chunks: st.order.iter().filter(|(_, c)| c.pins.get() > 0).count(),
            ..st.stats
        }
    }

    /// A new log's id; its entries live until [`TailCache::forget`].
    pub fn register(&self) -> u64 {
        let mut st = self.state.borrow_mut();
        let id = st.next_log_id;
        st.next_log_id += 1;
        st.logs.insert(id, LogEntries::default());
        id
    }

    /// Whether a buffer of `capacity_bytes` holding `len` bytes is worth copying into a
    /// right-sized buffer before caching: an idle log writes each append from a fresh buffer
    /// of `write.buffer.bytes` holding a few KiB, which would spend the budget on empty space.
    pub fn should_compact(capacity_bytes: usize, len: usize) -> bool {
        len.saturating_mul(4) < capacity_bytes
    }

    /// Caches a written buffer: `buffer[..len]` is segment `segment_base`'s file from
    /// `file_pos`; `charge_bytes` is its allocation. Evicts older unpinned chunks to make room.
    pub fn insert(
        &self,
        log_id: u64,
        segment_base: i64,
        file_pos: u64,
        buffer: Rc<DmaBuffer>,
        len: usize,
        charge_bytes: usize,
    ) {
        assert!(len <= buffer.len(), "the cached range is inside the buffer");
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        if !st.logs.contains_key(&log_id) {
            return;
        }
        if !make_room(st, charge_bytes) {
            st.stats.chunks_refused += 1;
            return;
        }
        let chunk = Rc::new(Chunk {
            segment_base,
            file_pos,
            len,
            charge_bytes,
            buffer,
            pins: Cell::new(0),
        });
        let Some(entries) = st.logs.get_mut(&log_id) else {
            return;
        };
        // Chunks arrive in write order except when writes of one segment complete out of
        // order; keep them sorted so reads can walk them.
        let at = entries.sorted_position(segment_base, file_pos);
        entries.chunks.insert(at, Rc::clone(&chunk));
        st.order.push_back((log_id, chunk));
        st.used_bytes += charge_bytes;
        st.stats.chunks_inserted += 1;
    }

    /// Counts a compaction (for the stats).
    pub fn note_compacted(&self) {
        self.state.borrow_mut().stats.chunks_compacted += 1;
    }

    /// Records a batch that just became visible. Batches arrive in offset order.
    pub fn record_batch(
        &self,
        log_id: u64,
        segment_base: i64,
        position: u64,
        (base_offset, last_offset): (i64, i64),
        len: usize,
    ) {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let covered = st
            .logs
            .get(&log_id)
            .is_some_and(|entries| entries.chunk_at_or_before(segment_base, position).is_some());
        // A batch no chunk starts at or before cannot be served: its chunk was refused.
        if !covered || !make_room(st, BATCH_ENTRY_BYTES) {
            return;
        }
        let Some(entries) = st.logs.get_mut(&log_id) else {
            return;
        };
        if let Some(last) = entries.batches.back() {
            assert!(
                base_offset > last.last_offset,
                "batches are recorded in offset order"
            );
        }
        entries.batches.push_back(CachedBatch {
            base_offset,
            last_offset,
            segment_base,
            position,
            len,
        });
        st.used_bytes += BATCH_ENTRY_BYTES;
    }

    /// Whole batches from `offset` on, as `PartitionLog::read` would return them (at least one,
    /// more while they fit in `max_bytes`, all below `upper`, from one segment), if the cache
    /// holds the batch containing `offset` and the bytes of what it returns.
    pub fn read(
        &self,
        log_id: u64,
        offset: i64,
        max_bytes: usize,
        upper: i64,
    ) -> Option<CachedRead> {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let found = st
            .logs
            .get(&log_id)
            .and_then(|entries| read_entries(entries, offset, max_bytes, upper));
        match &found {
            Some(read) => {
                st.stats.hits += 1;
                st.stats.hit_bytes += read.bytes as u64;
            }
            None => st.stats.misses += 1,
        }
        found
    }

    /// Drops everything cached for a log (truncated, failed or closed). Slices handed out
    /// keep their chunks alive until dropped.
    pub fn forget(&self, log_id: u64) {
        self.retain(log_id, |_| false);
    }

    /// Unregisters a log and drops its entries.
    pub fn unregister(&self, log_id: u64) {
        self.forget(log_id);
        self.state.borrow_mut().logs.remove(&log_id);
    }

    /// Drops a log's entries of segments below `segment_base` (deleted by retention).
    pub fn forget_segments_before(&self, log_id: u64, segment_base: i64) {
        self.retain(log_id, |chunk| chunk.segment_base >= segment_base);
    }

    fn retain(&self, log_id: u64, keep: impl Fn(&Chunk) -> bool) {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let Some(entries) = st.logs.get_mut(&log_id) else {
            return;
        };
        let before = entries.chunks.len();
        entries.chunks.retain(|c| keep(c));
        if entries.chunks.len() == before {
            return;
        }
        let pruned = entries.prune_batches();
        st.used_bytes -= pruned * BATCH_ENTRY_BYTES;
        let mut freed = 0;
        st.order.retain(|(id, chunk)| {
            let drop = *id == log_id && !keep(chunk);
            if drop {
                freed += chunk.charge_bytes;
            }
            !drop
        });
        st.used_bytes -= freed;
    }
}

/// Evicts the oldest unpinned chunks until `bytes` more fit the budget. False when they cannot.
fn make_room(st: &mut CacheState, bytes: usize) -> bool {
    if bytes > st.budget_bytes {
        return false;
    }
    while st.used_bytes + bytes > st.budget_bytes {
        let Some(at) = st.order.iter().position(|(_, c)| c.pins.get() == 0) else {
            return false;
        };
        let Some((log_id, chunk)) = st.order.remove(at) else {
            return false;
        };
        st.used_bytes -= chunk.charge_bytes;
        st.stats.chunks_evicted += 1;
        if let Some(entries) = st.logs.get_mut(&log_id) {
            entries.remove_chunk(&chunk);
            let pruned = entries.prune_batches();
            st.used_bytes -= pruned * BATCH_ENTRY_BYTES;
        }
        // Pair assertion with the pin check above: nobody else holds an evicted chunk, so its
        // buffer is freed here, never under a send.
        assert_eq!(
            Rc::strong_count(&chunk),
            1,
            "an evicted chunk is unreferenced"
        );
    }
    true
}

fn read_entries(
    entries: &LogEntries,
    offset: i64,
    max_bytes: usize,
    upper: i64,
) -> Option<CachedRead> {
    let batches = &entries.batches;
    let first_at = batches.partition_point(|b| b.last_offset < offset);
    let first = batches.get(first_at)?;
    if first.base_offset > offset || first.last_offset >= upper {
        return None;
    }
    let mut taken = 1;
    let mut bytes = first.len;
    let mut last = *first;
    for next in batches.iter().skip(first_at + 1) {
        let contiguous = next.segment_base == last.segment_base
            && next.position == last.end()
            && next.base_offset == last.last_offset + 1;
        if !contiguous || next.last_offset >= upper || bytes + next.len > max_bytes {
            break;
        }
        bytes += next.len;
        last = *next;
        taken += 1;
    }
    let slices = map_range(entries, first.segment_base, first.position, last.end())?;
    Some(CachedRead {
        slices,
        first_offset: first.base_offset,
        next_offset: last.last_offset + 1,
        batch_count: taken,
        bytes,
    })
}

/// Slices covering `[start, end)` of a segment's file, or `None` if part of it is not cached.
fn map_range(
    entries: &LogEntries,
    segment_base: i64,
    start: u64,
    end: u64,
) -> Option<Vec<CachedSlice>> {
    let first = entries.chunk_at_or_before(segment_base, start)?;
    let mut slices = Vec::new();
    let mut at = start;
    for chunk in entries.chunks.range(first..) {
        // Chunks after one that starts past `at` (or in a later segment) start past it too.
        if at == end || chunk.segment_base != segment_base || chunk.file_pos > at {
            break;
        }
        if chunk.end() <= at {
            continue;
        }
        let until = end.min(chunk.end());
        slices.push(CachedSlice::new(
            chunk,
            (at - chunk.file_pos) as usize,
            (until - at) as usize,
        ));
        at = until;
    }
    (at == end).then_some(slices)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` on a glommio executor (DMA buffers need one).
    fn on_executor(body: impl FnOnce() + Send + 'static) {
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(move || async move { body() })
            .expect("executor starts")
            .join()
            .expect("executor finishes");
    }

    /// The byte a segment's file holds at `position` in these tests.
    fn byte_at(segment_base: i64, position: u64) -> u8 {
        (position as i64 * 7 + segment_base) as u8
    }

    /// A buffer holding segment `segment_base`'s file `[file_pos, file_pos + len)`.
    fn buffer(segment_base: i64, file_pos: u64, len: usize) -> Rc<DmaBuffer> {
        let mut buffer = glommio::allocate_dma_buffer(len.next_multiple_of(4096));
        for (i, byte) in buffer.as_bytes_mut()[..len].iter_mut().enumerate() {
            *byte = byte_at(segment_base, file_pos + i as u64);
        }
        Rc::new(buffer)
    }

    fn insert(cache: &TailCache, log: u64, segment_base: i64, file_pos: u64, len: usize) {
        let charge = len.next_multiple_of(4096);
        let buf = buffer(segment_base, file_pos, len);
        cache.insert(log, segment_base, file_pos, buf, len, charge);
    }

    fn concat(read: &CachedRead) -> Vec<u8> {
        read.slices
            .iter()
            .flat_map(|s| s.as_bytes().to_vec())
            .collect()
    }

    #[test]
    fn reads_map_batches_onto_overlapping_chunks() {
        on_executor(|| {
            let cache = TailCache::new(1 << 20);
            let log = cache.register();
            // A partial write of [0, 5000), then the next write rewrites its tail block.
            insert(&cache, log, 0, 0, 5000);
            insert(&cache, log, 0, 4096, 9000 - 4096);
            cache.record_batch(log, 0, 0, (0, 9), 3000);
            cache.record_batch(log, 0, 3000, (10, 19), 4000);
            cache.record_batch(log, 0, 7000, (20, 29), 2000);

            let read = cache.read(log, 12, 1 << 20, 30).expect("cached");
            assert_eq!((read.first_offset, read.next_offset), (10, 30));
            assert_eq!((read.batch_count, read.bytes), (2, 6000));
            assert_eq!(read.slices.len(), 2, "the range spans both chunks");
            let expected: Vec<u8> = (3000..9000).map(|p| byte_at(0, p)).collect();
            assert_eq!(concat(&read), expected);

            // max_bytes keeps whole batches (at least one); upper keeps batches below it.
            let one = cache.read(log, 0, 1, 30).expect("cached");
            assert_eq!((one.batch_count, one.bytes, one.next_offset), (1, 3000, 10));
            let bounded = cache.read(log, 0, 1 << 20, 20).expect("cached");
            assert_eq!(bounded.next_offset, 20);
            assert!(
                cache.read(log, 20, 1 << 20, 20).is_none(),
                "nothing below the bound"
            );
            assert!(
                cache.read(log, 30, 1 << 20, 40).is_none(),
                "past the cached tail"
            );
            let stats = cache.stats();
            assert_eq!((stats.hits, stats.misses), (3, 2));
        });
    }

    #[test]
    fn reads_starting_in_an_overlap_or_a_gap_find_the_right_chunk() {
        on_executor(|| {
            let cache = TailCache::new(1 << 20);
            let log = cache.register();
            // Chunks of a later segment sort after every chunk of an earlier one.
            insert(&cache, log, 0, 0, 5000);
            insert(&cache, log, 0, 4096, 9000 - 4096);
            insert(&cache, log, 0, 16384, 4096);
            insert(&cache, log, 30, 0, 4096);
            cache.record_batch(log, 0, 0, (0, 9), 4500);
            cache.record_batch(log, 0, 4500, (10, 19), 4500);
            // Recorded (a chunk starts before it) but its bytes fell in the refused write.
            cache.record_batch(log, 0, 9000, (20, 24), 3000);
            cache.record_batch(log, 0, 16384, (25, 29), 4096);
            cache.record_batch(log, 30, 0, (30, 39), 4096);

            // One batch: with the next one the range would reach bytes no chunk holds.
            let inside = cache.read(log, 10, 4500, 100).expect("cached");
            assert_eq!((inside.first_offset, inside.next_offset), (10, 20));
            let expected: Vec<u8> = (4500..9000).map(|p| byte_at(0, p)).collect();
            assert_eq!(concat(&inside), expected);
            assert!(
                cache.read(log, 20, 1 << 20, 100).is_none(),
                "bytes no chunk holds"
            );
            let after_gap = cache.read(log, 25, 1 << 20, 100).expect("cached");
            let expected: Vec<u8> = (16384..20480).map(|p| byte_at(0, p)).collect();
            assert_eq!(concat(&after_gap), expected);
            let next_segment = cache.read(log, 30, 1 << 20, 100).expect("cached");
            let expected: Vec<u8> = (0..4096).map(|p| byte_at(30, p)).collect();
            assert_eq!(concat(&next_segment), expected);
        });
    }

    #[test]
    fn chunks_completed_out_of_order_are_kept_sorted() {
        on_executor(|| {
            let cache = TailCache::new(1 << 20);
            let log = cache.register();
            // Writes of one segment complete out of order, and a later segment's first write
            // completes before the earlier segment's last one.
            insert(&cache, log, 0, 8192, 4096);
            insert(&cache, log, 0, 0, 4096);
            insert(&cache, log, 40, 0, 4096);
            insert(&cache, log, 0, 4096, 4096);
            insert(&cache, log, 40, 4096, 4096);
            cache.record_batch(log, 0, 0, (0, 9), 4096);
            cache.record_batch(log, 0, 4096, (10, 19), 4096);
            cache.record_batch(log, 0, 8192, (20, 39), 4096);
            cache.record_batch(log, 40, 0, (40, 49), 4096);
            cache.record_batch(log, 40, 4096, (50, 59), 4096);

            let first = cache.read(log, 0, 1 << 20, 100).expect("cached");
            assert_eq!((first.first_offset, first.next_offset), (0, 40));
            assert_eq!(first.slices.len(), 3, "one slice per chunk, in file order");
            let expected: Vec<u8> = (0..12288).map(|p| byte_at(0, p)).collect();
            assert_eq!(concat(&first), expected);
            let second = cache.read(log, 45, 1 << 20, 100).expect("cached");
            assert_eq!((second.first_offset, second.next_offset), (40, 60));
            let expected: Vec<u8> = (0..8192).map(|p| byte_at(40, p)).collect();
            assert_eq!(concat(&second), expected);
        });
    }

    #[test]
    fn eviction_is_oldest_first_within_the_budget() {
        on_executor(|| {
            let budget = 3 * 8192 + 16 * BATCH_ENTRY_BYTES;
            let cache = TailCache::new(budget);
            let log = cache.register();
            for i in 0..3u64 {
                insert(&cache, log, 0, i * 8192, 8192);
                cache.record_batch(log, 0, i * 8192, (i as i64 * 10, i as i64 * 10 + 9), 8192);
            }
            assert!(cache.read(log, 0, 1 << 20, 100).is_some());
            insert(&cache, log, 0, 3 * 8192, 8192);
            cache.record_batch(log, 0, 3 * 8192, (30, 39), 8192);
            let stats = cache.stats();
            assert!(stats.used_bytes <= budget, "{stats:?}");
            assert_eq!(stats.chunks_evicted, 1);
            assert!(
                cache.read(log, 5, 1 << 20, 100).is_none(),
                "the oldest chunk went"
            );
            let rest = cache
                .read(log, 10, 1 << 20, 100)
                .expect("newer chunks stay");
            assert_eq!((rest.first_offset, rest.next_offset), (10, 40));
        });
    }

    #[test]
    fn pinned_chunks_are_never_evicted_and_freed_only_when_unpinned() {
        on_executor(|| {
            let budget = 2 * 8192 + 16 * BATCH_ENTRY_BYTES;
            let cache = TailCache::new(budget);
            let log = cache.register();
            insert(&cache, log, 0, 0, 8192);
            cache.record_batch(log, 0, 0, (0, 9), 8192);
            insert(&cache, log, 0, 8192, 8192);
            cache.record_batch(log, 0, 8192, (10, 19), 8192);
            // An in-flight send holds the oldest chunk.
            let pinned = cache.read(log, 0, 1, 100).expect("cached");
            let held = pinned.slices[0].clone();
            drop(pinned);
            assert_eq!(cache.stats().pinned_chunks, 1, "a clone pins as well");
            insert(&cache, log, 0, 16384, 8192);
            cache.record_batch(log, 0, 16384, (20, 29), 8192);
            assert_eq!(cache.stats().chunks_evicted, 1);
            assert!(
                cache.read(log, 0, 1, 100).is_some(),
                "the pinned chunk stayed"
            );
            assert!(
                cache.read(log, 10, 1, 100).is_none(),
                "the next oldest went instead"
            );
            // Everything left is pinned: a new chunk is refused, nothing is freed.
            let also_held = cache.read(log, 20, 1, 100).expect("cached");
            insert(&cache, log, 0, 24576, 8192);
            let stats = cache.stats();
            assert_eq!((stats.chunks_refused, stats.chunks_evicted), (1, 1));
            let expected: Vec<u8> = (0..8192).map(|p| byte_at(0, p)).collect();
            assert_eq!(held.as_bytes(), &expected[..], "pinned bytes are intact");
            // Unpinned, the oldest goes first.
            assert_eq!(cache.stats().pinned_chunks, 2);
            drop(held);
            drop(also_held);
            assert_eq!(cache.stats().pinned_chunks, 0);
            insert(&cache, log, 0, 24576, 8192);
            assert!(cache.read(log, 0, 1, 100).is_none());
            assert!(cache.read(log, 20, 1, 100).is_some());
            assert!(cache.stats().used_bytes <= budget);
        });
    }

    #[test]
    fn retention_and_truncation_drop_entries_but_not_slices_in_use() {
        on_executor(|| {
            let cache = TailCache::new(1 << 20);
            let log = cache.register();
            let other = cache.register();
            insert(&cache, log, 0, 0, 4096);
            cache.record_batch(log, 0, 0, (0, 9), 4096);
            insert(&cache, log, 10, 0, 4096);
            cache.record_batch(log, 10, 0, (10, 19), 4096);
            insert(&cache, other, 0, 0, 4096);
            cache.record_batch(other, 0, 0, (0, 9), 4096);
            let in_flight = cache.read(log, 0, 1, 100).expect("cached");
            cache.forget_segments_before(log, 10);
            assert!(cache.read(log, 0, 1, 100).is_none());
            assert!(cache.read(log, 10, 1, 100).is_some());
            let expected: Vec<u8> = (0..4096).map(|p| byte_at(0, p)).collect();
            assert_eq!(
                concat(&in_flight),
                expected,
                "a deleted segment's slice stays valid"
            );
            cache.forget(log);
            assert!(cache.read(log, 10, 1, 100).is_none());
            assert!(
                cache.read(other, 0, 1, 100).is_some(),
                "other logs are untouched"
            );
            cache.unregister(other);
            assert_eq!(cache.stats().used_bytes, 0);
            assert_eq!(cache.stats().chunks, 0);
        });
    }
}
