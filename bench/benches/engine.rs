//! Criterion micro-benchmarks of the engine's hot paths, each alone:
//!
//! - `validate`: `batch::validate` (header checks and CRC32C) on 1 KiB, 16 KiB and 1 MiB
//!   batches, the per-append CPU cost;
//! - `index_floor`: `MmapIndex<OffsetEntry>::floor` on a 100k-entry index, the lookup that
//!   starts every read;
//! - `read`: `PartitionLog::read` of 1 MiB from a ~64 MiB log, at the tail and at random
//!   offsets, on a glommio executor (O_DIRECT, so every read goes to the device).
//!
//! Data lives under the target directory (`CARGO_TARGET_TMPDIR`), not /tmp, which may be
//! tmpfs (no O_DIRECT).

use std::future::Future;
use std::hint::black_box;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use criterion::async_executor::AsyncExecutor;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use ringlog_bench::workload::{build_batch, records_per_batch};
use ringlog_engine::batch;
use ringlog_engine::index::{MmapIndex, OffsetEntry};
use ringlog_engine::{LogConfig, PartitionLog};

/// Entries in the benchmarked index (Kafka's default 10 MiB index holds 1.3M; 100k is a
/// well-filled 800 KB one).
const INDEX_ENTRIES: u32 = 100_000;
/// Offsets between index entries, as one entry per ~4 KiB of ~1 KiB records gives.
const INDEX_OFFSET_STRIDE: u32 = 4;
/// Size of the prepared log for the read benchmark.
const READ_LOG_BYTES: usize = 64 << 20;
/// Batch size of the prepared log (a typical producer batch).
const READ_BATCH_BYTES: usize = 16 << 10;
/// Bytes per read, Kafka's default fetch.max.bytes per partition.
const READ_BYTES: usize = 1 << 20;
/// Lookups or reads cycled through, so branch predictors and caches see a realistic mix.
const PROBES: usize = 4096;

/// A fresh directory under the target directory (O_DIRECT needs ext4 or xfs).
fn bench_dir(name: &str) -> tempfile::TempDir {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    if let Err(error) = std::fs::create_dir_all(&root) {
        panic!("cannot create {}: {error}", root.display());
    }
    match tempfile::Builder::new().prefix(name).tempdir_in(&root) {
        Ok(dir) => dir,
        Err(error) => panic!("cannot create a directory in {}: {error}", root.display()),
    }
}

/// Deterministic pseudo-random numbers (xorshift64*), so runs probe the same positions.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}

fn bench_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    for size in [1 << 10, 16 << 10, 1 << 20] {
        let built = match build_batch(size) {
            Ok(built) => built,
            Err(error) => panic!("building a {size}-byte batch: {error}"),
        };
        group.throughput(Throughput::Bytes(built.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &built, |b, built| {
            b.iter(|| batch::validate(black_box(built), usize::MAX))
        });
        // What the append path does: the header and CRC, then the walk over the records of an
        // uncompressed batch that proves its record count.
        group.bench_with_input(BenchmarkId::new("producer", size), &built, |b, built| {
            b.iter(|| {
                let built = black_box(built);
                batch::validate(built, usize::MAX)
                    .and_then(|header| batch::check_producer_batch(&header, built))
            })
        });
    }
    group.finish();
}

fn bench_index_floor(c: &mut Criterion) {
    let dir = bench_dir("index");
    let path = dir.path().join("00000000000000000000.index");
    let capacity = INDEX_ENTRIES as usize * std::mem::size_of::<OffsetEntry>();
    let mut index = match MmapIndex::<OffsetEntry>::open(&path, capacity, 0) {
        Ok(index) => index,
        Err(error) => panic!("opening {}: {error}", path.display()),
    };
    for i in 0..INDEX_ENTRIES {
        assert!(index.push(OffsetEntry::new(i * INDEX_OFFSET_STRIDE, i * 4096)));
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let span = u64::from(INDEX_ENTRIES * INDEX_OFFSET_STRIDE);
    let probes: Vec<u32> = (0..PROBES).map(|_| rng.below(span) as u32).collect();
    let mut next = probes.iter().cycle();
    c.bench_function("index_floor/100k", |b| {
        b.iter(|| index.floor(black_box(*next.next().unwrap_or(&0))))
    });
}

/// Runs criterion's async routines on a glommio executor owned by the benchmark thread.
struct Glommio<'a>(&'a LocalExecutor);

impl AsyncExecutor for Glommio<'_> {
    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        self.0.run(future)
    }
}

/// Appends ~`READ_LOG_BYTES` of `READ_BATCH_BYTES` batches, concurrently so it is quick.
async fn prepare_log(log: Rc<PartitionLog>) {
    let built: Bytes = match build_batch(READ_BATCH_BYTES) {
        Ok(built) => built,
        Err(error) => panic!("building the batch: {error}"),
    };
    const WRITERS: usize = 16;
    let per_writer = READ_LOG_BYTES / READ_BATCH_BYTES / WRITERS;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (log, built) = (log.clone(), built.clone());
            glommio::spawn_local(async move {
                for _ in 0..per_writer {
                    if let Err(error) = log.append(built.clone()).await {
                        panic!("preparing the read log: {error}");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
}

async fn read_1mib(log: &PartitionLog, offset: i64) -> usize {
    match log.read(offset, READ_BYTES, None).await {
        Ok(fetched) => fetched.bytes().len(),
        Err(error) => panic!("read at {offset}: {error}"),
    }
}

fn bench_read(c: &mut Criterion) {
    let executor = match LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(16 << 20)
        .make()
    {
        Ok(executor) => executor,
        Err(error) => panic!("starting a glommio executor (RLIMIT_MEMLOCK too low?): {error}"),
    };
    let dir = bench_dir("read");
    let path = dir.path().to_path_buf();
    let log = executor.run(async move {
        let (log, _) = match PartitionLog::open(&path, LogConfig::default()).await {
            Ok(opened) => opened,
            Err(error) => panic!("opening the read log: {error}"),
        };
        let log = Rc::new(log);
        prepare_log(log.clone()).await;
        log
    });
    let end = log.log_end_offset();
    // Enough records from the end for a full 1 MiB read: the newest data consumers chase.
    let records_per_read =
        (READ_BYTES / READ_BATCH_BYTES * records_per_batch(READ_BATCH_BYTES)) as i64;
    let tail = (end - records_per_read).max(0);
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let random: Vec<i64> = (0..PROBES)
        .map(|_| rng.below((end - records_per_read).max(1) as u64) as i64)
        .collect();

    // A read that came back short would make the throughput figures lie.
    for offset in [tail, random[0]] {
        let got = executor.run(read_1mib(&log, offset));
        assert!(
            got + READ_BATCH_BYTES > READ_BYTES,
            "read at {offset}: {got} bytes"
        );
    }

    let mut group = c.benchmark_group("read_1mib");
    group.throughput(Throughput::Bytes(READ_BYTES as u64));
    group.bench_function("tail", |b| {
        b.to_async(Glommio(&executor))
            .iter(|| read_1mib(&log, tail))
    });
    let mut next = random.iter().cycle();
    group.bench_function("random", |b| {
        b.to_async(Glommio(&executor))
            .iter(|| read_1mib(&log, *next.next().unwrap_or(&0)))
    });
    group.finish();
    // Close on the executor: the log's files belong to its io_uring ring.
    executor.run(async move {
        if let Err(error) = log.close().await {
            panic!("closing the read log: {error}");
        }
    });
}

criterion_group!(benches, bench_validate, bench_index_floor, bench_read);
criterion_main!(benches);
