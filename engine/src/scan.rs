//! Walking a segment's bytes batch by batch, the one place that decides where valid data ends.
//!
//! Recovery, `dump-log` and the fuzz target all use [`step`], so they agree on what is valid:
//! a batch is accepted only when its header is sane, its CRC matches and (when the caller knows
//! what offset must come next) its base offset continues the log. The scan stops at the first
//! byte that is not such a batch and says why; it never panics and never reads past the slice.
//!
//! [`visit_batches`] walks a whole open log batch by batch, for state rebuilt from a log when
//! a shard starts (idempotent producers, committed offsets): it reads a bounded amount at a
//! time and yields to the executor between reads, so a long log does not stall the shard.

use crate::batch::{self, BatchError, BatchHeader, HEADER_BYTES, LOG_OVERHEAD_BYTES};
use crate::error::ReadError;
use crate::log::PartitionLog;

/// Bytes [`visit_batches`] reads at a time (more when one batch is larger), and so at most
/// between two chances for the shard's other tasks to run.
pub const VISIT_READ_BYTES: usize = 1 << 20;

/// Calls `visit` with every batch (its header and its whole bytes, CRC checked by the read)
/// from the one holding `from` (or the first batch after it) to the log end, in order;
/// returns the offset after the last one. Yields to the executor (when its time slice is up)
/// after every [`VISIT_READ_BYTES`].
pub async fn visit_batches(
    log: &PartitionLog,
    from: i64,
    mut visit: impl FnMut(&BatchHeader, &[u8]),
) -> Result<i64, ReadError> {
    let mut offset = from.max(log.log_start_offset());
    loop {
        let batches = log.read(offset, VISIT_READ_BYTES, None).await?;
        if batches.is_empty() {
            return Ok(offset);
        }
        // `read` returns whole batches whose headers and CRCs it checked: walking their
        // headers finds them all without checking each CRC a second time.
        let mut bytes = batches.bytes();
        while bytes.len() >= HEADER_BYTES {
            let Ok(header) = BatchHeader::decode(bytes) else {
                debug_assert!(false, "a read returned a batch that does not decode");
                break;
            };
            let total = header.total_bytes().clamp(HEADER_BYTES, bytes.len());
            if header.last_offset() >= offset {
                visit(&header, &bytes[..total]);
            }
            bytes = &bytes[total..];
        }
        assert!(batches.next_offset > offset, "reads make progress");
        offset = batches.next_offset;
        glommio::yield_if_needed().await;
    }
}

/// Why a scan stopped before the end of the bytes it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Only zero bytes from here on: the unwritten (preallocated or padded) tail of a segment.
    ZeroFill,
    /// Zero bytes here, but non-zero bytes after them: a write that never reached the disk
    /// with a later one that did (a torn tail after a crash).
    Hole,
    /// The bytes end in the middle of a batch.
    Truncated {
        needed_bytes: usize,
        have_bytes: usize,
    },
    /// The bytes here are not a valid batch.
    Invalid(BatchError),
    /// A valid batch, but not at the offset the log expects next.
    OffsetGap { expected: i64, found: i64 },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ZeroFill => write!(f, "zero fill (end of written data)"),
            Self::Hole => write!(f, "zero bytes followed by data (torn write)"),
            Self::Truncated {
                needed_bytes,
                have_bytes,
            } => write!(
                f,
                "truncated batch: needs {needed_bytes} bytes, {have_bytes} remain"
            ),
            Self::Invalid(error) => write!(f, "invalid batch: {error}"),
            Self::OffsetGap { expected, found } => {
                write!(
                    f,
                    "offset gap: expected base offset {expected}, found {found}"
                )
            }
        }
    }
}

/// The outcome of looking at the bytes where a batch should start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A whole valid batch of `header.total_bytes()` bytes.
    Batch(BatchHeader),
    /// The slice ends inside the batch; at least this many bytes are needed from the start.
    NeedMore(usize),
    /// No batch here.
    Stop(StopReason),
}

