//! Produce: validate each partition's batch, append it on the owning shard, report offsets.
//!
//! The partitions of a request are grouped by owner; each owner gets one call with all of its
//! partitions, queues them all before waiting for any (so one write and one group commit can
//! cover them). The request returns to its connection once this shard's partitions are queued,
//! so the connection can take its next request while they are written (see `produce`). `acks = 0`
//! is written the same way, only nothing is answered. On one node `acks = all` means what
//! `acks = 1` means: the append is complete when the log has written it per its durability
//! settings (`flush.messages` / `flush.ms`).

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use ringlog_engine::batch::{self, BatchError};
use ringlog_engine::{AppendInfo, CheckedAppendError};
use ringlog_net::errors;
use ringlog_net::handlers::Later;

use super::mesh::{self, ByOwner, Call};
use super::producer_state::{Admission, BatchSequence, SequenceError};
use super::{Partition, Position, Shard};

/// One partition's records, sent to its owner.
pub struct ProducePart {
    pub topic: String,
    pub partition: i32,
    pub records: Bytes,
    /// The request's acks: -1 (all) waits until every in-sync replica has the records.
    pub acks: i16,
    /// How long an acks=all write may wait for its replicas (the request's timeout).
    pub timeout: Duration,
}

/// What happened to one partition's records.
#[derive(Debug, Clone)]
pub struct ProduceOutcome {
    pub error: Option<ResponseError>,
    pub message: Option<String>,
    pub base_offset: i64,
    /// The last offset written (not sent to the client: what acks=all waits for).
    pub last_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

impl ProduceOutcome {
    fn failed(error: ResponseError, message: impl Into<String>) -> Self {
        Self {
            error: Some(error),
            message: Some(message.into()),
            base_offset: -1,
            last_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
        }
    }
}

/// Queues the request's records in their logs and returns its response to come (see
/// [`ringlog_net::handlers::Broker::produce`]). Partitions of this shard are queued here and
/// now; partitions of other shards are appended there through the mesh before this returns,
/// so that a later request on the connection cannot overtake them either.
pub async fn produce(
    shard: &Rc<Shard>,
    mut request: ProduceRequest,
    version: i16,
) -> Later<Option<ProduceResponse>> {
    let acks = request.acks;
    let timeout = Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0));
    // Outcomes in request order: (topic index, partition index) → outcome.
    let mut outcomes: Vec<Vec<Option<ProduceOutcome>>> = Vec::new();
    let mut by_owner: ByOwner<Position, ProducePart> = ByOwner::default();
    // The records move into the parts (the response needs the request's names and indexes
    // only), so the request's frame is let go once they are written.
    for (topic_index, topic) in request.topic_data.iter_mut().enumerate() {
        let mut row = Vec::with_capacity(topic.partition_data.len());
        for (partition_index, data) in topic.partition_data.iter_mut().enumerate() {
            let name: &str = &topic.name.0;
            if name == super::groups::OFFSETS_TOPIC {
                row.push(Some(ProduceOutcome::failed(
                    ResponseError::InvalidTopicException,
                    "the internal offsets topic is written by the group coordinator only",
                )));
                continue;
            }
            let outcome = match (shard.route(name, data.index), data.records.take()) {
                (Ok(owner), Some(records)) => {
                    let part = ProducePart {
                        topic: name.to_owned(),
                        partition: data.index,
                        records,
                        acks,
                        timeout,
                    };
                    by_owner.add(owner, (topic_index, partition_index), part);
                    None
                }
                (Ok(_), None) => Some(ProduceOutcome::failed(
                    ResponseError::CorruptMessage,
                    "no records",
                )),
                (Err(code), _) => Some(ProduceOutcome::failed(
                    code,
                    "this server does not host this topic-partition",
                )),
            };
            row.push(outcome);
        }
        outcomes.push(row);
    }
    let local = match by_owner.take(shard.id) {
        Some((positions, parts)) => Some((positions, queue_local(shard, parts).await)),
        None => None,
    };
    let unreachable =
        |code| ProduceOutcome::failed(code, "the partition's shard cannot be reached");
    for ((topic_index, partition_index), outcome) in
        mesh::scatter(shard, by_owner, Append, unreachable).await
    {
        outcomes[topic_index][partition_index] = Some(outcome);
    }
    let Some((positions, queued)) = local else {
        let response = (acks != 0).then(|| build_response(version, &request, outcomes));
        return Box::pin(std::future::ready(response));
    };
    // The writes run whether or not anyone waits for their answer (a connection may close):
    // the task, detached, still notifies waiting fetches and undoes refused producer state.
    let written = glommio::spawn_local(async move {
        let results = written_outcomes(queued).await;
        fill_outcomes(&mut outcomes, positions, results);
        (acks != 0).then(|| build_response(version, &request, outcomes))
    })
    .detach();
    // `None` from the handle: the task was cancelled, which happens only as the executor
    // shuts down; the client then gets no answer, as on a closed connection.
    Box::pin(async move { written.await.flatten() })
}

