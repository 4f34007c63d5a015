//! The results of a run, as written to `--output-json` and read back by `report` and
//! `compare`: every process's own ringlog-perf result, totals per step and role, and a
//! summary per broker, step and role across rounds.
//!
//! Aggregation rules, chosen so a figure never claims more than was measured:
//! - throughput of concurrent processes adds up (their rates, each over its own run);
//! - latency percentiles of several processes cannot be merged from percentiles, so a step's
//!   latency comes from their histograms (ringlog-perf's `--histogram-out` logs) added up:
//!   exact. Where a log is missing or unreadable it falls back to the worst process's figures
//!   (the highest of each percentile), exact for one process and an upper bound otherwise,
//!   and says so (`latency_exact: false`);
//! - across rounds the summary gives the median, with the minimum and maximum beside it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use hdrhistogram::Histogram;

use super::perf::{add_histogram_log, PercentilePoint, PerfOutput, TimelinePoint};
use crate::machine::MachineInfo;
use crate::perf::stats::percentile_distribution;

/// What a process did in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Wrote the step's backlog before the rest started.
    Backlog,
    Producer,
    Consumer,
    /// Produced and read back its own records (produce-to-consume latency).
    EndToEnd,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Backlog => "backlog",
            Self::Producer => "producer",
            Self::Consumer => "consumer",
            Self::EndToEnd => "end-to-end",
        }
    }
}

/// A whole run: what ran where, and every figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub tool: String,
    pub version: String,
    pub workload: WorkloadInfo,
    pub machine: MachineInfo,
    pub started_at_unix_ms: u64,
    pub finished_at_unix_ms: u64,
    /// `/proc/loadavg` when the run ended (the machine's section has it from the start).
    pub loadavg_end: String,
    /// Brokers measured, in the order they took turns.
    pub brokers: Vec<String>,
    pub rounds: u32,
    /// Each broker's turn in each round, in the order they ran.
    pub runs: Vec<BrokerRound>,
    pub summary: Vec<SummaryRow>,
    /// Everything that failed, one line each (the run carries on past failures).
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    pub name: String,
    pub description: String,
    pub path: String,
    /// The workload as parsed, defaults filled in.
    pub spec: serde_json::Value,
    pub perf_bin: String,
}

/// One broker's turn in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerRound {
    pub round: u32,
    pub broker: String,
    pub started_at_unix_ms: u64,
    pub loadavg_before: String,
    /// Why the turn ended early (the broker did not start, topics could not be created).
    pub error: Option<String>,
    pub steps: Vec<StepRun>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    pub name: String,
    pub warmup: bool,
    pub started_at_unix_ms: u64,
    pub elapsed_s: f64,
    pub processes: Vec<ProcessRun>,
    pub totals: Vec<RoleTotals>,
}

/// One ringlog-perf process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessRun {
    pub role: Role,
    pub index: u32,
    pub topic: String,
    pub group: Option<String>,
    pub command: Vec<String>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub output: Option<PerfOutput>,
    /// The process's HdrHistogram interval log (µs), when it wrote one.
    #[serde(default)]
    pub histogram_log: Option<String>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
}

impl Percentiles {
    fn worst(self, other: Self) -> Self {
        Self {
            p50: self.p50.max(other.p50),
            p95: self.p95.max(other.p95),
            p99: self.p99.max(other.p99),
            p999: self.p999.max(other.p999),
            p9999: self.p9999.max(other.p9999),
            max: self.max.max(other.max),
        }
    }
}

/// What the processes of one role in one step did together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleTotals {
    pub role: Role,
    pub processes: u32,
    /// Processes without a result (failed, killed, no JSON).
    pub failed: u32,
    pub records: u64,
    pub bytes: u64,
    /// Sum of the processes' rates.
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    /// Consumers: the sum of the processes' rates over their fetch time only (the group join
    /// left out), when every process reported one.
    #[serde(default)]
    pub fetch_mb_per_sec: Option<f64>,
    pub errors: u64,
    /// Percentiles of all processes' latencies together (see the module header).
    pub latency_us: Option<Percentiles>,
    /// Whether `latency_us` comes from the merged histograms (else: the worst process's).
    #[serde(default)]
    pub latency_exact: bool,
    /// (percentile, µs) of the merged histogram, when exact.
    #[serde(default)]
    pub latency_distribution: Vec<PercentilePoint>,
    /// Per second of the step: records and bytes are the processes' rates (per second) added
    /// up, latency figures the worst process's.
    pub timeline: Vec<TimelinePoint>,
}

