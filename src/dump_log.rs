//! `ringlog dump-log FILE... [--print-data-log]`: Kafka's kafka-dump-log for ringlog segments.
//!
//! # Design
//! - Files are memory-mapped read-only (a segment can be 1 GiB) and dispatched on extension:
//!   `.log`, `.index`, `.timeindex`. A file that cannot be dumped (unknown extension, I/O
//!   error) is reported on stderr and the others are still dumped; the exit code is 1 if any
//!   file failed. Damage *inside* a file is output, not failure: that is what the tool is for.
//! - A `.log` is walked with the engine's [`scan::step`], the same function recovery uses, so
//!   the tool and recovery agree on where valid data ends and why. The walk departs from
//!   recovery in two ways, both to show more of a damaged file: a batch whose structure is sane
//!   but whose CRC fails is printed with `isvalid: false` and the walk continues after it, and
//!   a base offset that does not continue the previous batch is flagged rather than fatal.
//! - `.index` / `.timeindex` entries are checked against the batches of the sibling `.log`
//!   (same stem), walked the same way. The engine never writes an all-zero entry (it indexes
//!   only batches at position > 0), so trailing all-zero entries are the unused space of an
//!   active segment's index (a sparse file's hole reads as zeros) and are summarised, not
//!   listed.
//! - Records (`--print-data-log`) are decoded by kafka-protocol's `RecordBatchDecoder`, which
//!   handles every codec. Before it sees the decompressed records, they are parsed by the
//!   engine's strict parser and checked to use canonical varints: kafka-protocol sizes
//!   allocations from counts in the data (`reserve(record_count)`, header maps) and adds deltas
//!   without overflow checks, so unchecked input could abort or panic the tool. Decompressed
//!   size is not bounded: a batch that inflates to gigabytes takes that much memory.
//!
//! Every line is written with `?`: no `println!`, which panics when stdout is a closed pipe.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytemuck::Pod;
use bytes::Bytes;
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};
use kafka_protocol::records::{Compression as Codec, Record, RecordBatchDecoder};
use memmap2::Mmap;
use ringlog_engine::batch::{
    self, BatchError, BatchHeader, RecordView, TimestampType, HEADER_BYTES,
};
use ringlog_engine::index::{OffsetEntry, TimeEntry};
use ringlog_engine::scan::{self, Step, StopReason};
use thiserror::Error;

/// The bound recovery puts on a stored batch's declared size; larger is corruption.
const MAX_BATCH_BYTES: usize = i32::MAX as usize;
/// Kafka's "no sequence" (a producer without idempotence).
const NO_SEQUENCE: i32 = -1;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Segment files: `.log`, `.index` or `.timeindex`.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Also print every record (offset, timestamp, key and payload) after its batch.
    #[arg(long)]
    print_data_log: bool,
}

/// Why a file could not be dumped (as opposed to damage found inside it, which is printed).
#[derive(Debug, Error)]
enum DumpError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a segment file (expected a .log, .index or .timeindex extension)", .0.display())]
    UnknownKind(PathBuf),
    #[error("{}: the file name is not a segment base offset, so entries' offsets are unknown", .0.display())]
    NoBaseOffset(PathBuf),
    #[error("{}: cannot read the file as index entries: {reason}", path.display())]
    Entries { path: PathBuf, reason: String },
    /// Writing stdout failed (e.g. a closed pipe): nothing more can be reported.
    #[error("writing output: {0}")]
    Output(#[from] io::Error),
}

