//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;

use bytes::Bytes;
use ringlog_engine::batch::{BatchBuilder, BatchHeader, HEADER_BYTES};
use std::rc::Rc;

use ringlog_engine::{ManualClock, OpenOptions, PartitionLog};

/// Runs `make()`'s future on a fresh glommio executor thread and returns its output.
pub fn run<T, F, G>(make: G) -> T
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .io_memory(2 << 20)
        .spawn(make)
        .expect("executor starts")
        .join()
        .expect("executor finishes")
}

/// A fresh directory on the target's filesystem (O_DIRECT needs ext4/xfs, not tmpfs).
pub fn test_dir(name: &str) -> tempfile::TempDir {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).expect("target tmpdir");
    tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(root)
        .expect("tempdir")
}

/// A deterministic producer batch: `records` records of `value_bytes` bytes derived from
/// `seed`, timestamps from `timestamp`.
pub fn batch(seed: u64, records: usize, value_bytes: usize, timestamp: i64) -> Bytes {
    let mut builder = BatchBuilder::new(timestamp);
    for i in 0..records {
        let value: Vec<u8> = (0..value_bytes)
            .map(|j| (seed as usize * 31 + i * 7 + j) as u8)
            .collect();
        let key = format!("key-{seed}-{i}");
        builder = builder.record(timestamp + i as i64, Some(key.as_bytes()), Some(&value));
    }
    Bytes::from(builder.build())
}

/// Splits fetched bytes into whole batches.
pub fn split_batches(mut bytes: &[u8]) -> Vec<(BatchHeader, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let header = BatchHeader::decode(bytes).expect("header");
        let total = header.total_bytes();
        out.push((header, bytes[..total].to_vec()));
        bytes = &bytes[total..];
    }
    out
}

/// The stored form of `batch` at `base_offset` (create-time topic): only the base offset
/// differs from what the producer sent.
pub fn stored_form(batch: &[u8], base_offset: i64) -> Vec<u8> {
    let mut out = batch.to_vec();
    out[..8].copy_from_slice(&base_offset.to_be_bytes());
    assert!(out.len() >= HEADER_BYTES);
    out
}

/// Appends `count` batches (seeds 0.., `records` records of `value_bytes` each, timestamp =
/// seed) and returns them as stored, in order.
pub async fn append_batches(
    log: &PartitionLog,
    count: u64,
    records: usize,
    value_bytes: usize,
) -> Vec<Vec<u8>> {
    let mut stored = Vec::new();
    for seed in 0..count {
        let b = batch(seed, records, value_bytes, seed as i64);
        let info = log.append(b.clone()).await.expect("append");
        stored.push(stored_form(&b, info.base_offset));
    }
    stored
}

/// Open options with a clock the test moves by hand, starting at `now_ms`.
pub fn manual_clock_options(now_ms: i64) -> (Rc<ManualClock>, OpenOptions) {
    let clock = ManualClock::new(now_ms);
    let options = OpenOptions {
        clock: clock.clone(),
        ..OpenOptions::default()
    };
    (clock, options)
}

/// Reads the whole log from `from`, checking that offsets are contiguous.
pub async fn read_all(log: &PartitionLog, from: i64, max_bytes: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < log.log_end_offset() {
        let fetched = log.read(offset, max_bytes, None).await.expect("read");
        assert!(!fetched.is_empty(), "no progress at {offset}");
        for (header, bytes) in split_batches(fetched.bytes()) {
            assert_eq!(header.base_offset, offset, "contiguous offsets");
            offset = header.next_offset();
            out.push(bytes);
        }
        assert_eq!(fetched.next_offset, offset);
    }
    out
}

/// Disk blocks a file or directory takes (`st_blocks` are 512-byte units), not its length.
pub fn allocated_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("metadata").blocks() * 512
}
