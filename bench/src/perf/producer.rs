//! `ringlog-perf producer`: kafka-producer-perf-test's job on a thread-per-core client.
//!
//! Each partition of the topic is a *stream* with its own record budget and, with
//! `--throughput`, its own schedule: record `s` of a stream with rate `r` is due at
//! `start + s / r`. Streams are dealt to the client shards (partition i to shard i mod
//! cores); in a shard, the streams led by one broker are dealt to `--connections`
//! connections to it. Each connection has a *sender* task, which builds a Produce request
//! (at most one batch per partition, up to `batch.size`) from whatever is due, writes it and
//! goes on while fewer than `max.in.flight.requests.per.connection` are unanswered, and a
//! *completer* task, which reads the answers in order, times each record and re-queues
//! batches that failed with a retriable error.
//!
//! When its connection breaks (the broker restarted) or the broker answers that it no longer
//! leads a partition, a sender looks the leader up again and reconnects (backoff, bounded by
//! delivery.timeout.ms; `ringlog_net::client::reconnect`); the batches that had no answer go again first,
//! in order, with the same sequence numbers, so an idempotent producer writes each once.
//!
//! Latency is measured to the answer from the record's intended send time when a rate is set
//! (open loop: a stalled broker shows up as latency, not as a slower sender), else from the
//! moment its batch was built (Kafka's tool measures from its `send` call, the same moment).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::sync::Semaphore;
use kafka_protocol::messages::ProduceResponse;
use ringlog_net::client::batch::{BatchHeader, BatchWriter};
use ringlog_net::client::cluster::{Cluster, ClusterInfo, TopicInfo};
use ringlog_net::client::connection::{Connection, FrameReader};
use ringlog_net::client::error::{error_name, is_retriable_code};
use ringlog_net::client::produce::{
    decode_produce_response, ProduceFrame, ProduceSettings, PRODUCE_VERSION_MAX,
    PRODUCE_VERSION_MIN,
};
use ringlog_net::client::reconnect::{
    is_connection_error, is_stale_metadata_code, reconnect_to_leader, ReconnectPolicy,
};
use ringlog_net::client::ClientError;
use serde_json::Value;

use super::payload::{self, STAMP_BYTES};
use super::props::ProducerProps;
use super::shards::{self, Clock};
use super::stats::{self, Meter, ReportOptions, Window};

/// Kafka's OUT_OF_ORDER_SEQUENCE_NUMBER and DUPLICATE_SEQUENCE_NUMBER.
const OUT_OF_ORDER_SEQUENCE: i16 = 45;
const DUPLICATE_SEQUENCE: i16 = 46;
/// Bytes a record adds besides its key and value, at most (length, attributes, timestamp
/// and offset deltas, key and value lengths, header count), for sizing batches.
const RECORD_OVERHEAD_BYTES: usize = 20;
/// How often a sender with nothing to send but answers outstanding looks again.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// An idempotent producer's id and epoch.
type ProducerIdentity = (i64, i16);

/// Everything the producer was asked to do.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub bootstrap: String,
    pub topic: String,
    /// Create the topic with this many partitions first (when it does not exist).
    pub create_partitions: Option<i32>,
    /// Records to send in all, warm-up included (`u64::MAX` with `--duration` alone).
    pub num_records: u64,
    pub record_size: usize,
    pub payloads: Option<Arc<Vec<Vec<u8>>>>,
    /// Records per second over all shards; `None` sends as fast as possible.
    pub throughput: Option<f64>,
    pub props: ProducerProps,
    pub duration: Option<Duration>,
    pub warmup_records: u64,
    pub cores: usize,
    pub connections: usize,
    pub key_size: usize,
    /// Distinct keys (0: no keys).
    pub keys: u64,
    /// CPUs to pin the shards to, in order; empty leaves them unpinned.
    pub cpus: Vec<usize>,
    /// Write an HdrHistogram interval log of the latencies here.
    pub histogram_out: Option<PathBuf>,
    /// Every flag as given, for the JSON settings.
    pub settings: Value,
}

