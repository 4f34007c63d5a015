//! What a partition costs on disk: an idle one a few blocks (its indexes are holes and its log
//! is reserved only once written), a written one its data plus a bounded reservation, and a
//! closed or sealed one its data alone. Measured as allocated blocks (`st_blocks`), not file
//! lengths: an active index is 10 MiB long and takes nothing.

mod common;

use std::path::{Path, PathBuf};

use common::{allocated_bytes, append_batches, read_all, run, test_dir};
use ringlog_engine::index::ALLOCATE_STEP_BYTES;
use ringlog_engine::segment::PREALLOCATE_CHUNK_BYTES_MIN;
use ringlog_engine::{LogConfig, PartitionLog};

/// Partitions opened at once, as a broker holds many idle ones.
const PARTITIONS: usize = 200;
/// Of those, the ones written to.
const WRITTEN_PARTITIONS: usize = 20;
/// The goal for an idle partition (issue 17): its directory, files and checkpoint.
const IDLE_PARTITION_BYTES_MAX: u64 = 64 << 10;

/// Blocks taken by a partition: its directory and every file in it.
fn partition_bytes(dir: &Path) -> u64 {
    let files = std::fs::read_dir(dir).expect("partition dir");
    let file_bytes: u64 = files
        .map(|entry| allocated_bytes(&entry.expect("dir entry").path()))
        .sum();
    allocated_bytes(dir) + file_bytes
}

fn report(what: &str, dirs: &[PathBuf]) -> u64 {
    let most = dirs.iter().map(|d| partition_bytes(d)).max().unwrap_or(0);
    let total: u64 = dirs.iter().map(|d| partition_bytes(d)).sum();
    eprintln!(
        "{what}: {} partitions, {total} bytes allocated, at most {most} per partition",
        dirs.len()
    );
    most
}

#[test]
fn idle_partitions_take_a_few_blocks_and_written_ones_a_bounded_reservation() {
    let dir = test_dir("footprint");
    let root = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig::default();
        let dirs: Vec<PathBuf> = (0..PARTITIONS)
            .map(|i| root.join(format!("topic-{i}")))
            .collect();
        let mut logs = Vec::new();
        for path in &dirs {
            let (log, _) = PartitionLog::open(path, config.clone())
                .await
                .expect("open");
            logs.push(log);
        }
        let most = report("opened, idle", &dirs);
        assert!(
            most <= IDLE_PARTITION_BYTES_MAX,
            "{most} bytes for an idle partition"
        );

        // A little written to some: ~400 KiB each, so each has index entries.
        let mut expected = Vec::new();
        for log in &logs[..WRITTEN_PARTITIONS] {
            expected.push(append_batches(log, 100, 4, 1000).await);
        }
        // Let reservations started in the background land before measuring.
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        let written_bytes_max = logs[..WRITTEN_PARTITIONS]
            .iter()
            .map(|log| log.size_bytes())
            .max()
            .expect("written logs");
        let most = report("written, open", &dirs[..WRITTEN_PARTITIONS]);
        // The data, one reservation of the smallest chunk past it, an index step each.
        let bound = written_bytes_max
            + PREALLOCATE_CHUNK_BYTES_MIN
            + 2 * ALLOCATE_STEP_BYTES as u64
            + IDLE_PARTITION_BYTES_MAX;
        assert!(
            most <= bound,
            "{most} bytes for a written partition, bound {bound}"
        );
        let most = report("idle beside them", &dirs[WRITTEN_PARTITIONS..]);
        assert!(
            most <= IDLE_PARTITION_BYTES_MAX,
            "{most} bytes for an idle partition"
        );

        let ends: Vec<i64> = logs.iter().map(PartitionLog::log_end_offset).collect();
        for log in &logs {
            log.close().await.expect("close");
        }
        drop(logs);
        // Closed: written partitions keep their data and no reservation.
        let most = report("written, closed", &dirs[..WRITTEN_PARTITIONS]);
        let bound = written_bytes_max.next_multiple_of(4096) + IDLE_PARTITION_BYTES_MAX;
        assert!(
            most <= bound,
            "{most} bytes for a closed partition, bound {bound}"
        );

        let mut logs = Vec::new();
        for (i, path) in dirs.iter().enumerate() {
            let (log, recovery) = PartitionLog::open(path, config.clone())
                .await
                .expect("reopen");
            assert!(recovery.clean_shutdown, "{recovery:?}");
            assert_eq!(recovery.corruption, None);
            assert_eq!(log.log_end_offset(), ends[i]);
            if let Some(batches) = expected.get(i) {
                assert_eq!(&read_all(&log, 0, 1 << 20).await, batches);
            }
            logs.push(log);
        }
        let most = report("reopened, idle", &dirs[WRITTEN_PARTITIONS..]);
        assert!(
            most <= IDLE_PARTITION_BYTES_MAX,
            "{most} bytes for an idle partition"
        );
        let most = report("reopened, written before", &dirs[..WRITTEN_PARTITIONS]);
        assert!(
            most <= bound,
            "{most} bytes for a reopened partition, bound {bound}"
        );

        // Appends continue after the reopen, and a crash (drop without close) recovers them.
        let more = append_batches(&logs[0], 10, 4, 1000).await;
        let end = logs[0].log_end_offset();
        drop(logs);
        let (log, recovery) = PartitionLog::open(&dirs[0], config).await.expect("recover");
        assert_eq!(recovery.corruption, None, "{recovery:?}");
        assert_eq!(log.log_end_offset(), end);
        // Recovery cut the crashed segment's reservation; its indexes keep their steps.
        let most = report("crashed and recovered", &dirs[..1]);
        let bound = log.size_bytes().next_multiple_of(4096)
            + 2 * ALLOCATE_STEP_BYTES as u64
            + IDLE_PARTITION_BYTES_MAX;
        assert!(
            most <= bound,
            "{most} bytes for a recovered partition, bound {bound}"
        );
        // `append_batches` gives each batch's stored form at the offset it got.
        let mut all = expected.swap_remove(0);
        all.extend(more);
        assert_eq!(read_all(&log, 0, 1 << 20).await, all);
    });
}

