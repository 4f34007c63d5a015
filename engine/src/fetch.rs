//! Reads for consumers: answered from the tail cache, from a sequential reader's read-ahead,
//! or from the disk, and returned as the buffers they were read into (never copied here).
//!
//! # Read-ahead
//! A consumer far behind the tail fetches the same partition over and over, each fetch starting
//! where the last one ended. After a fetch served from the disk or from read-ahead, the log
//! remembers a *stream*: the offset the next fetch will ask for, the segment and file position
//! of that offset, and an O_DIRECT read of the next window started at once (glommio submits it
//! when spawned). The next fetch at that offset takes its batches from the window without an
//! index lookup and, usually, without waiting for the disk. At most [`MAX_STREAMS`] streams per
//! log (the least recently used is dropped), each window at most [`WINDOW_BYTES_MAX`].
//!
//! A reader whose window ran out at the read bound (the end of the visible data, where a
//! consumer waits for new records with empty fetches) keeps its stream, waiting: there is
//! nothing to read ahead yet. The first fetch that finds records there reads the stream's
//! next window (and waits for it, as a disk read would), without an index lookup, and the
//! fetches after it are served from that window again.
//!
//! # Lifetimes
//! A [`RecordPiece`] owns its memory: a cached slice pins its cache chunk, a disk read holds
//! its DMA buffer. Retention may delete the segment meanwhile; the bytes stay valid until the
//! piece is dropped, which for a zero-copy send is after the kernel's notification.

use std::collections::VecDeque;
use std::rc::Rc;

use glommio::io::ReadResult;

use crate::batch::{self, BatchHeader, HEADER_BYTES};
use crate::cache::CachedSlice;
use crate::error::{IoFailure, ReadError};
use crate::scan::StopReason;
use crate::segment::Segment;

/// Streams remembered per log.
pub const MAX_STREAMS: usize = 4;
/// Smallest read-ahead window.
pub const WINDOW_BYTES_MIN: usize = 1 << 20;
/// Largest read-ahead window.
pub const WINDOW_BYTES_MAX: usize = 8 << 20;

/// Bytes of whole batches, in memory that stays valid while the piece lives.
#[derive(Debug, Clone)]
pub enum RecordPiece {
    /// Part of a buffer the appender wrote from, held by the tail cache (pinned).
    Cached(CachedSlice),
    /// An O_DIRECT read of the segment file.
    Disk(ReadResult),
}

impl RecordPiece {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Cached(slice) => slice.as_bytes(),
            Self::Disk(read) => read,
        }
    }
}

/// Where a fetch's bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSource {
    /// Nothing to return (at the end, or nothing below the bound).
    Empty,
    TailCache,
    ReadAhead,
    Disk,
}

/// Whole batches for a consumer, as pieces in file order.
#[derive(Debug, Clone)]
pub struct FetchedRecords {
    pub pieces: Vec<RecordPiece>,
    pub first_offset: i64,
    pub next_offset: i64,
    pub batch_count: usize,
    pub bytes: usize,
    pub source: ReadSource,
}

impl FetchedRecords {
    /// Nothing, at `offset`.
    pub fn empty(offset: i64) -> Self {
        Self {
            pieces: Vec::new(),
            first_offset: offset,
            next_offset: offset,
            batch_count: 0,
            bytes: 0,
            source: ReadSource::Empty,
        }
    }

    /// The bytes as one buffer (a copy), for callers that need contiguous bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes);
        for piece in &self.pieces {
            out.extend_from_slice(piece.as_bytes());
        }
        out
    }
}

type PendingRead = glommio::Task<Result<ReadResult, glommio::GlommioError<()>>>;

/// A window of a segment's file read (or being read) ahead of a sequential reader.
enum Window {
    Pending(PendingRead),
    Ready(ReadResult),
    /// Nothing was visible past the stream's position: read when a fetch finds records there.
    Waiting,
}

/// A sequential reader: its next fetch asks for `next_offset`, which starts at `position` in
/// `segment`; `window` covers the file from `window_pos`.
pub(crate) struct Stream {
    pub next_offset: i64,
    pub segment: Rc<Segment>,
    pub position: u64,
    window_pos: u64,
    window: Window,
}

