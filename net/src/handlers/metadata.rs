//! Metadata (key 3): which brokers form the cluster and where each topic's partitions lead.
//!
//! Today the cluster is this one broker and there are no topics yet, so every named topic is
//! unknown and an empty or null topic list ("all topics") lists none. The response is built for
//! the negotiated version: kafka-protocol refuses to encode a non-default value in a field the
//! version does not have (cluster id before v2, controller id before v1, topic ids before v10).

use bytes::{Buf, Bytes};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponseTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{decode_body, decode_header, encode_response, BrokerIdentity, RequestError};
use crate::RequestPrefix;

/// Versions of Metadata this broker answers. v13 (top-level error code) is left for when a
/// client needs it; the clients we test ask for 4 (kcat) and 12.
pub const VERSIONS: (i16, i16) = (0, 12);
/// First version with flexible (compact) encodings.
const FIRST_FLEXIBLE_VERSION: i16 = 9;

/// Answers a Metadata request about this single-broker cluster.
pub fn handle(
    prefix: RequestPrefix,
    mut payload: Bytes,
    broker: &BrokerIdentity,
) -> Result<Bytes, RequestError> {
    let version = prefix.api_version;
    if !(VERSIONS.0..=VERSIONS.1).contains(&version) {
        return Err(RequestError::Unsupported {
            api: ApiKey::Metadata,
            api_version: version,
        });
    }
    let header = decode_header::<MetadataRequest>(ApiKey::Metadata, version, &mut payload)?;
    check_topic_count(version, &payload)?;
    let request = decode_body::<MetadataRequest>(ApiKey::Metadata, version, &mut payload)?;
    let response = build_response(version, &request, broker);
    encode_response(ApiKey::Metadata, version, header.correlation_id, &response)
}

/// kafka-protocol preallocates an array from its claimed length, so a 30-byte request claiming
/// two billion topics would make it ask for ~100 GiB and abort the process. Every topic entry
/// takes at least one byte, so a count above the bytes left is refused before decoding.
fn check_topic_count(version: i16, body: &Bytes) -> Result<(), RequestError> {
    let claimed = if version >= FIRST_FLEXIBLE_VERSION {
        read_unsigned_varint(body).map(|n| u64::from(n.saturating_sub(1)))
    } else {
        let mut reader = body.clone();
        (reader.remaining() >= 4).then(|| u64::try_from(reader.get_i32()).unwrap_or(0))
    };
    // A missing count is left to the decoder, which reports it as truncated.
    match claimed {
        Some(count) if count > body.len() as u64 => Err(RequestError::Decode {
            api: ApiKey::Metadata,
            api_version: version,
            reason: format!("{count} topics claimed in {} bytes", body.len()),
        }),
        _ => Ok(()),
    }
}

/// Reads a Kafka unsigned varint (at most 5 bytes) from the start of `bytes`.
fn read_unsigned_varint(bytes: &[u8]) -> Option<u32> {
    let mut value: u32 = 0;
    for (index, byte) in bytes.iter().take(5).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn build_response(
    version: i16,
    request: &MetadataRequest,
    broker: &BrokerIdentity,
) -> MetadataResponse {
    let this_broker = MetadataResponseBroker::default()
        .with_node_id(BrokerId(broker.node_id))
        .with_host(StrBytes::from_string(broker.advertised_host.clone()))
        .with_port(i32::from(broker.advertised_port));
    let mut response = MetadataResponse::default()
        .with_brokers(vec![this_broker])
        .with_topics(unknown_topics(version, request));
    if version >= 1 {
        // The only broker is its own controller.
        response = response.with_controller_id(BrokerId(broker.node_id));
    }
    if version >= 2 {
        response = response.with_cluster_id(Some(StrBytes::from_string(broker.cluster_id.clone())));
    }
    response
}

/// No topic exists yet: each one asked for is reported unknown, by name or, for a request by
/// id only (v10+), as an unknown topic id.
fn unknown_topics(version: i16, request: &MetadataRequest) -> Vec<MetadataResponseTopic> {
    let Some(topics) = &request.topics else {
        return Vec::new();
    };
    topics
        .iter()
        .map(|topic| unknown_topic(version, topic))
        .collect()
}

fn unknown_topic(version: i16, topic: &MetadataRequestTopic) -> MetadataResponseTopic {
    let error = if topic.name.is_some() {
        ResponseError::UnknownTopicOrPartition
    } else {
        ResponseError::UnknownTopicId
    };
    // The response name is nullable only from v12; before that an id-only request gets "".
    let name = match (&topic.name, version >= 12) {
        (Some(name), _) => Some(name.clone()),
        (None, true) => None,
        (None, false) => Some(TopicName(StrBytes::from_static_str(""))),
    };
    let mut response = MetadataResponseTopic::default()
        .with_error_code(error.code())
        .with_name(name);
    if version >= 10 {
        response = response.with_topic_id(topic.topic_id);
    }
    response
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::{Encodable, HeaderVersion};

    use super::*;
    use crate::handlers::handle_request;

    fn broker() -> BrokerIdentity {
        BrokerIdentity {
            node_id: 3,
            advertised_host: "broker.example".to_owned(),
            advertised_port: 9093,
            cluster_id: "cluster".to_owned(),
        }
    }

    fn payload(version: i16, request: &MetadataRequest) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(version)
            .with_correlation_id(42);
        let mut buffer = BytesMut::new();
        header
            .encode(&mut buffer, MetadataRequest::header_version(version))
            .expect("header");
        request.encode(&mut buffer, version).expect("body");
        buffer.freeze()
    }

    /// Every version answers every shape of request: a field the version lacks would make
    /// the response fail to encode.
    #[test]
    fn every_version_answers_all_named_and_id_only_requests() {
        let named = MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("orders"))));
        // The topic id is left nil: only the missing name matters to the answer.
        let by_id = MetadataRequestTopic::default().with_name(None);
        for version in VERSIONS.0..=VERSIONS.1 {
            let mut requests =
                vec![MetadataRequest::default().with_topics(Some(vec![named.clone()]))];
            requests.push(MetadataRequest::default().with_topics(Some(Vec::new())));
            if version >= 1 {
                requests.push(MetadataRequest::default().with_topics(None));
            }
            if version >= 10 {
                requests.push(MetadataRequest::default().with_topics(Some(vec![by_id.clone()])));
            }
            for request in &requests {
                let response = handle_request(payload(version, request), &broker());
                assert!(response.is_ok(), "v{version} {request:?}: {response:?}");
            }
        }
    }

    #[test]
    fn claimed_topic_counts_beyond_the_body_are_refused() {
        assert!(check_topic_count(1, &Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff])).is_err());
        assert!(check_topic_count(1, &Bytes::from_static(&[0, 0, 0, 0])).is_ok());
        assert!(check_topic_count(9, &Bytes::from_static(&[0xff, 0xff, 0xff, 0x7f])).is_err());
        assert_eq!(read_unsigned_varint(&[0x96, 0x01]), Some(150));
        assert_eq!(read_unsigned_varint(&[0x80]), None);
    }
}
