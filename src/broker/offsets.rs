//! ListOffsets: earliest, latest, max timestamp, or the first offset at or after a timestamp,
//! answered by each partition's owner.

use std::rc::Rc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
};
use kafka_protocol::ResponseError;
use ringlog_engine::batch::BatchHeader;
use ringlog_net::errors;

use super::mesh::{self, ByOwner, Call};
use super::{Position, Shard};

/// Kafka's special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

/// An offset query, sent to the partition's owner.
#[derive(Debug, Clone)]
pub struct OffsetQuery {
    pub topic: String,
    pub partition: i32,
    pub timestamp: i64,
}

/// The answer: an offset and the timestamp that found it (-1 when not applicable).
#[derive(Debug, Clone, Copy)]
pub struct OffsetAnswer {
    pub error: Option<ResponseError>,
    pub timestamp: i64,
    pub offset: i64,
    /// The partition's leader epoch (KIP-320): a consumer validates its position against it.
    pub leader_epoch: i32,
}

impl OffsetAnswer {
    fn failed(error: ResponseError) -> Self {
        Self {
            error: Some(error),
            timestamp: -1,
            offset: -1,
            leader_epoch: -1,
        }
    }

    fn found(timestamp: i64, offset: i64) -> Self {
        Self {
            error: None,
            timestamp,
            offset,
            leader_epoch: -1,
        }
    }
}

