//! The partition log against real files: appends, reads, rolls, reopen, bad input, truncation,
//! retention, group commit, timestamps and write failures.

mod common;

use std::rc::Rc;

use common::{
    allocated_bytes, append_batches, batch, manual_clock_options, read_all, run, split_batches,
    stored_form, test_dir,
};
use ringlog_engine::batch::TimestampType;
use ringlog_engine::{AppendError, LogConfig, OpenOptions, PartitionLog, ReadError, WriteFault};

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 16 << 10,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    }
}

#[test]
fn appends_read_back_byte_for_byte_across_segments() {
    let dir = test_dir("roundtrip");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, report) = PartitionLog::open(&path, small_segments())
            .await
            .expect("open");
        assert_eq!(report.log_end_offset, 0);
        let mut expected = Vec::new();
        for seed in 0..200u64 {
            let records = 1 + (seed % 5) as usize;
            let b = batch(
                seed,
                records,
                10 + (seed as usize * 13) % 700,
                1_000 + seed as i64,
            );
            let info = log.append(b.clone()).await.expect("append");
            expected.push(stored_form(&b, info.base_offset));
            assert_eq!(info.last_offset - info.base_offset + 1, records as i64);
        }
        assert!(log.segment_base_offsets().len() > 3, "rolled");
        for max_bytes in [1, 500, 4096, 1 << 20] {
            assert_eq!(
                read_all(&log, 0, max_bytes).await,
                expected,
                "max_bytes {max_bytes}"
            );
        }
        // A read from the middle of a batch returns that batch.
        let second = split_batches(&expected[1]);
        let inside = second[0].0.base_offset + second[0].0.last_offset_delta as i64;
        let fetched = log.read(inside, 1, None).await.expect("read");
        assert_eq!(fetched.first_offset, second[0].0.base_offset);
        // Upper bound: nothing at or past it.
        let fetched = log.read(0, 1 << 20, Some(3)).await.expect("read");
        assert!(split_batches(fetched.bytes())
            .iter()
            .all(|(h, _)| h.last_offset() < 3));
        let end = log.log_end_offset();
        assert!(matches!(
            log.read(end + 1, 100, None).await,
            Err(ReadError::OffsetOutOfRange { .. })
        ));
        assert!(log.read(end, 100, None).await.expect("at end").is_empty());
        log.close().await.expect("close");

        let (log, report) = PartitionLog::open(&path, small_segments())
            .await
            .expect("reopen");
        assert!(report.clean_shutdown);
        assert_eq!(report.corruption, None);
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_all(&log, 0, 1 << 20).await, expected);
        let b = batch(999, 2, 50, 5_000);
        let info = log.append(b).await.expect("append after reopen");
        assert_eq!(info.base_offset, end);
    });
}

#[test]
fn reopen_without_close_recovers_everything_acknowledged() {
    let dir = test_dir("crash-reopen");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_segments())
            .await
            .expect("open");
        let expected = append_batches(&log, 120, 3, 100).await;
        let end = log.log_end_offset();
        drop(log);
        let (log, report) = PartitionLog::open(&path, small_segments())
            .await
            .expect("reopen");
        assert!(!report.clean_shutdown);
        assert_eq!(report.corruption, None, "{report:?}");
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_all(&log, 0, 1 << 20).await, expected);
    });
}

