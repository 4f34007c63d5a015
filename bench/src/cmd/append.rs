//! `ringlog-bench append`: N closed-loop appenders on one partition, one executor, no network.
//!
//! One batch is built up front and every append sends a `Bytes` clone of it (a refcount
//! increment), so the figures are the engine's: validation, copying into aligned buffers,
//! O_DIRECT writes and, with `--fsync group`, the shared fdatasync.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use ringlog_bench::machine::MachineInfo;
use ringlog_bench::size::Size;
use ringlog_bench::workload;
use ringlog_engine::{LogConfig, LogStats, PartitionLog};
use serde::Serialize;

use super::{millis, partition_dir, run_on_executor, timed_close, write_json, BenchError};
use crate::{AppendArgs, Fsync};

/// Bytes per MB in the reported throughput (decimal, as fio and disk vendors report it).
const BYTES_PER_MB: f64 = 1e6;
/// Lowest io_memory given to the executor, whatever the write buffers need.
const MIN_IO_MEMORY_BYTES: usize = 16 << 20;
/// Largest latency the histogram holds, in µs (an hour); longer ones saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// What one run does, fixed before the executor starts.
struct Plan {
    partition: PathBuf,
    batch: Bytes,
    appends: u64,
    appenders: u64,
    config: LogConfig,
    close: bool,
}

/// What the executor hands back.
struct Outcome {
    elapsed: Duration,
    latency_us: Histogram<u64>,
    close: Option<Duration>,
    stats: LogStats,
}

/// The JSON result; the six headline keys first.
#[derive(Debug, Serialize)]
struct AppendResult {
    mb_per_sec: f64,
    appends_per_sec: f64,
    latency_us_p50: u64,
    latency_us_p99: u64,
    latency_us_p999: u64,
    latency_us_max: u64,
    latency_us_mean: f64,
    command: &'static str,
    /// Size of the batch actually appended (within a byte or two of the requested size).
    batch_bytes: u64,
    records_per_batch: u64,
    /// Requested total; `bytes_appended` is that rounded up to whole batches.
    total_bytes: u64,
    bytes_appended: u64,
    appends: u64,
    appenders: u64,
    fsync: &'static str,
    segment_bytes: u64,
    wall_secs: f64,
    /// Time of the clean close (fdatasync, checkpoint), outside `wall_secs`; null with
    /// `--no-close`.
    close_ms: Option<f64>,
    /// O_DIRECT writes the engine issued during the run, and their mean size: how far
    /// appends coalesced.
    writes: u64,
    write_bytes_mean: f64,
    /// fdatasyncs issued: under group commit, appends / syncs is the mean group size.
    syncs: u64,
    dir: String,
    cpu: usize,
    io_memory_bytes: usize,
    #[serde(flatten)]
    machine: MachineInfo,
}

pub fn run(args: AppendArgs) -> Result<(), BenchError> {
    let (plan, io_memory) = plan(&args)?;
    // Collected before the run: the load average should describe the machine, not the run.
    let machine = MachineInfo::collect();
    print_config(&args, &plan, io_memory, &machine);
    remove_partition(&plan.partition)?;
    let batch_len = plan.batch.len() as u64;
    let records = workload::records_per_batch(plan.batch.len()) as u64;
    let (appends, appenders) = (plan.appends, plan.appenders);
    let partition = plan.partition.clone();
    let outcome = run_on_executor(args.run.cpu, io_memory, move || append_all(plan))?;
    let keep = args.keep || args.no_close;
    if !keep {
        remove_partition(&partition)?;
    }
    let result = AppendResult {
        mb_per_sec: (appends * batch_len) as f64 / outcome.elapsed.as_secs_f64() / BYTES_PER_MB,
        appends_per_sec: appends as f64 / outcome.elapsed.as_secs_f64(),
        latency_us_p50: outcome.latency_us.value_at_quantile(0.5),
        latency_us_p99: outcome.latency_us.value_at_quantile(0.99),
        latency_us_p999: outcome.latency_us.value_at_quantile(0.999),
        latency_us_max: outcome.latency_us.max(),
        latency_us_mean: outcome.latency_us.mean(),
        command: "append",
        batch_bytes: batch_len,
        records_per_batch: records,
        total_bytes: args.total_bytes,
        bytes_appended: appends * batch_len,
        appends,
        appenders,
        fsync: args.fsync.name(),
        segment_bytes: args.segment_bytes,
        wall_secs: outcome.elapsed.as_secs_f64(),
        close_ms: outcome.close.map(millis),
        writes: outcome.stats.writes,
        write_bytes_mean: outcome.stats.bytes_written as f64 / outcome.stats.writes.max(1) as f64,
        syncs: outcome.stats.syncs,
        dir: partition.display().to_string(),
        cpu: args.run.cpu,
        io_memory_bytes: io_memory,
        machine,
    };
    print_result(&result, keep);
    write_json(args.run.output_json.as_deref(), &result)
}

