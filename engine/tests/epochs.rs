//! Leader epochs in the partition log: stamping leader appends, replica appends stored byte for
//! byte, the leader-epoch cache through truncation, retention, reopen, crash and a lost or
//! damaged `leader-epoch-checkpoint`.

mod common;

use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use common::{batch, read_all, run, split_batches, test_dir};
use ringlog_engine::batch::{self as batches, BatchHeader};
use ringlog_engine::leader_epochs::{self, LEADER_EPOCH_FILE};
use ringlog_engine::{
    AppendError, EpochCache, LogConfig, OpenOptions, PartitionLog, ReplicaAppendError, TailCache,
    WriteFault,
};

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 4 << 10,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    }
}

fn pairs(epochs: &EpochCache) -> Vec<(i32, i64)> {
    epochs
        .entries()
        .iter()
        .map(|e| (e.epoch, e.start_offset))
        .collect()
}

fn stored_epochs(dir: &Path) -> Vec<(i32, i64)> {
    let stored = leader_epochs::read(dir)
        .expect("readable checkpoint")
        .expect("checkpoint exists");
    pairs(&stored)
}

/// Appends `count` producer batches of 3 records (seeds from `first_seed`).
async fn append_some(log: &PartitionLog, first_seed: u64, count: u64) {
    for seed in first_seed..first_seed + count {
        log.append(batch(seed, 3, 200, seed as i64))
            .await
            .expect("append");
    }
}

/// A leader log in `dir`: 4 batches before any epoch (12 offsets), then epoch 1 at 12 for 4
/// batches, then epoch 4 at 24 for 4 batches: 36 offsets over several segments.
async fn leader_with_epochs(dir: &Path) -> PartitionLog {
    let (log, _) = PartitionLog::open(dir, small_segments())
        .await
        .expect("open");
    append_some(&log, 0, 4).await;
    log.set_leader_epoch(1).expect("epoch 1");
    append_some(&log, 4, 4).await;
    log.set_leader_epoch(4).expect("epoch 4");
    append_some(&log, 8, 4).await;
    log
}

#[test]
fn set_leader_epoch_stamps_later_leader_appends() {
    let dir = test_dir("epochs-stamp");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = leader_with_epochs(&path).await;
        assert_eq!(log.leader_epoch(), Some(4));
        assert_eq!(log.latest_epoch(), Some(4));
        assert_eq!(pairs(&log.epochs()), vec![(1, 12), (4, 24)]);
        assert_eq!(stored_epochs(&path), vec![(1, 12), (4, 24)]);
        assert!(log.segment_base_offsets().len() > 1, "rolled");
        let stored = read_all(&log, 0, 1 << 20).await;
        assert_eq!(stored.len(), 12);
        for bytes in &stored {
            let header = batches::validate(bytes, usize::MAX).expect("CRC still valid");
            let expected = match header.base_offset {
                0..12 => -1,
                12..24 => 1,
                _ => 4,
            };
            assert_eq!(header.partition_leader_epoch, expected, "{header:?}");
        }
        assert_eq!(log.end_offset_for_epoch(4), (4, 36));
        assert_eq!(log.end_offset_for_epoch(3), (1, 24));
        assert_eq!(log.end_offset_for_epoch(0), (0, 12));
        assert_eq!(log.end_offset_for_epoch(9), (-1, -1));
        // The same epoch again changes nothing; enqueue_checked stamps too.
        log.set_leader_epoch(4).expect("same epoch");
        let appending = log
            .enqueue_checked(batch(99, 1, 10, 99), |_, _| Ok::<(), ()>(()))
            .await
            .expect("queued");
        let info = appending.await.expect("written");
        let last = log.read(info.base_offset, 1, None).await.expect("read");
        let header = BatchHeader::decode(last.bytes()).expect("header");
        assert_eq!(header.partition_leader_epoch, 4);
        assert_eq!(pairs(&log.epochs()), vec![(1, 12), (4, 24)]);
        log.close().await.expect("close");
    });
}

#[test]
fn a_leader_epoch_lost_by_truncation_is_recorded_again_by_the_next_append() {
    let dir = test_dir("epochs-restamp");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_segments())
            .await
            .expect("open");
        append_some(&log, 0, 2).await;
        log.set_leader_epoch(2).expect("epoch");
        assert_eq!(pairs(&log.epochs()), vec![(2, 6)]);
        // Truncating to the start empties the cache; the leader keeps its epoch.
        assert_eq!(log.truncate_to(0).await.expect("truncate"), 0);
        assert!(log.epochs().is_empty());
        assert_eq!(stored_epochs(&path), vec![]);
        append_some(&log, 5, 1).await;
        assert_eq!(pairs(&log.epochs()), vec![(2, 0)]);
        assert_eq!(stored_epochs(&path), vec![(2, 0)]);
        log.close().await.expect("close");
    });
}