#[test]
fn bad_batches_are_refused_and_nothing_is_written() {
    let dir = test_dir("bad-input");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            max_message_bytes: 2048,
            ..LogConfig::default()
        };
        let (log, _) = PartitionLog::open(&path, config).await.expect("open");
        log.append(batch(1, 1, 10, 0)).await.expect("good batch");
        let good = batch(2, 2, 10, 0).to_vec();
        let mut bad_crc = good.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        let mut bad_magic = good.clone();
        bad_magic[16] = 1;
        let mut bad_length = good.clone();
        bad_length[8..12].copy_from_slice(&9999i32.to_be_bytes());
        for bad in [bad_crc, bad_magic, bad_length, good[..30].to_vec()] {
            let result = log.append(bad.into()).await;
            assert!(
                matches!(result, Err(AppendError::InvalidBatch(_))),
                "{result:?}"
            );
        }
        let result = log.append(batch(3, 1, 4000, 0)).await;
        assert!(
            matches!(result, Err(AppendError::TooLarge { .. })),
            "{result:?}"
        );
        assert_eq!(log.log_end_offset(), 1);
        let info = log
            .append(batch(4, 1, 10, 0))
            .await
            .expect("good after bad");
        assert_eq!(info.base_offset, 1);
    });
}

#[test]
fn truncation_cuts_whole_batches_and_appends_continue() {
    let dir = test_dir("truncate");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_segments())
            .await
            .expect("open");
        let mut expected = append_batches(&log, 100, 2, 200).await;
        // Offset 101 is inside the batch [100, 101]: that batch goes too.
        let end = log.truncate_to(101).await.expect("truncate");
        assert_eq!(end, 100);
        assert_eq!(log.log_end_offset(), 100);
        expected.truncate(50);
        assert_eq!(read_all(&log, 0, 1 << 20).await, expected);
        let b = batch(500, 1, 30, 0);
        let info = log.append(b.clone()).await.expect("append after truncate");
        assert_eq!(info.base_offset, 100);
        expected.push(stored_form(&b, 100));
        assert_eq!(read_all(&log, 0, 1 << 20).await, expected);
        drop(log);
        let (log, report) = PartitionLog::open(&path, small_segments())
            .await
            .expect("reopen");
        assert_eq!(report.corruption, None);
        assert_eq!(read_all(&log, 0, 1 << 20).await, expected);
        // Truncating to the log start empties the log and restarts it there.
        assert_eq!(log.truncate_to(0).await.expect("truncate all"), 0);
        assert_eq!(log.log_end_offset(), 0);
        assert_eq!(log.segment_base_offsets(), vec![0]);
    });
}

#[test]
fn retention_by_bytes_and_time_deletes_whole_old_segments() {
    let dir = test_dir("retention");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (clock, options) = manual_clock_options(1_000_000);
        let (log, _) = PartitionLog::open_with(&path, small_segments(), options)
            .await
            .expect("open");
        for seed in 0..100u64 {
            // Old timestamps for the first half.
            let ts = if seed < 50 { 1_000 } else { 999_000 };
            log.append(batch(seed, 1, 1000, ts)).await.expect("append");
        }
        let segments_before = log.segment_base_offsets().len();
        // A reader inside the first segment keeps its data while retention deletes it.
        let held = log.read(0, 1 << 20, None).await.expect("read");
        let mut config = log.config();
        config.retention_ms = 10_000;
        log.set_config(config.clone());
        let deleted = log.enforce_retention().await.expect("retention");
        assert!(!deleted.is_empty());
        assert!(log.log_start_offset() > 0 && log.log_start_offset() <= 50);
        assert!(matches!(
            log.read(0, 100, None).await,
            Err(ReadError::OffsetOutOfRange { .. })
        ));
        assert!(
            !split_batches(held.bytes()).is_empty(),
            "held read still intact"
        );
        config.retention_ms = -1;
        config.retention_bytes = 40_000;
        log.set_config(config);
        log.enforce_retention().await.expect("retention by size");
        assert!(log.size_bytes() < 40_000 + 16_384);
        assert!(log.segment_base_offsets().len() < segments_before);
        let start = log.log_start_offset();
        clock.advance(1);
        drop(log);
        let (log, _) = PartitionLog::open(&path, small_segments())
            .await
            .expect("reopen");
        assert_eq!(log.log_start_offset(), start);
        assert_eq!(log.log_end_offset(), 100);
    });
}

