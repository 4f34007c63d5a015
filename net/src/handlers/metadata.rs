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

/// A response listing the cluster's nodes, (node id, port) on the advertised host, with
/// `controller_id` as controller, and no topics.
pub fn cluster_response(
    version: i16,
    broker: &BrokerIdentity,
    nodes: &[(i32, String, u16)],
    controller_id: i32,
) -> MetadataResponse {
    let brokers = nodes
        .iter()
        .map(|(node, host, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(*node))
                .with_host(StrBytes::from_string(host.clone()))
                .with_port(i32::from(*port))
        })
        .collect();
    let mut response = MetadataResponse::default().with_brokers(brokers);
    if version >= 1 {
        response = response.with_controller_id(BrokerId(controller_id));
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