/// A figure across rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        };
        Some(Self {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }
}

/// One broker, step and role across all rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub broker: String,
    pub step: String,
    pub role: Role,
    /// Rounds with a result for this role.
    pub rounds: u32,
    pub records_per_sec: Spread,
    pub mb_per_sec: Spread,
    /// Consumers: MB/s over the fetch time only (see `RoleTotals::fetch_mb_per_sec`).
    #[serde(default)]
    pub fetch_mb_per_sec: Option<Spread>,
    pub latency_us_p50: Option<Spread>,
    pub latency_us_p99: Option<Spread>,
    pub latency_us_p999: Option<Spread>,
    pub latency_us_max: Option<Spread>,
    pub errors: u64,
    pub failed_processes: u32,
}

impl SummaryRow {
    /// The summary's figures by name, for tables and ratios: (metric, value, higher is
    /// better).
    pub fn metrics(&self) -> Vec<(&'static str, f64, bool)> {
        let mut metrics = vec![
            ("records/s", self.records_per_sec.median, true),
            ("MB/s", self.mb_per_sec.median, true),
        ];
        if let Some(fetch) = self.fetch_mb_per_sec {
            metrics.push(("fetch MB/s", fetch.median, true));
        }
        let latencies = [
            ("p50 µs", self.latency_us_p50),
            ("p99 µs", self.latency_us_p99),
            ("p99.9 µs", self.latency_us_p999),
            ("max µs", self.latency_us_max),
        ];
        for (name, spread) in latencies {
            if let Some(spread) = spread {
                metrics.push((name, spread.median, false));
            }
        }
        metrics
    }
}

/// Adds up one role's processes in a step. `step_started_at_unix_ms` aligns the processes'
/// timelines, which count from each process's own start.
pub fn role_totals(
    role: Role,
    processes: &[&ProcessRun],
    step_started_at_unix_ms: u64,
) -> RoleTotals {
    let outputs: Vec<&PerfOutput> = processes.iter().filter_map(|p| p.output.as_ref()).collect();
    let merged = merged_latency(processes).map(|(percentiles, points)| (Some(percentiles), points));
    let latency_exact = merged.is_some();
    let (latency_us, latency_distribution) = merged.unwrap_or_else(|| {
        let worst = outputs
            .iter()
            .filter_map(|o| o.latency.as_ref())
            .map(|l| Percentiles {
                p50: l.p50,
                p95: l.p95,
                p99: l.p99,
                p999: l.p999,
                p9999: l.p9999,
                max: l.max,
            })
            .reduce(Percentiles::worst);
        (worst, Vec::new())
    });
    RoleTotals {
        latency_exact,
        latency_distribution,
        role,
        processes: processes.len() as u32,
        failed: processes.iter().filter(|p| p.output.is_none()).count() as u32,
        records: outputs.iter().map(|o| o.records).sum(),
        bytes: outputs.iter().map(|o| o.bytes).sum(),
        records_per_sec: outputs.iter().map(|o| o.records_per_sec).sum(),
        mb_per_sec: outputs.iter().map(|o| o.mb_per_sec).sum(),
        fetch_mb_per_sec: fetch_mb_per_sec(&outputs),
        errors: outputs.iter().map(|o| o.errors).sum(),
        latency_us,
        timeline: merge_timelines(&outputs, step_started_at_unix_ms),
    }
}

/// The consumers' fetch-only rates added up; `None` unless every output has one.
fn fetch_mb_per_sec(outputs: &[&PerfOutput]) -> Option<f64> {
    if outputs.is_empty() {
        return None;
    }
    outputs
        .iter()
        .map(|o| o.extra.get("fetch_mb_per_sec").and_then(Value::as_f64))
        .sum()
}

/// Points at most in a merged latency distribution.
const DISTRIBUTION_POINTS_MAX: usize = 200;

