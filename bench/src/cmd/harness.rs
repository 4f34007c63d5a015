//! `run`, `report` and `compare`: the command-line side of `ringlog_bench::harness`.

use std::path::{Path, PathBuf};

use ringlog_bench::harness::compare::{self, figure, Pairing};
use ringlog_bench::harness::html;
use ringlog_bench::harness::results::RunResult;
use ringlog_bench::harness::runner::{self, RunOptions};
use ringlog_bench::harness::spec::Workload;

use super::{write_json, BenchError};
use crate::{CompareArgs, ReportArgs, RunWorkloadArgs};

/// ringlog-perf's file name; by default it is looked for beside this executable.
const PERF_BIN_NAME: &str = "ringlog-perf";

fn default_perf_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(PERF_BIN_NAME)))
        .unwrap_or_else(|| PathBuf::from(PERF_BIN_NAME))
}

pub fn run(args: RunWorkloadArgs) -> Result<(), BenchError> {
    let workload = Workload::load(&args.workload).map_err(|e| BenchError::Usage(e.to_string()))?;
    let options = RunOptions {
        workload_path: args.workload.clone(),
        rounds: args.rounds,
        brokers: args.brokers,
        perf_bin: args.perf_bin.unwrap_or_else(default_perf_bin),
        work_dir: args.work_dir,
        keep_data: args.keep_data,
    };
    let result = runner::run(&workload, &options).map_err(|e| BenchError::Usage(e.to_string()))?;
    println!("\n{}", summary_text(&result));
    write_json(args.output_json.as_deref(), &result)?;
    if let Some(path) = &args.html {
        write_html(&result, path)?;
    }
    if result.failures.is_empty() {
        return Ok(());
    }
    for failure in &result.failures {
        eprintln!("ringlog-bench: failed: {failure}");
    }
    Err(BenchError::Usage(format!(
        "{} failure(s); the figures of everything else are in the results",
        result.failures.len()
    )))
}

/// The summary as a text table, with the load average around the run.
pub fn summary_text(result: &RunResult) -> String {
    let rows: Vec<Vec<String>> = result
        .summary
        .iter()
        .map(|row| {
            let latency = |spread: Option<ringlog_bench::harness::results::Spread>| {
                spread.map_or("-".to_owned(), |s| figure(s.median))
            };
            vec![
                row.broker.clone(),
                row.step.clone(),
                row.role.name().to_owned(),
                row.rounds.to_string(),
                figure(row.mb_per_sec.median),
                figure(row.records_per_sec.median),
                latency(row.latency_us_p50),
                latency(row.latency_us_p99),
                latency(row.latency_us_p999),
                latency(row.latency_us_max),
            ]
        })
        .collect();
    let mut text = format!(
        "{} (median of rounds; load average {} before, {} after)\n",
        result.workload.name, result.machine.loadavg, result.loadavg_end
    );
    text.push_str(&compare::table(
        &[
            "broker",
            "step",
            "role",
            "rounds",
            "MB/s",
            "records/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
        ],
        &rows,
    ));
    text
}

fn write_html(result: &RunResult, path: &Path) -> Result<(), BenchError> {
    std::fs::write(path, html::render(result)).map_err(|e| BenchError::io("writing", path, e))?;
    println!("report: {}", path.display());
    Ok(())
}

pub fn report(args: ReportArgs) -> Result<(), BenchError> {
    let result = RunResult::read(&args.result).map_err(BenchError::Usage)?;
    write_html(&result, &args.html)
}

pub fn compare(args: CompareArgs) -> Result<(), BenchError> {
    let a = RunResult::read(&args.a).map_err(BenchError::Usage)?;
    let b = RunResult::read(&args.b).map_err(BenchError::Usage)?;
    let pairing = Pairing {
        a_broker: args.a_broker,
        b_broker: args.b_broker,
    };
    let comparison = compare::compare(&a, &b, &pairing);
    if comparison.ratios.is_empty() {
        return Err(BenchError::Usage(
            "the two results have no broker, step and role in common (pair brokers with \
             --a-broker and --b-broker)"
                .to_owned(),
        ));
    }
    print!("{}", compare::render(&a, &b, &comparison));
    Ok(())
}
