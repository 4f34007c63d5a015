//! Reading partitions as fast as their leaders answer: the fetch loop shared by the consumer
//! and the end-to-end modes.
//!
//! A shard opens one connection per leader and keeps up to one Fetch in flight per partition
//! on it: as soon as a partition's answer is in, the next Fetch for it goes out, while the
//! requests for its neighbours are still outstanding (a partition cannot be pipelined with
//! itself: its next offset is known only from the answer). Each answered batch goes to a
//! `Sink`, which counts, checks or times its records. When the connection breaks or the
//! broker no longer leads a partition, the shard looks the leader up again and goes on from
//! the positions it had delivered (`ringlog_net::client::reconnect`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringlog_net::client::batch::{split_batches, BatchView, RecordView};
use ringlog_net::client::cluster::ClusterInfo;
use ringlog_net::client::connection::Connection;
use ringlog_net::client::error::{check_code, error_name, is_retriable_code};
use ringlog_net::client::fetch::{decode_fetch_response, fetch_request, FetchSettings};
use ringlog_net::client::reconnect::{
    is_connection_error, is_stale_metadata_code, reconnect_to_leader, ReconnectPolicy,
};
use ringlog_net::client::ClientError;

use super::shards::{self, Clock};
use super::stats::Meter;

/// A partition to read, from where, and from whom.
#[derive(Debug, Clone, Copy)]
pub struct Assigned {
    pub partition: i32,
    pub leader: i32,
    pub offset: i64,
}

/// Shared by every shard of a read: when to stop.
pub struct ReadControl {
    pub meter: Arc<Meter>,
    pub clock: Clock,
    /// Stop once this many records have been read, all shards together.
    records_max: AtomicU64,
    /// Stop when no record has arrived for this long.
    pub idle_timeout: Duration,
    last_record_us: AtomicU64,
    timed_out: AtomicBool,
    /// Set when the group takes the partitions back (a rebalance): the shards of this
    /// generation stop and hand their positions over, the run goes on.
    revoked: AtomicBool,
}

impl ReadControl {
    /// The idle timeout counts from now (the join, before, is not idleness).
    pub fn new(
        meter: Arc<Meter>,
        clock: Clock,
        records_max: u64,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        let control = Self {
            meter,
            clock,
            records_max: AtomicU64::new(records_max),
            idle_timeout,
            last_record_us: AtomicU64::new(0),
            timed_out: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
        };
        control.saw_records();
        Arc::new(control)
    }

    /// Changes the target (end-to-end: once the producer knows how many it sent).
    pub fn set_records_max(&self, records_max: u64) {
        self.records_max.store(records_max, Ordering::Relaxed);
    }