#[test]
fn replica_append_keeps_offsets_and_epochs_byte_for_byte() {
    let leader_dir = test_dir("epochs-leader");
    let follower_dir = test_dir("epochs-follower");
    let (leader_path, follower_path) = (
        leader_dir.path().to_path_buf(),
        follower_dir.path().to_path_buf(),
    );
    run(move || async move {
        let leader = leader_with_epochs(&leader_path).await;
        let stored = read_all(&leader, 0, 1 << 20).await;
        let options = OpenOptions {
            tail_cache: Some(Rc::new(TailCache::new(1 << 20))),
            ..OpenOptions::default()
        };
        let (follower, _) = PartitionLog::open_with(&follower_path, small_segments(), options)
            .await
            .expect("open follower");
        // As a fetcher would: several batches per call, in three calls.
        for chunk in stored.chunks(5) {
            let records = Bytes::from(chunk.concat());
            let first = BatchHeader::decode(&records).expect("header");
            let info = follower.append_replica(records).await.expect("replica");
            assert_eq!(info.base_offset, first.base_offset);
            let last = split_batches(&chunk.concat()).pop().expect("a batch").0;
            assert_eq!(info.last_offset, last.last_offset());
            assert_eq!(info.log_append_time_ms, None);
        }
        assert_eq!(follower.log_end_offset(), leader.log_end_offset());
        assert_eq!(read_all(&follower, 0, 1 << 20).await, stored);
        let fetched = follower.fetch(0, 64 << 20, None).await.expect("fetch");
        let mut all = Vec::new();
        let mut offset = 0;
        while offset < follower.log_end_offset() {
            let fetched = follower.fetch(offset, 1 << 20, None).await.expect("fetch");
            all.extend_from_slice(&fetched.to_vec());
            offset = fetched.next_offset;
        }
        assert!(fetched.batch_count > 0);
        assert_eq!(all, stored.concat());
        assert_eq!(follower.epochs(), leader.epochs());
        assert_eq!(stored_epochs(&follower_path), vec![(1, 12), (4, 24)]);
        assert_eq!(follower.leader_epoch(), None, "a follower stamps nothing");
        assert!(
            follower.segment_base_offsets().len() > 1,
            "rolled like the leader"
        );
        leader.close().await.expect("close");
        follower.close().await.expect("close");
    });
}

#[test]
fn replica_append_refuses_what_does_not_continue_the_log() {
    let leader_dir = test_dir("epochs-leader-bad");
    let follower_dir = test_dir("epochs-follower-bad");
    let (leader_path, follower_path) = (
        leader_dir.path().to_path_buf(),
        follower_dir.path().to_path_buf(),
    );
    run(move || async move {
        let leader = leader_with_epochs(&leader_path).await;
        let stored = read_all(&leader, 0, 1 << 20).await;
        let (follower, _) = PartitionLog::open(&follower_path, small_segments())
            .await
            .expect("open follower");
        // Starts past the log end.
        let result = follower
            .append_replica(Bytes::from(stored[1].clone()))
            .await;
        assert!(
            matches!(
                result,
                Err(ReplicaAppendError::OffsetMismatch {
                    expected: 0,
                    actual: 3
                })
            ),
            "{result:?}"
        );
        // A gap between two batches.
        let gap = Bytes::from([stored[0].clone(), stored[2].clone()].concat());
        let result = follower.append_replica(gap).await;
        assert!(
            matches!(
                result,
                Err(ReplicaAppendError::OffsetMismatch {
                    expected: 3,
                    actual: 6
                })
            ),
            "{result:?}"
        );
        // A damaged second batch: the first, valid one is not stored either.
        let mut damaged = [stored[0].clone(), stored[1].clone()].concat();
        let last = damaged.len() - 1;
        damaged[last] ^= 0x40;
        let result = follower.append_replica(Bytes::from(damaged)).await;
        assert!(
            matches!(
                result,
                Err(ReplicaAppendError::Append(AppendError::InvalidBatch(
                    batches::BatchError::CrcMismatch { .. }
                )))
            ),
            "{result:?}"
        );
        // A cut-off batch.
        let cut = Bytes::from(stored[0][..stored[0].len() - 1].to_vec());
        assert!(follower.append_replica(cut).await.is_err());
        assert!(follower.append_replica(Bytes::new()).await.is_err());
        assert_eq!(follower.log_end_offset(), 0);
        assert!(follower.epochs().is_empty());
        // And the log still takes the right batches afterwards.
        let first_two = Bytes::from([stored[0].clone(), stored[1].clone()].concat());
        follower.append_replica(first_two).await.expect("replica");
        assert_eq!(follower.log_end_offset(), 6);
        leader.close().await.expect("close");
        follower.close().await.expect("close");
    });
}

