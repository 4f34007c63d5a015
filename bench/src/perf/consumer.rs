//! `ringlog-perf consumer`: kafka-consumer-perf-test's job on the thread-per-core client.
//!
//! Without `--group` the topic's partitions are assigned directly (from the earliest offset,
//! or the latest with `--from-latest`). With `--group` the process joins the group as one
//! member (classic protocol, range assignment) on its own executor thread (`group_member`),
//! which hands this side one assignment after another and takes back the positions reached
//! in each (a rebalance, a lost coordinator, the end).
//! Either way the partitions are dealt to `--cores` shards, each reading from the leaders
//! (`fetcher`). Bytes count keys and values, as Kafka's tool does; MB = 1048576 bytes.
//! The time spent joining counts as rebalance time, not fetch time, as in Kafka's tool.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ringlog_net::client::batch::RecordView;
use ringlog_net::client::cluster::{Cluster, ClusterInfo, TopicInfo};
use ringlog_net::client::fetch::{FetchSettings, FETCH_VERSION_MAX};
use ringlog_net::client::ClientError;
use serde_json::{json, Value};

use super::fetcher::{self, Assigned, ReadControl, ReadSetup, Sink};
use super::group_member;
use super::shards::{self, Clock};
use super::stats::{self, Meter, ReportOptions, Window};

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub bootstrap: String,
    pub topic: String,
    pub messages: u64,
    pub group: Option<String>,
    pub from_latest: bool,
    pub timeout: Duration,
    pub fetch_size: i32,
    pub fetch_max_bytes: i32,
    pub fetch_min_bytes: i32,
    pub fetch_max_wait_ms: i32,
    /// The group member's session.timeout.ms and heartbeat.interval.ms.
    pub session_timeout_ms: i32,
    pub heartbeat_interval: Duration,
    pub cores: usize,
    pub cpus: Vec<usize>,
    pub client_id: String,
    /// Compute an order-independent checksum of the records read (see `record_checksum`).
    pub checksum: bool,
    pub settings: Value,
}

/// What was measured.
pub struct ConsumerOutcome {
    pub report: stats::Report,
    pub started: SystemTime,
    pub ended: SystemTime,
    pub rebalance_ms: u64,
    pub fetch_ms: u64,
    pub timed_out: bool,
    pub checksum: Option<u64>,
    pub json: Value,
}

/// One record's contribution to the checksum: CRC32C of the key length (i32, big-endian,
/// -1 for none), the key and the value; the checksum is their sum modulo 2^64, so it does
/// not depend on the order partitions are read in.
pub fn record_checksum(key: Option<&[u8]>, value: Option<&[u8]>) -> u64 {
    let key_length = key.map_or(-1, |k| i32::try_from(k.len()).unwrap_or(i32::MAX));
    let mut crc = crc32c::crc32c(&key_length.to_be_bytes());
    crc = crc32c::crc32c_append(crc, key.unwrap_or_default());
    crc = crc32c::crc32c_append(crc, value.unwrap_or_default());
    u64::from(crc)
}

/// Counts (and checksums) what it is given.
struct CountingSink {
    meter: Arc<Meter>,
    checksum: Option<Arc<AtomicU64>>,
    records: u64,
    bytes: u64,
    sum: u64,
}

impl Sink for CountingSink {
    fn record(&mut self, record: &RecordView<'_>, _now: Instant) {
        self.records += 1;
        self.bytes +=
            (record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len)) as u64;
        if self.checksum.is_some() {
            self.sum = self
                .sum
                .wrapping_add(record_checksum(record.key, record.value));
        }
    }

    fn flush(&mut self, shard: usize) {
        self.meter
            .complete(shard, self.records, self.bytes, |_| None);
        if let Some(checksum) = &self.checksum {
            checksum.fetch_add(self.sum, Ordering::Relaxed);
        }
        (self.records, self.bytes, self.sum) = (0, 0, 0);
    }
}

/// One assignment to read: the partitions and where each starts.
pub(super) struct Assignment {
    pub(super) cluster: ClusterInfo,
    pub(super) assigned: Vec<Assigned>,
    pub(super) fetch_version: i16,
    /// The group generation (-1 without a group).
    pub(super) generation_id: i32,
    /// How long the join that produced it took (for the first, since the run started).
    pub(super) rebalance_ms: u64,
}