    /// Stops the shards reading the current assignment (without ending the run).
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Relaxed);
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

    /// A new assignment starts: reading may go on, and the idle timeout counts from now (a
    /// rebalance is not idleness).
    pub fn begin_assignment(&self) {
        self.revoked.store(false, Ordering::Relaxed);
        self.saw_records();
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    fn since_start_us(&self) -> u64 {
        u64::try_from(self.clock.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn saw_records(&self) {
        self.last_record_us
            .fetch_max(self.since_start_us(), Ordering::Relaxed);
    }

    /// Whether to stop (and tell every shard to): enough read, idle too long, stopped, or
    /// the assignment revoked.
    pub fn should_stop(&self) -> bool {
        if self.meter.should_stop() || self.is_revoked() {
            return true;
        }
        if self.meter.completed_records() >= self.records_max.load(Ordering::Relaxed) {
            self.meter.stop();
            return true;
        }
        let idle_us = self
            .since_start_us()
            .saturating_sub(self.last_record_us.load(Ordering::Relaxed));
        if idle_us > u64::try_from(self.idle_timeout.as_micros()).unwrap_or(u64::MAX) {
            self.timed_out.store(true, Ordering::Relaxed);
            self.meter.stop();
            return true;
        }
        false
    }
}

/// What is done with the records read.
pub trait Sink {
    /// Called with each record at or past the position asked for.
    fn record(&mut self, record: &RecordView<'_>, now: Instant);
    /// Called after each batch's records: hand the counts to the meter.
    fn flush(&mut self, shard: usize);
}

/// Makes one sink per leader connection, on the shard that uses it.
pub type SinkFactory = Arc<dyn Fn() -> Box<dyn Sink> + Send + Sync>;

/// What every reading shard shares.
#[derive(Clone)]
pub struct ReadSetup {
    pub cluster: Arc<ClusterInfo>,
    pub settings: Arc<FetchSettings>,
    pub control: Arc<ReadControl>,
    pub sink: SinkFactory,
}

/// Starts `shard_count` reading shards, the partitions dealt among them (shards left with
/// none are not started). Each returns its partitions' next offsets.
pub fn spawn_readers(
    assigned: &[Assigned],
    shard_count: usize,
    cpus: &[usize],
    setup: &ReadSetup,
) -> Result<Vec<ReaderHandle>, String> {
    let mut handles = Vec::new();
    for shard in 0..shard_count {
        let mine = shards::deal(assigned, shard_count, shard);
        if mine.is_empty() {
            continue;
        }
        let setup = setup.clone();
        let name = format!("ringlog-perf-reader-{shard}");
        handles.push(shards::spawn_shard(
            &name,
            shards::cpu_for(cpus, shard),
            move || async move {
                let sink = setup.sink.clone();
                read_partitions(
                    shard,
                    mine,
                    setup.cluster,
                    setup.settings,
                    setup.control,
                    move || sink(),
                )
                .await
            },
        )?);
    }
    Ok(handles)
}

/// A reading shard: its partitions' next offsets when it is done.
pub type ReaderHandle = glommio::ExecutorJoinHandle<Result<BTreeMap<i32, i64>, ClientError>>;

/// Reads the assigned partitions until told to stop; returns each partition's next offset.
pub async fn read_partitions(
    shard: usize,
    assigned: Vec<Assigned>,
    cluster: Arc<ClusterInfo>,
    settings: Arc<FetchSettings>,
    control: Arc<ReadControl>,
    mut make_sink: impl FnMut() -> Box<dyn Sink>,
) -> Result<BTreeMap<i32, i64>, ClientError> {
    let mut by_leader: BTreeMap<i32, Vec<Assigned>> = BTreeMap::new();
    for partition in assigned {
        by_leader
            .entry(partition.leader)
            .or_default()
            .push(partition);
    }
    let mut tasks = Vec::new();
    for (leader, partitions) in by_leader {
        let address = cluster.address(leader)?.to_owned();
        let connection = Connection::connect(&address, &settings.client_id).await?;
        let (settings, control, sink) = (settings.clone(), control.clone(), make_sink());
        tasks.push(glommio::spawn_local(read_from_leader(
            shard,
            connection,
            partitions,
            cluster.clone(),
            settings,
            control,
            sink,
        )));
    }
    let mut offsets = BTreeMap::new();
    let mut result = Ok(());
    for task in tasks {
        match task.await {
            Ok(done) => offsets.extend(done),
            Err(error) => {
                control.meter.stop();
                if result.is_ok() {
                    result = Err(error);
                }
            }
        }
    }
    result.map(|()| offsets)
}

struct Position {
    partition: i32,
    offset: i64,
    in_flight: bool,
    retry_at: Option<Instant>,
}

/// How the reading side looks for a leader again: 100 ms, doubling, for up to 60 s (the read
/// also ends earlier when the run stops, e.g. at its idle timeout).
const FETCH_RECONNECT: ReconnectPolicy = ReconnectPolicy {
    backoff: Duration::from_millis(100),
    deadline: Duration::from_secs(60),
};

/// Why a reading session on one connection ended.
enum Session {
    /// The run is over or the assignment revoked.
    Done,
    /// The broker no longer leads (or knows) a partition: look the leader up again.
    StaleMetadata(i16),
}

async fn read_from_leader(
    shard: usize,
    mut connection: Connection,
    assigned: Vec<Assigned>,
    cluster: Arc<ClusterInfo>,
    settings: Arc<FetchSettings>,
    control: Arc<ReadControl>,
    mut sink: Box<dyn Sink>,
) -> Result<BTreeMap<i32, i64>, ClientError> {
    let mut positions: Vec<Position> = assigned
        .iter()
        .map(|a| Position {
            partition: a.partition,
            offset: a.offset,
            in_flight: false,
            retry_at: None,
        })
        .collect();
    loop {
        let outcome = read_session(
            shard,
            connection,
            &mut positions,
            &settings,
            &control,
            sink.as_mut(),
        )
        .await;
        let why = match outcome {
            Ok(Session::Done) => break,
            Ok(Session::StaleMetadata(code)) => error_name(code),
            Err(error) if is_connection_error(&error) => error.to_string(),
            Err(error) => return Err(error),
        };
        for position in &mut positions {
            position.in_flight = false;
            position.retry_at = None;
        }
        let partitions: Vec<i32> = positions.iter().map(|p| p.partition).collect();
        let found = reconnect_to_leader(
            &cluster,
            &settings.topic,
            &partitions,
            FETCH_RECONNECT,
            &why,
        );
        let stopped = async {
            while !control.should_stop() {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            Ok(None)
        };
        match futures_lite::future::or(async { found.await.map(Some) }, stopped).await? {
            Some((_, fresh)) => connection = fresh,
            None => break,
        }
    }
    Ok(positions.iter().map(|p| (p.partition, p.offset)).collect())
}

/// Fetches on one connection until the run stops, the metadata is stale or the connection
/// fails; the positions move past what was delivered.
async fn read_session(
    shard: usize,
    connection: Connection,
    positions: &mut [Position],
    settings: &FetchSettings,
    control: &ReadControl,
    sink: &mut dyn Sink,
) -> Result<Session, ClientError> {
    let (mut writer, mut reader) = connection.split();
    // Partition → index in `positions`, so that an answer naming hundreds of partitions is
    // matched to them in one pass.
    let index_of: HashMap<i32, usize> = positions
        .iter()
        .enumerate()
        .map(|(index, position)| (position.partition, index))
        .collect();
    let mut in_flight: VecDeque<(i32, Vec<usize>)> = VecDeque::new();
    let mut correlation_id = 0_i32;
    loop {
        if control.should_stop() {
            return Ok(Session::Done);
        }
        let now = Instant::now();
        let idle: Vec<usize> = (0..positions.len())
            .filter(|&i| {
                !positions[i].in_flight && positions[i].retry_at.is_none_or(|at| at <= now)
            })
            .collect();
        if !idle.is_empty() {
            correlation_id = correlation_id.wrapping_add(1);
            let asked: Vec<(i32, i64)> = idle
                .iter()
                .map(|&i| (positions[i].partition, positions[i].offset))
                .collect();
            let frame = fetch_request(settings, correlation_id, &asked)?;
            writer.write_frame(&frame).await?;
            for &i in &idle {
                positions[i].in_flight = true;
                positions[i].retry_at = None;
            }
            in_flight.push_back((correlation_id, idle));
        }
        let Some((expected, asked)) = in_flight.pop_front() else {
            // Every partition is backing off after an error.
            glommio::timer::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let payload = reader.read_frame().await?;
        let (code, parts) = decode_fetch_response(payload, settings.version, expected)?;
        check_code(code, || "Fetch".to_owned())?;
        let now = Instant::now();
        for &i in &asked {
            positions[i].in_flight = false;
        }
        for part in parts {
            let Some(&index) = index_of.get(&part.partition) else {
                continue;
            };
            let position = &mut positions[index];
            if is_stale_metadata_code(part.error_code) {
                return Ok(Session::StaleMetadata(part.error_code));
            }
            if part.error_code != 0 {
                if is_retriable_code(part.error_code) {
                    position.retry_at = Some(now + Duration::from_millis(100));
                    continue;
                }
                check_code(part.error_code, || {
                    format!("Fetch partition {}", part.partition)
                })?;
            }
            let mut any = false;
            for batch in split_batches(&part.records)? {
                any |= deliver(shard, &batch, position, sink, now)?;
            }
            if any {
                control.saw_records();
            }
        }
    }
}

/// Hands a batch's records past the position to the sink and moves the position past it.
fn deliver(
    shard: usize,
    batch: &BatchView,
    position: &mut Position,
    sink: &mut dyn Sink,
    now: Instant,
) -> Result<bool, ClientError> {
    if batch.next_offset() <= position.offset {
        return Ok(false);
    }
    if !batch.crc_matches() {
        return Err(ClientError::Batch(format!(
            "partition {} batch at offset {}: CRC mismatch",
            position.partition,
            batch.base_offset()
        )));
    }
    let from = position.offset;
    position.offset = batch.next_offset();
    if batch.is_control() {
        return Ok(false);
    }
    let mut delivered = false;
    batch.for_each_record(|record| {
        if record.offset >= from {
            sink.record(&record, now);
            delivered = true;
        }
    })?;
    sink.flush(shard);
    Ok(delivered)
}