/// Checks the arguments and builds the batch, the engine config and the executor's memory.
fn plan(args: &AppendArgs) -> Result<(Plan, usize), BenchError> {
    let usage = |m: String| BenchError::Usage(m);
    let batch_bytes = usize::try_from(args.batch_bytes)
        .map_err(|_| usage(format!("--batch-bytes {} is too large", args.batch_bytes)))?;
    let batch = workload::build_batch(batch_bytes).map_err(|e| usage(e.to_string()))?;
    if args.total_bytes == 0 {
        return Err(usage("--total-bytes must be above zero".into()));
    }
    let defaults = LogConfig::default();
    let config = LogConfig {
        segment_bytes: args.segment_bytes,
        flush_messages: match args.fsync {
            Fsync::Never => u64::MAX,
            Fsync::Group => 1,
        },
        // Big batches must not be refused as too large: that is not what is measured.
        max_message_bytes: defaults.max_message_bytes.max(batch.len()),
        write_buffer_bytes: usize::try_from(args.write_buffer_bytes).map_err(|_| {
            usage(format!(
                "--write-buffer-bytes {} is too large",
                args.write_buffer_bytes
            ))
        })?,
        max_writes_in_flight: args.writes_in_flight as usize,
        ..defaults
    };
    if args.segment_bytes < batch.len() as u64 {
        return Err(usage(format!(
            "--segment-bytes {} is smaller than one batch ({} bytes)",
            args.segment_bytes,
            batch.len()
        )));
    }
    // The engine keeps up to max_writes_in_flight buffers in flight, one filling and one
    // carrying a re-written tail block: all of them should come from the registered arena.
    let buffers = config.write_buffer_bytes * (config.max_writes_in_flight + 2);
    let io_memory = buffers.max(MIN_IO_MEMORY_BYTES);
    let plan = Plan {
        partition: partition_dir(&args.dir),
        appends: args.total_bytes.div_ceil(batch.len() as u64),
        appenders: args.appenders,
        batch,
        config,
        close: !args.no_close,
    };
    Ok((plan, io_memory))
}

fn remove_partition(partition: &std::path::Path) -> Result<(), BenchError> {
    match std::fs::remove_dir_all(partition) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BenchError::io("removing", partition, e)),
    }
}

fn new_histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| BenchError::Histogram(e.to_string()))
}

/// Opens the partition, runs the appenders to completion and closes (unless told not to).
async fn append_all(plan: Plan) -> Result<Outcome, BenchError> {
    let (log, _) = PartitionLog::open(&plan.partition, plan.config.clone()).await?;
    let log = Rc::new(log);
    let remaining = Rc::new(Cell::new(plan.appends));
    let started = Instant::now();
    // spawn_local polls each task at once, so the first appends are issued while the others
    // are still being spawned; that is inside the timed region, as it should be.
    let tasks: Vec<_> = (0..plan.appenders)
        .map(|_| glommio::spawn_local(appender(log.clone(), plan.batch.clone(), remaining.clone())))
        .collect();
    let mut latency_us = new_histogram()?;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(histogram) => latency_us
                .add(histogram)
                .map_err(|e| BenchError::Histogram(e.to_string()))?,
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    let elapsed = started.elapsed();
    let stats = log.stats();
    if let Some(error) = first_error {
        return Err(error);
    }
    let close = timed_close(&log, plan.close).await?;
    Ok(Outcome {
        elapsed,
        latency_us,
        close,
        stats,
    })
}

/// One closed-loop client: take an append from the shared budget, append, await, record.
async fn appender(
    log: Rc<PartitionLog>,
    batch: Bytes,
    remaining: Rc<Cell<u64>>,
) -> Result<Histogram<u64>, BenchError> {
    let mut latency_us = new_histogram()?;
    while remaining.get() > 0 {
        remaining.set(remaining.get() - 1);
        let sent = Instant::now();
        log.append(batch.clone()).await?;
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        latency_us.saturating_record(micros.max(1));
    }
    Ok(latency_us)
}

fn print_config(args: &AppendArgs, plan: &Plan, io_memory: usize, m: &MachineInfo) {
    let batch = plan.batch.len();
    println!("ringlog-bench append");
    println!("  partition     {}", plan.partition.display());
    println!(
        "  total         {} ({} bytes) in {} appends",
        Size(args.total_bytes),
        args.total_bytes,
        plan.appends
    );
    println!(
        "  batch         {batch} bytes, {} records of ~1 KiB (asked {})",
        workload::records_per_batch(batch),
        Size(args.batch_bytes)
    );
    println!("  appenders     {}", plan.appenders);
    println!("  fsync         {}", args.fsync.name());
    println!("  segment       {}", Size(args.segment_bytes));
    println!(
        "  executor      CPU {}, io_memory {}",
        args.run.cpu,
        Size(io_memory as u64)
    );
    print_machine(m);
}

pub fn print_machine(m: &MachineInfo) {
    println!(
        "  machine       {} ({} cores), kernel {}, load {}, git {}{}",
        m.cpu_model,
        m.cores,
        m.kernel,
        m.loadavg,
        m.git_sha,
        if m.git_dirty == Some(true) {
            " (dirty)"
        } else {
            ""
        }
    );
}

fn print_result(result: &AppendResult, kept: bool) {
    println!("results");
    println!(
        "  throughput    {:.1} MB/s, {:.0} appends/s ({} bytes in {:.3} s)",
        result.mb_per_sec, result.appends_per_sec, result.bytes_appended, result.wall_secs
    );
    println!(
        "  latency (µs)  p50 {}  p99 {}  p99.9 {}  max {}  mean {:.1}",
        result.latency_us_p50,
        result.latency_us_p99,
        result.latency_us_p999,
        result.latency_us_max,
        result.latency_us_mean
    );
    println!(
        "  engine        {} writes of {:.0} bytes on average, {} fdatasyncs",
        result.writes, result.write_bytes_mean, result.syncs
    );
    match result.close_ms {
        Some(ms) => println!("  close         {ms:.1} ms (clean)"),
        None => println!("  close         skipped (--no-close): the log is left for `recover`"),
    }
    if kept {
        println!("  data kept in  {}", result.dir);
    }
}
