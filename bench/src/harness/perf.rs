//! The harness's side of ringlog-perf: the command line for each producer and consumer
//! process, and the `--output-json` file each one writes.
//!
//! The JSON contract (shared with ringlog-perf): throughput totals, `latency` (null for a
//! consumer) with percentiles and a percentile distribution in microseconds, a `timeline` of
//! one-second intervals, and for consumers the kafka-consumer-perf-test extras. Fields this
//! harness does not know are kept (`extra`) so results round-trip whole.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::spec::{BrokerSpec, ConsumerSpec, ProducerSpec};

/// Bytes per MB in `mb_per_sec`, as Kafka's perf tools count.
pub const BYTES_PER_MB: f64 = 1_048_576.0;

/// One ringlog-perf result file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerfOutput {
    pub tool: String,
    #[serde(default)]
    pub version: String,
    /// "producer", "consumer" or "end-to-end".
    pub mode: String,
    #[serde(default)]
    pub settings: Value,
    pub started_at_unix_ms: u64,
    pub elapsed_s: f64,
    pub records: u64,
    pub bytes: u64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    #[serde(default)]
    pub errors: u64,
    pub latency: Option<Latency>,
    #[serde(default)]
    pub timeline: Vec<TimelinePoint>,
    /// Mode-specific fields (a consumer's `rebalance_time_ms`, `fetch_mb_per_sec`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// (percentile in 0..=100, latency in µs).
pub type PercentilePoint = (f64, f64);

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// What the clock starts at: the intended send time (open loop) or the actual one.
    #[serde(default)]
    pub measured_from: String,
    #[serde(default = "microseconds")]
    pub unit: String,
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    /// (percentile, value) pairs, percentile in 0..=100, ascending.
    #[serde(default)]
    pub distribution: Vec<PercentilePoint>,
}

fn microseconds() -> String {
    "us".to_owned()
}

/// One second of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// End of the interval, seconds since the process started measuring.
    pub t_s: f64,
    pub records: u64,
    pub bytes: u64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
}

/// Why a result file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum PerfOutputError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a ringlog-perf result: {message}")]
    Invalid { path: String, message: String },
}

impl PerfOutput {
    pub fn read(path: &Path) -> Result<Self, PerfOutputError> {
        let text = std::fs::read_to_string(path).map_err(|source| PerfOutputError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| PerfOutputError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let output: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if output.tool != "ringlog-perf" {
            return Err(format!("tool is {:?}", output.tool));
        }
        if !output.elapsed_s.is_finite() || output.elapsed_s < 0.0 {
            return Err(format!("elapsed_s is {}", output.elapsed_s));
        }
        Ok(output)
    }

    /// MB/s recomputed from bytes and elapsed time, to cross-check the tool's own figure.
    pub fn mb_per_sec_from_totals(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.bytes as f64 / BYTES_PER_MB / self.elapsed_s
        } else {
            0.0
        }
    }
}

/// Adds every interval histogram of a ringlog-perf `--histogram-out` log (latency in µs, the
/// measured part of the run only) to `into`.
pub fn add_histogram_log(path: &Path, into: &mut Histogram<u64>) -> Result<(), String> {
    let context = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let log = std::fs::read(path).map_err(|e| context(&e))?;
    let mut deserializer = Deserializer::new();
    for entry in IntervalLogIterator::new(&log) {
        let entry = entry.map_err(|e| context(&format!("{e:?}")))?;
        let LogEntry::Interval(interval) = entry else {
            continue;
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(interval.encoded_histogram())
            .map_err(|e| context(&e))?;
        let histogram: Histogram<u64> = deserializer
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| context(&format!("{e:?}")))?;
        into.add(&histogram)
            .map_err(|e| context(&format!("{e:?}")))?;
    }
    Ok(())
}