/// What was measured, for printing and JSON.
pub struct ProducerOutcome {
    pub report: stats::Report,
    /// Records the broker took, warm-up included.
    pub acknowledged_records: u64,
    pub json: Value,
}

/// One partition's records as one shard sends them.
#[derive(Debug, Clone)]
struct StreamSpec {
    partition: i32,
    leader: i32,
    budget: u64,
    /// Records per second, with a rate.
    rate: Option<f64>,
    /// Key indices that hash to this partition, with keys.
    keys: Option<Arc<Vec<u64>>>,
}

/// What every task of the run shares (read-only but for the meter).
struct RunContext {
    meter: Arc<Meter>,
    clock: Clock,
    cluster: ClusterInfo,
    settings: ProduceSettings,
    props: ProducerProps,
    producer: Option<ProducerIdentity>,
    record_size: usize,
    payloads: Option<Arc<Vec<Vec<u8>>>>,
    filler: Vec<u8>,
    key_size: usize,
    records_per_batch: u64,
    connections: usize,
}

/// Runs the producer; `progress` receives Kafka's 5-second lines.
pub fn run(
    config: ProducerConfig,
    progress: Box<dyn FnMut(&str) + Send>,
) -> Result<ProducerOutcome, String> {
    let (cluster, topic, producer) = bootstrap(&config)?;
    let streams = plan_streams(&config, &topic);
    let shard_count = config.cores.max(1);
    let version = cluster
        .versions
        .pick_key(0, "Produce", PRODUCE_VERSION_MIN..=PRODUCE_VERSION_MAX)
        .map_err(|e| e.to_string())?;
    let largest_value = config.payloads.as_ref().map_or(config.record_size, |p| {
        p.iter().map(Vec::len).max().unwrap_or(0)
    });
    let record_bytes = largest_value + config.key_size + RECORD_OVERHEAD_BYTES;
    let records_per_batch =
        (config.props.batch_size.saturating_sub(61) / record_bytes).max(1) as u64;
    let meter = Meter::new(shard_count, config.warmup_records);
    let context = Arc::new(RunContext {
        meter: meter.clone(),
        clock: Clock::now(),
        cluster,
        settings: ProduceSettings {
            version,
            client_id: config.props.client_id.clone(),
            acks: config.props.acks,
            timeout_ms: config.props.request_timeout_ms,
            topic: config.topic.clone(),
        },
        props: config.props.clone(),
        producer,
        record_size: config.record_size,
        payloads: config.payloads.clone(),
        filler: payload::filler(config.record_size),
        key_size: config.key_size,
        records_per_batch,
        connections: config.connections.max(1),
    });
    let expected = config.num_records.saturating_sub(config.warmup_records);
    let reporter = stats::start_reporter(
        meter.clone(),
        ReportOptions {
            window_ticks: 5,
            on_window: progress_printer("sent", progress),
            duration: config.duration,
            histogram_out: config.histogram_out.clone(),
            expected_records: (config.duration.is_none()).then_some(expected),
        },
    );
    let mut handles = Vec::new();
    for shard in 0..shard_count {
        let mine = shards::deal(&streams, shard_count, shard);
        let context = context.clone();
        let cpu = shards::cpu_for(&config.cpus, shard);
        let handle = shards::spawn_shard(&format!("ringlog-perf-{shard}"), cpu, move || {
            run_shard(shard, mine, context)
        });
        match handle {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                meter.stop();
                return Err(error);
            }
        }
    }
    let (_, first_error) = shards::join_all(handles, &meter);
    meter.finish();
    let report = reporter
        .join()
        .map_err(|_| "the reporter thread panicked".to_owned())?;
    if let Some(error) = first_error {
        return Err(error);
    }
    let measured_from = if config.throughput.is_some() {
        "intended-send-time"
    } else {
        "send-time"
    };
    let latency = stats::latency_json(&report.latency_us, measured_from);
    let json = stats::report_json("producer", config.settings.clone(), &report, latency);
    Ok(ProducerOutcome {
        acknowledged_records: meter.completed_records(),
        report,
        json,
    })
}