#[test]
fn group_commit_acknowledges_concurrent_appends_in_order() {
    let dir = test_dir("group-commit");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            flush_messages: 1,
            ..LogConfig::default()
        };
        let (log, _) = PartitionLog::open(&path, config).await.expect("open");
        let log = Rc::new(log);
        let mut tasks = Vec::new();
        for appender in 0..8u64 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut offsets = Vec::new();
                for i in 0..25u64 {
                    let info = log
                        .append(batch(appender * 100 + i, 1, 4000, 0))
                        .await
                        .expect("append");
                    offsets.push(info.base_offset);
                }
                offsets
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            let offsets = task.await;
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "per appender order"
            );
            all.extend(offsets);
        }
        all.sort_unstable();
        assert_eq!(all, (0..200).collect::<Vec<i64>>());
        assert_eq!(read_all(&log, 0, 1 << 20).await.len(), 200);
    });
}

#[test]
fn timestamps_are_found_and_log_append_time_is_stamped() {
    let dir = test_dir("timestamps");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_segments())
            .await
            .expect("open");
        for seed in 0..60u64 {
            // Records at 10*seed, 10*seed+1, 10*seed+2.
            log.append(batch(seed, 3, 300, 10 * seed as i64))
                .await
                .expect("append");
        }
        let found = log
            .offset_for_timestamp(251)
            .await
            .expect("lookup")
            .expect("some");
        assert_eq!(
            (found.offset, found.timestamp, found.exact),
            (76, 251, true)
        );
        let found = log
            .offset_for_timestamp(253)
            .await
            .expect("lookup")
            .expect("some");
        assert_eq!(found.offset, 78);
        assert_eq!(
            log.offset_for_timestamp(0)
                .await
                .expect("lookup")
                .map(|f| f.offset),
            Some(0)
        );
        assert_eq!(
            log.offset_for_timestamp(10_000).await.expect("lookup"),
            None
        );
        assert_eq!(log.max_timestamp(), Some((592, 179)));

        let mut config = log.config();
        config.message_timestamp_type = TimestampType::LogAppendTime;
        log.set_config(config);
        let info = log.append(batch(100, 2, 10, 5)).await.expect("append");
        let stamped = info.log_append_time_ms.expect("log append time");
        let fetched = log
            .read(info.base_offset, 1 << 20, None)
            .await
            .expect("read");
        let (header, _) = split_batches(fetched.bytes()).remove(0);
        assert_eq!(header.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(header.max_timestamp, stamped);
    });
}

#[test]
fn a_failed_write_fails_its_appends_and_the_log_stays_consistent() {
    let dir = test_dir("disk-full");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let armed = Rc::new(std::cell::Cell::new(false));
        let trigger = armed.clone();
        let fault: WriteFault = Rc::new(move |_, _, _| {
            trigger
                .get()
                .then(|| std::io::Error::from_raw_os_error(libc::ENOSPC))
        });
        let options = OpenOptions {
            write_fault: Some(fault),
            ..OpenOptions::default()
        };
        let (log, _) = PartitionLog::open_with(&path, LogConfig::default(), options)
            .await
            .expect("open");
        let mut expected = Vec::new();
        for seed in 0..10u64 {
            let b = batch(seed, 2, 777, 0);
            let info = log.append(b.clone()).await.expect("append");
            expected.push(stored_form(&b, info.base_offset));
        }
        armed.set(true);
        let result = log.append(batch(50, 2, 777, 0)).await;
        match result {
            Err(AppendError::Io(e)) => assert!(e.is_disk_full()),
            other => panic!("expected disk full, got {other:?}"),
        }
        assert_eq!(log.log_end_offset(), 20);
        assert_eq!(read_all(&log, 0, 1 << 20).await, expected);
        armed.set(false);
        let b = batch(51, 1, 100, 0);
        let info = log
            .append(b.clone())
            .await
            .expect("append after space returns");
        assert_eq!(info.base_offset, 20);
        expected.push(stored_form(&b, 20));
        assert_eq!(read_all(&log, 0, 1 << 20).await, expected);
        drop(log);
        let (log, report) = PartitionLog::open(&path, LogConfig::default())
            .await
            .expect("reopen");
        assert_eq!(report.corruption, None, "{report:?}");
        assert_eq!(read_all(&log, 0, 1 << 20).await, expected);
    });
}