/// Looks at the batch starting at `bytes[0]`. `at_end` says the slice reaches the end of the
/// data, so a short slice is a truncation rather than a reason to read more. `expected_offset`,
/// when given, is the base offset the batch must have. `max_batch_bytes` bounds the declared
/// length so that a corrupt length cannot make a reader allocate gigabytes.
pub fn step(
    bytes: &[u8],
    at_end: bool,
    expected_offset: Option<i64>,
    max_batch_bytes: usize,
) -> Step {
    let need = |needed_bytes: usize| {
        if at_end {
            Step::Stop(stop_short(bytes, needed_bytes))
        } else {
            Step::NeedMore(needed_bytes)
        }
    };
    if bytes.len() < HEADER_BYTES {
        if bytes.iter().all(|&b| b == 0) && at_end {
            return Step::Stop(StopReason::ZeroFill);
        }
        // The first 17 bytes are enough to refuse a bad magic or length early.
        if bytes.len() > 16 {
            if let Some(stop) = early_refusal(bytes, max_batch_bytes) {
                return Step::Stop(stop);
            }
        }
        return need(HEADER_BYTES);
    }
    let header = match BatchHeader::decode_checked(bytes, max_batch_bytes) {
        Ok(header) => header,
        Err(error) => return Step::Stop(zero_or_invalid(bytes, error)),
    };
    let total = header.total_bytes();
    if bytes.len() < total {
        return need(total);
    }
    let computed = batch::compute_crc(&bytes[..total]);
    if computed != header.crc {
        return Step::Stop(StopReason::Invalid(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        }));
    }
    if let Some(expected) = expected_offset {
        if header.base_offset != expected {
            return Step::Stop(StopReason::OffsetGap {
                expected,
                found: header.base_offset,
            });
        }
    }
    Step::Batch(header)
}

fn early_refusal(bytes: &[u8], max_batch_bytes: usize) -> Option<StopReason> {
    let magic = bytes[16] as i8;
    if magic != batch::MAGIC_V2 {
        return Some(zero_or_invalid(bytes, BatchError::BadMagic(magic)));
    }
    let declared = batch::declared_total_bytes(bytes)?;
    let max = i64::try_from(max_batch_bytes).unwrap_or(i64::MAX);
    if declared < HEADER_BYTES as i64 || declared > max {
        return Some(StopReason::Invalid(BatchError::BadLength {
            declared: declared - LOG_OVERHEAD_BYTES as i64,
            min: (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i64,
            max: max - LOG_OVERHEAD_BYTES as i64,
        }));
    }
    None
}

/// Zeros where a batch should start are the unwritten tail when nothing but zeros follows.
fn zero_or_invalid(bytes: &[u8], error: BatchError) -> StopReason {
    let header_zero = bytes.iter().take(HEADER_BYTES).all(|&b| b == 0);
    if !header_zero {
        return StopReason::Invalid(error);
    }
    if bytes.iter().all(|&b| b == 0) {
        StopReason::ZeroFill
    } else {
        StopReason::Hole
    }
}

fn stop_short(bytes: &[u8], needed_bytes: usize) -> StopReason {
    if bytes.iter().all(|&b| b == 0) {
        return StopReason::ZeroFill;
    }
    StopReason::Truncated {
        needed_bytes,
        have_bytes: bytes.len(),
    }
}

/// A batch found by [`scan_slice`], with its position relative to the slice's start position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedBatch {
    pub position: u64,
    pub header: BatchHeader,
}

/// Everything [`scan_slice`] learned about a byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReport {
    pub batches: Vec<ScannedBatch>,
    /// Position just past the last valid batch: where a recovered log ends.
    pub valid_end: u64,
    /// Why the scan stopped before the end of the slice, if it did.
    pub stop: Option<StopReason>,
}