/// Dumps every file in `args`, returning failure if any could not be dumped.
pub fn run(args: &Args) -> ExitCode {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut failed = false;
    for path in &args.files {
        match dump_file(path, args.print_data_log, &mut out) {
            Ok(()) => {}
            Err(DumpError::Output(_)) => return ExitCode::FAILURE,
            Err(error) => {
                failed = true;
                // Flush first so that, on a terminal, the error follows the output before it.
                if out.flush().is_err() {
                    return ExitCode::FAILURE;
                }
                let _ = writeln!(io::stderr(), "error: {error}");
            }
        }
    }
    if out.flush().is_err() || failed {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn dump_file(path: &Path, print_records: bool, out: &mut impl Write) -> Result<(), DumpError> {
    match path.extension().and_then(OsStr::to_str) {
        Some("log") => dump_log(path, print_records, out),
        Some("index") => dump_offset_index(path, out),
        Some("timeindex") => dump_time_index(path, out),
        _ => Err(DumpError::UnknownKind(path.to_path_buf())),
    }
}

fn map_file(path: &Path) -> Result<Mmap, DumpError> {
    let io_error = |source| DumpError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    // SAFETY: the map is read-only and private to this process. If another process truncates
    // the file while it is mapped, reads past the new end fault (SIGBUS); that is the accepted
    // risk of running an offline tool on a live segment, the price of not copying 1 GiB.
    unsafe { Mmap::map(&file) }.map_err(io_error)
}

/// The base offset a segment file's name gives (`00000000000000000042.log` -> 42).
fn segment_base_offset(path: &Path) -> Option<i64> {
    let stem = path.file_stem()?.to_str()?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// .log

/// One thing found while walking a `.log`.
enum Walked<'a> {
    Batch(WalkedBatch<'a>),
    /// The bytes from `position` on are not a batch; the walk ends here.
    Stop {
        position: usize,
        reason: StopReason,
        remaining: usize,
    },
}

struct WalkedBatch<'a> {
    position: usize,
    header: BatchHeader,
    bytes: &'a [u8],
    crc_ok: bool,
}

/// Iterates over the batches of a log's bytes, ending with a [`Walked::Stop`] when the bytes
/// end in something that is not a batch.
struct LogWalk<'a> {
    bytes: &'a [u8],
    at: usize,
    stopped: bool,
}

impl<'a> LogWalk<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            at: 0,
            stopped: false,
        }
    }

    fn stop(&mut self, reason: StopReason) -> Option<Walked<'a>> {
        self.stopped = true;
        Some(Walked::Stop {
            position: self.at,
            reason,
            remaining: self.bytes.len() - self.at,
        })
    }
}

impl<'a> Iterator for LogWalk<'a> {
    type Item = Walked<'a>;

    fn next(&mut self) -> Option<Walked<'a>> {
        if self.stopped || self.at >= self.bytes.len() {
            return None;
        }
        let rest = &self.bytes[self.at..];
        // Offsets are checked by the caller, which flags a discontinuity instead of stopping.
        let (header, crc_ok) = match scan::step(rest, true, None, MAX_BATCH_BYTES) {
            Step::Batch(header) => (header, true),
            // step() checks the CRC only after the header is sane and the batch fits, so a CRC
            // failure is a whole batch with damaged contents: show it and go on after it.
            Step::Stop(StopReason::Invalid(BatchError::CrcMismatch { .. })) => {
                match BatchHeader::decode_checked(rest, MAX_BATCH_BYTES) {
                    Ok(header) => (header, false),
                    Err(error) => return self.stop(StopReason::Invalid(error)),
                }
            }
            Step::Stop(reason) => return self.stop(reason),
            // Not asked for with `at_end`, but if it were, the bytes end inside a batch.
            Step::NeedMore(needed_bytes) => {
                return self.stop(StopReason::Truncated {
                    needed_bytes,
                    have_bytes: rest.len(),
                })
            }
        };
        let Some(bytes) = rest.get(..header.total_bytes()) else {
            return self.stop(StopReason::Truncated {
                needed_bytes: header.total_bytes(),
                have_bytes: rest.len(),
            });
        };
        let position = self.at;
        self.at += bytes.len();
        Some(Walked::Batch(WalkedBatch {
            position,
            header,
            bytes,
            crc_ok,
        }))
    }
}

/// `last_offset()` without overflow: `base_offset` is outside the CRC, so it may be anything.
fn last_offset(header: &BatchHeader) -> i64 {
    header
        .base_offset
        .saturating_add(i64::from(header.last_offset_delta))
}

/// Kafka's sequence of the record `delta` offsets into a batch: none without a base sequence,
/// otherwise wrapping from `i32::MAX` to 0 (`DefaultRecordBatch.incrementSequence`).
fn sequence_at(base_sequence: i32, delta: i64) -> i32 {
    if base_sequence < 0 {
        return NO_SEQUENCE;
    }
    let wrapped = (i64::from(base_sequence) + delta).rem_euclid(i64::from(i32::MAX) + 1);
    i32::try_from(wrapped).unwrap_or(NO_SEQUENCE)
}

fn timestamp_label(header: &BatchHeader) -> &'static str {
    match header.timestamp_type() {
        TimestampType::CreateTime => "CreateTime",
        TimestampType::LogAppendTime => "LogAppendTime",
    }
}

