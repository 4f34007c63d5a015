//! The benchmark's workload: one producer batch of a chosen size, built once and appended
//! many times as `Bytes` clones, so producing it costs the benchmark nothing per append.

use bytes::Bytes;
use ringlog_engine::batch::{BatchBuilder, HEADER_BYTES};

/// Value bytes per record: records of about 1 KiB, a typical Kafka message size.
pub const RECORD_VALUE_BYTES: usize = 1024;
/// Per-record framing besides the value: length, attributes, timestamp and offset deltas,
/// key and value lengths and the header count, each a varint of one to three bytes.
const RECORD_OVERHEAD_BYTES: usize = 10;
/// The smallest batch worth benchmarking: a header and one small record.
pub const MIN_BATCH_BYTES: usize = 128;
/// Rounds of size correction: varint lengths shift by a byte at most once or twice.
const SIZE_CORRECTION_ROUNDS: usize = 4;

/// Why a batch of the requested size cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    #[error("batch size {0} bytes is below the minimum of {MIN_BATCH_BYTES}")]
    TooSmall(usize),
}

/// A deterministic, non-repeating-looking value, so nothing below could shortcut zeros.
fn value_bytes(record: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ record.wrapping_mul(131)) as u8)
        .collect()
}

fn build_with(records: usize, value_len: usize, last_value_len: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    for record in 0..records {
        let len = if record + 1 == records {
            last_value_len
        } else {
            value_len
        };
        let value = value_bytes(record, len);
        builder = builder.record(1_700_000_000_000, None, Some(&value));
    }
    builder.build()
}

/// Builds one uncompressed v2 batch of `target_bytes` bytes (exactly, or within a byte or two
/// when varint framing makes the exact size unreachable) out of records of about 1 KiB.
pub fn build_batch(target_bytes: usize) -> Result<Bytes, WorkloadError> {
    if target_bytes < MIN_BATCH_BYTES {
        return Err(WorkloadError::TooSmall(target_bytes));
    }
    let body = target_bytes - HEADER_BYTES;
    let per_record = RECORD_VALUE_BYTES + RECORD_OVERHEAD_BYTES;
    let records = (body / per_record).max(1);
    let value_len = (body / records).saturating_sub(RECORD_OVERHEAD_BYTES);
    // The last record absorbs the remainder; correct it until the size matches.
    let mut last_len = value_len;
    let mut batch = build_with(records, value_len, last_len);
    for _ in 0..SIZE_CORRECTION_ROUNDS {
        let diff = target_bytes as i64 - batch.len() as i64;
        if diff == 0 {
            break;
        }
        last_len = (last_len as i64 + diff).max(0) as usize;
        batch = build_with(records, value_len, last_len);
    }
    Ok(Bytes::from(batch))
}

/// Records in a batch built by [`build_batch`] for `target_bytes`.
pub fn records_per_batch(target_bytes: usize) -> usize {
    let body = target_bytes.saturating_sub(HEADER_BYTES);
    (body / (RECORD_VALUE_BYTES + RECORD_OVERHEAD_BYTES)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlog_engine::batch;

    #[test]
    fn batches_have_the_requested_size_and_are_valid() {
        for target in [
            128,
            512,
            1000,
            1024,
            4096,
            16 << 10,
            64 << 10,
            1 << 20,
            1_000_000,
        ] {
            let built = build_batch(target).expect("build");
            assert!(
                built.len().abs_diff(target) <= 2,
                "{target}: built {} bytes",
                built.len()
            );
            let header = batch::validate(&built, usize::MAX).expect("valid");
            batch::check_producer_batch(&header, &built).expect("producer batch");
            assert_eq!(header.records_count as usize, records_per_batch(target));
        }
    }

    #[test]
    fn records_are_about_one_kib() {
        assert_eq!(records_per_batch(16 << 10), 15);
        assert_eq!(records_per_batch(1 << 20), 1014);
        assert_eq!(records_per_batch(1024), 1);
    }

    #[test]
    fn refuses_tiny_batches() {
        assert_eq!(build_batch(64), Err(WorkloadError::TooSmall(64)));
    }
}