fn fill_outcomes(
    outcomes: &mut [Vec<Option<ProduceOutcome>>],
    positions: Vec<(usize, usize)>,
    results: Vec<ProduceOutcome>,
) {
    for ((topic_index, partition_index), outcome) in positions.into_iter().zip(results) {
        outcomes[topic_index][partition_index] = Some(outcome);
    }
}

fn build_response(
    version: i16,
    request: &ProduceRequest,
    outcomes: Vec<Vec<Option<ProduceOutcome>>>,
) -> ProduceResponse {
    let responses = request
        .topic_data
        .iter()
        .zip(outcomes)
        .map(|(topic, row)| {
            let partitions = topic
                .partition_data
                .iter()
                .zip(row)
                .map(|(data, outcome)| {
                    let outcome = outcome.unwrap_or_else(|| {
                        ProduceOutcome::failed(ResponseError::UnknownServerError, "not answered")
                    });
                    let mut response = PartitionProduceResponse::default()
                        .with_index(data.index)
                        .with_error_code(outcome.error.map_or(0, |e| e.code()))
                        .with_base_offset(outcome.base_offset)
                        .with_log_append_time_ms(outcome.log_append_time_ms);
                    if version >= 5 {
                        response = response.with_log_start_offset(outcome.log_start_offset);
                    }
                    if version >= 8 {
                        response =
                            response.with_error_message(outcome.message.map(StrBytes::from_string));
                    }
                    response
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(topic.name.clone())
                .with_partition_responses(partitions)
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

/// Appends the parts owned by this shard and reports each one's outcome. All of them are
/// queued before any is waited for, so one write (and one group commit) can cover several.
/// Appends records on the shard owning their partitions: one outcome per part, in order.
pub struct Append(pub Vec<ProducePart>);

impl Call for Append {
    type Reply = Vec<ProduceOutcome>;

    fn run(self, shard: Rc<Shard>) -> impl Future<Output = Self::Reply> {
        append_local(shard, self.0)
    }
}

pub async fn append_local(shard: Rc<Shard>, parts: Vec<ProducePart>) -> Vec<ProduceOutcome> {
    let queued = queue_local(&shard, parts).await;
    written_outcomes(queued).await
}

/// One partition's part once queued: its outcome, to come once it is written.
type Queued = Later<ProduceOutcome>;

/// Queues each part in its log, in order, and returns what to wait for.
async fn queue_local(shard: &Rc<Shard>, parts: Vec<ProducePart>) -> Vec<Queued> {
    let mut queued = Vec::with_capacity(parts.len());
    for part in parts {
        queued.push(queue_one(shard, part).await);
    }
    queued
}

async fn written_outcomes(queued: Vec<Queued>) -> Vec<ProduceOutcome> {
    let mut outcomes = Vec::with_capacity(queued.len());
    for part in queued {
        outcomes.push(part.await);
    }
    outcomes
}

fn known(outcome: ProduceOutcome) -> Queued {
    Box::pin(std::future::ready(outcome))
}

async fn queue_one(shard: &Rc<Shard>, part: ProducePart) -> Queued {
    let Some(partition) = shard.partition(&part.topic, part.partition) else {
        return known(ProduceOutcome::failed(
            ResponseError::KafkaStorageError,
            "the partition's log is not open on this broker (see its log)",
        ));
    };
    let Some(leader_epoch) = partition.leading_epoch() else {
        return known(ProduceOutcome::failed(
            ResponseError::NotLeaderOrFollower,
            "this broker does not lead the partition",
        ));
    };
    if part.acks == -1 {
        let required = shard.min_insync_replicas(&part.topic);
        if let Err(refusal) = partition.check_min_insync(required) {
            tracing::debug!(topic = %part.topic, partition = part.partition, %refusal, "acks=all write refused");
            return known(ProduceOutcome::failed(
                ResponseError::NotEnoughReplicas,
                refusal.to_string(),
            ));
        }
    }
    let queued = queue_parts(shard, &partition, &part).await;
    if part.acks != -1 {
        return queued;
    }
    // acks=all: the answer waits until the high watermark covers the write.
    let shard = Rc::clone(shard);
    Box::pin(async move {
        let outcome = queued.await;
        if outcome.error.is_some() {
            return outcome;
        }
        let committed = super::replica::wait_committed(
            &shard,
            &part.topic,
            &partition,
            leader_epoch,
            outcome.last_offset + 1,
            part.timeout,
        )
        .await;
        match committed {
            Ok(()) => outcome,
            Err(error) => {
                tracing::debug!(topic = %part.topic, partition = part.partition, ?error, end = outcome.last_offset + 1, high_watermark = partition.high_watermark(), "acks=all write not committed");
                ProduceOutcome::failed(
                    error.code(),
                    "the in-sync replicas did not all confirm the write",
                )
            }
        }
    })
}

async fn queue_parts(shard: &Rc<Shard>, partition: &Rc<Partition>, part: &ProducePart) -> Queued {
    let partition = Rc::clone(partition);
    let max_bytes = partition.log.config().max_message_bytes;
    let mut batches = match split_batches(&part.records, max_bytes) {
        Ok(batches) => batches,
        Err(error) => {
            return known(ProduceOutcome::failed(
                errors::batch_error(&error),
                error.to_string(),
            ))
        }
    };
    if batches.len() == 1 {
        let batch = batches.pop().expect("one batch");
        let writing = queue_batch(Rc::clone(shard), partition, batch).await;
        let shard = Rc::clone(shard);
        return Box::pin(async move {
            let outcome = writing.await.unwrap_or_else(|outcome| outcome);
            shard.appended.notify(usize::MAX);
            outcome
        });
    }
    // Several batches in one part (clients send one): appended one after the other, here.
    let mut first: Option<ProduceOutcome> = None;
    for batch in batches {
        match queue_batch(Rc::clone(shard), Rc::clone(&partition), batch)
            .await
            .await
        {
            Ok(outcome) => {
                let last_offset = outcome.last_offset;
                first.get_or_insert(outcome).last_offset = last_offset;
            }
            Err(outcome) => {
                // Duplicates waiting on a batch that failed here must learn it.
                shard.appended.notify(usize::MAX);
                return known(outcome);
            }
        }
    }
    shard.appended.notify(usize::MAX);
    known(
        first
            .unwrap_or_else(|| ProduceOutcome::failed(ResponseError::CorruptMessage, "no records")),
    )
}

/// Why the idempotent producer's check kept a batch out of the log.
enum Refusal {
    /// A retry of a stored batch.
    Duplicate(i64, BatchSequence),
    Sequence(SequenceError),
}

/// Queues one batch, with the idempotent producer's checks when it carries a producer id, and
/// returns its outcome to come: a retry of a stored batch is answered with that batch's offset
/// (once it is stored) and not stored again.
async fn queue_batch(
    shard: Rc<Shard>,
    partition: Rc<Partition>,
    batch: Bytes,
) -> Later<Result<ProduceOutcome, ProduceOutcome>> {
    // (producer id, base offset) of an admitted idempotent batch, to undo if its append fails.
    let admitted: Cell<Option<(i64, i64)>> = Cell::new(None);
    let queued = partition
        .log
        .enqueue_checked(batch, |header, base_offset| {
            let mut producers = partition.producers.borrow_mut();
            match producers.check(header).map_err(Refusal::Sequence)? {
                Admission::Append => {
                    producers.apply(header, base_offset);
                    if header.producer_id >= 0 {
                        admitted.set(Some((header.producer_id, base_offset)));
                    }
                    Ok(())
                }
                Admission::Duplicate(stored) => Err(Refusal::Duplicate(header.producer_id, stored)),
            }
        })
        .await;
    let admitted = admitted.get();
    Box::pin(async move {
        let appended = match queued {
            Ok(writing) => writing.await.map_err(CheckedAppendError::Append),
            Err(refused) => Err(refused),
        };
        batch_outcome(&shard, &partition, admitted, appended).await
    })
}

async fn batch_outcome(
    shard: &Shard,
    partition: &Partition,
    admitted: Option<(i64, i64)>,
    appended: Result<AppendInfo, CheckedAppendError<Refusal>>,
) -> Result<ProduceOutcome, ProduceOutcome> {
    match appended {
        Ok(info) => Ok(ProduceOutcome {
            error: None,
            message: None,
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_append_time_ms: info.log_append_time_ms.unwrap_or(-1),
            log_start_offset: info.log_start_offset,
        }),
        Err(CheckedAppendError::Refused(Refusal::Duplicate(producer_id, stored))) => {
            tracing::debug!(dir = %partition.log.dir().display(), producer_id, ?stored, "a retried batch is already stored");
            wait_until_stored(shard, partition, producer_id, stored).await?;
            Ok(ProduceOutcome {
                error: None,
                message: None,
                base_offset: stored.base_offset,
                last_offset: stored.last_offset,
                log_append_time_ms: -1,
                log_start_offset: partition.log.log_start_offset(),
            })
        }
        Err(CheckedAppendError::Refused(Refusal::Sequence(error))) => {
            tracing::debug!(dir = %partition.log.dir().display(), "refused a producer batch: {error}");
            Err(ProduceOutcome::failed(
                error.error_code(),
                error.to_string(),
            ))
        }
        Err(CheckedAppendError::Append(error)) => {
            if let Some((producer_id, base_offset)) = admitted {
                partition
                    .producers
                    .borrow_mut()
                    .forget(producer_id, base_offset);
            }
            Err(ProduceOutcome::failed(
                errors::append_error(&error),
                error.to_string(),
            ))
        }
    }
}

/// A retry may arrive while its original is still being written: it is answered only once the
/// original is in the log, and with an error (the producer retries again) if that append
/// failed.
async fn wait_until_stored(
    shard: &Shard,
    partition: &Partition,
    producer_id: i64,
    stored: BatchSequence,
) -> Result<(), ProduceOutcome> {
    const POLL: Duration = Duration::from_millis(100);
    const WAIT_MAX: Duration = Duration::from_secs(30);
    let deadline = shard.env.clock.now() + WAIT_MAX;
    loop {
        let listener = shard.appended.listen();
        if partition.log.log_end_offset() > stored.last_offset {
            return Ok(());
        }
        let remembered = partition.producers.borrow().remembers(producer_id, stored);
        if !remembered || shard.env.clock.now() >= deadline {
            return Err(ProduceOutcome::failed(
                ResponseError::KafkaStorageError,
                "the original of this retried batch was not stored",
            ));
        }
        futures_lite::future::or(listener, shard.env.clock.sleep(POLL)).await;
    }
}

/// Splits a partition's records into its batches. Clients send one batch per partition, which
/// the log's append validates itself (CRC, records) before storing anything. Kafka refuses
/// more; ringlog appends them in order, and checks every one of them as a producer batch
/// first, so that nothing is appended when any of them is refused.
fn split_batches(records: &Bytes, max_bytes: usize) -> Result<Vec<Bytes>, BatchError> {
    let mut batches = Vec::with_capacity(1);
    let mut start = 0;
    while start < records.len() {
        let rest = &records[start..];
        let Some(length) = rest.get(8..12) else {
            return Err(BatchError::TooShort {
                actual_bytes: rest.len(),
            });
        };
        let declared = i32::from_be_bytes([length[0], length[1], length[2], length[3]]);
        let total = usize::try_from(declared)
            .ok()
            .and_then(|length| length.checked_add(12))
            .filter(|&total| total <= rest.len())
            .ok_or(BatchError::LengthMismatch {
                declared: i64::from(declared),
                actual_bytes: rest.len(),
            })?;
        batches.push(records.slice(start..start + total));
        start += total;
    }
    if batches.is_empty() {
        return Err(BatchError::TooShort { actual_bytes: 0 });
    }
    if batches.len() > 1 {
        for batch in &batches {
            let header = batch::validate(batch, max_bytes)?;
            batch::check_producer_batch(&header, batch)?;
        }
    }
    Ok(batches)
}