fn dump_log(path: &Path, print_records: bool, out: &mut impl Write) -> Result<(), DumpError> {
    let bytes = map_file(path)?;
    writeln!(out, "Dumping {}", path.display())?;
    let mut expected = segment_base_offset(path);
    if let Some(base) = expected {
        writeln!(out, "Log starting offset: {base}")?;
    }
    for walked in LogWalk::new(&bytes) {
        match walked {
            Walked::Batch(batch) => {
                write_batch(out, &batch, expected)?;
                if print_records {
                    write_records(out, &batch)?;
                }
                expected = Some(last_offset(&batch.header).saturating_add(1));
            }
            Walked::Stop {
                position,
                reason,
                remaining,
            } => write_stop(out, position, &reason, remaining)?,
        }
    }
    Ok(())
}

fn write_batch(
    out: &mut impl Write,
    batch: &WalkedBatch<'_>,
    expected_offset: Option<i64>,
) -> io::Result<()> {
    let h = &batch.header;
    let last_sequence = sequence_at(h.base_sequence, i64::from(h.last_offset_delta));
    write!(
        out,
        "baseOffset: {} lastOffset: {} count: {} baseSequence: {} lastSequence: {} \
         producerId: {} producerEpoch: {} partitionLeaderEpoch: {} isTransactional: {} \
         isControl: {} position: {} {}: {} size: {} magic: {} compresscodec: {} crc: {} \
         isvalid: {}",
        h.base_offset,
        last_offset(h),
        h.records_count,
        h.base_sequence,
        last_sequence,
        h.producer_id,
        h.producer_epoch,
        h.partition_leader_epoch,
        h.is_transactional(),
        h.is_control(),
        batch.position,
        timestamp_label(h),
        h.max_timestamp,
        batch.bytes.len(),
        h.magic,
        h.compression().name(),
        h.crc,
        batch.crc_ok,
    )?;
    match expected_offset {
        Some(expected) if expected != h.base_offset => {
            let gap = StopReason::OffsetGap {
                expected,
                found: h.base_offset,
            };
            writeln!(out, " <- {gap}")
        }
        _ => writeln!(out),
    }
}

fn write_stop(
    out: &mut impl Write,
    position: usize,
    reason: &StopReason,
    remaining: usize,
) -> io::Result<()> {
    if *reason == StopReason::ZeroFill {
        return writeln!(
            out,
            "Zero-filled tail at position {position}: {remaining} bytes \
             (unwritten preallocation or block padding, normal)"
        );
    }
    writeln!(
        out,
        "Not a batch at position {position}: {reason}; {remaining} bytes remain unread"
    )
}

fn write_records(out: &mut impl Write, batch: &WalkedBatch<'_>) -> io::Result<()> {
    let records = match decode_records(batch.bytes, &batch.header) {
        Ok(records) => records,
        Err(error) => return writeln!(out, "| records not decoded: {error}"),
    };
    for record in &records {
        write_record(out, &batch.header, record)?;
    }
    Ok(())
}

fn write_record(out: &mut impl Write, header: &BatchHeader, record: &Record) -> io::Result<()> {
    // Kafka reports a LogAppendTime batch's records at the batch's (broker-set) max timestamp.
    let timestamp = match header.timestamp_type() {
        TimestampType::CreateTime => record.timestamp,
        TimestampType::LogAppendTime => header.max_timestamp,
    };
    // kafka-protocol derives a sequence even without a base sequence; Kafka reports none.
    let delta = record.offset.wrapping_sub(header.base_offset);
    let sequence = sequence_at(header.base_sequence, delta);
    let size = |bytes: &Option<Bytes>| bytes.as_ref().map_or(-1, |b| b.len() as i64);
    let header_keys: Vec<&str> = record.headers.keys().map(|key| &**key).collect();
    write!(
        out,
        "| offset: {} {}: {} keySize: {} valueSize: {} sequence: {} headerKeys: [{}]",
        record.offset,
        timestamp_label(header),
        timestamp,
        size(&record.key),
        size(&record.value),
        sequence,
        header_keys.join(","),
    )?;
    if header.is_control() {
        // A control record's key and value are broker-written structs, not text.
        write_control(out, record)?;
        return writeln!(out);
    }
    // Like Kafka, a null key or payload is left out rather than printed.
    if let Some(key) = &record.key {
        write!(out, " key: {}", String::from_utf8_lossy(key))?;
    }
    if let Some(value) = &record.value {
        write!(out, " payload: {}", String::from_utf8_lossy(value))?;
    }
    writeln!(out)
}