/// The arguments (after the program) of one producer process (`mode` "producer") or
/// end-to-end process ("end-to-end", which takes the same flags); with `histogram_log` it
/// also writes its latency histograms there.
pub fn producer_args(
    mode: &str,
    broker: &BrokerSpec,
    producer: &ProducerSpec,
    output_json: &Path,
    histogram_log: Option<&Path>,
) -> Vec<String> {
    let mut args: Vec<String> = vec![mode.into(), "--topic".into(), producer.topic.clone()];
    // Without a record count ringlog-perf sends until --duration ends.
    if let Some(records) = producer.records {
        args.push("--num-records".into());
        args.push(records.to_string());
    }
    args.extend([
        "--record-size".into(),
        producer.record_size.to_string(),
        "--throughput".into(),
        producer.throughput.to_string(),
        "--producer-props".into(),
        format!("bootstrap.servers={}", broker.bootstrap),
        format!("acks={}", producer.acks),
    ]);
    if let Some(linger_ms) = producer.linger_ms {
        args.push(format!("linger.ms={linger_ms}"));
    }
    if let Some(batch_size) = producer.batch_size {
        args.push(format!("batch.size={batch_size}"));
    }
    args.extend(
        producer
            .props
            .iter()
            .map(|(key, value)| format!("{key}={value}")),
    );
    let options = [
        ("--duration", producer.duration_s),
        ("--warmup-records", producer.warmup_records),
        ("--cores", producer.cores.map(u64::from)),
        ("--connections", producer.connections.map(u64::from)),
        ("--key-size", producer.key_size.map(u64::from)),
        ("--keys", producer.keys),
    ];
    for (flag, value) in options {
        if let Some(value) = value {
            args.push(flag.into());
            args.push(value.to_string());
        }
    }
    if let Some(path) = histogram_log {
        args.push("--histogram-out".into());
        args.push(path.display().to_string());
    }
    args.push("--output-json".into());
    args.push(output_json.display().to_string());
    args
}