/// Connects, creates or waits for the topic, asks for a producer id.
fn bootstrap(
    config: &ProducerConfig,
) -> Result<(ClusterInfo, TopicInfo, Option<ProducerIdentity>), String> {
    let bootstrap = config.bootstrap.clone();
    let topic = config.topic.clone();
    let create = config.create_partitions;
    let client_id = config.props.client_id.clone();
    let idempotence = config.props.idempotence;
    shards::run_once(move || async move {
        let mut cluster = Cluster::connect(&bootstrap, &client_id).await?;
        if let Some(partitions) = create {
            cluster.create_topic(&topic, partitions).await?;
        }
        let info = cluster.wait_for_topic(&topic, false).await?;
        let producer = if idempotence {
            Some(cluster.init_producer_id().await?)
        } else {
            None
        };
        Ok((cluster.info().clone(), info, producer))
    })
}

/// Splits the record budget and the rate over the partitions: evenly without keys; with
/// keys, in proportion to how many keys hash to each partition.
fn plan_streams(config: &ProducerConfig, topic: &TopicInfo) -> Vec<StreamSpec> {
    let partition_count = topic.partitions.len();
    let keys_by_partition: Option<Vec<Vec<u64>>> = (config.keys > 0).then(|| {
        let mut by_partition = vec![Vec::new(); partition_count];
        let mut key = Vec::with_capacity(config.key_size);
        for index in 0..config.keys {
            key.clear();
            key.extend_from_slice(&payload::key(index, config.key_size));
            by_partition[payload::partition_for_key(&key, partition_count)].push(index);
        }
        by_partition
    });
    let weights: Vec<u64> = match &keys_by_partition {
        Some(keys) => keys.iter().map(|k| k.len() as u64).collect(),
        None => vec![1; partition_count],
    };
    let total_weight: u64 = weights.iter().sum();
    let budgets = split_budget(config.num_records, &weights);
    topic
        .partitions
        .iter()
        .enumerate()
        .map(|(i, partition)| StreamSpec {
            partition: partition.index,
            leader: partition.leader,
            budget: budgets[i],
            rate: config
                .throughput
                .map(|rate| rate * weights[i] as f64 / total_weight.max(1) as f64),
            keys: keys_by_partition.as_ref().map(|k| Arc::new(k[i].clone())),
        })
        .filter(|stream| stream.budget > 0)
        .collect()
}

/// `total` split in proportion to `weights` (the remainder to the first ones); `u64::MAX`
/// stays unbounded for every non-empty weight.
fn split_budget(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u64 = weights.iter().sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    if total == u64::MAX {
        return weights
            .iter()
            .map(|&w| if w > 0 { u64::MAX } else { 0 })
            .collect();
    }
    let mut budgets: Vec<u64> = weights
        .iter()
        .map(|&w| (u128::from(total) * u128::from(w) / u128::from(sum)) as u64)
        .collect();
    let mut left = total - budgets.iter().sum::<u64>();
    for (budget, &weight) in budgets.iter_mut().zip(weights) {
        if left == 0 {
            break;
        }
        if weight > 0 {
            *budget += 1;
            left -= 1;
        }
    }
    budgets
}

/// Kafka's 5-second progress line; `verb` is "sent" for the producer.
pub fn progress_printer(
    verb: &'static str,
    mut print: Box<dyn FnMut(&str) + Send>,
) -> Box<dyn FnMut(&Window<'_>) + Send> {
    Box::new(move |window: &Window<'_>| {
        let interval = window.interval;
        let latency = &interval.latency_us;
        let (mean_ms, max_ms) = if latency.is_empty() {
            (0.0, 0.0)
        } else {
            (latency.mean() / 1e3, latency.max() as f64 / 1e3)
        };
        print(&format!(
            "{} records {verb}, {:.1} records/sec ({:.2} MB/sec), {:.3} ms avg latency, {:.3} ms max latency.",
            interval.records,
            stats::per_sec(interval.records as f64, window.elapsed),
            stats::per_sec(interval.bytes as f64 / 1_048_576.0, window.elapsed),
            mean_ms,
            max_ms,
        ));
    })
}

