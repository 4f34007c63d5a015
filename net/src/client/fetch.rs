//! Fetch requests (no fetch sessions: every request names its partitions) and their answers.
//!
//! Requests are small and written by `kafka-protocol`; answers are decoded from the frame's
//! `Bytes`, so each partition's records stay a slice of the read buffer (no copy).

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};

use super::error::ClientError;
use super::wire::{decode_response, encode_request, topic_name};

/// The highest Fetch version this client asks for: v13 names topics by id instead.
pub const FETCH_VERSION_MAX: i16 = 12;

/// How a consumer fetches.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    pub version: i16,
    pub client_id: String,
    pub topic: String,
    /// `fetch.max.wait.ms`: how long the broker may hold a request for `min_bytes`.
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    /// `fetch.max.bytes`: the whole answer.
    pub max_bytes: i32,
    /// `max.partition.fetch.bytes`.
    pub partition_max_bytes: i32,
}

/// One partition's part of a Fetch answer.
#[derive(Debug, Clone)]
pub struct FetchedPartition {
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub records: Bytes,
}

/// Encodes a Fetch request frame for `(partition, offset)` pairs of one topic.
pub fn fetch_request(
    settings: &FetchSettings,
    correlation_id: i32,
    partitions: &[(i32, i64)],
) -> Result<Bytes, ClientError> {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(settings.max_wait_ms)
        .with_min_bytes(settings.min_bytes)
        .with_max_bytes(settings.max_bytes)
        .with_isolation_level(0)
        .with_session_id(0)
        // -1 (FINAL_EPOCH): a full fetch, no session created.
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(&settings.topic))
            .with_partitions(
                partitions
                    .iter()
                    .map(|&(partition, offset)| {
                        FetchPartition::default()
                            .with_partition(partition)
                            .with_current_leader_epoch(-1)
                            .with_fetch_offset(offset)
                            .with_last_fetched_epoch(-1)
                            .with_log_start_offset(-1)
                            .with_partition_max_bytes(settings.partition_max_bytes)
                    })
                    .collect(),
            )]);
    encode_request(
        &request,
        settings.version,
        correlation_id,
        &settings.client_id,
    )
}

/// Decodes a Fetch answer into its partitions (records as slices of `payload`).
pub fn decode_fetch_response(
    payload: Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<(i16, Vec<FetchedPartition>), ClientError> {
    let response: FetchResponse =
        decode_response::<FetchRequest>(payload, version, correlation_id)?;
    let partitions = response
        .responses
        .into_iter()
        .flat_map(|topic| topic.partitions)
        .map(|p| FetchedPartition {
            partition: p.partition_index,
            error_code: p.error_code,
            high_watermark: p.high_watermark,
            records: p.records.unwrap_or_default(),
        })
        .collect();
    Ok((response.error_code, partitions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, BufMut, BytesMut};
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

    #[test]
    fn requests_and_answers_round_trip() {
        for version in [4, 11, FETCH_VERSION_MAX] {
            let settings = FetchSettings {
                version,
                client_id: "perf".to_owned(),
                topic: "t".to_owned(),
                max_wait_ms: 500,
                min_bytes: 1,
                max_bytes: 1 << 20,
                partition_max_bytes: 1 << 16,
            };
            let mut frame = fetch_request(&settings, 5, &[(0, 10), (2, 20)]).expect("encode");
            frame.advance(4);
            RequestHeader::decode(&mut frame, FetchRequest::header_version(version))
                .expect("header");
            let request = FetchRequest::decode(&mut frame, version).expect("decode");
            let partitions = &request.topics[0].partitions;
            assert_eq!(
                (partitions[1].partition, partitions[1].fetch_offset),
                (2, 20)
            );

            let response =
                FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                    .with_topic(topic_name("t"))
                    .with_partitions(vec![PartitionData::default()
                        .with_partition_index(2)
                        .with_high_watermark(99)
                        .with_records(Some(Bytes::from_static(b"abc")))])]);
            let mut payload = BytesMut::new();
            payload.put_i32(5);
            if FetchResponse::header_version(version) >= 1 {
                payload.put_u8(0); // no tagged fields
            }
            response.encode(&mut payload, version).expect("encode");
            let (code, parts) =
                decode_fetch_response(payload.freeze(), version, 5).expect("decode");
            assert_eq!(code, 0);
            assert_eq!((parts[0].partition, parts[0].high_watermark), (2, 99));
            assert_eq!(&parts[0].records[..], b"abc");
        }
    }
}