/// Kafka's control record: key (version i16, type i16); for a transaction marker (type 0 =
/// ABORT, 1 = COMMIT) the value is (version i16, coordinator epoch i32).
fn write_control(out: &mut impl Write, record: &Record) -> io::Result<()> {
    let control_type = field::<2>(record.key.as_deref(), 2).map(i16::from_be_bytes);
    let marker = match control_type {
        Some(0) => "ABORT",
        Some(1) => "COMMIT",
        Some(other) => return write!(out, " controlType: UNKNOWN({other})"),
        None => return write!(out, " controlType: unreadable key"),
    };
    match field::<4>(record.value.as_deref(), 2).map(i32::from_be_bytes) {
        Some(epoch) => write!(out, " endTxnMarker: {marker} coordinatorEpoch: {epoch}"),
        None => write!(
            out,
            " endTxnMarker: {marker} coordinatorEpoch: unreadable value"
        ),
    }
}

/// `N` bytes of `bytes` from `at`, if there are that many.
fn field<const N: usize>(bytes: Option<&[u8]>, at: usize) -> Option<[u8; N]> {
    bytes?.get(at..at.checked_add(N)?)?.try_into().ok()
}

// ---------------------------------------------------------------------------------------------
// Records

/// Why the records of a batch were not handed to kafka-protocol.
#[derive(Debug, Error)]
enum RecordsRefused {
    #[error("base offset {0} is too close to the limits of i64 for record offsets")]
    OffsetRange(i64),
    #[error("{0}")]
    Malformed(BatchError),
    #[error("record {index}: timestamp delta {delta} overflows the base timestamp {base}")]
    TimestampOverflow { index: usize, base: i64, delta: i64 },
    #[error("records use non-canonical varints ({canonical} bytes expected, {actual} found)")]
    NonCanonical { canonical: usize, actual: usize },
}

/// The records of a whole batch, decompressed and decoded by kafka-protocol, or why not.
pub(crate) fn decode_records(batch: &[u8], header: &BatchHeader) -> Result<Vec<Record>, String> {
    let offsets_fit = header
        .base_offset
        .checked_add(i64::from(i32::MIN))
        .is_some()
        && header
            .base_offset
            .checked_add(i64::from(i32::MAX))
            .is_some();
    if !offsets_fit {
        return Err(RecordsRefused::OffsetRange(header.base_offset).to_string());
    }
    let decompress = |compressed: &mut Bytes, codec: Codec| {
        let records = match codec {
            Codec::None => compressed.clone(),
            Codec::Gzip => Gzip::decompress(compressed, |out: &mut Bytes| Ok(out.clone()))?,
            Codec::Snappy => Snappy::decompress(compressed, |out: &mut Bytes| Ok(out.clone()))?,
            Codec::Lz4 => Lz4::decompress(compressed, |out: &mut Bytes| Ok(out.clone()))?,
            Codec::Zstd => Zstd::decompress(compressed, |out: &mut Bytes| Ok(out.clone()))?,
        };
        check_records(batch, header, &records)?;
        Ok(records)
    };
    let mut buf = Bytes::copy_from_slice(batch);
    RecordBatchDecoder::decode_with_custom_compression(&mut buf, Some(decompress))
        .map(|set| set.records)
        .map_err(|error| format!("{error:#}"))
}

/// Checks decompressed `records` with the engine's parser (exact record count, no trailing
/// bytes, every length in bounds), then that their varints are canonical, so kafka-protocol
/// (whose varints are at most 5 bytes, the engine's 10) reads the very same fields.
fn check_records(batch: &[u8], header: &BatchHeader, records: &[u8]) -> Result<(), RecordsRefused> {
    let mut whole = Vec::with_capacity(HEADER_BYTES + records.len());
    whole.extend_from_slice(batch.get(..HEADER_BYTES).unwrap_or_default());
    whole.extend_from_slice(records);
    let views = batch::uncompressed_records(&whole).map_err(RecordsRefused::Malformed)?;
    for (index, view) in views.iter().enumerate() {
        if header
            .base_timestamp
            .checked_add(view.timestamp_delta)
            .is_none()
        {
            return Err(RecordsRefused::TimestampOverflow {
                index,
                base: header.base_timestamp,
                delta: view.timestamp_delta,
            });
        }
    }
    let canonical: usize = views.iter().map(canonical_record_bytes).sum();
    if canonical != records.len() {
        return Err(RecordsRefused::NonCanonical {
            canonical,
            actual: records.len(),
        });
    }
    Ok(())
}