/// Kafka's final line, with microsecond precision and 99.99th added; `verb` is "sent" for
/// the producer.
pub fn final_line(report: &stats::Report, verb: &str) -> String {
    let latency = &report.latency_us;
    let ms = |quantile: f64| latency.value_at_quantile(quantile) as f64 / 1e3;
    let (mean, max) = if latency.is_empty() {
        (0.0, 0.0)
    } else {
        (latency.mean() / 1e3, latency.max() as f64 / 1e3)
    };
    format!(
        "{} records {verb}, {:.1} records/sec ({:.2} MB/sec), {:.3} ms avg latency, {:.3} ms max latency, \
         {:.3} ms 50th, {:.3} ms 95th, {:.3} ms 99th, {:.3} ms 99.9th, {:.3} ms 99.99th.",
        report.records,
        report.records_per_sec(),
        report.mb_per_sec(),
        mean,
        max,
        ms(0.5),
        ms(0.95),
        ms(0.99),
        ms(0.999),
        ms(0.9999),
    )
}

async fn run_shard(
    shard: usize,
    streams: Vec<StreamSpec>,
    context: Arc<RunContext>,
) -> Result<(), ClientError> {
    let mut by_leader: BTreeMap<i32, Vec<StreamSpec>> = BTreeMap::new();
    for stream in streams {
        by_leader.entry(stream.leader).or_default().push(stream);
    }
    let mut tasks = Vec::new();
    for (leader, streams) in by_leader {
        let address = context.cluster.address(leader)?.to_owned();
        let connections = context.connections.min(streams.len());
        for connection in 0..connections {
            let mine = shards::deal(&streams, connections, connection);
            let conn = Connection::connect(&address, &context.settings.client_id).await?;
            let context = context.clone();
            tasks.push(glommio::spawn_local(async move {
                Sender::new(shard, mine, context).run(conn).await
            }));
        }
    }
    let mut result = Ok(());
    for task in tasks {
        if let Err(error) = task.await {
            context.meter.stop();
            if result.is_ok() {
                result = Err(error);
            }
        }
    }
    result
}

/// A batch waiting for its answer, or for a retry.
#[derive(Debug, Clone)]
struct SentBatch {
    stream: usize,
    first: u64,
    count: u64,
    built_at: Instant,
    attempts: u32,
    retry_at: Instant,
}

/// One request waiting for its answer.
struct InFlight {
    correlation_id: i32,
    batches: Vec<SentBatch>,
}

struct Stream {
    spec: StreamSpec,
    next: u64,
    retries: VecDeque<SentBatch>,
}

impl Stream {
    fn has_work(&self) -> bool {
        self.next < self.spec.budget || !self.retries.is_empty()
    }
}

/// The state a connection's sender and completer share (same executor, never across an
/// await while borrowed).
struct Shared {
    streams: Vec<Stream>,
    first_error: Option<String>,
    /// A partition answered NOT_LEADER_OR_FOLLOWER or UNKNOWN_TOPIC_OR_PARTITION: finish the
    /// requests in flight, then look the leader up again.
    stale_metadata: bool,
}

/// Why a sender's session on one connection ended.
enum SessionEnd {
    Done,
    StaleMetadata,
}

impl Shared {
    /// Batches that got no answer (the connection failed) go back to their streams, to be
    /// sent before anything new.
    fn requeue(&mut self, batches: Vec<SentBatch>) {
        for mut batch in batches {
            batch.retry_at = Instant::now();
            self.streams[batch.stream].retries.push_back(batch);
        }
    }
}