/// A log's read-ahead streams, most recently used last.
#[derive(Default)]
pub(crate) struct ReadAheads {
    streams: VecDeque<Stream>,
}

impl ReadAheads {
    pub fn clear(&mut self) {
        self.streams.clear();
    }

    /// Takes the stream whose next fetch is at `offset`.
    pub fn take(&mut self, offset: i64) -> Option<Stream> {
        let at = self.streams.iter().position(|s| s.next_offset == offset)?;
        self.streams.remove(at)
    }

    pub fn put(&mut self, stream: Stream) {
        self.streams.retain(|s| s.next_offset != stream.next_offset);
        if self.streams.len() == MAX_STREAMS {
            self.streams.pop_front();
        }
        self.streams.push_back(stream);
    }
}

/// The window a reader asking for `max_bytes` per fetch gets: a power of two, so that an
/// aligned read of it is exactly one block of glommio's registered-memory (buddy) allocator.
pub(crate) fn window_bytes(max_bytes: usize) -> usize {
    max_bytes
        .saturating_mul(2)
        .clamp(WINDOW_BYTES_MIN, WINDOW_BYTES_MAX)
        .next_power_of_two()
}

/// Bytes to read from `position` so that the O_DIRECT read (which starts at `position`
/// aligned down) spans exactly `window` bytes: a window one block larger would take a buddy
/// block twice its size, or not fit in the registered memory and be freshly mapped.
pub(crate) fn window_read_bytes(position: u64, window: usize, alignment: u64) -> usize {
    window - (position % alignment) as usize
}

/// Starts reading `[position, position + window)` of `segment`, clipped to its visible size;
/// `None` when there is nothing there yet.
pub(crate) fn start_stream(
    segment: Rc<Segment>,
    next_offset: i64,
    position: u64,
    window: usize,
) -> Option<Stream> {
    let task = read_window(&segment, position, window)?;
    Some(Stream {
        next_offset,
        segment,
        position,
        window_pos: position,
        window: Window::Pending(task),
    })
}

/// Starts the read of `[position, position + window)` of `segment`, clipped to its visible
/// size; `None` when nothing is visible there.
fn read_window(segment: &Segment, position: u64, window: usize) -> Option<PendingRead> {
    let visible = segment.meta().size_bytes;
    if position >= visible {
        return None;
    }
    let window = window_read_bytes(position, window, segment.file.alignment());
    let len = (visible - position).min(window as u64) as usize;
    let file = Rc::clone(&segment.file);
    Some(glommio::spawn_local(async move {
        file.read_at(position, len).await
    }))
}

/// What a stream's window gave: the records, and either the stream to keep for the next fetch
/// (its window still holds enough) or where the next fetch will start (segment, offset,
/// position) for a new window.
pub(crate) struct StreamRead {
    pub records: FetchedRecords,
    pub next: Result<Stream, (Rc<Segment>, i64, u64)>,
}