#[test]
fn segment_ms_rolls_a_segment_by_age() {
    let dir = test_dir("segment-ms");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (clock, options) = manual_clock_options(1_000_000);
        let config = LogConfig {
            segment_ms: 60_000,
            ..LogConfig::default()
        };
        let (log, _) = PartitionLog::open_with(&path, config, options)
            .await
            .expect("open");
        log.append(batch(1, 1, 10, 0)).await.expect("append");
        clock.advance(59_999);
        log.append(batch(2, 1, 10, 0)).await.expect("append");
        assert_eq!(log.segment_base_offsets(), vec![0]);
        clock.advance(1);
        log.append(batch(3, 1, 10, 0)).await.expect("append");
        assert_eq!(log.segment_base_offsets(), vec![0, 2]);
    });
}

#[test]
fn flush_policies_issue_the_syncs_they_promise() {
    // Each policy on its own log, so no sync of one is still in flight during the next. A sync
    // is counted when it starts, in the same pump that acknowledges the append that made it
    // due, so the counts below do not depend on timing.
    let dir = test_dir("flush-policy");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (clock, options) = manual_clock_options(0);
        let open = |name: &str, config: LogConfig| {
            let dir = path.join(name);
            let options = options.clone();
            async move { PartitionLog::open_with(&dir, config, options).await }
        };
        // Kafka's default: never sync on appends.
        let (log, _) = open("default", LogConfig::default()).await.expect("open");
        for seed in 0..10 {
            log.append(batch(seed, 1, 10, 0)).await.expect("append");
        }
        assert_eq!(log.stats().syncs, 0);

        // flush.messages = 4: the fourth unsynced message starts a sync.
        let config = LogConfig {
            flush_messages: 4,
            ..LogConfig::default()
        };
        let (log, _) = open("messages", config).await.expect("open");
        for seed in 0..3 {
            log.append(batch(seed, 1, 10, 0)).await.expect("append");
        }
        assert_eq!(log.stats().syncs, 0);
        log.append(batch(3, 1, 10, 0)).await.expect("append");
        assert_eq!(log.stats().syncs, 1);

        // flush.ms = 1000: nothing until the oldest unsynced append is a second old.
        let config = LogConfig {
            flush_ms: 1_000,
            ..LogConfig::default()
        };
        let (log, _) = open("ms", config).await.expect("open");
        log.append(batch(100, 1, 10, 0)).await.expect("append");
        clock.advance(999);
        log.tick();
        assert_eq!(log.stats().syncs, 0);
        clock.advance(1);
        log.tick();
        assert_eq!(log.stats().syncs, 1);
    });
}

#[test]
fn group_commit_shares_one_sync_among_concurrent_appends() {
    let dir = test_dir("group-commit-sharing");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            flush_messages: 1,
            ..LogConfig::default()
        };
        let (log, _) = PartitionLog::open(&path, config).await.expect("open");
        let log = Rc::new(log);
        let tasks: Vec<_> = (0..32u64)
            .map(|seed| {
                let log = log.clone();
                glommio::spawn_local(async move { log.append(batch(seed, 1, 100, 0)).await })
            })
            .collect();
        for task in tasks {
            task.await.expect("append");
        }
        let stats = log.stats();
        // Every append waited for a sync, but they arrived together: far fewer syncs.
        assert!(stats.syncs >= 1 && stats.syncs < 32, "{stats:?}");
        assert!(
            stats.writes < 32,
            "appends coalesced into fewer writes: {stats:?}"
        );
    });
}

