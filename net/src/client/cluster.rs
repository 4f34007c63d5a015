//! Bootstrap and cluster metadata: the ApiVersions answer (`wire::ApiVersions`), Metadata
//! (partition leaders and broker addresses), topic creation, InitProducerId and ListOffsets.
//!
//! What is learnt here is plain data (`ClusterInfo`, `TopicInfo`): the tools learn it once on
//! one executor and hand copies to every client shard, which then open their own connections.
//! The ListOffsets requests per leader and the reading of their answers serve the blocking
//! client too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiVersionsRequest, BrokerId, CreateTopicsRequest, InitProducerIdRequest, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest,
};
use kafka_protocol::ResponseError;

use super::connection::Connection;
use super::error::{check_code, ClientError};
use super::reconnect::{retry, ReconnectPolicy};
use super::wire::{topic_name, ApiVersions, API_VERSIONS_VERSION};

/// How long a topic may be unknown before waiting for it is given up.
const TOPIC_MISSING_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for a topic's partitions to all have leaders.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a control request that keeps failing with retriable errors (a coordinator still
/// loading, say) is retried: 100 ms doubling to 1 s, for 5 s.
pub const RETRIABLE_RETRY: ReconnectPolicy = ReconnectPolicy {
    backoff: Duration::from_millis(100),
    deadline: Duration::from_secs(5),
};

/// Whether an error is a Kafka error code worth asking again about (not a broken
/// connection or an unanswered request: those are the caller's to handle).
pub fn is_retriable_kafka_error(error: &ClientError) -> bool {
    matches!(error, ClientError::Kafka { .. }) && error.is_retriable()
}

/// One partition of a topic and its leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    pub index: i32,
    pub leader: i32,
}

/// A topic's partitions, sorted by index.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
}

impl TopicInfo {
    pub fn partition_count(&self) -> i32 {
        i32::try_from(self.partitions.len()).unwrap_or(i32::MAX)
    }
}

/// What a client shard needs to reach the cluster.
#[derive(Debug, Clone)]
pub struct ClusterInfo {
    /// The bootstrap servers as given, for refreshing metadata later.
    pub bootstrap: String,
    pub client_id: String,
    /// Broker node id → `host:port`.
    pub brokers: BTreeMap<i32, String>,
    pub versions: ApiVersions,
}

impl ClusterInfo {
    pub fn address(&self, node: i32) -> Result<&str, ClientError> {
        self.brokers
            .get(&node)
            .map(String::as_str)
            .ok_or(ClientError::UnknownNode { node })
    }
}

/// A control connection to one bootstrap broker.
pub struct Cluster {
    connection: Connection,
    info: ClusterInfo,
}

