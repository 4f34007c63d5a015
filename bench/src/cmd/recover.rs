//! `ringlog-bench recover`: times opening an existing partition, which after a crash (or
//! `append --no-close`) means CRC-checking and re-indexing everything after the last
//! checkpoint, and after a clean close means trusting it all.

use std::path::Path;
use std::time::{Duration, Instant};

use ringlog_bench::machine::MachineInfo;
use ringlog_engine::{LogConfig, PartitionLog, RecoveryReport};
use serde::Serialize;

use super::append::print_machine;
use super::{millis, partition_dir, run_on_executor, timed_close, write_json, BenchError};
use crate::RecoverArgs;

/// io_memory for recovery: the engine's write buffers (it loads the tail block into one).
const IO_MEMORY_BYTES: usize = 16 << 20;

/// Where recovery found damage, flattened for JSON.
#[derive(Debug, Serialize)]
struct CorruptionJson {
    segment_base_offset: i64,
    position: u64,
    reason: String,
    discarded_bytes: u64,
}

#[derive(Debug, Serialize)]
struct RecoverResult {
    command: &'static str,
    /// Wall time of `PartitionLog::open`, measured around the call.
    recover_ms: f64,
    /// The engine's own measure (`RecoveryReport::duration`).
    engine_ms: f64,
    clean_shutdown: bool,
    segments: usize,
    scanned_bytes: u64,
    /// Scanned bytes per second of recovery, in MB/s (10^6 bytes).
    scan_mb_per_sec: f64,
    corruption: Option<CorruptionJson>,
    dropped_segments: Vec<i64>,
    log_start_offset: i64,
    log_end_offset: i64,
    /// Null with `--no-close`.
    close_ms: Option<f64>,
    dir: String,
    #[serde(flatten)]
    machine: MachineInfo,
}

struct Outcome {
    open: Duration,
    report: RecoveryReport,
    close: Option<Duration>,
}

pub fn run(args: RecoverArgs) -> Result<(), BenchError> {
    let partition = partition_dir(&args.dir);
    check_partition_exists(&partition)?;
    let machine = MachineInfo::collect();
    println!("ringlog-bench recover");
    println!("  partition     {}", partition.display());
    print_machine(&machine);
    let close = !args.no_close;
    let dir = partition.clone();
    let outcome = run_on_executor(args.run.cpu, IO_MEMORY_BYTES, move || recover(dir, close))?;
    let report = &outcome.report;
    let result = RecoverResult {
        command: "recover",
        recover_ms: millis(outcome.open),
        engine_ms: millis(report.duration),
        clean_shutdown: report.clean_shutdown,
        segments: report.segments,
        scanned_bytes: report.scanned_bytes,
        scan_mb_per_sec: report.scanned_bytes as f64 / outcome.open.as_secs_f64() / 1e6,
        corruption: report.corruption.as_ref().map(|c| CorruptionJson {
            segment_base_offset: c.segment_base_offset,
            position: c.position,
            reason: c.reason.to_string(),
            discarded_bytes: c.discarded_bytes,
        }),
        dropped_segments: report.dropped_segments.clone(),
        log_start_offset: report.log_start_offset,
        log_end_offset: report.log_end_offset,
        close_ms: outcome.close.map(millis),
        dir: partition.display().to_string(),
        machine,
    };
    print_result(&result);
    write_json(args.run.output_json.as_deref(), &result)
}

/// `PartitionLog::open` would create an empty log where none is: refuse instead, since timing
/// that is never what was meant.
fn check_partition_exists(partition: &Path) -> Result<(), BenchError> {
    let entries =
        std::fs::read_dir(partition).map_err(|e| BenchError::io("reading", partition, e))?;
    let has_segment = entries
        .filter_map(Result::ok)
        .any(|entry| entry.path().extension().is_some_and(|ext| ext == "log"));
    if has_segment {
        Ok(())
    } else {
        Err(BenchError::Usage(format!(
            "{} holds no log segment: run `ringlog-bench append --keep` or `--no-close` \
             with the same --dir first",
            partition.display()
        )))
    }
}

async fn recover(dir: std::path::PathBuf, close: bool) -> Result<Outcome, BenchError> {
    let started = Instant::now();
    let (log, report) = PartitionLog::open(&dir, LogConfig::default()).await?;
    let open = started.elapsed();
    let close = timed_close(&log, close).await?;
    Ok(Outcome {
        open,
        report,
        close,
    })
}

fn print_result(result: &RecoverResult) {
    println!("results");
    println!(
        "  recovery      {:.1} ms (engine: {:.1} ms), {} shutdown",
        result.recover_ms,
        result.engine_ms,
        if result.clean_shutdown {
            "clean"
        } else {
            "unclean"
        }
    );
    println!(
        "  scanned       {} bytes in {} segment(s), {:.1} MB/s",
        result.scanned_bytes, result.segments, result.scan_mb_per_sec
    );
    println!(
        "  offsets       [{}, {})",
        result.log_start_offset, result.log_end_offset
    );
    match &result.corruption {
        None => println!("  corruption    none"),
        Some(c) => println!(
            "  corruption    segment {} at {}: {} ({} bytes discarded)",
            c.segment_base_offset, c.position, c.reason, c.discarded_bytes
        ),
    }
    if !result.dropped_segments.is_empty() {
        println!("  dropped       segments {:?}", result.dropped_segments);
    }
    match result.close_ms {
        Some(ms) => println!("  close         {ms:.1} ms (clean)"),
        None => println!("  close         skipped (--no-close)"),
    }
}