#[test]
fn blocked_partial_flushes_do_not_spin_the_executor() {
    // Batches just over 1 MiB into buffers just under 1 MiB: almost every buffer ends with a
    // batch's start whose write must wait for the overlapping one. Each deferred flush must
    // lead to a write; before the fix the executor re-scheduled flushes millions of times.
    let dir = test_dir("no-spin");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            write_buffer_bytes: 1016 << 10,
            max_message_bytes: 2 << 20,
            ..LogConfig::default()
        };
        let (log, _) = PartitionLog::open(&path, config).await.expect("open");
        let log = Rc::new(log);
        let tasks: Vec<_> = (0..8u64)
            .map(|appender| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    for i in 0..6u64 {
                        let b = batch(appender * 10 + i, 8, 128 << 10, 0);
                        log.append(b).await.expect("append");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let stats = log.stats();
        assert!(stats.flush_tasks <= stats.writes, "{stats:?}");
    });
}

#[test]
fn sealing_runs_in_the_background_queue_given() {
    let dir = test_dir("background-queue");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let background = glommio::executor().create_task_queue(
            glommio::Shares::Static(100),
            glommio::Latency::NotImportant,
            "ringlog-background",
        );
        let options = OpenOptions {
            background_queue: Some(background),
            ..OpenOptions::default()
        };
        let (log, _) = PartitionLog::open_with(&path, small_segments(), options)
            .await
            .expect("open");
        let selected = || {
            glommio::executor()
                .task_queue_stats(background)
                .expect("queue exists")
                .queue_selected()
        };
        assert_eq!(selected(), 0);
        append_batches(&log, 60, 2, 300).await;
        assert!(log.segment_base_offsets().len() > 2, "rolled");
        // close waits for the sealer, which ran in the background queue.
        log.close().await.expect("close");
        assert!(selected() > 0, "the background queue never ran");
    });
}

/// With the default 1 GiB `segment.bytes`, a segment takes disk space a chunk at a time as it
/// fills, not 1 GiB when it is created; and once written past several chunks its data reads
/// back whole and survives a reopen.
#[test]
fn segments_are_preallocated_a_chunk_at_a_time() {
    let dir = test_dir("prealloc-chunks");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig::default();
        let (log, _) = PartitionLog::open(&path, config.clone())
            .await
            .expect("open");
        let segment_file = path.join("00000000000000000000.log");
        let chunk = ringlog_engine::segment::PREALLOCATE_CHUNK_BYTES_MAX;
        assert!(
            allocated_bytes(&segment_file) <= chunk,
            "empty segment over one chunk"
        );
        // ~94 MiB (batches under max.message.bytes): several chunks.
        let expected = append_batches(&log, 100, 60, 16 * 1024).await;
        let written = log.size_bytes();
        let on_disk = allocated_bytes(&segment_file);
        assert!(
            on_disk >= written,
            "{on_disk} bytes allocated for {written}"
        );
        assert!(
            on_disk <= written + 2 * chunk,
            "{on_disk} bytes allocated for {written}"
        );
        let end = log.log_end_offset();
        drop(log);
        let (log, report) = PartitionLog::open(&path, config).await.expect("reopen");
        assert_eq!(report.corruption, None, "{report:?}");
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_all(&log, 0, 4 << 20).await, expected);
    });
}

#[test]
fn admission_checks_see_the_offset_they_assign_and_refusals_store_nothing() {
    let dir = test_dir("append-checked");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_segments())
            .await
            .expect("open");
        let mut seen = None;
        let info = log
            .append_checked(batch(1, 3, 10, 1000), |header, base_offset| {
                seen = Some((header.records_count, base_offset));
                Ok::<(), &str>(())
            })
            .await
            .expect("admitted");
        assert_eq!(seen, Some((3, 0)));
        assert_eq!(info.base_offset, 0);
        let refused = log
            .append_checked(batch(2, 2, 10, 1000), |_, base_offset| {
                assert_eq!(base_offset, 3);
                Err("duplicate")
            })
            .await;
        assert!(matches!(
            refused,
            Err(ringlog_engine::CheckedAppendError::Refused("duplicate"))
        ));
        assert_eq!(log.log_end_offset(), 3);
        log.append(batch(3, 4, 10, 1000)).await.expect("append");
        // Reopened without close: the headers after any offset can be visited again.
        drop(log);
        let (log, _) = PartitionLog::open(&path, small_segments())
            .await
            .expect("reopen");
        let mut bases = Vec::new();
        let end = ringlog_engine::scan::visit_batches(&log, 1, |header, _| {
            bases.push(header.base_offset)
        })
        .await
        .expect("visit");
        assert_eq!((bases, end), (vec![0, 3], 7));
        let mut bases = Vec::new();
        ringlog_engine::scan::visit_batches(&log, 3, |header, _| bases.push(header.base_offset))
            .await
            .expect("visit");
        assert_eq!(bases, vec![3]);
    });
}