/// Scans a whole in-memory range (the rest of a segment) that starts at file position
/// `start_position`, expecting `expected_offset` first when given.
pub fn scan_slice(
    bytes: &[u8],
    start_position: u64,
    mut expected_offset: Option<i64>,
    max_batch_bytes: usize,
) -> ScanReport {
    let mut at = 0usize;
    let mut batches = Vec::new();
    let stop = loop {
        if at == bytes.len() {
            break None;
        }
        match step(&bytes[at..], true, expected_offset, max_batch_bytes) {
            Step::Batch(header) => {
                batches.push(ScannedBatch {
                    position: start_position + at as u64,
                    header,
                });
                at += header.total_bytes();
                expected_offset = expected_offset.map(|_| header.next_offset());
            }
            Step::Stop(reason) => break Some(reason),
            Step::NeedMore(_) => unreachable!("at_end scans never ask for more"),
        }
    };
    ScanReport {
        batches,
        valid_end: start_position + at as u64,
        stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, StampedHeader};

    fn log_of(count: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut next = 0i64;
        for i in 0..count {
            let batch = BatchBuilder::new(10 * i as i64)
                .record(10 * i as i64, Some(b"key"), Some(&vec![i as u8; 100 + i]))
                .record(10 * i as i64 + 1, None, Some(b"x"))
                .build();
            let stamped = StampedHeader::stamp(&batch, next, None);
            out.extend_from_slice(&stamped.bytes);
            out.extend_from_slice(&batch[HEADER_BYTES..]);
            next += 2;
        }
        out
    }

    #[test]
    fn scans_whole_log_then_zero_fill() {
        let mut bytes = log_of(5);
        let end = bytes.len() as u64;
        bytes.resize(bytes.len() + 4096, 0);
        let report = scan_slice(&bytes, 0, Some(0), 1 << 20);
        assert_eq!(report.batches.len(), 5);
        assert_eq!(report.valid_end, end);
        assert_eq!(report.stop, Some(StopReason::ZeroFill));
    }

    #[test]
    fn zeros_then_data_is_a_hole() {
        let mut bytes = log_of(2);
        let end = bytes.len();
        bytes.resize(end + 100, 0);
        bytes.extend_from_slice(&log_of(1));
        let report = scan_slice(&bytes, 0, Some(0), 1 << 20);
        assert_eq!(report.valid_end, end as u64);
        assert_eq!(report.stop, Some(StopReason::Hole));
    }

    #[test]
    fn cut_batch_is_truncated_and_gap_is_reported() {
        let bytes = log_of(3);
        let cut = &bytes[..bytes.len() - 5];
        let report = scan_slice(cut, 0, Some(0), 1 << 20);
        assert_eq!(report.batches.len(), 2);
        assert!(matches!(report.stop, Some(StopReason::Truncated { .. })));

        let report = scan_slice(&bytes, 0, Some(1), 1 << 20);
        assert_eq!(
            report.stop,
            Some(StopReason::OffsetGap {
                expected: 1,
                found: 0
            })
        );
    }
}

#[cfg(test)]
mod arbitrary_bytes {
    //! Bounded property tests over arbitrary bytes, in the normal test run (the fuzz targets in
    //! `engine/fuzz` explore the same functions without a bound).
    use super::*;
    use crate::batch::{self, BatchBuilder, StampedHeader};
    use proptest::prelude::*;

    fn valid_prefix(batches: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..batches {
            // One record per batch, so batch i has base offset i.
            let raw = BatchBuilder::new(i as i64)
                .record(i as i64, Some(b"k"), Some(&vec![i as u8; i * 3]))
                .build();
            let stamped = StampedHeader::stamp(&raw, i as i64, None);
            out.extend_from_slice(&stamped.bytes);
            out.extend_from_slice(&raw[HEADER_BYTES..]);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = batch::validate(&bytes, 1 << 20);
            let _ = batch::uncompressed_records(&bytes);
            let report = scan_slice(&bytes, 7, Some(0), 1 << 20);
            prop_assert!(report.valid_end >= 7 && report.valid_end <= 7 + bytes.len() as u64);
            let mut expected = 7;
            for found in &report.batches {
                prop_assert_eq!(found.position, expected);
                expected += found.header.total_bytes() as u64;
            }
            prop_assert_eq!(report.valid_end, expected);
        }

        #[test]
        fn a_valid_prefix_survives_any_suffix(count in 0usize..6, suffix in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = valid_prefix(count);
            let prefix_len = bytes.len();
            bytes.extend_from_slice(&suffix);
            let report = scan_slice(&bytes, 0, Some(0), 1 << 20);
            prop_assert!(report.batches.len() >= count);
            prop_assert!(report.valid_end >= prefix_len as u64);
        }

        #[test]
        fn a_mutated_batch_is_never_accepted_as_written(flip in 21usize..200, bit in 0u8..8) {
            let bytes = valid_prefix(3);
            let flip = flip % bytes.len();
            // partition_leader_epoch (bytes 12..16 of each batch) is outside Kafka's CRC.
            let clean = scan_slice(&bytes, 0, Some(0), 1 << 20);
            let in_epoch = clean.batches.iter().any(|b| {
                let at = b.position as usize;
                (at + 12..at + 16).contains(&flip)
            });
            prop_assume!(!in_epoch);
            let mut damaged = bytes.clone();
            damaged[flip] ^= 1 << bit;
            let report = scan_slice(&damaged, 0, Some(0), 1 << 20);
            // Every batch the scan accepts is byte-identical to what was written.
            for found in &report.batches {
                let start = found.position as usize;
                let end = start + found.header.total_bytes();
                prop_assert_eq!(&damaged[start..end], &bytes[start..end]);
            }
        }
    }
}