struct Sender {
    shard: usize,
    context: Arc<RunContext>,
    shared: Rc<RefCell<Shared>>,
    /// Round-robin start, so that no stream is always first into a request.
    next_stream: usize,
    key: Vec<u8>,
}

enum Plan {
    Send(Vec<SentBatch>),
    Wait(Instant),
    Drain,
    Done,
}

impl Sender {
    fn new(shard: usize, specs: Vec<StreamSpec>, context: Arc<RunContext>) -> Self {
        let streams = specs
            .into_iter()
            .map(|spec| Stream {
                spec,
                next: 0,
                retries: VecDeque::new(),
            })
            .collect();
        Self {
            shard,
            context,
            shared: Rc::new(RefCell::new(Shared {
                streams,
                first_error: None,
                stale_metadata: false,
            })),
            next_stream: 0,
            key: Vec::new(),
        }
    }

    async fn run(mut self, mut connection: Connection) -> Result<(), ClientError> {
        loop {
            let why = match self.session(connection).await {
                Ok(SessionEnd::Done) => break,
                Ok(SessionEnd::StaleMetadata) => {
                    "the broker no longer leads a partition".to_owned()
                }
                Err(error) if is_connection_error(&error) => error.to_string(),
                Err(error) => return Err(error),
            };
            connection = self.reconnect(&why).await?;
        }
        if let Some(error) = self.shared.borrow().first_error.clone() {
            eprintln!("ringlog-perf: some records failed; the first error: {error}");
        }
        Ok(())
    }

    /// Looks the streams' leader up again and connects to it; the batches to send again are
    /// put back in sequence order (a failed write and the answers lost with the connection
    /// were re-queued in no particular order).
    async fn reconnect(&mut self, why: &str) -> Result<Connection, ClientError> {
        let partitions: Vec<i32> = {
            let mut shared = self.shared.borrow_mut();
            shared.stale_metadata = false;
            for stream in &mut shared.streams {
                stream.retries.make_contiguous().sort_by_key(|b| b.first);
            }
            shared.streams.iter().map(|s| s.spec.partition).collect()
        };
        eprintln!("ringlog-perf: partitions {partitions:?}: {why}; looking up the leader again");
        let policy = ReconnectPolicy {
            backoff: self.context.props.retry_backoff,
            deadline: self.context.props.delivery_timeout,
        };
        let topic = &self.context.settings.topic;
        let (leader, connection) =
            reconnect_to_leader(&self.context.cluster, topic, &partitions, policy, why).await?;
        for stream in &mut self.shared.borrow_mut().streams {
            stream.spec.leader = leader;
        }
        Ok(connection)
    }

