//! The partition log against a simple in-memory reference model: random sequences of appends,
//! reads, truncations, retention, checkpoints, clean reopens and crash reopens, with small
//! segments so that rolls happen constantly.

mod common;

use common::{batch, run, split_batches, stored_form, test_dir};
use proptest::prelude::*;
use ringlog_engine::{LogConfig, PartitionLog, ReadError};

#[derive(Debug, Clone)]
enum Op {
    Append { records: usize, value_bytes: usize },
    Read { at: f64, max_bytes: usize },
    Truncate { at: f64 },
    RetainBytes { keep: u64 },
    Checkpoint,
    Reopen { clean: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..5, 0usize..900).prop_map(|(records, value_bytes)| Op::Append { records, value_bytes }),
        3 => (0.0f64..1.0, 1usize..20_000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => (0.0f64..1.0).prop_map(|at| Op::Truncate { at }),
        1 => (0u64..40_000).prop_map(|keep| Op::RetainBytes { keep }),
        1 => Just(Op::Checkpoint),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 12 << 10,
        index_interval_bytes: 700,
        write_buffer_bytes: 8192,
        max_writes_in_flight: 3,
        ..LogConfig::default()
    }
}

/// The reference: the log's batches in order, and where it starts.
#[derive(Default)]
struct Model {
    batches: Vec<(i64, i64, Vec<u8>)>,
    log_start_offset: i64,
    next_offset: i64,
}

impl Model {
    fn offset_at(&self, at: f64) -> i64 {
        let span = (self.next_offset - self.log_start_offset) as f64;
        self.log_start_offset + (span * at) as i64
    }
}

async fn check_whole_log(log: &PartitionLog, model: &Model) {
    assert_eq!(log.log_end_offset(), model.next_offset, "log end offset");
    assert_eq!(
        log.log_start_offset(),
        model.log_start_offset,
        "log start offset"
    );
    let mut offset = model.log_start_offset;
    let mut got = Vec::new();
    while offset < model.next_offset {
        let fetched = log.read(offset, 1 << 20, None).await.expect("read");
        assert!(!fetched.is_empty());
        for (header, bytes) in split_batches(fetched.bytes()) {
            offset = header.next_offset();
            got.push(bytes);
        }
    }
    let expected: Vec<&Vec<u8>> = model.batches.iter().map(|(_, _, b)| b).collect();
    assert_eq!(got.iter().collect::<Vec<_>>(), expected, "log contents");
}

async fn apply(
    log: &mut PartitionLog,
    model: &mut Model,
    op: &Op,
    seed: u64,
    dir: &std::path::Path,
) {
    match *op {
        Op::Append {
            records,
            value_bytes,
        } => {
            let b = batch(seed, records, value_bytes, seed as i64);
            let info = log.append(b.clone()).await.expect("append");
            assert_eq!(info.base_offset, model.next_offset);
            model.batches.push((
                info.base_offset,
                info.last_offset,
                stored_form(&b, info.base_offset),
            ));
            model.next_offset = info.last_offset + 1;
        }
        Op::Read { at, max_bytes } => {
            let offset = model.offset_at(at);
            let fetched = log.read(offset, max_bytes, None).await.expect("read");
            let got = split_batches(fetched.bytes());
            if offset == model.next_offset {
                assert!(got.is_empty());
                return;
            }
            // The first batch is the one holding `offset`; then a contiguous run of whole
            // batches within max_bytes (a single batch may exceed it).
            let first = model
                .batches
                .iter()
                .position(|(_, last, _)| *last >= offset)
                .expect("holder");
            assert!(!got.is_empty());
            let total: usize = got.iter().map(|(_, b)| b.len()).sum();
            assert!(got.len() == 1 || total <= max_bytes, "over max_bytes");
            for (i, (_, bytes)) in got.iter().enumerate() {
                assert_eq!(
                    bytes,
                    &model.batches[first + i].2,
                    "batch {i} of a read at {offset}"
                );
            }
        }
        Op::Truncate { at } => {
            let target = model.offset_at(at);
            let end = log.truncate_to(target).await.expect("truncate");
            if target <= model.log_start_offset {
                model.batches.clear();
                model.log_start_offset = target;
                model.next_offset = target;
            } else {
                model.batches.retain(|(_, last, _)| *last < target);
                model.next_offset = model
                    .batches
                    .last()
                    .map_or(model.log_start_offset, |(_, last, _)| last + 1);
            }
            assert_eq!(end, model.next_offset);
        }
        Op::RetainBytes { keep } => {
            let mut config = log.config();
            config.retention_bytes = keep as i64;
            log.set_config(config);
            log.enforce_retention().await.expect("retention");
            let start = log.log_start_offset();
            assert!(start >= model.log_start_offset && start <= model.next_offset);
            model.batches.retain(|(base, _, _)| *base >= start);
            if let Some((base, _, _)) = model.batches.first() {
                assert_eq!(*base, start, "retention removes whole batches");
            }
            model.log_start_offset = start;
            let mut config = log.config();
            config.retention_bytes = -1;
            log.set_config(config);
        }
        Op::Checkpoint => log.checkpoint().await.expect("checkpoint"),
        Op::Reopen { clean } => {
            if clean {
                log.close().await.expect("close");
            }
            let (reopened, report) = PartitionLog::open(dir, config()).await.expect("reopen");
            assert_eq!(report.clean_shutdown, clean);
            assert_eq!(report.corruption, None, "{report:?}");
            *log = reopened;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = test_dir("model");
        let path = dir.path().to_path_buf();
        run(move || async move {
            let (mut log, _) = PartitionLog::open(&path, config()).await.expect("open");
            let mut model = Model::default();
            for (seed, op) in ops.iter().enumerate() {
                apply(&mut log, &mut model, op, seed as u64, &path).await;
                check_whole_log(&log, &model).await;
            }
            let beyond = log.read(model.next_offset + 1, 100, None).await;
            assert!(matches!(beyond, Err(ReadError::OffsetOutOfRange { .. })));
        });
    }
}