/// The arguments of one consumer process.
pub fn consumer_args(
    broker: &BrokerSpec,
    consumer: &ConsumerSpec,
    group: &str,
    messages: u64,
    output_json: &Path,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "consumer".into(),
        "--bootstrap-server".into(),
        broker.bootstrap.clone(),
        "--topic".into(),
        consumer.topic.clone(),
        "--messages".into(),
        messages.to_string(),
        "--group".into(),
        group.to_owned(),
    ];
    if consumer.from_latest {
        args.push("--from-latest".into());
    }
    let options = [
        ("--timeout", consumer.timeout_ms),
        ("--cores", consumer.cores.map(u64::from)),
    ];
    for (flag, value) in options {
        if let Some(value) = value {
            args.push(flag.into());
            args.push(value.to_string());
        }
    }
    args.push("--output-json".into());
    args.push(output_json.display().to_string());
    args
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::harness::spec::tests::MINIMAL;
    use crate::harness::spec::Workload;

    /// A result of 10,000 records of 1 KiB in `elapsed_s`, as ringlog-perf writes it.
    fn fixture(mode: &str, elapsed_s: f64, started_at_unix_ms: u64, rest: Value) -> String {
        let records = 10_000u64;
        let bytes = records * 1024;
        let mut result = serde_json::json!({
            "tool": "ringlog-perf", "version": "0.1.0", "mode": mode,
            "settings": {"acks": "1", "record_size": 1024},
            "started_at_unix_ms": started_at_unix_ms, "elapsed_s": elapsed_s,
            "records": records, "bytes": bytes,
            "records_per_sec": records as f64 / elapsed_s,
            "mb_per_sec": bytes as f64 / BYTES_PER_MB / elapsed_s,
            "errors": 0,
        });
        if let (Some(result), Value::Object(rest)) = (result.as_object_mut(), rest) {
            result.extend(rest);
        }
        result.to_string()
    }

    /// A producer result; `scale` divides its time and latency so fixtures for two brokers
    /// differ.
    pub fn producer_fixture(scale: f64, started_at_unix_ms: u64) -> String {
        let latency = serde_json::json!({
            "measured_from": "send", "unit": "us", "count": 10_000,
            "mean": 700.0 / scale, "p50": 500.0 / scale, "p95": 900.0 / scale,
            "p99": 1000.0 / scale, "p999": 2000.0 / scale, "p9999": 3000.0 / scale,
            "max": 4000.0 / scale,
            "distribution": [[0.0, 100.0 / scale], [50.0, 500.0 / scale],
                             [90.0, 800.0 / scale], [99.0, 1000.0 / scale],
                             [99.9, 2000.0 / scale], [100.0, 4000.0 / scale]]
        });
        let timeline = serde_json::json!([
            {"t_s": 1.0, "records": 5000, "bytes": 5000 * 1024,
             "p50_us": 500.0, "p99_us": 1000.0, "max_us": 2000.0},
            {"t_s": 2.0, "records": 5000, "bytes": 5000 * 1024,
             "p50_us": 510.0, "p99_us": 1100.0, "max_us": 4000.0}
        ]);
        let rest = serde_json::json!({"latency": latency, "timeline": timeline});
        fixture("producer", 2.0 / scale, started_at_unix_ms, rest)
    }

    /// A consumer result, with the consumer-only fields.
    pub fn consumer_fixture(scale: f64, started_at_unix_ms: u64) -> String {
        let rest = serde_json::json!({
            "latency": null,
            "timeline": [{"t_s": 1.0, "records": 10_000, "bytes": 10_000 * 1024,
                          "p50_us": null, "p99_us": null, "max_us": null}],
            "rebalance_time_ms": 3000, "fetch_time_ms": 1000,
            "fetch_mb_per_sec": 9.77, "fetch_records_per_sec": 10000.0
        });
        fixture("consumer", 1.0 / scale, started_at_unix_ms, rest)
    }

    #[test]
    fn result_files_parse_and_keep_unknown_fields() {
        let producer = PerfOutput::parse(&producer_fixture(1.0, 1)).expect("producer");
        let latency = producer.latency.as_ref().expect("latency");
        assert_eq!((latency.p99, latency.distribution.len()), (1000.0, 6));
        assert!((producer.mb_per_sec - producer.mb_per_sec_from_totals()).abs() < 1e-9);
        let consumer = PerfOutput::parse(&consumer_fixture(1.0, 1)).expect("consumer");
        assert!(consumer.latency.is_none());
        assert_eq!(consumer.extra["rebalance_time_ms"], 3000);
        let again: PerfOutput =
            serde_json::from_str(&serde_json::to_string(&consumer).expect("encode"))
                .expect("decode");
        assert_eq!(again, consumer);
        assert!(PerfOutput::parse(r#"{"tool": "other"}"#).is_err());
        let wrong_tool = producer_fixture(1.0, 1).replace("ringlog-perf", "kcat");
        assert!(PerfOutput::parse(&wrong_tool)
            .expect_err("tool")
            .contains("kcat"));
    }

    #[test]
    fn command_lines_follow_kafka_perf_test_flags() {
        let producer = "duration_s = 30\nlinger_ms = 2\ncores = 2\nkeys = 100\nkey_size = 8\n\
                        props = { \"compression.type\" = \"lz4\" }";
        let text = MINIMAL.replace("records = 1000", producer)
            + "[[step.consumer]]\ntopic = \"t\"\nmessages = 50\nfrom_latest = true\ncores = 2\n";
        let workload = Workload::parse(&text).expect("valid");
        let broker = &workload.brokers[0];
        let step = &workload.steps[0];
        let producer = producer_args(
            "producer",
            broker,
            &step.producers[0],
            Path::new("/o/p.json"),
            Some(Path::new("/o/p.hlog")),
        )
        .join(" ");
        assert_eq!(
            producer,
            "producer --topic t --record-size 1024 --throughput -1 --producer-props \
             bootstrap.servers=127.0.0.1:9092 acks=1 linger.ms=2 compression.type=lz4 \
             --duration 30 --cores 2 --key-size 8 --keys 100 --histogram-out /o/p.hlog \
             --output-json /o/p.json"
        );
        let consumer =
            consumer_args(broker, &step.consumers[0], "g1", 50, Path::new("/o/c.json")).join(" ");
        assert_eq!(
            consumer,
            "consumer --bootstrap-server 127.0.0.1:9092 --topic t --messages 50 --group g1 \
             --from-latest --cores 2 --output-json /o/c.json"
        );
    }
}
