//! Metadata and DescribeCluster: this node leads every partition; unknown topics are created
//! when `auto.create.topics.enable` is on and the client allows it.

use std::rc::Rc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, DescribeTopicPartitionsRequest,
    DescribeTopicPartitionsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use ringlog_net::handlers::metadata::{cluster_response, unknown_topic};

use super::admin::{self, TopicSpec};
use super::catalog::{check_topic_name, Topic};
use super::Shard;

/// DescribeCluster endpoint types (KIP-919).
const ENDPOINT_BROKERS: i8 = 1;

pub async fn metadata(
    shard: &Rc<Shard>,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let mut response = cluster_response(
        version,
        &shard.identity,
        &shard.nodes(),
        // As KRaft brokers do: clients send admin requests to the "controller" Metadata
        // names, and any broker forwards them to the quorum, so name this broker's own node,
        // which is alive by definition, rather than one that may have just died. The active
        // controller is in DescribeCluster.
        shard.settings.topology.node_of(0),
    );
    let auto_create =
        shard.settings.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    let Some(wanted) = &request.topics else {
        // All topics.
        let catalog = shard.catalog.borrow();
        response.topics = catalog
            .topics
            .iter()
            .map(|(name, topic)| describe_topic(version, name, topic))
            .collect();
        return response;
    };
    // Unknown, validly named topics are created first (one controller call for all).
    if auto_create {
        let missing: Vec<TopicSpec> = wanted
            .iter()
            .filter_map(|topic| topic.name.as_ref())
            .filter(|name| {
                check_topic_name(name).is_ok()
                    && !shard.catalog.borrow().topics.contains_key(&*name.0)
            })
            .map(|name| TopicSpec::with_defaults(name.to_string(), &shard.settings))
            .collect();
        if !missing.is_empty() {
            // A failure (e.g. a racing creation) shows up below as an unknown or present topic.
            let _ = admin::create_on_controller(shard, missing, false).await;
        }
    }
    let catalog = shard.catalog.borrow();
    response.topics = wanted
        .iter()
        .map(|requested| {
            let found = match &requested.name {
                Some(name) => catalog.topics.get_key_value(&*name.0),
                None if version >= 10 => catalog.by_id(requested.topic_id),
                None => None,
            };
            match (found, &requested.name) {
                (Some((name, topic)), _) => describe_topic(version, name, topic),
                (None, Some(name)) if check_topic_name(name).is_err() => {
                    unknown_topic(version, requested)
                        .with_error_code(ResponseError::InvalidTopicException.code())
                }
                _ => unknown_topic(version, requested),
            }
        })
        .collect();
    response
}

fn describe_topic(version: i16, name: &str, topic: &Topic) -> MetadataResponseTopic {
    let nodes = |ids: &[i32]| ids.iter().copied().map(BrokerId).collect();
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(index, state)| {
            let mut partition = MetadataResponsePartition::default()
                .with_partition_index(index as i32)
                .with_leader_id(BrokerId(state.leader))
                .with_replica_nodes(nodes(&state.replicas))
                .with_isr_nodes(nodes(&state.isr));
            if state.leader < 0 {
                partition = partition.with_error_code(ResponseError::LeaderNotAvailable.code());
            }
            if version >= 7 {
                partition = partition.with_leader_epoch(state.leader_epoch);
            }
            partition
        })
        .collect();
    let mut response = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.to_owned()))))
        .with_partitions(partitions);
    if version >= 10 {
        response = response.with_topic_id(topic.uuid());
    }
    if version >= 1 && name == super::groups::OFFSETS_TOPIC {
        response = response.with_is_internal(true);
    }
    response
}

pub fn describe_cluster(
    shard: &Shard,
    request: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let identity = &shard.identity;
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(identity.cluster_id.clone()))
        .with_controller_id(BrokerId(shard.controller_node()));
    if version >= 1 {
        response = response.with_endpoint_type(request.endpoint_type);
        if request.endpoint_type != ENDPOINT_BROKERS {
            return response
                .with_error_code(ResponseError::UnsupportedEndpointType.code())
                .with_error_message(Some(StrBytes::from_static_str(
                    "this node is a broker; it does not list controller endpoints",
                )));
        }
    }
    let brokers = shard
        .nodes()
        .into_iter()
        .map(|(node, host, port)| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(node))
                .with_host(StrBytes::from_string(host))
                .with_port(i32::from(port))
        })
        .collect();
    response.with_brokers(brokers)
}

