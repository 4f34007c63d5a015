//! Counting and timing what the client shards complete, and reporting it once a second.
//!
//! Each shard owns one `Interval` behind its own mutex: a shard locks only its own, once per
//! completed request, and the reporter thread locks each once a second to take it away, so
//! the lock is never contended on the hot path. The reporter merges the shards' intervals
//! into the timeline (one point per second), the progress windows (Kafka's 5 s lines), the
//! total histogram and, when asked, an HdrHistogram interval log.
//!
//! Warm-up: the first `warmup_records` completed records (over all shards, in completion
//! order) are neither counted nor timed; the measured part starts when the last of them
//! completes (at once when there is no warm-up).

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// The largest latency tracked (larger values are clamped to it): one minute.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Points at most in a JSON latency distribution.
const DISTRIBUTION_POINTS_MAX: usize = 300;
/// How often the reporter collects the shards' intervals.
const TICK: Duration = Duration::from_secs(1);

/// A latency histogram in microseconds, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static histogram bounds are valid")
}

/// What one shard completed since the reporter last looked.
pub struct Interval {
    pub latency_us: Histogram<u64>,
    pub records: u64,
    pub bytes: u64,
    pub errors: u64,
}

impl Interval {
    fn new() -> Self {
        Self {
            latency_us: latency_histogram(),
            records: 0,
            bytes: 0,
            errors: 0,
        }
    }

    fn add(&mut self, other: &Interval) {
        self.records += other.records;
        self.bytes += other.bytes;
        self.errors += other.errors;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }

    fn clear(&mut self) {
        self.records = 0;
        self.bytes = 0;
        self.errors = 0;
        self.latency_us.reset();
    }
}

/// Shared by the client shards (writers) and the reporter (reader).
pub struct Meter {
    shards: Vec<Mutex<Interval>>,
    warmup_records: u64,
    completed_records: AtomicU64,
    measure_start: OnceLock<Instant>,
    /// Set by the reporter when `--duration` is over, or by a failing shard: senders stop.
    stop: AtomicBool,
    /// Set once every shard has returned.
    finished: OnceLock<Instant>,
}

impl Meter {
    pub fn new(shard_count: usize, warmup_records: u64) -> Arc<Self> {
        let meter = Self {
            shards: (0..shard_count)
                .map(|_| Mutex::new(Interval::new()))
                .collect(),
            warmup_records,
            completed_records: AtomicU64::new(0),
            measure_start: OnceLock::new(),
            stop: AtomicBool::new(false),
            finished: OnceLock::new(),
        };
        if warmup_records == 0 {
            let _ = meter.measure_start.set(Instant::now());
        }
        Arc::new(meter)
    }

    fn shard(&self, shard: usize) -> MutexGuard<'_, Interval> {
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `records` completed records of `bytes` in all; `latency_us(i)` is the latency
    /// of the i-th of them (asked only for those past the warm-up).
    pub fn complete(
        &self,
        shard: usize,
        records: u64,
        bytes: u64,
        mut latency_us: impl FnMut(u64) -> Option<u64>,
    ) {
        if records == 0 {
            return;
        }
        let before = self.completed_records.fetch_add(records, Ordering::Relaxed);
        let warm = self.warmup_records.saturating_sub(before).min(records);
        if before < self.warmup_records && before + records >= self.warmup_records {
            let _ = self.measure_start.set(Instant::now());
        }
        let measured = records - warm;
        if measured == 0 {
            return;
        }
        let mut interval = self.shard(shard);
        interval.records += measured;
        interval.bytes += bytes * measured / records;
        for index in warm..records {
            if let Some(latency) = latency_us(index) {
                interval
                    .latency_us
                    .saturating_record(latency.clamp(1, LATENCY_US_MAX));
            }
        }
    }