/// What the group member tells the reading side.
pub(super) enum MemberEvent {
    Assigned(Assignment),
    Failed(String),
}

/// The positions of a revoked (or the final) assignment, handed back to the group member to
/// commit; `last`: the run is over, leave the group afterwards.
pub(super) struct Handback {
    pub(super) offsets: BTreeMap<i32, i64>,
    pub(super) last: bool,
}

/// Where each assigned partition starts: the committed offset, else the earliest (or the
/// latest with `from_latest`).
pub(super) async fn start_offsets(
    cluster: &mut Cluster,
    topic: &TopicInfo,
    partitions: &[i32],
    committed: &BTreeMap<i32, i64>,
    from_latest: bool,
) -> Result<Vec<Assigned>, ClientError> {
    let mine = TopicInfo {
        name: topic.name.clone(),
        partitions: topic
            .partitions
            .iter()
            .filter(|p| partitions.contains(&p.index))
            .copied()
            .collect(),
    };
    if mine.partitions.is_empty() {
        return Ok(Vec::new());
    }
    let reset = cluster
        .list_offsets(&mine, if from_latest { -1 } else { -2 })
        .await?;
    Ok(mine
        .partitions
        .iter()
        .map(|p| Assigned {
            partition: p.index,
            leader: p.leader,
            offset: committed
                .get(&p.index)
                .copied()
                .filter(|&o| o >= 0)
                .unwrap_or_else(|| reset.get(&p.index).copied().unwrap_or(0)),
        })
        .collect())
}