/// `scan::visit_batches` hands out every batch whole, byte for byte, in order, from the one
/// holding the start offset, across segments and more than one read's worth of bytes.
#[test]
fn visit_batches_sees_every_batch_whole_from_the_start_offset() {
    let dir = test_dir("visit-batches");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            segment_bytes: 512 << 10,
            ..small_segments()
        };
        let (log, _) = PartitionLog::open(&path, config).await.expect("open");
        let stored = append_batches(&log, 300, 4, 2000).await;
        let total: usize = stored.iter().map(Vec::len).sum();
        assert!(total > 2 * ringlog_engine::scan::VISIT_READ_BYTES);
        assert!(log.segment_base_offsets().len() > 2);

        let mut seen = Vec::new();
        let end = ringlog_engine::scan::visit_batches(&log, 0, |header, bytes| {
            assert_eq!(header.total_bytes(), bytes.len());
            seen.push(bytes.to_vec());
        })
        .await
        .expect("visit");
        assert_eq!(end, log.log_end_offset());
        assert!(seen == stored, "every batch, whole and in order");

        // From inside batch 150 (offsets 600..=603): that batch first.
        let mut bases = Vec::new();
        ringlog_engine::scan::visit_batches(&log, 601, |header, _| bases.push(header.base_offset))
            .await
            .expect("visit");
        assert_eq!(bases, (150..300).map(|i| i * 4).collect::<Vec<i64>>());
    });
}

/// Deleting the segments before an offset removes only whole, non-active segments entirely
/// below it, moves the log start there, and a reopen agrees.
#[test]
fn segments_before_an_offset_are_deleted_whole() {
    let dir = test_dir("delete-before");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = PartitionLog::open(&path, small_segments())
            .await
            .expect("open");
        let expected = append_batches(&log, 120, 3, 100).await;
        let bases = log.segment_base_offsets();
        assert!(bases.len() >= 4, "several segments: {bases:?}");
        // An offset inside the third segment: the first two go, the third stays.
        let cut = bases[2] + 1;
        let deleted = log.delete_segments_before(cut).await.expect("delete");
        assert_eq!(deleted, bases[..2].to_vec());
        assert_eq!(log.log_start_offset(), bases[2]);
        assert_eq!(log.segment_base_offsets(), bases[2..].to_vec());
        // Nothing more to delete below the new start.
        assert!(log
            .delete_segments_before(bases[2])
            .await
            .expect("delete")
            .is_empty());
        let end = log.log_end_offset();
        let kept = read_all(&log, bases[2], 1 << 20).await;
        assert_eq!(kept, expected[expected.len() - kept.len()..].to_vec());
        log.close().await.expect("close");
        let (log, _) = PartitionLog::open(&path, small_segments())
            .await
            .expect("reopen");
        assert_eq!(log.log_start_offset(), bases[2]);
        assert_eq!(log.log_end_offset(), end);
    });
}