/// Serves a fetch at `stream.next_offset` from its window. `None` when the window does not
/// hold a whole batch there (the caller reads from the disk instead).
pub(crate) async fn read_stream(
    stream: Stream,
    max_bytes: usize,
    upper: i64,
) -> Result<Option<StreamRead>, ReadError> {
    let Stream {
        next_offset: offset,
        segment,
        position,
        window_pos,
        window,
    } = stream;
    let pending = match window {
        Window::Ready(data) => Ok(data),
        Window::Pending(task) => Err(task),
        // Records have come since the reader waited at the bound; in another segment (the log
        // rolled) they are the disk path's.
        Window::Waiting => match read_window(&segment, position, window_bytes(max_bytes)) {
            Some(task) => Err(task),
            None => return Ok(None),
        },
    };
    let data = match pending {
        Ok(data) => data,
        Err(task) => task
            .await
            .map_err(|e| IoFailure::new("reading ahead in", segment.log_path(), e.into()))?,
    };
    let skip = (position - window_pos) as usize;
    let Some(rest) = ReadResult::slice(&data, skip, data.len().saturating_sub(skip)) else {
        return Ok(None);
    };
    // The stream was made where a batch ends, so a batch starts here.
    if rest.len() < HEADER_BYTES
        || BatchHeader::decode(&rest).ok().map(|h| h.base_offset) != Some(offset)
    {
        return Ok(None);
    }
    let taken = take_batches(
        &rest,
        segment.base_offset,
        position,
        offset,
        max_bytes,
        upper,
    )?;
    if taken.count == 0 {
        return Ok(None);
    }
    let Some(piece) = ReadResult::slice(&rest, 0, taken.bytes) else {
        return Ok(None);
    };
    let end = position + taken.bytes as u64;
    let left = rest.len() - taken.bytes;
    // At the bound with nothing visible after it in this segment, the reader will wait there:
    // keep its stream (starting a window now would read nothing).
    let at_bound = taken.next_offset >= upper && end >= segment.meta().size_bytes;
    let next = if left >= max_bytes.max(HEADER_BYTES) {
        Ok(Stream {
            next_offset: taken.next_offset,
            segment,
            position: end,
            window_pos,
            window: Window::Ready(data),
        })
    } else if at_bound {
        Ok(Stream {
            next_offset: taken.next_offset,
            segment,
            position: end,
            window_pos: end,
            window: Window::Waiting,
        })
    } else {
        Err((segment, taken.next_offset, end))
    };
    Ok(Some(StreamRead {
        records: FetchedRecords {
            pieces: vec![RecordPiece::Disk(piece)],
            first_offset: offset,
            next_offset: taken.next_offset,
            batch_count: taken.count,
            bytes: taken.bytes,
            source: ReadSource::ReadAhead,
        },
        next,
    }))
}

/// Whole batches at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    pub bytes: usize,
    pub next_offset: i64,
    pub count: usize,
}

/// Walks whole batches at the start of `data` (file `position` of segment `segment_base`): at
/// least one, more while they fit in `max_bytes`, only batches entirely below `upper`. Checks
/// each batch's CRC (the pair of the check on append).
pub(crate) fn take_batches(
    data: &[u8],
    segment_base: i64,
    position: u64,
    offset: i64,
    max_bytes: usize,
    upper: i64,
) -> Result<Taken, ReadError> {
    let corrupt = |at: usize, reason| ReadError::Corrupt {
        segment_base_offset: segment_base,
        position: position + at as u64,
        reason,
    };
    let mut taken = Taken {
        bytes: 0,
        next_offset: offset,
        count: 0,
    };
    while taken.bytes + HEADER_BYTES <= data.len() {
        let at = taken.bytes;
        let header =
            BatchHeader::decode(&data[at..]).map_err(|e| corrupt(at, StopReason::Invalid(e)))?;
        let total = header.total_bytes();
        let fits = taken.count == 0 || at + total <= max_bytes;
        if !fits || at + total > data.len() || header.last_offset() >= upper {
            break;
        }
        let computed = batch::compute_crc(&data[at..at + total]);
        if computed != header.crc {
            return Err(corrupt(
                at,
                StopReason::Invalid(batch::BatchError::CrcMismatch {
                    stored: header.crc,
                    computed,
                }),
            ));
        }
        taken.bytes += total;
        taken.next_offset = header.next_offset();
        taken.count += 1;
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_powers_of_two_within_bounds() {
        assert_eq!(window_bytes(0), WINDOW_BYTES_MIN);
        assert_eq!(window_bytes(1 << 20), 2 << 20);
        assert_eq!(window_bytes((1 << 20) + 1), 4 << 20);
        assert_eq!(window_bytes(usize::MAX), WINDOW_BYTES_MAX);
        for max_bytes in [1, 4095, 700_000, 3 << 20, 100 << 20] {
            let window = window_bytes(max_bytes);
            assert!(window.is_power_of_two(), "{max_bytes} -> {window}");
            assert!((WINDOW_BYTES_MIN..=WINDOW_BYTES_MAX).contains(&window));
        }
    }

    #[test]
    fn an_aligned_window_read_spans_exactly_the_window() {
        let (window, alignment) = (2 << 20, 4096_u64);
        for position in [0_u64, 1, 4095, 4096, 123_456_789] {
            let len = window_read_bytes(position, window, alignment);
            let start = position - position % alignment;
            let end = (position + len as u64).div_ceil(alignment) * alignment;
            assert_eq!(end - start, window as u64, "at {position}");
        }
    }
}
