//! Consumer reads (`PartitionLog::fetch`): the tail cache, read-ahead and the disk return the
//! same bytes as `read`, within the cache's budget, across retention and truncation.

mod common;

use std::rc::Rc;

use common::{append_batches, batch, run, split_batches, stored_form, test_dir};
use ringlog_engine::{FetchedRecords, LogConfig, OpenOptions, PartitionLog, ReadSource, TailCache};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 10,
        index_interval_bytes: 1024,
        write_buffer_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

async fn open(dir: &std::path::Path, cache: &Rc<TailCache>) -> PartitionLog {
    let options = OpenOptions {
        tail_cache: Some(Rc::clone(cache)),
        ..OpenOptions::default()
    };
    PartitionLog::open_with(dir, config(), options)
        .await
        .expect("open")
        .0
}

/// Fetches everything from `from` to the end, checking each batch against `stored` (indexed by
/// base offset through `offsets`) and returning the sources used.
async fn fetch_all(
    log: &PartitionLog,
    from: i64,
    max_bytes: usize,
    stored: &[(i64, Vec<u8>)],
) -> Vec<ReadSource> {
    let mut sources = Vec::new();
    let mut offset = from;
    while offset < log.log_end_offset() {
        let fetched: FetchedRecords = log.fetch(offset, max_bytes, None).await.expect("fetch");
        assert!(fetched.batch_count > 0, "no progress at {offset}");
        let bytes = fetched.to_vec();
        assert_eq!(bytes.len(), fetched.bytes);
        let batches = split_batches(&bytes);
        assert_eq!(batches.len(), fetched.batch_count);
        for (header, got) in batches {
            let expected = stored
                .iter()
                .find(|(base, _)| *base == header.base_offset)
                .map(|(_, bytes)| bytes)
                .expect("a stored batch");
            assert_eq!(&got, expected, "batch at {}", header.base_offset);
        }
        offset = fetched.next_offset;
        sources.push(fetched.source);
    }
    sources
}

fn with_offsets(stored: Vec<Vec<u8>>) -> Vec<(i64, Vec<u8>)> {
    stored
        .into_iter()
        .map(|bytes| {
            let base = i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
            (base, bytes)
        })
        .collect()
}

#[test]
fn tail_reads_come_from_the_cache_and_match_the_disk() {
    let dir = test_dir("fetch-tail");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cache = Rc::new(TailCache::new(8 << 20));
        let log = open(&path, &cache).await;
        let mut stored = Vec::new();
        // A tail consumer: each append is fetched right after it is written.
        for seed in 0..200u64 {
            let b = batch(
                seed,
                1 + (seed % 4) as usize,
                100 + (seed as usize * 37) % 900,
                1,
            );
            let offset = log.log_end_offset();
            let info = log.append(b.clone()).await.expect("append");
            stored.push((info.base_offset, stored_form(&b, info.base_offset)));
            let fetched = log.fetch(offset, 1 << 20, None).await.expect("fetch");
            assert_eq!(fetched.source, ReadSource::TailCache, "seed {seed}");
            assert_eq!(fetched.to_vec(), stored.last().expect("stored").1);
        }
        assert!(log.segment_base_offsets().len() > 1, "the log rolled");
        // Everything is still cached (the budget holds it all), across segments.
        let sources = fetch_all(&log, 0, 64 << 10, &stored).await;
        assert!(
            sources.iter().all(|s| *s == ReadSource::TailCache),
            "{sources:?}"
        );
        let disk = log.read(0, 64 << 10, None).await.expect("read");
        let cached = log.fetch(0, 64 << 10, None).await.expect("fetch");
        assert_eq!(
            cached.to_vec(),
            disk.bytes(),
            "the same batches as a disk read"
        );
        assert_eq!(cached.next_offset, disk.next_offset);
        let stats = cache.stats();
        assert!(stats.used_bytes <= stats.budget_bytes);
        assert!(
            stats.chunks_compacted > 0,
            "idle appends were compacted: {stats:?}"
        );
        log.close().await.expect("close");
    });
}

#[test]
fn a_tiny_budget_evicts_and_backlog_reads_use_read_ahead() {
    let dir = test_dir("fetch-backlog");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cache = Rc::new(TailCache::new(128 << 10));
        let log = open(&path, &cache).await;
        // Concurrent appends fill whole write buffers.
        let appends: Vec<_> = (0..800u64)
            .map(|seed| {
                let b = batch(seed, 2, 600, 1);
                (b.clone(), log.append(b))
            })
            .collect();
        let mut stored = Vec::new();
        for (b, append) in appends {
            let info = append.await.expect("append");
            stored.push(stored_form(&b, info.base_offset));
        }
        let stored = with_offsets(stored);
        let stats = cache.stats();
        assert!(stats.chunks_evicted > 0, "{stats:?}");
        assert!(stats.used_bytes <= stats.budget_bytes, "{stats:?}");
        // A consumer from the start: the disk first, then read-ahead, then the cached tail.
        let sources = fetch_all(&log, 0, 32 << 10, &stored).await;
        assert_eq!(sources.first(), Some(&ReadSource::Disk));
        assert!(sources.contains(&ReadSource::ReadAhead), "{sources:?}");
        assert_eq!(sources.last(), Some(&ReadSource::TailCache), "{sources:?}");
        let disk_reads = sources.iter().filter(|s| **s == ReadSource::Disk).count();
        assert!(
            disk_reads * 3 < sources.len(),
            "mostly read ahead: {sources:?}"
        );
        // Fetches that end where a segment ends: read-ahead continues in the next segment.
        // (The only log registered has id 0: dropping its entries sends every read to disk.)
        cache.forget(0);
        let sources = fetch_all(&log, 0, 200 << 10, &stored).await;
        assert!(log.segment_base_offsets().len() > 2);
        let disk_reads = sources.iter().filter(|s| **s == ReadSource::Disk).count();
        assert_eq!(disk_reads, 1, "{sources:?}");
        log.close().await.expect("close");
    });
}