/// The extents of `[start, end)` of `file` as the filesystem reports them (FIEMAP):
/// `(logical start, length, unwritten)`, or `None` where the filesystem cannot say.
fn extents(file: &std::path::Path, start: u64, end: u64) -> Option<Vec<(u64, u64, bool)>> {
    use std::os::fd::AsRawFd;
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    const SLOTS: usize = 256;
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Map {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [Extent; SLOTS],
    }
    let empty = Extent {
        logical: 0,
        physical: 0,
        length: 0,
        reserved64: [0; 2],
        flags: 0,
        reserved: [0; 3],
    };
    let mut map = Box::new(Map {
        start,
        length: end - start,
        flags: 0,
        mapped_extents: 0,
        extent_count: SLOTS as u32,
        reserved: 0,
        extents: [empty; SLOTS],
    });
    let handle = std::fs::File::open(file).expect("open for FIEMAP");
    // SAFETY: FS_IOC_FIEMAP reads and writes a `struct fiemap` followed by `extent_count`
    // `struct fiemap_extent`s, which is the layout of `Map`; the box outlives the call.
    let rc = unsafe { libc::ioctl(handle.as_raw_fd(), FS_IOC_FIEMAP, &mut *map as *mut Map) };
    if rc != 0 {
        return None;
    }
    let count = (map.mapped_extents as usize).min(SLOTS);
    Some(
        map.extents[..count]
            .iter()
            .map(|e| (e.logical, e.length, e.flags & FIEMAP_EXTENT_UNWRITTEN != 0))
            .collect(),
    )
}

/// Whether every block of `[start, end)` is allocated and written (no hole, no unwritten
/// extent), per `extents`.
fn all_written(extents: &[(u64, u64, bool)], start: u64, end: u64) -> bool {
    let mut covered = start;
    for &(logical, length, unwritten) in extents {
        if logical + length <= covered || logical >= end {
            continue;
        }
        if logical > covered || unwritten {
            return false;
        }
        covered = logical + length;
    }
    covered >= end
}

/// Small appends (one awaited at a time, so each write is a few KiB) keep a runway of zeros
/// written ahead of the data, so the next appends overwrite written blocks (no unwritten
/// extent to convert); without `zero_ahead` the same range stays unwritten. Either way the
/// data reads back whole and survives a reopen.
#[test]
fn small_appends_keep_a_runway_of_written_zeros_ahead() {
    let dir = test_dir("zero-ahead");
    let root = dir.path().to_path_buf();
    run(move || async move {
        let mut seen = Vec::new();
        for zero_ahead in [true, false] {
            let path = root.join(format!("zero-ahead-{zero_ahead}"));
            let config = LogConfig {
                zero_ahead,
                ..LogConfig::default()
            };
            let (log, _) = PartitionLog::open(&path, config.clone())
                .await
                .expect("open");
            let expected = append_batches(&log, 300, 1, 1000).await;
            // Let the last zero step land.
            glommio::timer::sleep(std::time::Duration::from_millis(200)).await;
            let size = log.size_bytes();
            let from = size.next_multiple_of(4096);
            let ahead = from + 512 * 1024;
            let segment_file = path.join("00000000000000000000.log");
            let Some(map) = extents(&segment_file, 0, ahead) else {
                eprintln!("skipped: this filesystem does not answer FIEMAP");
                return;
            };
            assert!(all_written(&map, 0, size), "data blocks written: {map:?}");
            seen.push((zero_ahead, all_written(&map, from, ahead), map));
            let end = log.log_end_offset();
            drop(log);
            let (log, report) = PartitionLog::open(&path, config).await.expect("reopen");
            assert_eq!(report.corruption, None, "{report:?}");
            assert_eq!(log.log_end_offset(), end);
            assert_eq!(read_all(&log, 0, 1 << 20).await, expected);
        }
        let (_, without_written, without_map) = &seen[1];
        if *without_written {
            eprintln!("skipped: preallocated blocks read as written here: {without_map:?}");
            return;
        }
        let (_, with_written, with_map) = &seen[0];
        assert!(
            *with_written,
            "512 KiB past the data are zeroed ahead: {with_map:?}"
        );
    });
}