    /// Sends on one connection until every stream is done, the connection fails, or the
    /// metadata turns out stale.
    async fn session(&mut self, connection: Connection) -> Result<SessionEnd, ClientError> {
        let max_in_flight = self.context.props.max_in_flight as u64;
        let permits = Rc::new(Semaphore::new(max_in_flight));
        let (mut writer, reader) = connection.split();
        let acks_zero = self.context.settings.acks == 0;
        let (to_completer, from_sender) = local_channel::new_unbounded::<InFlight>();
        let completer = (!acks_zero).then(|| {
            let completer = Completer {
                shard: self.shard,
                context: self.context.clone(),
                shared: self.shared.clone(),
                permits: permits.clone(),
            };
            glommio::spawn_local(completer.run(reader, from_sender))
        });
        let mut buffer = BytesMut::with_capacity(self.context.props.batch_size * 2 + 4096);
        let mut correlation_id: i32 = 0;
        let outcome: Result<SessionEnd, ClientError> = async {
            loop {
                if permits.acquire(1).await.is_err() {
                    // The completer failed and closed the semaphore; its error is the one.
                    return Ok(SessionEnd::Done);
                }
                if self.context.meter.should_stop() {
                    self.stop_new_records();
                }
                if self.shared.borrow().stale_metadata {
                    return Ok(SessionEnd::StaleMetadata);
                }
                let now = Instant::now();
                match self.plan(now) {
                    Plan::Send(batches) => {
                        correlation_id = correlation_id.wrapping_add(1);
                        buffer.clear();
                        self.encode(&mut buffer, correlation_id, &batches)?;
                        if let Err(error) = writer.write_frame(&buffer).await {
                            self.shared.borrow_mut().requeue(batches);
                            return Err(error);
                        }
                        if acks_zero {
                            self.complete_unacknowledged(&batches);
                            permits.signal(1);
                        } else {
                            let sent = InFlight {
                                correlation_id,
                                batches,
                            };
                            // Unbounded: the permits bound it to max.in.flight entries.
                            let _ = to_completer.try_send(sent);
                        }
                    }
                    Plan::Wait(until) => {
                        permits.signal(1);
                        glommio::timer::sleep(until.saturating_duration_since(now)).await;
                    }
                    Plan::Drain => {
                        // Retries wait for answers still in flight: look again soon.
                        permits.signal(1);
                        glommio::timer::sleep(DRAIN_POLL).await;
                    }
                    Plan::Done => {
                        permits.signal(1);
                        if permits.available() == max_in_flight {
                            return Ok(SessionEnd::Done);
                        }
                        glommio::timer::sleep(DRAIN_POLL).await;
                    }
                }
            }
        }
        .await;
        drop(to_completer);
        if let Some(completer) = completer {
            if outcome.is_err() {
                permits.close();
            }
            completer.await?;
        }
        outcome
    }

    fn stop_new_records(&mut self) {
        for stream in &mut self.shared.borrow_mut().streams {
            stream.spec.budget = stream.next;
        }
    }

    /// What to do now: the batches of the next request, or how long to wait.
    fn plan(&mut self, now: Instant) -> Plan {
        let context = self.context.clone();
        let mut shared = self.shared.borrow_mut();
        let count = shared.streams.len();
        let mut batches = Vec::new();
        let mut wake: Option<Instant> = None;
        let mut any_work = false;
        for offset in 0..count {
            let index = (self.next_stream + offset) % count;
            let stream = &mut shared.streams[index];
            if !stream.has_work() {
                continue;
            }
            any_work = true;
            if let Some(retry) = stream.retries.front() {
                // A stream with a batch to retry sends nothing new until it has gone, so
                // that records stay in order (and sequence numbers stay contiguous).
                if retry.retry_at <= now {
                    batches.push(stream.retries.pop_front().expect("checked"));
                } else {
                    wake = earliest(wake, retry.retry_at);
                }
                continue;
            }
            match next_batch(stream, index, &context, now) {
                Ok(batch) => batches.push(batch),
                Err(Some(at)) => wake = earliest(wake, at),
                Err(None) => {}
            }
        }
        self.next_stream = (self.next_stream + 1) % count.max(1);
        if !batches.is_empty() {
            return Plan::Send(batches);
        }
        match (any_work, wake) {
            (true, Some(at)) => Plan::Wait(at),
            (true, None) => Plan::Drain,
            (false, _) => Plan::Done,
        }
    }

    fn encode(
        &mut self,
        out: &mut BytesMut,
        correlation_id: i32,
        batches: &[SentBatch],
    ) -> Result<(), ClientError> {
        let context = self.context.clone();
        let shared = self.shared.borrow();
        let mut frame = ProduceFrame::begin(out, &context.settings, correlation_id);
        for batch in batches {
            let stream = &shared.streams[batch.stream];
            frame.partition(stream.spec.partition, |out| {
                write_batch(out, stream, batch, &context, &mut self.key)
            })?;
        }
        frame.finish();
        Ok(())
    }

    fn complete_unacknowledged(&self, batches: &[SentBatch]) {
        let now = Instant::now();
        let shared = self.shared.borrow();
        for batch in batches {
            let stream = &shared.streams[batch.stream];
            complete(&self.context, self.shard, stream, batch, now);
        }
    }
}

