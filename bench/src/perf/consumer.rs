//! `ringlog-perf consumer`: kafka-consumer-perf-test's job on the thread-per-core client.
//!
//! Without `--group` the topic's partitions are assigned directly (from the earliest offset,
//! or the latest with `--from-latest`). With `--group` the process joins the group as one
//! member (classic protocol, range assignment) on its own executor thread, which keeps it
//! alive with heartbeats while the shards read and commits the final positions at the end.
//! Either way the partitions are dealt to `--cores` shards, each reading from the leaders
//! (`fetcher`). Bytes count keys and values, as Kafka's tool does; MB = 1048576 bytes.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use super::fetcher::{self, Assigned, ReadControl, ReadSetup, Sink};
use super::shards::{self, Clock};
use super::stats::{self, Meter, ReportOptions, Window};
use crate::client::batch::RecordView;
use crate::client::cluster::{Cluster, ClusterInfo, TopicInfo};
use crate::client::fetch::{FetchSettings, FETCH_VERSION_MAX};
use crate::client::group::{GroupMember, GroupSettings, REBALANCE_IN_PROGRESS};
use crate::client::ClientError;

/// Heartbeat period of the group member (Kafka's default heartbeat.interval.ms).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);

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
    pub fetch_max_wait_ms: i32,
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
    checksum: Option<Arc<std::sync::atomic::AtomicU64>>,
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
            checksum.fetch_add(self.sum, std::sync::atomic::Ordering::Relaxed);
        }
        (self.records, self.bytes, self.sum) = (0, 0, 0);
    }
}

/// The assignment the tool reads, and how long getting it took.
struct Start {
    cluster: ClusterInfo,
    assigned: Vec<Assigned>,
    rebalance_ms: u64,
    fetch_version: i16,
}

/// Where each assigned partition starts: the committed offset, else the earliest (or the
/// latest with `from_latest`).
async fn start_offsets(
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

/// The group member's thread: join, report the assignment, heartbeat until `finish` sends
/// the final offsets, commit them, leave.
fn spawn_group_member(
    config: &ConsumerConfig,
    group: String,
    started: Instant,
    start_tx: mpsc::Sender<Result<Start, String>>,
    finish_rx: mpsc::Receiver<BTreeMap<i32, i64>>,
) -> Result<glommio::ExecutorJoinHandle<Result<(), ClientError>>, String> {
    let (bootstrap, topic, client_id, from_latest) = (
        config.bootstrap.clone(),
        config.topic.clone(),
        config.client_id.clone(),
        config.from_latest,
    );
    let session_timeout_ms = 45_000;
    let group_name = group;
    shards::spawn_shard("ringlog-perf-group", None, move || async move {
        let joined = async {
            let mut cluster = Cluster::connect(&bootstrap, &client_id).await?;
            let info = cluster.wait_for_topic(&topic, false).await?;
            let settings = GroupSettings {
                group: group_name.clone(),
                topic: topic.clone(),
                session_timeout_ms,
                rebalance_timeout_ms: session_timeout_ms,
            };
            let mut member =
                GroupMember::join(&mut cluster, settings, info.partitions.len() as i32).await?;
            let committed = member.committed().await?;
            let assigned = start_offsets(
                &mut cluster,
                &info,
                &member.assignment,
                &committed,
                from_latest,
            )
            .await?;
            let fetch_version = cluster
                .info()
                .versions
                .pick::<kafka_protocol::messages::FetchRequest>(FETCH_VERSION_MAX)?;
            let start = Start {
                cluster: cluster.info().clone(),
                assigned,
                rebalance_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(0),
                fetch_version,
            };
            Ok::<_, ClientError>((member, info, start))
        }
        .await;
        let (mut member, info, start) = match joined {
            Ok(joined) => joined,
            Err(error) => {
                let _ = start_tx.send(Err(error.to_string()));
                return Ok(());
            }
        };
        let _ = start_tx.send(Ok(start));
        let mut next_heartbeat = Instant::now() + HEARTBEAT_INTERVAL;
        let offsets = loop {
            match finish_rx.try_recv() {
                Ok(offsets) => break offsets,
                Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
                Err(mpsc::TryRecvError::Empty) => {}
            }
            glommio::timer::sleep(Duration::from_millis(100)).await;
            if Instant::now() >= next_heartbeat {
                next_heartbeat += HEARTBEAT_INTERVAL;
                let code = member.heartbeat().await?;
                if code == REBALANCE_IN_PROGRESS {
                    eprintln!(
                        "ringlog-perf: warning: group {group_name} is rebalancing; rejoining, but this run keeps reading its first assignment"
                    );
                    member.rejoin(info.partitions.len() as i32).await?;
                }
            }
        };
        member.commit(&offsets).await?;
        member.leave().await
    })
}

/// Metadata and start offsets without a group.
fn assign_directly(config: &ConsumerConfig, started: Instant) -> Result<Start, String> {
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
        Ok(Start {
            cluster: cluster.info().clone(),
            assigned,
            rebalance_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(0),
            fetch_version,
        })
    })
}