/// Bytes of the shortest zig-zag varint encoding of `value`.
fn varint_bytes(value: i64) -> usize {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut bytes = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        bytes += 1;
    }
    bytes
}

fn nullable_bytes(bytes: Option<&[u8]>) -> usize {
    bytes.map_or(varint_bytes(-1), |b| varint_bytes(b.len() as i64) + b.len())
}

/// Bytes `record` takes, length prefix included, when every varint in it is canonical.
fn canonical_record_bytes(record: &RecordView<'_>) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|(key, value)| nullable_bytes(Some(key)) + nullable_bytes(*value))
        .sum();
    let body = 1 // attributes
        + varint_bytes(record.timestamp_delta)
        + varint_bytes(i64::from(record.offset_delta))
        + nullable_bytes(record.key)
        + nullable_bytes(record.value)
        + varint_bytes(record.headers.len() as i64)
        + headers;
    varint_bytes(body as i64) + body
}

// ---------------------------------------------------------------------------------------------
// .index and .timeindex

#[derive(Debug, Clone, Copy)]
struct BatchSummary {
    position: u64,
    base_offset: i64,
}

/// The batches of an index's sibling `.log`, to check entries against.
struct LogLayout {
    /// In file order, so by increasing position.
    batches: Vec<BatchSummary>,
    /// Base offset -> index in `batches` (the first batch with it).
    by_offset: HashMap<i64, usize>,
    /// `max_timestamp_through[i]`: the largest max timestamp of batches `0..=i`.
    max_timestamp_through: Vec<i64>,
}

impl LogLayout {
    fn of(bytes: &[u8]) -> Self {
        let mut layout = Self {
            batches: Vec::new(),
            by_offset: HashMap::new(),
            max_timestamp_through: Vec::new(),
        };
        let mut max_timestamp = i64::MIN;
        for walked in LogWalk::new(bytes) {
            let Walked::Batch(batch) = walked else {
                continue;
            };
            let index = layout.batches.len();
            layout.batches.push(BatchSummary {
                position: batch.position as u64,
                base_offset: batch.header.base_offset,
            });
            layout
                .by_offset
                .entry(batch.header.base_offset)
                .or_insert(index);
            max_timestamp = max_timestamp.max(batch.header.max_timestamp);
            layout.max_timestamp_through.push(max_timestamp);
        }
        layout
    }

    fn batch_at(&self, position: u64) -> Option<BatchSummary> {
        let found = self.batches.binary_search_by_key(&position, |b| b.position);
        found.ok().map(|i| self.batches[i])
    }
}

/// The sibling log's layout, or `None` (with a line saying why) when it cannot be read.
fn sibling_layout(index_path: &Path, out: &mut impl Write) -> Result<Option<LogLayout>, DumpError> {
    let log_path = index_path.with_extension("log");
    match map_file(&log_path) {
        Ok(bytes) => Ok(Some(LogLayout::of(&bytes))),
        Err(DumpError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            writeln!(
                out,
                "Sibling log {} not found: entries are not checked against it",
                log_path.display()
            )?;
            Ok(None)
        }
        Err(error) => {
            writeln!(
                out,
                "Sibling log not readable ({error}): entries are not checked against it"
            )?;
            Ok(None)
        }
    }
}

/// The entries of an index file, its unused (all-zero) trailing entries, and the bytes after
/// the last whole entry.
struct IndexFile<'a, E> {
    entries: &'a [E],
    unused: usize,
    trailing_bytes: usize,
}