fn earliest(current: Option<Instant>, candidate: Instant) -> Option<Instant> {
    Some(current.map_or(candidate, |c| c.min(candidate)))
}

/// When record `sequence` of a stream is due.
fn intended(context: &RunContext, rate: f64, sequence: u64) -> Instant {
    context.clock.start + Duration::from_secs_f64(sequence as f64 / rate)
}

/// The next new batch of a stream, or when one will be ready (`None`: never, the stream is
/// out of new records).
fn next_batch(
    stream: &mut Stream,
    index: usize,
    context: &RunContext,
    now: Instant,
) -> Result<SentBatch, Option<Instant>> {
    let left = stream.spec.budget - stream.next;
    if left == 0 {
        return Err(None);
    }
    let full = context.records_per_batch.min(left);
    let count = match stream.spec.rate {
        None => full,
        Some(rate) => {
            let elapsed = now
                .saturating_duration_since(context.clock.start)
                .as_secs_f64();
            let due = ((elapsed * rate).floor() as u64 + 1).min(stream.spec.budget);
            let available = due.saturating_sub(stream.next);
            if available == 0 {
                return Err(Some(intended(context, rate, stream.next)));
            }
            let count = available.min(full);
            if count < full && !context.props.linger.is_zero() {
                // linger.ms: wait for a fuller batch, but not past the first record's
                // linger deadline.
                let linger_end = intended(context, rate, stream.next) + context.props.linger;
                if now < linger_end {
                    let full_at = intended(context, rate, stream.next + full - 1);
                    return Err(Some(linger_end.min(full_at)));
                }
            }
            count
        }
    };
    let batch = SentBatch {
        stream: index,
        first: stream.next,
        count,
        built_at: now,
        attempts: 0,
        retry_at: now,
    };
    stream.next += count;
    Ok(batch)
}

/// Writes a stream's batch (new or retried: the same records, the same sequence numbers).
fn write_batch(
    out: &mut BytesMut,
    stream: &Stream,
    batch: &SentBatch,
    context: &RunContext,
    key: &mut Vec<u8>,
) -> Result<usize, ClientError> {
    let unix_us = |sequence: u64| match stream.spec.rate {
        Some(rate) => context.clock.unix_us(intended(context, rate, sequence)),
        None => context.clock.unix_us(batch.built_at),
    };
    let mut header = BatchHeader::plain(
        (unix_us(batch.first) / 1000) as i64,
        context.props.compression,
    );
    if let Some((producer_id, epoch)) = context.producer {
        header.producer_id = producer_id;
        header.producer_epoch = epoch;
        // Sequences wrap at i32::MAX, as Kafka's do.
        header.base_sequence = (batch.first % (i32::MAX as u64 + 1)) as i32;
    }
    let mut writer = BatchWriter::begin(out, header);
    for sequence in batch.first..batch.first + batch.count {
        let at_us = unix_us(sequence);
        let key_bytes = stream.spec.keys.as_ref().map(|keys| {
            key.clear();
            key.extend_from_slice(&payload::key(
                keys[(sequence % keys.len() as u64) as usize],
                context.key_size,
            ));
            &key[..]
        });
        let stamp;
        let parts: [&[u8]; 2] = match &context.payloads {
            Some(payloads) => [&payloads[(sequence % payloads.len() as u64) as usize], &[]],
            None => {
                stamp = payload::stamp(sequence, at_us);
                let stamped = context.record_size.min(STAMP_BYTES);
                [&stamp[..stamped], &context.filler]
            }
        };
        writer.push(key_bytes, &parts, (at_us / 1000) as i64);
    }
    writer.finish()
}

/// Value bytes of a batch (Kafka's tools count values only for producers).
fn batch_value_bytes(context: &RunContext, batch: &SentBatch) -> u64 {
    match &context.payloads {
        None => batch.count * context.record_size as u64,
        Some(payloads) => (batch.first..batch.first + batch.count)
            .map(|s| payloads[(s % payloads.len() as u64) as usize].len() as u64)
            .sum(),
    }
}