/// Runs the consumer; `window` receives each reporting interval (for --show-detailed-stats).
pub fn run(
    config: ConsumerConfig,
    window_ticks: u32,
    on_window: Box<dyn FnMut(&Window<'_>) + Send>,
) -> Result<ConsumerOutcome, String> {
    let started_wall = SystemTime::now();
    let clock = Clock::now();
    let shard_count = config.cores.max(1);
    let meter = Meter::new(shard_count, 0);
    let (finish_tx, finish_rx) = mpsc::channel();
    let (start_tx, start_rx) = mpsc::channel();
    let group_member = match &config.group {
        Some(group) => Some(spawn_group_member(
            &config,
            group.clone(),
            clock.start,
            start_tx,
            finish_rx,
        )?),
        None => {
            let _ = start_tx.send(assign_directly(&config, clock.start));
            None
        }
    };
    let start = start_rx
        .recv()
        .map_err(|_| "the group member stopped before joining".to_owned())??;
    let reporter = stats::start_reporter(
        meter.clone(),
        ReportOptions {
            window_ticks,
            on_window,
            duration: None,
            histogram_out: None,
            expected_records: Some(config.messages),
        },
    );
    let control = ReadControl::new(meter.clone(), clock, config.messages, config.timeout);
    let settings = Arc::new(FetchSettings {
        version: start.fetch_version,
        client_id: config.client_id.clone(),
        topic: config.topic.clone(),
        max_wait_ms: config.fetch_max_wait_ms,
        min_bytes: 1,
        max_bytes: config.fetch_max_bytes,
        partition_max_bytes: config.fetch_size,
    });
    let checksum = config
        .checksum
        .then(|| Arc::new(std::sync::atomic::AtomicU64::new(0)));
    let (sink_meter, sink_checksum) = (meter.clone(), checksum.clone());
    let setup = ReadSetup {
        cluster: Arc::new(start.cluster.clone()),
        settings,
        control: control.clone(),
        sink: Arc::new(move || -> Box<dyn Sink> {
            Box::new(CountingSink {
                meter: sink_meter.clone(),
                checksum: sink_checksum.clone(),
                records: 0,
                bytes: 0,
                sum: 0,
            })
        }),
    };
    let handles = fetcher::spawn_readers(&start.assigned, shard_count, &config.cpus, &setup)?;
    let (done, mut first_error) = shards::join_all(handles, &meter);
    let offsets: BTreeMap<i32, i64> = done.into_iter().flatten().collect();
    meter.finish();
    let ended_wall = SystemTime::now();
    let report = reporter
        .join()
        .map_err(|_| "the reporter thread panicked".to_owned())?;
    if let Some(member) = group_member {
        let _ = finish_tx.send(offsets);
        let committed = member
            .join()
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(error) = committed {
            first_error.get_or_insert(format!("committing offsets: {error}"));
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    let total_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(0);
    let fetch_ms = total_ms.saturating_sub(start.rebalance_ms);
    let fetch = Duration::from_millis(fetch_ms);
    let checksum = checksum.map(|c| c.load(std::sync::atomic::Ordering::Relaxed));
    let mut json = stats::report_json("consumer", config.settings.clone(), &report, Value::Null);
    json["rebalance_time_ms"] = json!(start.rebalance_ms);
    json["fetch_time_ms"] = json!(fetch_ms);
    json["fetch_mb_per_sec"] = json!(stats::per_sec(report.bytes as f64 / 1_048_576.0, fetch));
    json["fetch_records_per_sec"] = json!(stats::per_sec(report.records as f64, fetch));
    json["timed_out"] = json!(control.timed_out());
    if let Some(checksum) = checksum {
        json["checksum"] = json!(checksum);
    }
    Ok(ConsumerOutcome {
        timed_out: control.timed_out(),
        report,
        started: started_wall,
        ended: ended_wall,
        rebalance_ms: start.rebalance_ms,
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