/// The most partitions one DescribeTopicPartitions answer carries (Kafka's
/// `max.request.partition.size.limit` default); a request may ask for fewer.
const DESCRIBE_PARTITIONS_LIMIT: i32 = 2000;

/// DescribeTopicPartitions (KIP-966), which Kafka's tools use to describe topics: each asked
/// topic (every topic when none is named) in name order, its partitions with leader, epoch,
/// replicas, ISR, eligible leader replicas, last known ELR and offline replicas, paged by
/// `response_partition_limit` with a cursor (topic, first partition) to go on from.
pub fn describe_topic_partitions(
    shard: &Shard,
    request: DescribeTopicPartitionsRequest,
    _version: i16,
) -> DescribeTopicPartitionsResponse {
    use kafka_protocol::messages::describe_topic_partitions_response::{
        Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
    };
    let catalog = shard.catalog.borrow();
    let mut names: Vec<String> = if request.topics.is_empty() {
        catalog.topics.keys().cloned().collect()
    } else {
        request.topics.iter().map(|t| t.name.to_string()).collect()
    };
    names.sort();
    names.dedup();
    let (start_topic, start_partition) = match &request.cursor {
        Some(cursor) => (cursor.topic_name.to_string(), cursor.partition_index.max(0)),
        None => (String::new(), 0),
    };
    let mut room = match request.response_partition_limit {
        limit if limit > 0 => limit.min(DESCRIBE_PARTITIONS_LIMIT),
        _ => DESCRIBE_PARTITIONS_LIMIT,
    };
    // Replicas on a broker the metadata does not list as live (a cluster) are offline.
    let live: Option<std::collections::BTreeSet<i32>> = catalog
        .brokers
        .as_ref()
        .map(|brokers| brokers.iter().map(|(node, _, _)| *node).collect());
    let nodes = |ids: &[i32]| ids.iter().copied().map(BrokerId).collect::<Vec<_>>();
    let mut response = DescribeTopicPartitionsResponse::default();
    for name in names.into_iter().filter(|name| *name >= start_topic) {
        let topic_name = TopicName(StrBytes::from_string(name.clone()));
        let Some(topic) = catalog.topics.get(&name) else {
            response.topics.push(
                DescribeTopicPartitionsResponseTopic::default()
                    .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                    .with_name(Some(topic_name))
                    .with_topic_authorized_operations(i32::MIN),
            );
            continue;
        };
        let first = if name == start_topic {
            start_partition
        } else {
            0
        };
        if room == 0 {
            response.next_cursor = Some(
                Cursor::default()
                    .with_topic_name(topic_name)
                    .with_partition_index(first),
            );
            break;
        }
        let mut partitions = Vec::new();
        let mut index = first;
        while let Some(state) = topic.partition(index) {
            if room == 0 {
                response.next_cursor = Some(
                    Cursor::default()
                        .with_topic_name(topic_name.clone())
                        .with_partition_index(index),
                );
                break;
            }
            let offline: Vec<i32> = match &live {
                Some(live) => state
                    .replicas
                    .iter()
                    .copied()
                    .filter(|node| !live.contains(node))
                    .collect(),
                None => Vec::new(),
            };
            let mut partition = DescribeTopicPartitionsResponsePartition::default()
                .with_partition_index(index)
                .with_leader_id(BrokerId(state.leader))
                .with_leader_epoch(state.leader_epoch)
                .with_replica_nodes(nodes(&state.replicas))
                .with_isr_nodes(nodes(&state.isr))
                .with_eligible_leader_replicas(Some(nodes(&state.elr)))
                .with_last_known_elr(Some(nodes(&state.last_known_elr)))
                .with_offline_replicas(nodes(&offline));
            if state.leader < 0 {
                partition = partition.with_error_code(ResponseError::LeaderNotAvailable.code());
            }
            partitions.push(partition);
            room -= 1;
            index += 1;
        }
        response.topics.push(
            DescribeTopicPartitionsResponseTopic::default()
                .with_name(Some(topic_name))
                .with_topic_id(topic.uuid())
                .with_is_internal(name == super::groups::OFFSETS_TOPIC)
                .with_partitions(partitions)
                .with_topic_authorized_operations(i32::MIN),
        );
        if response.next_cursor.is_some() {
            break;
        }
    }
    response
}