#[test]
fn the_cache_grows_with_replica_batches_of_a_new_epoch_and_truncate_shrinks_it() {
    let leader_dir = test_dir("epochs-leader-grow");
    let follower_dir = test_dir("epochs-follower-grow");
    let (leader_path, follower_path) = (
        leader_dir.path().to_path_buf(),
        follower_dir.path().to_path_buf(),
    );
    run(move || async move {
        let leader = leader_with_epochs(&leader_path).await;
        let stored = read_all(&leader, 0, 1 << 20).await;
        let (follower, _) = PartitionLog::open(&follower_path, small_segments())
            .await
            .expect("open follower");
        let mut seen = Vec::new();
        for (i, bytes) in stored.iter().enumerate() {
            follower
                .append_replica(Bytes::from(bytes.clone()))
                .await
                .expect("replica");
            seen.push(pairs(&follower.epochs()));
            if i == 3 {
                assert!(follower.epochs().is_empty(), "epoch -1 adds nothing");
            }
        }
        assert_eq!(seen[4], vec![(1, 12)]);
        assert_eq!(seen[8], vec![(1, 12), (4, 24)]);
        // Truncating into epoch 4 keeps its entry; below its start removes it.
        assert_eq!(follower.truncate_to(30).await.expect("truncate"), 30);
        assert_eq!(pairs(&follower.epochs()), vec![(1, 12), (4, 24)]);
        assert_eq!(follower.truncate_to(23).await.expect("truncate"), 21);
        assert_eq!(pairs(&follower.epochs()), vec![(1, 12)]);
        assert_eq!(stored_epochs(&follower_path), vec![(1, 12)]);
        assert_eq!(follower.end_offset_for_epoch(1), (1, 21));
        // The follower takes the leader's batches again from its new end.
        let rest = Bytes::from(stored[7..].concat());
        follower.append_replica(rest).await.expect("replica");
        assert_eq!(follower.epochs(), leader.epochs());
        leader.close().await.expect("close");
        follower.close().await.expect("close");
    });
}

#[test]
fn retention_moves_the_first_epoch_up_to_the_log_start() {
    let dir = test_dir("epochs-retention");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = leader_with_epochs(&path).await;
        let bases = log.segment_base_offsets();
        let cut = *bases
            .iter()
            .find(|&&b| b > 12 && b < 24)
            .expect("a segment starting inside epoch 1");
        log.delete_segments_before(cut).await.expect("retention");
        assert_eq!(log.log_start_offset(), cut);
        assert_eq!(pairs(&log.epochs()), vec![(1, cut), (4, 24)]);
        assert_eq!(stored_epochs(&path), vec![(1, cut), (4, 24)]);
        log.close().await.expect("close");
    });
}

#[test]
fn reopen_after_close_and_after_a_crash_keeps_the_cache_consistent() {
    let dir = test_dir("epochs-reopen");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = leader_with_epochs(&path).await;
        log.close().await.expect("close");
        drop(log);
        let (log, report) = PartitionLog::open(&path, small_segments())
            .await
            .expect("reopen");
        assert!(report.clean_shutdown);
        assert_eq!(pairs(&log.epochs()), vec![(1, 12), (4, 24)]);
        assert_eq!(
            log.leader_epoch(),
            None,
            "the leader epoch is set again by its owner"
        );
        // A new epoch starting at the end, then a crash before anything is written in it.
        log.set_leader_epoch(6).expect("epoch 6");
        assert_eq!(stored_epochs(&path), vec![(1, 12), (4, 24), (6, 36)]);
        drop(log);
        let (log, report) = PartitionLog::open(&path, small_segments())
            .await
            .expect("reopen after crash");
        assert!(!report.clean_shutdown);
        assert_eq!(report.log_end_offset, 36);
        assert_eq!(pairs(&log.epochs()), vec![(1, 12), (4, 24)]);
        assert_eq!(stored_epochs(&path), vec![(1, 12), (4, 24)]);
        // Written in epoch 6, then a crash.
        log.set_leader_epoch(6).expect("epoch 6");
        append_some(&log, 20, 2).await;
        drop(log);
        let (log, _) = PartitionLog::open(&path, small_segments())
            .await
            .expect("reopen after crash");
        assert_eq!(log.log_end_offset(), 42);
        assert_eq!(pairs(&log.epochs()), vec![(1, 12), (4, 24), (6, 36)]);
        log.close().await.expect("close");
    });
}