    /// Counts records that failed for good.
    pub fn fail(&self, shard: usize, records: u64) {
        self.shard(shard).errors += records;
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Called once every shard has returned.
    pub fn finish(&self) {
        let _ = self.finished.set(Instant::now());
    }

    /// Records completed so far, warm-up included.
    pub fn completed_records(&self) -> u64 {
        self.completed_records.load(Ordering::Relaxed)
    }

    pub fn measure_start(&self) -> Option<Instant> {
        self.measure_start.get().copied()
    }
}

/// One second of the measured part.
#[derive(Debug, Clone)]
pub struct TimelinePoint {
    pub t_s: f64,
    pub records: u64,
    pub bytes: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
}

impl TimelinePoint {
    pub fn to_json(&self) -> Value {
        json!({
            "t_s": self.t_s, "records": self.records, "bytes": self.bytes,
            "p50_us": self.p50_us, "p99_us": self.p99_us, "max_us": self.max_us,
        })
    }
}

/// A progress window (several ticks merged), handed to the tool's printer.
pub struct Window<'a> {
    /// Wall-clock length of the window.
    pub elapsed: Duration,
    pub interval: &'a Interval,
    /// Measured records and bytes so far, all windows together.
    pub total_records: u64,
    pub total_bytes: u64,
    /// Time since the measured part started.
    pub since_start: Duration,
}

/// What the reporter does besides collecting.
pub struct ReportOptions {
    /// Every this many ticks `on_window` is called (Kafka's tools: 5 s).
    pub window_ticks: u32,
    pub on_window: Box<dyn FnMut(&Window<'_>) + Send>,
    /// Stop the senders this long after the measured part starts.
    pub duration: Option<Duration>,
    pub histogram_out: Option<PathBuf>,
    /// Total records expected, for the terminal progress indicator.
    pub expected_records: Option<u64>,
}

/// Everything measured, once the run is over.
pub struct Report {
    pub elapsed: Duration,
    pub started_at_unix_ms: u64,
    pub records: u64,
    pub bytes: u64,
    pub errors: u64,
    pub latency_us: Histogram<u64>,
    pub timeline: Vec<TimelinePoint>,
    pub histogram_log_error: Option<String>,
}

impl Report {
    pub fn records_per_sec(&self) -> f64 {
        per_sec(self.records as f64, self.elapsed)
    }

    /// MB = 1048576 bytes, as Kafka's tools count.
    pub fn mb_per_sec(&self) -> f64 {
        per_sec(self.bytes as f64 / 1_048_576.0, self.elapsed)
    }
}

pub fn per_sec(amount: f64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        amount / seconds
    } else {
        0.0
    }
}

/// Starts the reporter thread; it returns the report once `meter.finish()` has been called.
pub fn start_reporter(
    meter: Arc<Meter>,
    options: ReportOptions,
) -> std::thread::JoinHandle<Report> {
    std::thread::Builder::new()
        .name("ringlog-perf-report".to_owned())
        .spawn(move || report(&meter, options))
        .expect("spawning the reporter thread")
}

fn take_intervals(meter: &Meter, into: &mut Interval) {
    into.clear();
    for shard in 0..meter.shards.len() {
        let mut interval = meter.shard(shard);
        into.add(&interval);
        interval.clear();
    }
}

fn unix_ms(at: Instant) -> u64 {
    let now_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let back = Instant::now().saturating_duration_since(at);
    u64::try_from(now_unix.saturating_sub(back).as_millis()).unwrap_or(0)
}