pub async fn list_offsets(
    shard: &Rc<Shard>,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut answers: Vec<Vec<OffsetAnswer>> = Vec::with_capacity(request.topics.len());
    let mut by_owner: ByOwner<Position, OffsetQuery> = ByOwner::default();
    for (topic_index, topic) in request.topics.iter().enumerate() {
        let name: &str = &topic.name.0;
        let mut row = Vec::with_capacity(topic.partitions.len());
        for (partition_index, wanted) in topic.partitions.iter().enumerate() {
            match shard.route(name, wanted.partition_index) {
                Ok(owner) => {
                    row.push(OffsetAnswer::failed(ResponseError::UnknownServerError));
                    let query = OffsetQuery {
                        topic: name.to_owned(),
                        partition: wanted.partition_index,
                        timestamp: wanted.timestamp,
                    };
                    by_owner.add(owner, (topic_index, partition_index), query);
                }
                Err(code) => row.push(OffsetAnswer::failed(code)),
            }
        }
        answers.push(row);
    }
    for ((topic_index, partition_index), answer) in
        mesh::scatter(shard, by_owner, Query, OffsetAnswer::failed).await
    {
        answers[topic_index][partition_index] = answer;
    }
    let topics = request
        .topics
        .iter()
        .zip(answers)
        .map(|(topic, row)| {
            let partitions = topic
                .partitions
                .iter()
                .zip(row)
                .map(|(wanted, answer)| {
                    let mut response = ListOffsetsPartitionResponse::default()
                        .with_partition_index(wanted.partition_index)
                        .with_error_code(answer.error.map_or(0, |e| e.code()))
                        .with_timestamp(answer.timestamp)
                        .with_offset(answer.offset);
                    if version >= 4 {
                        response = response.with_leader_epoch(if answer.offset >= 0 {
                            answer.leader_epoch
                        } else {
                            -1
                        });
                    }
                    response
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// Answers offset queries on the shard owning their partitions: one answer per query, in
/// order.
pub struct Query(pub Vec<OffsetQuery>);

impl Call for Query {
    type Reply = Vec<OffsetAnswer>;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        let mut answers = Vec::with_capacity(self.0.len());
        for query in &self.0 {
            let mut answer = answer_local(&shard, query).await;
            // The current leader epoch, whatever offset was asked: a consumer that checks it
            // with OffsetForLeaderEpoch learns that its position is not past the log's end in
            // that epoch (an older epoch would be checked against where that epoch ended).
            if let Some(partition) = shard.partition(&query.topic, query.partition) {
                answer.leader_epoch = partition.known_epoch().max(0);
            }
            answers.push(answer);
        }
        answers
    }
}

async fn answer_local(shard: &Shard, query: &OffsetQuery) -> OffsetAnswer {
    let Some(partition) = shard.partition(&query.topic, query.partition) else {
        return OffsetAnswer::failed(ResponseError::KafkaStorageError);
    };
    let log = &partition.log;
    match query.timestamp {
        LATEST => OffsetAnswer::found(-1, partition.high_watermark()),
        EARLIEST | EARLIEST_LOCAL => OffsetAnswer::found(-1, log.log_start_offset()),
        // No tiered storage: nothing is tiered.
        LATEST_TIERED => OffsetAnswer::found(-1, -1),
        MAX_TIMESTAMP => match log.max_timestamp() {
            Some((timestamp, offset)) => OffsetAnswer::found(timestamp, offset),
            None => OffsetAnswer::found(-1, -1),
        },
        timestamp if timestamp >= 0 => by_timestamp(log, timestamp).await,
        _ => OffsetAnswer::failed(ResponseError::InvalidRequest),
    }
}

/// The first record at or after `timestamp`, or offset -1 when every record is older (as
/// Kafka answers). A compressed batch is decompressed to find the exact record.
async fn by_timestamp(log: &ringlog_engine::PartitionLog, timestamp: i64) -> OffsetAnswer {
    let found = match log.offset_for_timestamp(timestamp).await {
        Ok(Some(found)) => found,
        Ok(None) => return OffsetAnswer::found(-1, -1),
        Err(error) => return OffsetAnswer::failed(errors::read_error(&error)),
    };
    if found.exact {
        return OffsetAnswer::found(found.timestamp, found.offset);
    }
    let batch = match log.read(found.offset, 1, None).await {
        Ok(batch) => batch,
        Err(error) => return OffsetAnswer::failed(errors::read_error(&error)),
    };
    let bytes = batch.bytes();
    let Ok(header) = BatchHeader::decode(bytes) else {
        return OffsetAnswer::failed(ResponseError::CorruptMessage);
    };
    let whole = bytes.get(..header.total_bytes()).unwrap_or(bytes);
    match crate::dump_log::decode_records(whole, &header) {
        Ok(records) => records
            .iter()
            .find(|record| record.timestamp >= timestamp)
            .map_or(
                OffsetAnswer::found(found.timestamp, found.offset),
                |record| OffsetAnswer::found(record.timestamp, record.offset),
            ),
        Err(_) => OffsetAnswer::failed(ResponseError::CorruptMessage),
    }
}

/// One partition of an OffsetForLeaderEpoch request, sent to its owner.
#[derive(Debug, Clone)]
pub struct EpochQuery {
    pub topic: String,
    pub partition: i32,
    pub current_leader_epoch: i32,
    pub leader_epoch: i32,
}

/// What the owner answers: (error, epoch, end offset).
pub type EpochAnswer = (Option<ResponseError>, i32, i64);

/// Answers OffsetForLeaderEpoch: where each asked epoch ends in the leader's log, from its
/// leader-epoch cache (KIP-279's semantics: the largest epoch at or below the asked one, and
/// the start of the next; the log end for the current epoch; -1 and -1 for an epoch below
/// every one the log has). Only the leader answers, and a caller whose current leader epoch
/// is not the leader's is told so (KIP-320), as for Fetch.
pub async fn offset_for_leader_epoch(
    shard: &Rc<Shard>,
    request: OffsetForLeaderEpochRequest,
    _version: i16,
) -> OffsetForLeaderEpochResponse {
    let mut answers: Vec<Vec<EpochAnswer>> = Vec::with_capacity(request.topics.len());
    let mut by_owner: ByOwner<Position, EpochQuery> = ByOwner::default();
    for (topic_index, topic) in request.topics.iter().enumerate() {
        let name: &str = &topic.topic.0;
        let mut row = Vec::with_capacity(topic.partitions.len());
        for (partition_index, wanted) in topic.partitions.iter().enumerate() {
            match shard.route(name, wanted.partition) {
                Ok(owner) => {
                    row.push((Some(ResponseError::UnknownServerError), -1, -1));
                    let query = EpochQuery {
                        topic: name.to_owned(),
                        partition: wanted.partition,
                        current_leader_epoch: wanted.current_leader_epoch,
                        leader_epoch: wanted.leader_epoch,
                    };
                    by_owner.add(owner, (topic_index, partition_index), query);
                }
                Err(code) => row.push((Some(code), -1, -1)),
            }
        }
        answers.push(row);
    }
    let unreachable = |code| (Some(code), -1, -1);
    for ((topic_index, partition_index), answer) in
        mesh::scatter(shard, by_owner, EpochEnds, unreachable).await
    {
        answers[topic_index][partition_index] = answer;
    }
    let topics = request
        .topics
        .iter()
        .zip(answers)
        .map(|(topic, row)| {
            let partitions = topic
                .partitions
                .iter()
                .zip(row)
                .map(|(wanted, (error, epoch, end_offset))| {
                    EpochEndOffset::default()
                        .with_partition(wanted.partition)
                        .with_error_code(error.map_or(0, |e| e.code()))
                        .with_leader_epoch(epoch)
                        .with_end_offset(end_offset)
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

/// Answers leader-epoch queries on the shard owning their partitions, in order.
pub struct EpochEnds(pub Vec<EpochQuery>);

impl Call for EpochEnds {
    type Reply = Vec<EpochAnswer>;

    async fn run(self, shard: Rc<Shard>) -> Self::Reply {
        self.0
            .iter()
            .map(|query| {
                let Some(partition) = shard.partition(&query.topic, query.partition) else {
                    return (Some(ResponseError::KafkaStorageError), -1, -1);
                };
                let Some(leader_epoch) = partition.leading_epoch() else {
                    return (Some(ResponseError::NotLeaderOrFollower), -1, -1);
                };
                if let Err(error) =
                    super::replica::check_current_epoch(query.current_leader_epoch, leader_epoch)
                {
                    return (Some(error), -1, -1);
                }
                let (epoch, end_offset) = partition.log.end_offset_for_epoch(query.leader_epoch);
                (None, epoch, end_offset)
            })
            .collect()
    }
}