/// The percentiles and distribution of the successful processes' latency histograms added up,
/// when every one of those with latency left a readable, non-empty log.
fn merged_latency(processes: &[&ProcessRun]) -> Option<(Percentiles, Vec<PercentilePoint>)> {
    let timed: Vec<&ProcessRun> = processes
        .iter()
        .copied()
        .filter(|p| p.output.as_ref().is_some_and(|o| o.latency.is_some()))
        .collect();
    if timed.is_empty() {
        return None;
    }
    let mut merged = Histogram::<u64>::new(3).ok()?;
    for process in timed {
        let path = process.histogram_log.as_ref()?;
        add_histogram_log(std::path::Path::new(path), &mut merged).ok()?;
    }
    if merged.is_empty() {
        return None;
    }
    let at = |q: f64| merged.value_at_quantile(q) as f64;
    let percentiles = Percentiles {
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
        p999: at(0.999),
        p9999: at(0.9999),
        max: merged.max() as f64,
    };
    let distribution = percentile_distribution(&merged, DISTRIBUTION_POINTS_MAX)
        .into_iter()
        .map(|(percentile, value)| (percentile, value as f64))
        .collect();
    Some((percentiles, distribution))
}

/// An interval ending this close after a whole second still counts as ending on it (the
/// tools' one-second ticks land a little late).
const TICK_SLACK_S: f64 = 0.05;

/// The processes' timelines on the step's clock, one point per whole second `s` of the step
/// covering the intervals that end in (s-1, s]: each process's rate in it (its bytes and
/// records over the intervals' length, so a short final interval is not read as a slow
/// second), added up across processes; latency figures the worst of the processes.
fn merge_timelines(outputs: &[&PerfOutput], step_started_at_unix_ms: u64) -> Vec<TimelinePoint> {
    let mut seconds: BTreeMap<u64, TimelinePoint> = BTreeMap::new();
    for output in outputs {
        let offset_s = output
            .started_at_unix_ms
            .saturating_sub(step_started_at_unix_ms) as f64
            / 1e3;
        // second → (records, bytes, seconds covered) of this process.
        let mut own: BTreeMap<u64, (u64, u64, f64)> = BTreeMap::new();
        let mut previous_t_s = 0.0;
        for point in &output.timeline {
            let length_s = (point.t_s - previous_t_s).max(1e-3);
            previous_t_s = point.t_s;
            let second = (offset_s + point.t_s - TICK_SLACK_S).ceil().max(0.0) as u64;
            let covered = own.entry(second).or_insert((0, 0, 0.0));
            covered.0 += point.records;
            covered.1 += point.bytes;
            covered.2 += length_s;
            let merged = seconds.entry(second).or_insert(TimelinePoint {
                t_s: second as f64,
                records: 0,
                bytes: 0,
                p50_us: None,
                p99_us: None,
                max_us: None,
            });
            merged.p50_us = worst(merged.p50_us, point.p50_us);
            merged.p99_us = worst(merged.p99_us, point.p99_us);
            merged.max_us = worst(merged.max_us, point.max_us);
        }
        for (second, (records, bytes, length_s)) in own {
            if let Some(merged) = seconds.get_mut(&second) {
                merged.records += (records as f64 / length_s).round() as u64;
                merged.bytes += (bytes as f64 / length_s).round() as u64;
            }
        }
    }
    seconds.into_values().collect()
}