/// Counts and times a batch the broker took.
fn complete(context: &RunContext, shard: usize, stream: &Stream, batch: &SentBatch, now: Instant) {
    let bytes = batch_value_bytes(context, batch);
    let rate = stream.spec.rate;
    context.meter.complete(shard, batch.count, bytes, |i| {
        let from = match rate {
            Some(rate) => intended(context, rate, batch.first + i),
            None => batch.built_at,
        };
        Some(u64::try_from(now.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX))
    });
}

struct Completer {
    shard: usize,
    context: Arc<RunContext>,
    shared: Rc<RefCell<Shared>>,
    permits: Rc<Semaphore>,
}

impl Completer {
    async fn run(
        self,
        mut reader: FrameReader<futures_lite::io::ReadHalf<glommio::net::TcpStream>>,
        requests: LocalReceiver<InFlight>,
    ) -> Result<(), ClientError> {
        while let Some(sent) = requests.recv().await {
            let outcome = async {
                let payload = reader.read_frame().await?;
                decode_produce_response(payload, self.context.settings.version, sent.correlation_id)
            }
            .await;
            match outcome {
                Ok(response) => self.settle(&sent, &response),
                Err(error) => {
                    // The connection is unusable: what is in flight on it goes again on the
                    // next one. Closing the permits stops the sender, which then closes the
                    // channel.
                    self.permits.close();
                    self.shared.borrow_mut().requeue(sent.batches);
                    while let Some(more) = requests.recv().await {
                        self.shared.borrow_mut().requeue(more.batches);
                    }
                    return Err(error);
                }
            }
            self.permits.signal(1);
        }
        Ok(())
    }

    fn settle(&self, sent: &InFlight, response: &ProduceResponse) {
        let now = Instant::now();
        // Each partition's error code, gathered once: a request carries a batch for each of up
        // to hundreds of partitions, and searching the answer for each would be quadratic.
        let codes: HashMap<i32, i16> = response
            .responses
            .iter()
            .flat_map(|topic| topic.partition_responses.iter())
            .map(|p| (p.index, p.error_code))
            .collect();
        let mut shared = self.shared.borrow_mut();
        for batch in &sent.batches {
            let partition = shared.streams[batch.stream].spec.partition;
            let code = codes.get(&partition).copied().unwrap_or(-1);
            shared.stale_metadata |= is_stale_metadata_code(code);
            let stream = &mut shared.streams[batch.stream];
            let idempotent = self.context.producer.is_some();
            if code == 0 || (idempotent && code == DUPLICATE_SEQUENCE) {
                complete(&self.context, self.shard, stream, batch, now);
                continue;
            }
            // Behind a batch being retried, an idempotent producer's later batches are
            // refused as out of order: they go again after it.
            let behind_retry =
                idempotent && code == OUT_OF_ORDER_SEQUENCE && !stream.retries.is_empty();
            if (is_retriable_code(code) || behind_retry)
                && batch.attempts < self.context.props.retries
            {
                let mut retry = batch.clone();
                retry.attempts += 1;
                retry.retry_at = now + self.context.props.retry_backoff;
                stream.retries.push_back(retry);
                continue;
            }
            self.context.meter.fail(self.shard, batch.count);
            shared
                .first_error
                .get_or_insert_with(|| format!("partition {partition}: {}", error_name(code)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_split_in_proportion_and_add_up() {
        assert_eq!(split_budget(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(split_budget(10, &[0, 1, 1]), vec![0, 5, 5]);
        assert_eq!(split_budget(7, &[3, 0, 1]), vec![6, 0, 1]);
        assert_eq!(split_budget(u64::MAX, &[2, 0]), vec![u64::MAX, 0]);
        assert_eq!(split_budget(5, &[0, 0]), vec![0, 0]);
    }
}