pub(super) fn millis_since(at: Instant) -> u64 {
    u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Metadata and start offsets without a group: every partition.
fn assign_directly(config: &ConsumerConfig, started: Instant) -> Result<Assignment, String> {
    let (bootstrap, topic, client_id, from_latest) = (
        config.bootstrap.clone(),
        config.topic.clone(),
        config.client_id.clone(),
        config.from_latest,
    );
    shards::run_once(move || async move {
        let mut cluster = Cluster::connect(&bootstrap, &client_id).await?;
        let info = cluster.wait_for_topic(&topic, false).await?;
        let all: Vec<i32> = info.partitions.iter().map(|p| p.index).collect();
        let assigned =
            start_offsets(&mut cluster, &info, &all, &BTreeMap::new(), from_latest).await?;
        let fetch_version = cluster
            .info()
            .versions
            .pick::<kafka_protocol::messages::FetchRequest>(FETCH_VERSION_MAX)?;
        Ok(Assignment {
            cluster: cluster.info().clone(),
            assigned,
            fetch_version,
            generation_id: -1,
            rebalance_ms: millis_since(started),
        })
    })
}

/// Reads one assignment until the run ends or the assignment is revoked; returns each
/// partition's next offset (the start offset for partitions no shard got to).
fn read_assignment(
    config: &ConsumerConfig,
    assignment: &Assignment,
    control: &Arc<ReadControl>,
    make_sink: &fetcher::SinkFactory,
) -> (BTreeMap<i32, i64>, Option<String>) {
    let settings = Arc::new(FetchSettings {
        version: assignment.fetch_version,
        client_id: config.client_id.clone(),
        topic: config.topic.clone(),
        max_wait_ms: config.fetch_max_wait_ms,
        min_bytes: config.fetch_min_bytes,
        max_bytes: config.fetch_max_bytes,
        partition_max_bytes: config.fetch_size,
    });
    let setup = ReadSetup {
        cluster: Arc::new(assignment.cluster.clone()),
        settings,
        control: control.clone(),
        sink: make_sink.clone(),
    };
    let mut offsets: BTreeMap<i32, i64> = assignment
        .assigned
        .iter()
        .map(|a| (a.partition, a.offset))
        .collect();
    let shard_count = config.cores.max(1);
    let handles =
        match fetcher::spawn_readers(&assignment.assigned, shard_count, &config.cpus, &setup) {
            Ok(handles) => handles,
            Err(error) => return (offsets, Some(error)),
        };
    if handles.is_empty() {
        // Nothing assigned to this member: wait for the end or the next rebalance.
        while !control.should_stop() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let (done, first_error) = shards::join_all(handles, &control.meter);
    offsets.extend(done.into_iter().flatten());
    (offsets, first_error)
}

/// What was read of one assignment, for the JSON: per partition, the offsets from and to.
fn assignment_json(assignment: &Assignment, offsets: &BTreeMap<i32, i64>) -> Value {
    let partitions: Vec<Value> = assignment
        .assigned
        .iter()
        .map(|a| {
            json!({
                "partition": a.partition,
                "from_offset": a.offset,
                "to_offset": offsets.get(&a.partition).copied().unwrap_or(a.offset),
            })
        })
        .collect();
    json!({
        "generation_id": assignment.generation_id,
        "rebalance_time_ms": assignment.rebalance_ms,
        "partitions": partitions,
    })
}

/// Called with each reporting interval and the milliseconds of group joins completed in it
/// (for --show-detailed-stats).
pub type WindowPrinter = Box<dyn FnMut(&Window<'_>, u64) + Send>;

/// Runs the consumer; `on_window` receives each reporting interval.
pub fn run(
    config: ConsumerConfig,
    window_ticks: u32,
    mut on_window: WindowPrinter,
) -> Result<ConsumerOutcome, String> {
    let started_wall = SystemTime::now();
    let clock = Clock::now();
    let meter = Meter::new(config.cores.max(1), 0);
    // Joins so far, in ms, all together: the reporter's windows take their share.
    let rebalance_ms_total = Arc::new(AtomicU64::new(0));
    let rebalance_seen = rebalance_ms_total.clone();
    let mut rebalance_reported = 0;
    // The reporter runs from the start, so that the timeline and the detailed stats show
    // the join as time with nothing read (Kafka's tool counts it the same way).
    let reporter = stats::start_reporter(
        meter.clone(),
        ReportOptions {
            window_ticks,
            on_window: Box::new(move |window: &Window<'_>| {
                let total = rebalance_seen.load(Ordering::Relaxed);
                on_window(window, total - rebalance_reported);
                rebalance_reported = total;
            }),
            duration: None,
            histogram_out: None,
            expected_records: Some(config.messages),
        },
    );
    let control = ReadControl::new(meter.clone(), clock, config.messages, config.timeout);
    let checksum = config.checksum.then(|| Arc::new(AtomicU64::new(0)));
    let (sink_meter, sink_checksum) = (meter.clone(), checksum.clone());
    let make_sink: fetcher::SinkFactory = Arc::new(move || -> Box<dyn Sink> {
        Box::new(CountingSink {
            meter: sink_meter.clone(),
            checksum: sink_checksum.clone(),
            records: 0,
            bytes: 0,
            sum: 0,
        })
    });
    let (events_tx, events) = mpsc::channel();
    let (handback_tx, handbacks) = mpsc::channel();
    let member = match &config.group {
        Some(group) => Some(group_member::spawn(
            &config,
            group.clone(),
            clock.start,
            control.clone(),
            events_tx,
            handbacks,
        )?),
        None => {
            let event = match assign_directly(&config, clock.start) {
                Ok(assignment) => MemberEvent::Assigned(assignment),
                Err(error) => MemberEvent::Failed(error),
            };
            let _ = events_tx.send(event);
            None
        }
    };
    let mut first_error = None;
    let mut assignments_json = Vec::new();
    loop {
        let assignment = match events.recv() {
            Ok(MemberEvent::Assigned(assignment)) => assignment,
            Ok(MemberEvent::Failed(error)) => {
                first_error = Some(error);
                break;
            }
            Err(_) => {
                first_error = Some("the group member stopped without a reason".to_owned());
                break;
            }
        };
        rebalance_ms_total.fetch_add(assignment.rebalance_ms, Ordering::Relaxed);
        control.begin_assignment();
        let (offsets, error) = read_assignment(&config, &assignment, &control, &make_sink);
        assignments_json.push(assignment_json(&assignment, &offsets));
        let last = error.is_some() || meter.should_stop() || member.is_none();
        first_error = first_error.or(error);
        if member.is_none() {
            break;
        }
        if handback_tx.send(Handback { offsets, last }).is_err() || last {
            break;
        }
    }
    drop(handback_tx);
    meter.stop();
    meter.finish();
    let ended_wall = SystemTime::now();
    let report = reporter
        .join()
        .map_err(|_| "the reporter thread panicked".to_owned())?;
    if let Some(member) = member {
        if member.join().is_err() {
            first_error.get_or_insert("the group member's executor failed".to_owned());
        }
        // A failure after the last assignment (committing, leaving) comes as a last event.
        if let Ok(MemberEvent::Failed(error)) = events.try_recv() {
            first_error.get_or_insert(error);
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    let rebalance_ms = rebalance_ms_total.load(Ordering::Relaxed);
    let total_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(0);
    let fetch_ms = total_ms.saturating_sub(rebalance_ms);
    let fetch = Duration::from_millis(fetch_ms);
    let checksum = checksum.map(|c| c.load(Ordering::Relaxed));
    let mut json = stats::report_json("consumer", config.settings.clone(), &report, Value::Null);
    json["rebalance_time_ms"] = json!(rebalance_ms);
    json["fetch_time_ms"] = json!(fetch_ms);
    json["fetch_mb_per_sec"] = json!(stats::per_sec(report.bytes as f64 / 1_048_576.0, fetch));
    json["fetch_records_per_sec"] = json!(stats::per_sec(report.records as f64, fetch));
    json["timed_out"] = json!(control.timed_out());
    json["assignments"] = json!(assignments_json);
    if let Some(checksum) = checksum {
        json["checksum"] = json!(checksum);
    }
    Ok(ConsumerOutcome {
        timed_out: control.timed_out(),
        report,
        started: started_wall,
        ended: ended_wall,
        rebalance_ms,
        fetch_ms,
        checksum,
        json,
    })
}

/// Kafka's `yyyy-MM-dd HH:mm:ss:SSS` in local time.
pub fn format_time(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = libc::time_t::try_from(since.as_secs()).unwrap_or(0);
    // SAFETY: `tm` is plain data that localtime_r fills in; both pointers are valid for the call.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&seconds, &mut tm);
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}:{:03}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        since.subsec_millis()
    )
}

/// Kafka's header line.
pub fn header(detailed: bool) -> &'static str {
    if detailed {
        "time, threadId, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec"
    } else {
        "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec"
    }
}

/// Kafka's summary line.
pub fn summary_line(outcome: &ConsumerOutcome) -> String {
    let report = &outcome.report;
    let mb = report.bytes as f64 / 1_048_576.0;
    let fetch = Duration::from_millis(outcome.fetch_ms);
    format!(
        "{}, {}, {:.4}, {:.4}, {}, {:.4}, {}, {}, {:.4}, {:.4}",
        format_time(outcome.started),
        format_time(outcome.ended),
        mb,
        stats::per_sec(mb, report.elapsed),
        report.records,
        stats::per_sec(report.records as f64, report.elapsed),
        outcome.rebalance_ms,
        outcome.fetch_ms,
        stats::per_sec(mb, fetch),
        stats::per_sec(report.records as f64, fetch),
    )
}

/// Kafka's --show-detailed-stats line for one reporting interval.
pub fn detailed_line(window: &Window<'_>, rebalance_ms_in_window: u64) -> String {
    let mb_total = window.total_bytes as f64 / 1_048_576.0;
    let mb = window.interval.bytes as f64 / 1_048_576.0;
    let records = window.interval.records as f64;
    let fetch_ms = u64::try_from(window.elapsed.as_millis())
        .unwrap_or(0)
        .saturating_sub(rebalance_ms_in_window);
    let fetch = Duration::from_millis(fetch_ms);
    format!(
        "{}, 0, {:.4}, {:.4}, {}, {:.4}, {}, {}, {:.4}, {:.4}",
        format_time(SystemTime::now()),
        mb_total,
        stats::per_sec(mb, window.elapsed),
        window.total_records,
        stats::per_sec(records, window.elapsed),
        rebalance_ms_in_window,
        fetch_ms,
        stats::per_sec(mb, fetch),
        stats::per_sec(records, fetch),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_tell_keys_from_values_and_null_from_empty() {
        let a = record_checksum(Some(b"ab"), Some(b"c"));
        let b = record_checksum(Some(b"a"), Some(b"bc"));
        assert_ne!(a, b);
        assert_ne!(
            record_checksum(None, Some(b"x")),
            record_checksum(Some(b""), Some(b"x"))
        );
    }

    #[test]
    fn times_look_like_kafkas() {
        let text = format_time(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        assert_eq!(text.len(), "2023-11-14 22:13:20:123".len());
        assert!(text.ends_with(":123"), "{text}");
    }
}