impl Cluster {
    /// Connects to the first reachable of the comma-separated bootstrap servers and asks
    /// which API versions it speaks.
    pub async fn connect(bootstrap: &str, client_id: &str) -> Result<Self, ClientError> {
        let mut last_error = None;
        for address in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match Self::connect_one(bootstrap, address, client_id).await {
                Ok(cluster) => return Ok(cluster),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::Connect {
            address: bootstrap.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no bootstrap server given",
            ),
        }))
    }

    async fn connect_one(
        bootstrap: &str,
        address: &str,
        client_id: &str,
    ) -> Result<Self, ClientError> {
        let mut connection = Connection::connect(address, client_id).await?;
        let response = connection
            .call(&ApiVersionsRequest::default(), API_VERSIONS_VERSION)
            .await?;
        let versions = ApiVersions::from_response(&response, address)?;
        Ok(Self {
            connection,
            info: ClusterInfo {
                bootstrap: bootstrap.to_owned(),
                client_id: client_id.to_owned(),
                brokers: BTreeMap::new(),
                versions,
            },
        })
    }

    pub fn info(&self) -> &ClusterInfo {
        &self.info
    }

    pub fn connection(&mut self) -> &mut Connection {
        &mut self.connection
    }

    /// Metadata for one topic; refreshes the broker list. With `auto_create` the broker may
    /// create a missing topic (as Kafka's perf tools rely on).
    pub async fn metadata(
        &mut self,
        topic: &str,
        auto_create: bool,
    ) -> Result<TopicInfo, ClientError> {
        let version = self.info.versions.pick::<MetadataRequest>(12)?;
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(topic)))
            ]))
            .with_allow_auto_topic_creation(auto_create);
        let response = self.connection.call(&request, version).await?;
        self.info.brokers = response
            .brokers
            .iter()
            .map(|broker| {
                (
                    broker.node_id.0,
                    format!("{}:{}", broker.host.as_str(), broker.port),
                )
            })
            .collect();
        let entry = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|name| name.as_str() == topic))
            .ok_or_else(|| ClientError::Topic {
                topic: topic.to_owned(),
                reason: "not in the Metadata answer".to_owned(),
            })?;
        check_code(entry.error_code, || format!("Metadata for topic {topic}"))?;
        let mut partitions: Vec<PartitionInfo> = entry
            .partitions
            .iter()
            .map(|p| PartitionInfo {
                index: p.partition_index,
                leader: if p.error_code == 0 { p.leader_id.0 } else { -1 },
            })
            .collect();
        partitions.sort_by_key(|p| p.index);
        Ok(TopicInfo {
            name: topic.to_owned(),
            partitions,
        })
    }

    /// Waits until the topic exists with a leader for every partition (auto-creating it if
    /// the broker does that and `auto_create` asks for it), at most 30 s; without
    /// `auto_create`, a topic still unknown after 2 s is an error at once.
    pub async fn wait_for_topic(
        &mut self,
        topic: &str,
        auto_create: bool,
    ) -> Result<TopicInfo, ClientError> {
        let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
        // A topic created a moment ago may not be in every shard's metadata yet.
        let missing_deadline = Instant::now() + TOPIC_MISSING_GRACE;
        loop {
            let outcome = self.metadata(topic, auto_create).await;
            let retriable = match &outcome {
                Ok(info) => {
                    let ready = !info.partitions.is_empty()
                        && info.partitions.iter().all(|p| p.leader >= 0);
                    if ready {
                        return outcome;
                    }
                    true
                }
                Err(ClientError::Kafka { code, .. })
                    if *code == ResponseError::UnknownTopicOrPartition.code()
                        && !auto_create
                        && Instant::now() > missing_deadline =>
                {
                    return Err(ClientError::Topic {
                        topic: topic.to_owned(),
                        reason: "does not exist (ringlog-perf never has topics created through \
                                 Metadata: create it first, or give the producer --partitions N)"
                            .to_owned(),
                    });
                }
                Err(error) => error.is_retriable(),
            };
            if !retriable || Instant::now() > deadline {
                return outcome.and_then(|_| {
                    Err(ClientError::Topic {
                        topic: topic.to_owned(),
                        reason: "partitions without a leader after 30 s".to_owned(),
                    })
                });
            }
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a topic with `partitions` partitions (replication factor 1) unless it exists.
    pub async fn create_topic(&mut self, topic: &str, partitions: i32) -> Result<(), ClientError> {
        let version = self.info.versions.pick::<CreateTopicsRequest>(7)?;
        let request = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(1)])
            .with_timeout_ms(30_000);
        let response = self.connection.call(&request, version).await?;
        for result in &response.topics {
            if result.error_code != ResponseError::TopicAlreadyExists.code() {
                check_code(result.error_code, || format!("CreateTopics {topic}"))?;
            }
        }
        Ok(())
    }

    /// A producer id and epoch for an idempotent producer (no transactional id).
    pub async fn init_producer_id(&mut self) -> Result<(i64, i16), ClientError> {
        let version = self.info.versions.pick::<InitProducerIdRequest>(4)?;
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(-1)
            .with_producer_id((-1).into())
            .with_producer_epoch(-1);
        let connection = &mut self.connection;
        retry(
            RETRIABLE_RETRY,
            || "InitProducerId".to_owned(),
            is_retriable_kafka_error,
            async || {
                let response = connection.call(&request, version).await?;
                check_code(response.error_code, || "InitProducerId".to_owned())?;
                Ok((response.producer_id.0, response.producer_epoch))
            },
        )
        .await
    }

    /// The offset of each partition at `timestamp` (-1: the end, -2: the start), asked of
    /// each partition's leader.
    pub async fn list_offsets(
        &mut self,
        topic: &TopicInfo,
        timestamp: i64,
    ) -> Result<BTreeMap<i32, i64>, ClientError> {
        let version = self.info.versions.pick::<ListOffsetsRequest>(7)?;
        let leaders = topic.partitions.iter().map(|p| (p.index, p.leader));
        let mut offsets = BTreeMap::new();
        for (leader, request) in list_offsets_requests(&topic.name, leaders, timestamp) {
            let address = self.info.address(leader)?.to_owned();
            let mut connection = Connection::connect(&address, &self.info.client_id).await?;
            let response = connection.call(&request, version).await?;
            collect_offsets(&topic.name, &response, &mut offsets)?;
        }
        Ok(offsets)
    }
}

/// One ListOffsets request per leader for the partitions of `topic` it leads (`leaders`:
/// partition → leader), asking for the offset at `timestamp` (-1: the end, -2: the start).
pub fn list_offsets_requests(
    topic: &str,
    leaders: impl IntoIterator<Item = (i32, i32)>,
    timestamp: i64,
) -> BTreeMap<i32, ListOffsetsRequest> {
    let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for (partition, leader) in leaders {
        by_leader.entry(leader).or_default().push(partition);
    }
    by_leader
        .into_iter()
        .map(|(leader, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|index| {
                    ListOffsetsPartition::default()
                        .with_partition_index(index)
                        .with_current_leader_epoch(-1)
                        .with_timestamp(timestamp)
                })
                .collect();
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(partitions)]);
            (leader, request)
        })
        .collect()
}

/// Adds the offsets of a ListOffsets answer to `offsets` (partition → offset); a partition's
/// error code is an error.
pub fn collect_offsets(
    topic: &str,
    response: &ListOffsetsResponse,
    offsets: &mut BTreeMap<i32, i64>,
) -> Result<(), ClientError> {
    for topic_response in &response.topics {
        for partition in &topic_response.partitions {
            check_code(partition.error_code, || {
                format!("ListOffsets {topic}-{}", partition.partition_index)
            })?;
            offsets.insert(partition.partition_index, partition.offset);
        }
    }
    Ok(())
}
