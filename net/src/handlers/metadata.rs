//! Metadata (key 3): which brokers form the cluster and where each topic's partitions lead.
//!
//! The broker implementation fills in the topics; these helpers build the parts every answer
//! shares, for the negotiated version: kafka-protocol refuses to encode a non-default value in
//! a field the version does not have (cluster id before v2, controller id before v1, topic ids
//! before v10).

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponseTopic};
use kafka_protocol::messages::{BrokerId, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::BrokerIdentity;

/// A response listing this one broker as the whole cluster and its controller, with no topics.
pub fn single_broker_response(version: i16, broker: &BrokerIdentity) -> MetadataResponse {
    let this_broker = MetadataResponseBroker::default()
        .with_node_id(BrokerId(broker.node_id))
        .with_host(StrBytes::from_string(broker.advertised_host.clone()))
        .with_port(i32::from(broker.advertised_port));
    let mut response = MetadataResponse::default().with_brokers(vec![this_broker]);
    if version >= 1 {
        // The only broker is its own controller.
        response = response.with_controller_id(BrokerId(broker.node_id));
    }
    if version >= 2 {
        response = response.with_cluster_id(Some(StrBytes::from_string(broker.cluster_id.clone())));
    }
    response
}

/// The answer for a requested topic that does not exist: unknown by name or, for a request by
/// id only (v10+), an unknown topic id.
pub fn unknown_topic(version: i16, topic: &MetadataRequestTopic) -> MetadataResponseTopic {
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