/// A written partition's reservation past its data is given back when it is closed, and a
/// rolled segment's when it is sealed.
#[test]
fn closing_and_sealing_release_unused_preallocation() {
    let dir = test_dir("footprint-release");
    let path = dir.path().join("partition");
    run(move || async move {
        let config = LogConfig {
            segment_bytes: 8 << 20,
            ..LogConfig::default()
        };
        let (log, _) = PartitionLog::open(&path, config.clone())
            .await
            .expect("open");
        // ~20 MiB: two sealed segments and an active one partly filled.
        let expected = append_batches(&log, 320, 16, 4000).await;
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
        let bases = log.segment_base_offsets();
        assert!(bases.len() >= 3, "rolled: {bases:?}");
        let log_file = |base: i64| path.join(format!("{base:020}.log"));
        let sealed_slack = 64 << 10; // extent tree blocks of a file in several extents
        for &base in &bases[..bases.len() - 1] {
            let file = log_file(base);
            let length = std::fs::metadata(&file).expect("metadata").len();
            let on_disk = allocated_bytes(&file);
            assert!(
                on_disk <= length.next_multiple_of(4096) + sealed_slack,
                "sealed segment {base}: {on_disk} bytes allocated for {length}"
            );
        }
        let active = log_file(*bases.last().expect("active"));
        let data = log.size_bytes()
            - bases[..bases.len() - 1]
                .iter()
                .map(|&b| std::fs::metadata(log_file(b)).expect("metadata").len())
                .sum::<u64>();
        let reserved = allocated_bytes(&active);
        eprintln!("active segment: {data} bytes of data, {reserved} allocated");
        assert!(
            reserved >= data + (1 << 20),
            "the active segment is preallocated ahead of its data: {reserved} for {data}"
        );
        log.close().await.expect("close");
        let released = allocated_bytes(&active);
        eprintln!("closed: {released} allocated");
        assert!(
            released <= data.next_multiple_of(4096) + sealed_slack,
            "closing keeps only the data: {released} for {data}"
        );
        drop(log);
        let (log, recovery) = PartitionLog::open(&path, config).await.expect("reopen");
        assert!(recovery.clean_shutdown);
        assert_eq!(read_all(&log, 0, 1 << 20).await, expected);
    });
}