#[test]
fn a_corrupt_or_missing_checkpoint_is_rebuilt_from_the_log() {
    let dir = test_dir("epochs-rebuild");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let log = leader_with_epochs(&path).await;
        log.close().await.expect("close");
        drop(log);
        let file = path.join(LEADER_EPOCH_FILE);
        for damage in ["0\n3\n1 12\n", "0\n2\n1 12\n4 x\n", "garbage", ""] {
            std::fs::write(&file, damage).expect("damage");
            let (log, _) = PartitionLog::open(&path, small_segments())
                .await
                .expect("reopen");
            assert_eq!(pairs(&log.epochs()), vec![(1, 12), (4, 24)], "{damage:?}");
            assert_eq!(stored_epochs(&path), vec![(1, 12), (4, 24)]);
            log.close().await.expect("close");
        }
        std::fs::remove_file(&file).expect("remove");
        let (log, _) = PartitionLog::open(&path, small_segments())
            .await
            .expect("reopen");
        assert_eq!(pairs(&log.epochs()), vec![(1, 12), (4, 24)]);
        assert_eq!(stored_epochs(&path), vec![(1, 12), (4, 24)]);
        log.close().await.expect("close");
    });
}

#[test]
fn a_log_that_never_had_an_epoch_keeps_an_empty_cache() {
    let dir = test_dir("epochs-none");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_segments())
            .await
            .expect("open");
        assert_eq!(stored_epochs(&path), vec![]);
        append_some(&log, 0, 3).await;
        assert!(log.epochs().is_empty());
        assert_eq!(log.end_offset_for_epoch(0), (-1, -1));
        drop(log);
        std::fs::remove_file(path.join(LEADER_EPOCH_FILE)).expect("remove");
        let (log, _) = PartitionLog::open(&path, small_segments())
            .await
            .expect("reopen");
        assert!(log.epochs().is_empty());
        assert_eq!(stored_epochs(&path), vec![]);
        log.close().await.expect("close");
    });
}

#[test]
fn a_failed_replica_write_takes_its_new_epoch_out_of_the_cache() {
    let leader_dir = test_dir("epochs-leader-fault");
    let follower_dir = test_dir("epochs-follower-fault");
    let (leader_path, follower_path) = (
        leader_dir.path().to_path_buf(),
        follower_dir.path().to_path_buf(),
    );
    run(move || async move {
        let leader = leader_with_epochs(&leader_path).await;
        let stored = read_all(&leader, 0, 1 << 20).await;
        let armed = Rc::new(std::cell::Cell::new(false));
        let fault: WriteFault = Rc::new({
            let armed = armed.clone();
            move |_, _, _| {
                armed
                    .get()
                    .then(|| std::io::Error::from_raw_os_error(libc::EIO))
            }
        });
        let options = OpenOptions {
            write_fault: Some(fault),
            ..OpenOptions::default()
        };
        let (follower, _) = PartitionLog::open_with(&follower_path, small_segments(), options)
            .await
            .expect("open follower");
        let before = Bytes::from(stored[..4].concat());
        follower.append_replica(before).await.expect("replica");
        armed.set(true);
        let epoch_one = Bytes::from(stored[4..6].concat());
        let result = follower.append_replica(epoch_one.clone()).await;
        assert!(
            matches!(result, Err(ReplicaAppendError::Append(AppendError::Io(_)))),
            "{result:?}"
        );
        assert_eq!(follower.log_end_offset(), 12);
        assert!(follower.epochs().is_empty(), "{:?}", follower.epochs());
        // Once writes work again, the same batches bring the epoch back.
        armed.set(false);
        let mut tries = 0;
        while follower.append_replica(epoch_one.clone()).await.is_err() {
            // The failed write's repair may still be running: an early retry can fail.
            tries += 1;
            assert!(tries < 100, "the log never took appends again");
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(pairs(&follower.epochs()), vec![(1, 12)]);
        leader.close().await.expect("close");
        follower.close().await.expect("close");
    });
}