fn report(meter: &Meter, mut options: ReportOptions) -> Report {
    let started = Instant::now();
    let mut tick = Interval::new();
    let mut window = Interval::new();
    let mut window_started = started;
    let mut window_ticks = 0;
    let mut total = Interval::new();
    let mut timeline = Vec::new();
    let mut last_tick = started;
    let mut histogram_log_error = None;
    let mut log_file = options.histogram_out.as_ref().map(|path| {
        File::create(path)
            .map(BufWriter::new)
            .map_err(|e| format!("{}: {e}", path.display()))
    });
    let mut serializer = V2DeflateSerializer::new();
    let mut log = match log_file.as_mut() {
        Some(Ok(file)) => IntervalLogWriterBuilder::new()
            .add_comment("ringlog-perf latency, microseconds")
            .with_start_time(SystemTime::now())
            .with_base_time(SystemTime::now())
            .with_max_value_divisor(1000.0)
            .begin_log_with(file, &mut serializer)
            .map_err(|e| histogram_log_error = Some(e.to_string()))
            .ok(),
        Some(Err(error)) => {
            histogram_log_error = Some(error.clone());
            None
        }
        None => None,
    };
    let indicator = std::io::stderr().is_terminal();
    loop {
        let next = last_tick + TICK;
        let finished = meter.finished.get().copied();
        if finished.is_none() {
            let now = Instant::now();
            if next > now {
                std::thread::sleep((next - now).min(Duration::from_millis(50)));
                continue;
            }
        }
        let now = finished.unwrap_or_else(Instant::now);
        take_intervals(meter, &mut tick);
        let tick_started = last_tick;
        last_tick = now;
        if let Some(start) = meter.measure_start() {
            let since_start = now.saturating_duration_since(start);
            if let (Some(limit), None) = (options.duration, finished) {
                if since_start >= limit {
                    meter.stop();
                }
            }
            if tick.records > 0 || tick.errors > 0 || finished.is_none() {
                timeline.push(point(since_start, &tick));
            }
            if let Some(log) = log.as_mut() {
                let from = tick_started.saturating_duration_since(started);
                if let Err(error) =
                    log.write_histogram(&tick.latency_us, from, now - tick_started, None)
                {
                    histogram_log_error = Some(format!("{error:?}"));
                }
            }
            total.add(&tick);
            window.add(&tick);
            window_ticks += 1;
            if window_ticks >= options.window_ticks && finished.is_none() {
                (options.on_window)(&Window {
                    elapsed: now - window_started,
                    interval: &window,
                    total_records: total.records,
                    total_bytes: total.bytes,
                    since_start,
                });
                window.clear();
                window_ticks = 0;
                window_started = now;
            }
        } else {
            window_started = now;
        }
        if indicator {
            progress_indicator(total.records, options.expected_records, finished.is_some());
        }
        if let Some(end) = finished {
            drop(log);
            if let Some(Ok(file)) = log_file.as_mut() {
                if let Err(error) = file.flush() {
                    histogram_log_error = Some(error.to_string());
                }
            }
            let start = meter.measure_start().unwrap_or(end);
            return Report {
                elapsed: end.saturating_duration_since(start),
                started_at_unix_ms: unix_ms(start),
                records: total.records,
                bytes: total.bytes,
                errors: total.errors,
                latency_us: total.latency_us,
                timeline,
                histogram_log_error,
            };
        }
    }
}

fn point(since_start: Duration, tick: &Interval) -> TimelinePoint {
    let timed = !tick.latency_us.is_empty();
    TimelinePoint {
        t_s: since_start.as_secs_f64(),
        records: tick.records,
        bytes: tick.bytes,
        p50_us: timed.then(|| tick.latency_us.value_at_quantile(0.5)),
        p99_us: timed.then(|| tick.latency_us.value_at_quantile(0.99)),
        max_us: timed.then(|| tick.latency_us.max()),
    }
}

fn progress_indicator(records: u64, expected: Option<u64>, done: bool) {
    const WIDTH: u64 = 30;
    let mut line = match expected.filter(|&e| e > 0 && e < u64::MAX / 2) {
        Some(expected) => {
            let filled = (records.min(expected) * WIDTH / expected) as usize;
            format!(
                "\r[{}{}] {:>3}% {records} records",
                "#".repeat(filled),
                " ".repeat(WIDTH as usize - filled),
                records.min(expected) * 100 / expected
            )
        }
        None => format!("\r{records} records"),
    };
    if done {
        line.push_str("\r\x1b[K");
    }
    let mut stderr = std::io::stderr();
    let _ = stderr.write_all(line.as_bytes());
    let _ = stderr.flush();
}