#[test]
fn pieces_outlive_retention_and_truncation_drops_cached_data() {
    let dir = test_dir("fetch-retention");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cache = Rc::new(TailCache::new(8 << 20));
        let log = open(&path, &cache).await;
        let stored = with_offsets(append_batches(&log, 500, 2, 800).await);
        // In-flight sends: one cached, one read from the disk.
        let cached = log.fetch(0, 1, None).await.expect("fetch");
        assert_eq!(cached.source, ReadSource::TailCache);
        // The only log registered has id 0: dropping its entries sends the next read to disk.
        cache.forget(0);
        let from_disk = log.fetch(2, 1, None).await.expect("fetch");
        assert_eq!(from_disk.source, ReadSource::Disk);
        let expected = (stored[0].1.clone(), stored[1].1.clone());
        let first_kept = log.segment_base_offsets()[2];
        let deleted = log
            .delete_segments_before(first_kept)
            .await
            .expect("retention");
        assert_eq!(deleted.len(), 2);
        assert_eq!(cached.to_vec(), expected.0, "cached bytes survive deletion");
        assert_eq!(
            from_disk.to_vec(),
            expected.1,
            "read bytes survive deletion"
        );
        assert!(log.fetch(0, 1, None).await.is_err(), "below the log start");

        // Truncate and write different batches at the same offsets: no stale cached bytes.
        let cut = log.log_end_offset() - 20;
        log.truncate_to(cut).await.expect("truncate");
        let mut fresh = Vec::new();
        for seed in 1000..1010u64 {
            let b = batch(seed, 2, 300, 5);
            let info = log.append(b.clone()).await.expect("append");
            fresh.push((info.base_offset, stored_form(&b, info.base_offset)));
        }
        let sources = fetch_all(&log, cut, 1 << 20, &fresh).await;
        assert!(!sources.is_empty());
        log.close().await.expect("close");
    });
}

/// A consumer reading past the cache catches up with the log end and waits there (empty
/// fetches): its read-ahead stream is kept, so when records come the next fetches are served
/// from read-ahead again, not from an index lookup and a disk read.
#[test]
fn read_ahead_continues_after_empty_fetches_at_the_bound() {
    let dir = test_dir("fetch-bound");
    let path = dir.path().to_path_buf();
    run(move || async move {
        // No cache budget: every read is past the cache.
        let cache = Rc::new(TailCache::new(0));
        let log = open(&path, &cache).await;
        let stored = with_offsets(append_batches(&log, 40, 2, 500).await);
        let sources = fetch_all(&log, 0, 4 << 10, &stored).await;
        assert_eq!(sources.first(), Some(&ReadSource::Disk));
        assert_eq!(sources.last(), Some(&ReadSource::ReadAhead), "{sources:?}");

        // At the bound: nothing to return, again and again.
        let end = log.log_end_offset();
        for _ in 0..3 {
            let empty = log.fetch(end, 4 << 10, None).await.expect("fetch");
            assert_eq!((empty.batch_count, empty.source), (0, ReadSource::Empty));
        }

        // New records in the same segment: the waiting stream reads them.
        let mut more = stored;
        for seed in 100..140u64 {
            let b = batch(seed, 2, 500, 1);
            let info = log.append(b.clone()).await.expect("append");
            more.push((info.base_offset, stored_form(&b, info.base_offset)));
        }
        assert_eq!(log.segment_base_offsets().len(), 1, "no roll in this test");
        let sources = fetch_all(&log, end, 4 << 10, &more).await;
        assert!(sources.len() > 2, "{sources:?}");
        assert!(
            sources.iter().all(|s| *s == ReadSource::ReadAhead),
            "read-ahead went on after the empty fetches: {sources:?}"
        );

        // Once the log rolls, the records past a waiting stream are in the next segment: the
        // disk serves them, then read-ahead resumes there.
        let end = log.log_end_offset();
        let filler = log.segment_base_offsets().len();
        while log.segment_base_offsets().len() == filler {
            let b = batch(7, 4, 8000, 1);
            let info = log.append(b.clone()).await.expect("append");
            more.push((info.base_offset, stored_form(&b, info.base_offset)));
        }
        let sources = fetch_all(&log, end, 4 << 10, &more).await;
        assert!(!sources.is_empty());
        log.close().await.expect("close");
    });
}