fn worst(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Totals for each role present in a step, in role order.
pub fn step_totals(processes: &[ProcessRun], step_started_at_unix_ms: u64) -> Vec<RoleTotals> {
    let mut roles: Vec<Role> = processes.iter().map(|p| p.role).collect();
    roles.sort();
    roles.dedup();
    roles
        .into_iter()
        .map(|role| {
            let of_role: Vec<&ProcessRun> = processes.iter().filter(|p| p.role == role).collect();
            role_totals(role, &of_role, step_started_at_unix_ms)
        })
        .collect()
}

/// The summary: one row per broker, measured (non-warm-up) step and role, in the order the
/// brokers and steps ran.
pub fn summarize(brokers: &[String], runs: &[BrokerRound]) -> Vec<SummaryRow> {
    let mut keys: Vec<(String, String, Role)> = Vec::new();
    let mut found: BTreeMap<(String, String, Role), Vec<&RoleTotals>> = BTreeMap::new();
    for broker in brokers {
        for run in runs.iter().filter(|r| &r.broker == broker) {
            for step in run.steps.iter().filter(|s| !s.warmup) {
                for totals in &step.totals {
                    let key = (broker.clone(), step.name.clone(), totals.role);
                    if !found.contains_key(&key) {
                        keys.push(key.clone());
                    }
                    found.entry(key).or_default().push(totals);
                }
            }
        }
    }
    keys.into_iter()
        .filter_map(|key| {
            let totals = found.remove(&key)?;
            let (broker, step, role) = key;
            summary_row(broker, step, role, &totals)
        })
        .collect()
}

fn summary_row(
    broker: String,
    step: String,
    role: Role,
    totals: &[&RoleTotals],
) -> Option<SummaryRow> {
    let measured: Vec<&&RoleTotals> = totals.iter().filter(|t| t.processes > t.failed).collect();
    let spread = |f: &dyn Fn(&RoleTotals) -> f64| {
        Spread::of(&measured.iter().map(|t| f(t)).collect::<Vec<_>>())
    };
    let latency = |f: &dyn Fn(&Percentiles) -> f64| {
        Spread::of(
            &measured
                .iter()
                .filter_map(|t| t.latency_us.as_ref().map(f))
                .collect::<Vec<_>>(),
        )
    };
    Some(SummaryRow {
        rounds: measured.len() as u32,
        records_per_sec: spread(&|t| t.records_per_sec)?,
        mb_per_sec: spread(&|t| t.mb_per_sec)?,
        fetch_mb_per_sec: Spread::of(
            &measured
                .iter()
                .filter_map(|t| t.fetch_mb_per_sec)
                .collect::<Vec<_>>(),
        ),
        latency_us_p50: latency(&|p| p.p50),
        latency_us_p99: latency(&|p| p.p99),
        latency_us_p999: latency(&|p| p.p999),
        latency_us_max: latency(&|p| p.max),
        errors: totals.iter().map(|t| t.errors).sum(),
        failed_processes: totals.iter().map(|t| t.failed).sum(),
        broker,
        step,
        role,
    })
}

impl RunResult {
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a ringlog-bench result: {e}", path.display()))
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::harness::perf::tests::{consumer_fixture, producer_fixture};

    pub fn process(role: Role, index: u32, json: Option<String>) -> ProcessRun {
        ProcessRun {
            role,
            index,
            topic: "t".to_owned(),
            group: None,
            command: vec![],
            exit_code: Some(if json.is_some() { 0 } else { 1 }),
            error: json.is_none().then(|| "exited with 1".to_owned()),
            output: json.map(|j| PerfOutput::parse(&j).expect("fixture")),
            histogram_log: None,
        }
    }

    /// Two rounds of one broker: two producers and a consumer each round, round 2 `scale`
    /// times as fast as round 1 ... and one warm-up step that must not count.
    pub fn broker_rounds(broker: &str, scale: f64) -> Vec<BrokerRound> {
        (1..=2)
            .map(|round| {
                let speed = if round == 1 { scale } else { scale * 1.5 };
                let processes = vec![
                    process(Role::Producer, 0, Some(producer_fixture(speed, 1000))),
                    process(Role::Producer, 1, Some(producer_fixture(speed * 2.0, 2000))),
                    process(Role::Consumer, 0, Some(consumer_fixture(speed, 1000))),
                ];
                let measured = StepRun {
                    name: "produce".to_owned(),
                    warmup: false,
                    started_at_unix_ms: 1000,
                    elapsed_s: 3.0,
                    totals: step_totals(&processes, 1000),
                    processes,
                };
                let warmup_processes =
                    vec![process(Role::Producer, 0, Some(producer_fixture(100.0, 0)))];
                let warmup = StepRun {
                    name: "warm".to_owned(),
                    warmup: true,
                    started_at_unix_ms: 0,
                    elapsed_s: 1.0,
                    totals: step_totals(&warmup_processes, 0),
                    processes: warmup_processes,
                };
                BrokerRound {
                    round,
                    broker: broker.to_owned(),
                    started_at_unix_ms: 0,
                    loadavg_before: "0.10 0.20 0.30".to_owned(),
                    error: None,
                    steps: vec![warmup, measured],
                }
            })
            .collect()
    }

    /// A whole result with brokers "a" (1x) and "b" (`b_scale` times as fast).
    pub fn run_fixture(b_scale: f64) -> RunResult {
        let brokers = vec!["a".to_owned(), "b".to_owned()];
        let mut runs = broker_rounds("a", 1.0);
        runs.extend(broker_rounds("b", b_scale));
        RunResult {
            tool: "ringlog-bench".to_owned(),
            version: "0.1.0".to_owned(),
            workload: WorkloadInfo {
                name: "w".to_owned(),
                description: "fixture".to_owned(),
                path: "w.toml".to_owned(),
                spec: serde_json::json!({}),
                perf_bin: "ringlog-perf".to_owned(),
            },
            machine: MachineInfo::collect(),
            started_at_unix_ms: 0,
            finished_at_unix_ms: 10_000,
            loadavg_end: "0.1 0.2 0.3".to_owned(),
            summary: summarize(&brokers, &runs),
            brokers,
            rounds: 2,
            runs,
            failures: vec![],
        }
    }

    #[test]
    fn concurrent_processes_add_up_and_latency_is_the_worst() {
        let processes = vec![
            process(Role::Producer, 0, Some(producer_fixture(1.0, 1000))),
            process(Role::Producer, 1, Some(producer_fixture(2.0, 2000))),
            process(Role::Producer, 2, None),
        ];
        let totals = step_totals(&processes, 1000);
        assert_eq!(totals.len(), 1);
        let producers = &totals[0];
        assert_eq!((producers.processes, producers.failed), (3, 1));
        assert_eq!(producers.records, 20_000);
        // 5000 records/s and 10000 records/s.
        assert!((producers.records_per_sec - 15_000.0).abs() < 1e-6);
        let latency = producers.latency_us.expect("latency");
        assert_eq!(
            (latency.p50, latency.p99, latency.max),
            (500.0, 1000.0, 4000.0)
        );
        // The second process started a second later: its points land on seconds 2 and 3.
        let seconds: Vec<(f64, u64)> = producers
            .timeline
            .iter()
            .map(|p| (p.t_s, p.records))
            .collect();
        assert_eq!(seconds, vec![(1.0, 5000), (2.0, 10_000), (3.0, 5000)]);
        assert_eq!(producers.timeline[1].max_us, Some(4000.0));
    }

    #[test]
    fn consumers_fetch_only_rates_add_up_and_reach_the_summary() {
        let consumers = vec![
            process(Role::Consumer, 0, Some(consumer_fixture(1.0, 1000))),
            process(Role::Consumer, 1, Some(consumer_fixture(2.0, 1000))),
        ];
        let totals = step_totals(&consumers, 1000);
        let fetch = totals[0].fetch_mb_per_sec.expect("consumers report one");
        assert!((fetch - 2.0 * 9.77).abs() < 1e-9, "{fetch}");
        let producers = vec![process(Role::Producer, 0, Some(producer_fixture(1.0, 0)))];
        assert_eq!(step_totals(&producers, 0)[0].fetch_mb_per_sec, None);
        let result = run_fixture(1.0);
        let row = result
            .summary
            .iter()
            .find(|r| r.role == Role::Consumer)
            .expect("consumer row");
        assert!(row.fetch_mb_per_sec.is_some());
        assert!(row
            .metrics()
            .iter()
            .any(|(name, _, _)| *name == "fetch MB/s"));
    }

    #[test]
    fn a_short_last_interval_counts_as_a_rate() {
        let mut output = PerfOutput::parse(&producer_fixture(1.0, 1000)).expect("fixture");
        // Ticks land a little late; the run ends 0.4 s into its third second.
        output.timeline[0].t_s = 1.0003;
        output.timeline[1].t_s = 2.0004;
        let mut last = output.timeline[1].clone();
        last.t_s = 2.4004;
        last.records = 2000;
        last.bytes = 2000 * 1024;
        output.timeline.push(last);
        let timeline = merge_timelines(&[&output], 1000);
        let points: Vec<(f64, u64)> = timeline.iter().map(|p| (p.t_s, p.records)).collect();
        // 5000 records in 1.0003 s, 5000 in 1.0001 s, 2000 in 0.4 s.
        assert_eq!(points, vec![(1.0, 4999), (2.0, 5000), (3.0, 5000)]);
    }

    /// Writes an HdrHistogram interval log as ringlog-perf does: one interval per value set.
    fn write_log(path: &std::path::Path, intervals: &[Vec<u64>]) {
        use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
        use hdrhistogram::serialization::V2DeflateSerializer;
        let mut file = std::fs::File::create(path).expect("create log");
        let mut serializer = V2DeflateSerializer::new();
        let now = std::time::SystemTime::now();
        let mut log = IntervalLogWriterBuilder::new()
            .with_start_time(now)
            .with_base_time(now)
            .begin_log_with(&mut file, &mut serializer)
            .expect("begin log");
        for (second, values) in intervals.iter().enumerate() {
            let mut histogram = Histogram::<u64>::new(3).expect("histogram");
            for &value in values {
                histogram.record(value).expect("record");
            }
            let start = std::time::Duration::from_secs(second as u64);
            log.write_histogram(&histogram, start, std::time::Duration::from_secs(1), None)
                .expect("write interval");
        }
    }

    #[test]
    fn latency_of_several_processes_comes_from_their_merged_histograms() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Process 0: 98 fast records over two intervals; process 1: 2 slow ones. Merged, the
        // p99 is slow; neither process's own p50 is the merged p50 either.
        let fast = dir.path().join("fast.hlog");
        write_log(&fast, &[vec![100; 50], vec![200; 48]]);
        let slow = dir.path().join("slow.hlog");
        write_log(&slow, &[vec![50_000, 60_000]]);
        let mut processes = [
            process(Role::Producer, 0, Some(producer_fixture(1.0, 1000))),
            process(Role::Producer, 1, Some(producer_fixture(1.0, 1000))),
        ];
        processes[0].histogram_log = Some(fast.display().to_string());
        processes[1].histogram_log = Some(slow.display().to_string());
        let refs: Vec<&ProcessRun> = processes.iter().collect();
        let totals = role_totals(Role::Producer, &refs, 1000);
        assert!(totals.latency_exact);
        let latency = totals.latency_us.expect("latency");
        assert_eq!(latency.p50, 100.0);
        assert_eq!(latency.p95, 200.0);
        assert!((latency.p99 - 50_000.0).abs() <= 50.0, "{latency:?}");
        assert!((latency.max - 60_000.0).abs() <= 60.0, "{latency:?}");
        let last = totals.latency_distribution.last().expect("distribution");
        assert_eq!(last.0, 100.0);

        // One log missing: the worst process's figures, marked as such.
        processes[1].histogram_log = Some(dir.path().join("gone.hlog").display().to_string());
        let refs: Vec<&ProcessRun> = processes.iter().collect();
        let totals = role_totals(Role::Producer, &refs, 1000);
        assert!(!totals.latency_exact);
        assert!(totals.latency_distribution.is_empty());
        assert_eq!(totals.latency_us.map(|l| l.p99), Some(1000.0));
    }

    #[test]
    fn summary_takes_the_median_of_rounds_and_skips_warmups() {
        let result = run_fixture(2.0);
        let rows: Vec<(&str, &str, Role)> = result
            .summary
            .iter()
            .map(|r| (r.broker.as_str(), r.step.as_str(), r.role))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("a", "produce", Role::Producer),
                ("a", "produce", Role::Consumer),
                ("b", "produce", Role::Producer),
                ("b", "produce", Role::Consumer)
            ]
        );
        // Round 1 of a: 5000 + 10000 records/s; round 2 1.5x that; the median of two is the mean.
        let a = &result.summary[0];
        assert_eq!(a.rounds, 2);
        assert!((a.records_per_sec.median - 18_750.0).abs() < 1e-6);
        assert!((a.records_per_sec.min - 15_000.0).abs() < 1e-6);
        let p99 = a.latency_us_p99.expect("p99");
        assert!((p99.max - 1000.0).abs() < 1e-9);
        assert!(result.summary[1].latency_us_p99.is_none());
    }

    #[test]
    fn spread_of_odd_and_even_counts() {
        let odd = Spread::of(&[3.0, 1.0, 2.0]).expect("odd");
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[4.0, 1.0]).map(|s| s.median), Some(2.5));
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn results_round_trip_through_json() {
        let result = run_fixture(1.5);
        let text = serde_json::to_string(&result).expect("encode");
        let again: RunResult = serde_json::from_str(&text).expect("decode");
        assert_eq!(again, result);
    }
}