/// (percentile in 0..=100, value) along HdrHistogram's quantile iteration, thinned to about
/// `points_max` points and always ending at the maximum.
pub fn percentile_distribution(histogram: &Histogram<u64>, points_max: usize) -> Vec<(f64, u64)> {
    let points: Vec<(f64, u64)> = histogram
        .iter_quantiles(5)
        .map(|v| (v.quantile_iterated_to() * 100.0, v.value_iterated_to()))
        .collect();
    let step = points.len().div_ceil(points_max.max(1)).max(1);
    let mut thinned: Vec<(f64, u64)> = points.iter().copied().step_by(step).collect();
    if let Some(&last) = points.last() {
        if thinned.last() != Some(&last) {
            thinned.push(last);
        }
    }
    thinned
}

/// The latency summary of the JSON contract.
pub fn latency_json(histogram: &Histogram<u64>, measured_from: &str) -> Value {
    if histogram.is_empty() {
        return Value::Null;
    }
    let points = percentile_distribution(histogram, DISTRIBUTION_POINTS_MAX);
    json!({
        "measured_from": measured_from,
        "unit": "us",
        "count": histogram.len(),
        "mean": histogram.mean(),
        "p50": histogram.value_at_quantile(0.5),
        "p95": histogram.value_at_quantile(0.95),
        "p99": histogram.value_at_quantile(0.99),
        "p999": histogram.value_at_quantile(0.999),
        "p9999": histogram.value_at_quantile(0.9999),
        "max": histogram.max(),
        "distribution": points.iter().map(|&(p, v)| json!([p, v])).collect::<Vec<_>>(),
    })
}

/// The fields every mode's JSON shares.
pub fn report_json(mode: &str, settings: Value, report: &Report, latency: Value) -> Value {
    json!({
        "tool": "ringlog-perf",
        "version": env!("CARGO_PKG_VERSION"),
        "mode": mode,
        "settings": settings,
        "started_at_unix_ms": report.started_at_unix_ms,
        "elapsed_s": report.elapsed.as_secs_f64(),
        "records": report.records,
        "bytes": report.bytes,
        "records_per_sec": report.records_per_sec(),
        "mb_per_sec": report.mb_per_sec(),
        "errors": report.errors,
        "latency": latency,
        "timeline": report.timeline.iter().map(TimelinePoint::to_json).collect::<Vec<_>>(),
    })
}

/// Writes a JSON document to a file, pretty-printed.
pub fn write_json(path: &std::path::Path, value: &Value) -> std::io::Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    text.push('\n');
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_records_are_neither_counted_nor_timed() {
        let meter = Meter::new(2, 10);
        assert!(meter.measure_start().is_none());
        meter.complete(0, 6, 600, |_| Some(1_000));
        assert!(meter.measure_start().is_none());
        let mut asked = Vec::new();
        meter.complete(1, 6, 600, |i| {
            asked.push(i);
            Some(2_000)
        });
        assert!(meter.measure_start().is_some());
        // Records 0..4 of the second batch finish the warm-up.
        assert_eq!(asked, vec![4, 5]);
        let mut interval = Interval::new();
        take_intervals(&meter, &mut interval);
        assert_eq!(
            (interval.records, interval.bytes, interval.latency_us.len()),
            (2, 200, 2)
        );
    }

    #[test]
    fn distributions_are_capped_and_end_at_the_max() {
        let mut histogram = latency_histogram();
        for value in 1..200_000 {
            histogram.record(value).expect("in range");
        }
        let latency = latency_json(&histogram, "send-time");
        let points = latency["distribution"].as_array().expect("array");
        assert!(points.len() <= DISTRIBUTION_POINTS_MAX + 1 && points.len() > 10);
        assert_eq!(
            points.last().expect("last")[1].as_u64(),
            Some(histogram.max())
        );
        assert_eq!(
            latency["p50"].as_u64(),
            Some(histogram.value_at_quantile(0.5))
        );
        assert_eq!(latency_json(&latency_histogram(), "send-time"), Value::Null);
    }
}