fn index_file<'a, E: Pod>(path: &Path, bytes: &'a [u8]) -> Result<IndexFile<'a, E>, DumpError> {
    let entry_bytes = std::mem::size_of::<E>();
    let whole = bytes.len() / entry_bytes * entry_bytes;
    let all: &[E] =
        bytemuck::try_cast_slice(&bytes[..whole]).map_err(|error| DumpError::Entries {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
    let is_zero = |entry: &E| bytemuck::bytes_of(entry).iter().all(|&b| b == 0);
    let used = all.iter().rposition(|e| !is_zero(e)).map_or(0, |i| i + 1);
    Ok(IndexFile {
        entries: &all[..used],
        unused: all.len() - used,
        trailing_bytes: bytes.len() - whole,
    })
}

fn write_index_tail<E>(out: &mut impl Write, index: &IndexFile<'_, E>) -> io::Result<()> {
    if index.unused > 0 {
        writeln!(
            out,
            "{} unused entries (all zeros) after the last entry: unused index space",
            index.unused
        )?;
    }
    if index.trailing_bytes > 0 {
        writeln!(
            out,
            "{} trailing bytes after the last whole {}-byte entry",
            index.trailing_bytes,
            std::mem::size_of::<E>()
        )?;
    }
    Ok(())
}

/// Writes `line`, then the problems found with it as ` <- a; b`.
fn write_flagged(out: &mut impl Write, line: &str, flags: &[String]) -> io::Result<()> {
    if flags.is_empty() {
        return writeln!(out, "{line}");
    }
    writeln!(out, "{line} <- {}", flags.join("; "))
}

fn dump_offset_index(path: &Path, out: &mut impl Write) -> Result<(), DumpError> {
    let base = segment_base_offset(path).ok_or_else(|| DumpError::NoBaseOffset(path.into()))?;
    let bytes = map_file(path)?;
    writeln!(out, "Dumping {}", path.display())?;
    let layout = sibling_layout(path, out)?;
    let index = index_file::<OffsetEntry>(path, &bytes)?;
    let mut previous: Option<(i64, u32)> = None;
    for entry in index.entries {
        let offset = base.saturating_add(i64::from(entry.relative_offset()));
        let position = entry.position();
        let mut flags = Vec::new();
        if let Some(layout) = &layout {
            match layout.batch_at(u64::from(position)) {
                None => flags.push("not a batch boundary".to_string()),
                Some(batch) if batch.base_offset != offset => flags.push(format!(
                    "offset mismatch: batch at that position has base offset {}",
                    batch.base_offset
                )),
                Some(_) => {}
            }
        }
        if let Some((prev_offset, prev_position)) = previous {
            if offset <= prev_offset || position <= prev_position {
                flags.push(format!(
                    "not increasing: previous entry is offset {prev_offset} \
                     position {prev_position}"
                ));
            }
        }
        write_flagged(
            out,
            &format!("offset: {offset} position: {position}"),
            &flags,
        )?;
        previous = Some((offset, position));
    }
    write_index_tail(out, &index)?;
    Ok(())
}

fn dump_time_index(path: &Path, out: &mut impl Write) -> Result<(), DumpError> {
    let base = segment_base_offset(path).ok_or_else(|| DumpError::NoBaseOffset(path.into()))?;
    let bytes = map_file(path)?;
    writeln!(out, "Dumping {}", path.display())?;
    let layout = sibling_layout(path, out)?;
    let index = index_file::<TimeEntry>(path, &bytes)?;
    let mut previous: Option<(i64, i64)> = None;
    for entry in index.entries {
        let timestamp = entry.timestamp();
        let offset = base.saturating_add(i64::from(entry.relative_offset()));
        let mut flags = Vec::new();
        if let Some(layout) = &layout {
            check_time_entry(layout, timestamp, offset, &mut flags);
        }
        if let Some((prev_timestamp, prev_offset)) = previous {
            if timestamp < prev_timestamp {
                flags.push(format!(
                    "timestamp decreasing: previous entry has timestamp {prev_timestamp}"
                ));
            }
            if offset < prev_offset {
                flags.push(format!(
                    "offset decreasing: previous entry has offset {prev_offset}"
                ));
            }
        }
        let line = format!("timestamp: {timestamp} offset: {offset}");
        write_flagged(out, &line, &flags)?;
        previous = Some((timestamp, offset));
    }
    write_index_tail(out, &index)?;
    Ok(())
}

/// A time entry must name a batch's base offset, and (what lookups by time rely on) no batch up
/// to that one may have a max timestamp above the entry's.
fn check_time_entry(layout: &LogLayout, timestamp: i64, offset: i64, flags: &mut Vec<String>) {
    let Some(&index) = layout.by_offset.get(&offset) else {
        flags.push("not a batch base offset".to_string());
        return;
    };
    let max_through = layout.max_timestamp_through.get(index).copied();
    if let Some(max_through) = max_through.filter(|&max| max > timestamp) {
        flags.push(format!(
            "batches up to that offset have max timestamp {max_through}, above the entry's"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{RecordBatchEncoder, RecordEncodeOptions};
    use ringlog_engine::batch::{BatchBuilder, StampedHeader, LOG_OVERHEAD_BYTES};

    #[test]
    fn sequences_wrap_like_kafka() {
        assert_eq!(sequence_at(NO_SEQUENCE, 5), NO_SEQUENCE);
        assert_eq!(sequence_at(10, 2), 12);
        assert_eq!(sequence_at(i32::MAX - 1, 3), 1);
        assert_eq!(sequence_at(0, 0), 0);
    }

    #[test]
    fn varint_sizes_match_the_encoding() {
        for (value, bytes) in [(0, 1), (-1, 1), (63, 1), (64, 2), (-65, 2), (i64::MAX, 10)] {
            assert_eq!(varint_bytes(value), bytes, "{value}");
        }
    }

    #[test]
    fn segment_names_give_base_offsets() {
        let base = |name: &str| segment_base_offset(Path::new(name));
        assert_eq!(base("/x/00000000000000000042.log"), Some(42));
        assert_eq!(base("00000000000000000000.timeindex"), Some(0));
        assert_eq!(base("notes.log"), None);
        assert_eq!(base(".log"), None);
        assert_eq!(base("99999999999999999999.index"), None);
    }

    fn sample_batch() -> Vec<u8> {
        BatchBuilder::new(1_000)
            .record(1_000, Some(b"k1"), Some(b"v1"))
            .record(1_001, None, Some(b"v2"))
            .build()
    }

    #[test]
    fn records_decode_and_sequences_stay_unset() {
        let bytes = sample_batch();
        let header = BatchHeader::decode(&bytes).expect("header");
        let records = decode_records(&bytes, &header).expect("records");
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].key.as_deref(), Some(&b"k1"[..]));
        let mut out = Vec::new();
        write_record(&mut out, &header, &records[1]).expect("write");
        let line = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            line,
            "| offset: 1 CreateTime: 1001 keySize: -1 valueSize: 2 sequence: -1 headerKeys: [] \
             payload: v2\n"
        );
    }

    /// Re-encodes the first record's length as a 6-byte varint and fixes the batch length and
    /// CRC: the engine's parser accepts it, kafka-protocol (5-byte varints) would misread it.
    #[test]
    fn non_canonical_varints_are_refused() {
        let mut bytes = sample_batch();
        let length = bytes[HEADER_BYTES];
        assert!(length < 0x80, "one-byte length in the sample");
        let padded = [length | 0x80, 0x80, 0x80, 0x80, 0x80, 0x00];
        bytes.splice(HEADER_BYTES..HEADER_BYTES + 1, padded);
        let batch_length = (bytes.len() - LOG_OVERHEAD_BYTES) as i32;
        bytes[8..12].copy_from_slice(&batch_length.to_be_bytes());
        let crc = batch::compute_crc(&bytes);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        let header = batch::validate(&bytes, 1 << 20).expect("engine-valid batch");
        let error = decode_records(&bytes, &header).expect_err("refused");
        assert!(error.contains("non-canonical"), "{error}");
    }

    #[test]
    fn record_count_beyond_the_records_is_refused_not_allocated() {
        let mut bytes = sample_batch();
        // A CRC-valid batch claiming 2^31 - 1 records in a few bytes.
        bytes[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
        bytes[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        let crc = batch::compute_crc(&bytes);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        let header = batch::validate(&bytes, 1 << 20).expect("structurally valid");
        assert!(decode_records(&bytes, &header).is_err());
    }

    #[test]
    fn walk_continues_after_a_bad_crc_and_stops_at_garbage() {
        let one = sample_batch();
        let mut bytes = one.clone();
        bytes.extend_from_slice(&one);
        bytes[one.len() - 1] ^= 0xff;
        bytes.extend_from_slice(b"not a batch at all, just some bytes that follow the data");
        let walked: Vec<_> = LogWalk::new(&bytes).collect();
        assert_eq!(walked.len(), 3);
        assert!(matches!(&walked[0], Walked::Batch(b) if !b.crc_ok));
        assert!(matches!(&walked[1], Walked::Batch(b) if b.crc_ok && b.position == one.len()));
        assert!(matches!(
            &walked[2],
            Walked::Stop { position, reason: StopReason::Invalid(_), remaining: 56 }
                if *position == 2 * one.len()
        ));
    }

    #[test]
    fn base_offset_near_the_limit_does_not_overflow() {
        let mut bytes = sample_batch();
        // base_offset is outside the CRC: the batch stays valid.
        bytes[..8].copy_from_slice(&(i64::MAX - 1).to_be_bytes());
        let header = batch::validate(&bytes, 1 << 20).expect("valid");
        let batch = WalkedBatch {
            position: 0,
            header,
            bytes: &bytes,
            crc_ok: true,
        };
        let mut out = Vec::new();
        write_batch(&mut out, &batch, Some(0)).expect("write");
        write_records(&mut out, &batch).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.contains(&format!("lastOffset: {}", i64::MAX)),
            "{text}"
        );
        assert!(text.contains("offset gap"), "{text}");
        assert!(text.contains("records not decoded"), "{text}");
    }

    fn dump_one(bytes: &[u8]) -> String {
        let header = batch::validate(bytes, 1 << 20).expect("valid batch");
        let batch = WalkedBatch {
            position: 0,
            header,
            bytes,
            crc_ok: true,
        };
        let mut out = Vec::new();
        write_batch(&mut out, &batch, None).expect("write");
        write_records(&mut out, &batch).expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn log_append_time_batches_show_the_broker_timestamp() {
        let batch = sample_batch();
        let stamped = StampedHeader::stamp(&batch, 40, Some(9_999));
        let mut bytes = batch.clone();
        bytes[..HEADER_BYTES].copy_from_slice(&stamped.bytes);
        let text = dump_one(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].contains(" position: 0 LogAppendTime: 9999 "),
            "{text}"
        );
        assert!(lines[0].starts_with("baseOffset: 40 lastOffset: 41 count: 2 "));
        assert!(lines[1].starts_with("| offset: 40 LogAppendTime: 9999 keySize: 2 "));
        assert!(lines[2].starts_with("| offset: 41 LogAppendTime: 9999 keySize: -1 "));
    }

    #[test]
    fn control_records_show_the_transaction_marker() {
        let marker = Record {
            transactional: true,
            control: true,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: 3,
            producer_epoch: 1,
            timestamp_type: kafka_protocol::records::TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 77,
            key: Some(Bytes::from_static(&[0, 0, 0, 1])),
            value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 5])),
            headers: Default::default(),
        };
        let mut buf = bytes::BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Codec::None,
        };
        RecordBatchEncoder::encode(&mut buf, [&marker], &options).expect("encode");
        let text = dump_one(&buf);
        assert!(
            text.contains("isTransactional: true isControl: true"),
            "{text}"
        );
        assert!(
            text.contains(" headerKeys: [] endTxnMarker: COMMIT coordinatorEpoch: 5\n"),
            "{text}"
        );
    }

    fn encoded(compression: Codec) -> Vec<u8> {
        let records: Vec<Record> = (0..4)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: 9,
                producer_epoch: 0,
                timestamp_type: kafka_protocol::records::TimestampType::Creation,
                offset: i,
                sequence: i as i32,
                timestamp: 1_000 + i,
                key: Some(Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(vec![b'v'; 20 + i as usize])),
                headers: [("h".into(), Some(Bytes::from_static(b"x")))].into(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, records.iter(), &options).expect("encode");
        buf.to_vec()
    }

    /// Random byte changes, with the CRC fixed up so that they reach the record decoders, must
    /// never panic (overflow checks are on in test builds, in dependencies too).
    #[test]
    fn mutated_batches_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        let codecs = [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd,
        ];
        let originals: Vec<Vec<u8>> = codecs.iter().map(|&c| encoded(c)).collect();
        for round in 0..3_000 {
            let mut bytes = originals[round % originals.len()].clone();
            for _ in 0..1 + random(4) {
                let at = random(bytes.len());
                bytes[at] = random(256) as u8;
            }
            if round % 2 == 0 && bytes.len() > HEADER_BYTES {
                let crc = batch::compute_crc(&bytes);
                bytes[17..21].copy_from_slice(&crc.to_be_bytes());
            }
            if round % 7 == 0 {
                bytes.truncate(random(bytes.len()));
            }
            let mut out = Vec::new();
            for walked in LogWalk::new(&bytes) {
                match walked {
                    Walked::Batch(batch) => {
                        write_batch(&mut out, &batch, Some(0)).expect("write");
                        write_records(&mut out, &batch).expect("write");
                    }
                    Walked::Stop {
                        position,
                        reason,
                        remaining,
                    } => write_stop(&mut out, position, &reason, remaining).expect("write"),
                }
            }
        }
    }
}
