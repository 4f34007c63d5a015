//! `ringlog-perf end-to-end`: produce at a fixed rate and read the same topic back,
//! measuring each record from its intended send time (the stamp in its value, see
//! `payload`) to its arrival at the consumer, on the same host clock. It covers the whole
//! path: batching, Produce, the append, the Fetch long-poll wake-up and the answer.
//!
//! The consumer side is assigned every partition at its end before the producer starts; it
//! reads until it has seen every record the broker acknowledged (or nothing has arrived for
//! `idle_timeout`). The first `--warmup-records` records it reads are not timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringlog_net::client::batch::RecordView;
use ringlog_net::client::cluster::{Cluster, ClusterInfo};
use ringlog_net::client::fetch::{FetchSettings, FETCH_VERSION_MAX};
use serde_json::Value;

use super::fetcher::{self, Assigned, ReadControl, ReadSetup, Sink};
use super::payload;
use super::producer::{self, ProducerConfig};
use super::shards::{self, Clock};
use super::stats::{self, Meter, ReportOptions};

/// How long the consumer waits for a record before giving up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct EndToEndOutcome {
    pub report: stats::Report,
    /// Records the producer got acknowledged, warm-up included.
    pub produced: u64,
    pub timed_out: bool,
    pub json: Value,
}

/// Times each record from the stamp in its value.
struct LatencySink {
    meter: Arc<Meter>,
    clock: Clock,
    latencies_us: Vec<u64>,
    bytes: u64,
}

impl Sink for LatencySink {
    fn record(&mut self, record: &RecordView<'_>, now: Instant) {
        let value = record.value.unwrap_or_default();
        self.bytes += value.len() as u64;
        let latency = payload::read_stamp(value).map_or(0, |(_, intended_us)| {
            self.clock.unix_us(now).saturating_sub(intended_us)
        });
        self.latencies_us.push(latency);
    }

    fn flush(&mut self, shard: usize) {
        let latencies = &self.latencies_us;
        self.meter
            .complete(shard, latencies.len() as u64, self.bytes, |i| {
                latencies.get(i as usize).copied()
            });
        self.latencies_us.clear();
        self.bytes = 0;
    }
}

struct Start {
    cluster: ClusterInfo,
    assigned: Vec<Assigned>,
    fetch_version: i16,
}

/// Creates (or waits for) the topic and finds where each partition ends now.
fn prepare(config: &ProducerConfig) -> Result<Start, String> {
    let (bootstrap, topic, create, client_id) = (
        config.bootstrap.clone(),
        config.topic.clone(),
        config.create_partitions,
        format!("{}-consumer", config.props.client_id),
    );
    shards::run_once(move || async move {
        let mut cluster = Cluster::connect(&bootstrap, &client_id).await?;
        if let Some(partitions) = create {
            cluster.create_topic(&topic, partitions).await?;
        }
        let info = cluster.wait_for_topic(&topic, false).await?;
        let ends = cluster.list_offsets(&info, -1).await?;
        let fetch_version = cluster
            .info()
            .versions
            .pick::<kafka_protocol::messages::FetchRequest>(FETCH_VERSION_MAX)?;
        let assigned = info
            .partitions
            .iter()
            .map(|p| Assigned {
                partition: p.index,
                leader: p.leader,
                offset: ends.get(&p.index).copied().unwrap_or(0),
            })
            .collect();
        Ok(Start {
            cluster: cluster.info().clone(),
            assigned,
            fetch_version,
        })
    })
}

/// Runs producer and consumer; `progress` receives a line every 5 s.
pub fn run(
    config: ProducerConfig,
    consumer_cores: usize,
    fetch_max_wait_ms: i32,
    progress: Box<dyn FnMut(&str) + Send>,
) -> Result<EndToEndOutcome, String> {
    if config.payloads.is_some() || config.record_size < payload::STAMP_BYTES {
        return Err(format!(
            "end-to-end needs generated values of at least {} bytes (--record-size), which carry the send time",
            payload::STAMP_BYTES
        ));
    }
    let start = prepare(&config)?;
    let clock = Clock::now();
    let shard_count = consumer_cores.max(1);
    let meter = Meter::new(shard_count, config.warmup_records);
    let reporter = stats::start_reporter(
        meter.clone(),
        ReportOptions {
            window_ticks: 5,
            on_window: producer::progress_printer("received", progress),
            duration: None,
            histogram_out: config.histogram_out.clone(),
            expected_records: None,
        },
    );
    let control = ReadControl::new(meter.clone(), clock, u64::MAX, IDLE_TIMEOUT);
    let settings = Arc::new(FetchSettings {
        version: start.fetch_version,
        client_id: format!("{}-consumer", config.props.client_id),
        topic: config.topic.clone(),
        max_wait_ms: fetch_max_wait_ms,
        min_bytes: 1,
        max_bytes: 52_428_800,
        partition_max_bytes: 1_048_576,
    });
    let sink_meter = meter.clone();
    let setup = ReadSetup {
        cluster: Arc::new(start.cluster),
        settings,
        control: control.clone(),
        sink: Arc::new(move || -> Box<dyn Sink> {
            Box::new(LatencySink {
                meter: sink_meter.clone(),
                clock,
                latencies_us: Vec::new(),
                bytes: 0,
            })
        }),
    };
    let handles = fetcher::spawn_readers(&start.assigned, consumer_cores.max(1), &[], &setup)?;
    let mut producer_config = config.clone();
    producer_config.histogram_out = None;
    let produced = producer::run(producer_config, Box::new(|_: &str| {}));
    match &produced {
        Ok(outcome) => control.set_records_max(outcome.acknowledged_records),
        Err(_) => meter.stop(),
    }
    let (_, mut first_error) = shards::join_all(handles, &meter);
    if let Err(error) = &produced {
        first_error = Some(format!("producer: {error}"));
    }
    meter.finish();
    let report = reporter
        .join()
        .map_err(|_| "the reporter thread panicked".to_owned())?;
    if let Some(error) = first_error {
        return Err(error);
    }
    let produced = produced.map(|o| o.acknowledged_records).unwrap_or(0);
    let latency = stats::latency_json(&report.latency_us, "produce-to-consume");
    let mut json = stats::report_json("end-to-end", config.settings.clone(), &report, latency);
    json["produced_records"] = serde_json::json!(produced);
    json["timed_out"] = serde_json::json!(control.timed_out());
    Ok(EndToEndOutcome {
        timed_out: control.timed_out(),
        report,
        produced,
        json,
    })
}
