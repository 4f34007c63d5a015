//! A small blocking Kafka client for tools: kafka-protocol codecs over a `std` TCP stream, one
//! request in flight per connection. `ringlog groups` and `ringlog-bench` use it for admin work
//! (metadata, topics, groups, offsets) against any Kafka-compatible broker, ringlog or not.
//!
//! It is not for the data path: it blocks the calling thread on every request. Requests go to
//! the right node: group requests to the group's coordinator (FindCoordinator), ListOffsets to
//! each partition's leader (Metadata), topic creation and deletion to the controller the
//! metadata names (brokers that forward admin requests accept them anywhere).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, CreateTopicsRequest, DeleteTopicsRequest,
    FindCoordinatorRequest, GroupId, ListOffsetsRequest, MetadataRequest, MetadataResponse,
    OffsetFetchRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::ResponseError;

/// How long one request may take on the socket, each way.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between polls while waiting for the cluster to converge (topics created or gone).
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The largest answer accepted (Kafka's default socket.request.max.bytes); a bigger size prefix
/// means the stream is not Kafka.
const RESPONSE_BYTES_MAX: usize = crate::DEFAULT_MAX_REQUEST_BYTES;

/// Why a request could not be made or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("{api}: {source}")]
    Io { api: String, source: std::io::Error },
    #[error("{api}: {message}")]
    Codec { api: String, message: String },
    #[error("{what}: {error} ({code})")]
    Broker {
        what: String,
        code: i16,
        error: ResponseError,
    },
    #[error("{api}: the broker supports versions {broker:?}, this client {ours:?}")]
    UnsupportedVersion {
        api: String,
        broker: RangeInclusive<i16>,
        ours: RangeInclusive<i16>,
    },
    #[error("{0}")]
    Missing(String),
    #[error("topic {topic} has {partitions} partitions, {asked} were asked for")]
    WrongLayout {
        topic: String,
        partitions: usize,
        asked: i32,
    },
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
}

/// `ToString` for the tools that report errors as text.
impl From<ClientError> for String {
    fn from(error: ClientError) -> Self {
        error.to_string()
    }
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|()| format!("API {key}"), |api| format!("{api:?}"))
}

/// Turns a Kafka error code into a `ClientError` naming `what` failed.
pub fn check(code: i16, what: &str) -> Result<(), ClientError> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(error) => Err(ClientError::Broker {
            what: what.to_owned(),
            code,
            error,
        }),
    }
}

/// One connection to one broker node.
pub struct Connection {
    stream: TcpStream,
    client_id: StrBytes,
    correlation_id: i32,
    /// API key → versions the broker supports, from ApiVersions (asked on first need).
    versions: Option<HashMap<i16, RangeInclusive<i16>>>,
}

impl Connection {
    pub fn open(address: &str, client_id: &'static str) -> Result<Self, ClientError> {
        let connect_error = |source| ClientError::Connect {
            address: address.to_owned(),
            source,
        };
        let stream = TcpStream::connect(address).map_err(connect_error)?;
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(connect_error)?;
        stream
            .set_write_timeout(Some(REQUEST_TIMEOUT))
            .map_err(connect_error)?;
        // Admin requests are small and strictly request-response: do not let Nagle hold them.
        stream.set_nodelay(true).map_err(connect_error)?;
        Ok(Self {
            stream,
            client_id: StrBytes::from_static_str(client_id),
            correlation_id: 0,
            versions: None,
        })
    }

    /// Sends `request` at `version` and reads its answer.
    pub fn call<Req: Request>(
        &mut self,
        version: i16,
        request: &Req,
    ) -> Result<Req::Response, ClientError> {
        let api = || api_name(Req::KEY);
        let codec = |e: anyhow::Error| ClientError::Codec {
            api: api(),
            message: format!("{e:#}"),
        };
        let io = |source| ClientError::Io { api: api(), source };
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(Req::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        header
            .encode(&mut frame, Req::header_version(version))
            .and_then(|()| request.encode(&mut frame, version))
            .map_err(codec)?;
        let size = i32::try_from(frame.len() - crate::SIZE_PREFIX_BYTES)
            .map_err(|_| ClientError::Missing(format!("{} request over 2 GiB", api())))?;
        frame[..crate::SIZE_PREFIX_BYTES].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&frame).map_err(io)?;
        let mut size = [0u8; crate::SIZE_PREFIX_BYTES];
        self.stream.read_exact(&mut size).map_err(io)?;
        let size = usize::try_from(i32::from_be_bytes(size))
            .ok()
            .filter(|&size| size <= RESPONSE_BYTES_MAX)
            .ok_or_else(|| ClientError::Codec {
                api: api(),
                message: format!(
                    "answer size {} is not a Kafka frame",
                    i32::from_be_bytes(size)
                ),
            })?;
        let mut body = vec![0u8; size];
        self.stream.read_exact(&mut body).map_err(io)?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, Req::Response::header_version(version))
            .map_err(codec)?;
        if header.correlation_id != self.correlation_id {
            return Err(ClientError::Codec {
                api: api(),
                message: format!(
                    "answer to request {} arrived for request {}",
                    header.correlation_id, self.correlation_id
                ),
            });
        }
        Req::Response::decode(&mut body, version).map_err(codec)
    }

    /// The highest version of `Req` that both this client (`ours`) and the broker speak.
    pub fn version<Req: Request>(&mut self, ours: RangeInclusive<i16>) -> Result<i16, ClientError> {
        if self.versions.is_none() {
            // v3 is the first flexible version, answered by every broker of the last five
            // years (Kafka 2.4+, Redpanda, ringlog).
            let response = self.call(3, &ApiVersionsRequest::default())?;
            check(response.error_code, "ApiVersions")?;
            let versions = response
                .api_keys
                .iter()
                .map(|key| (key.api_key, key.min_version..=key.max_version))
                .collect();
            self.versions = Some(versions);
        }
        let broker = self
            .versions
            .as_ref()
            .and_then(|versions| versions.get(&Req::KEY))
            .cloned()
            .ok_or_else(|| {
                ClientError::Missing(format!("the broker does not offer {}", api_name(Req::KEY)))
            })?;
        let highest = (*broker.end()).min(*ours.end());
        if highest < (*broker.start()).max(*ours.start()) {
            return Err(ClientError::UnsupportedVersion {
                api: api_name(Req::KEY),
                broker,
                ours,
            });
        }
        Ok(highest)
    }
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Topic-level configs (`retention.ms`, `segment.bytes`, ...).
    pub configs: BTreeMap<String, String>,
}

/// The brokers of one cluster: a bootstrap connection and one connection per node, opened on
/// first use.
pub struct Cluster {
    client_id: &'static str,
    bootstrap: Connection,
    nodes: HashMap<i32, String>,
    controller: Option<i32>,
    connections: HashMap<i32, Connection>,
}

/// A topic name for a request.
pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

impl Cluster {
    /// Connects to `bootstrap` and learns the cluster's nodes from its metadata.
    pub fn connect(bootstrap: &str, client_id: &'static str) -> Result<Self, ClientError> {
        let mut cluster = Self {
            client_id,
            bootstrap: Connection::open(bootstrap, client_id)?,
            nodes: HashMap::new(),
            controller: None,
            connections: HashMap::new(),
        };
        cluster.metadata(Some(Vec::new()))?;
        Ok(cluster)
    }

    pub fn bootstrap(&mut self) -> &mut Connection {
        &mut self.bootstrap
    }

    /// The node ids the metadata has named so far.
    pub fn node_ids(&self) -> Vec<i32> {
        let mut ids: Vec<i32> = self.nodes.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Metadata for `topics` (`None`: all of them), remembering the nodes it lists.
    fn metadata(&mut self, topics: Option<Vec<String>>) -> Result<MetadataResponse, ClientError> {
        let request = MetadataRequest::default()
            .with_topics(topics.map(|names| {
                names
                    .iter()
                    .map(|name| MetadataRequestTopic::default().with_name(Some(topic_name(name))))
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        let version = self.bootstrap.version::<MetadataRequest>(4..=12)?;
        let response = self.bootstrap.call(version, &request)?;
        for broker in &response.brokers {
            self.nodes
                .insert(broker.node_id.0, format!("{}:{}", broker.host, broker.port));
        }
        self.controller = Some(response.controller_id.0).filter(|id| self.nodes.contains_key(id));
        Ok(response)
    }

    /// The connection to node `node`.
    pub fn node(&mut self, node: i32) -> Result<&mut Connection, ClientError> {
        if !self.connections.contains_key(&node) {
            let address = self.nodes.get(&node).ok_or_else(|| {
                ClientError::Missing(format!("node {node} is not in the cluster metadata"))
            })?;
            let connection = Connection::open(address, self.client_id)?;
            self.connections.insert(node, connection);
        }
        self.connections
            .get_mut(&node)
            .ok_or_else(|| ClientError::Missing(format!("no connection to node {node}")))
    }

    /// The controller for admin requests, or the bootstrap broker when none is named.
    fn controller(&mut self) -> Result<&mut Connection, ClientError> {
        match self.controller {
            Some(node) => self.node(node),
            None => Ok(&mut self.bootstrap),
        }
    }

    /// The coordinator of consumer group `group`.
    pub fn coordinator(&mut self, group: &str) -> Result<&mut Connection, ClientError> {
        let node = self.coordinator_node(group)?;
        self.node(node)
    }

    /// The node id of `group`'s coordinator (FindCoordinator), remembered as a node.
    pub fn coordinator_node(&mut self, group: &str) -> Result<i32, ClientError> {
        let request =
            FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.to_owned()));
        let response = self.bootstrap.call(3, &request)?;
        check(response.error_code, "FindCoordinator")?;
        self.nodes
            .entry(response.node_id.0)
            .or_insert_with(|| format!("{}:{}", response.host, response.port));
        Ok(response.node_id.0)
    }

    /// Drops the connection to `node` (after an error left it unusable); the next request to
    /// it opens a fresh one.
    pub fn forget(&mut self, node: i32) {
        self.connections.remove(&node);
    }

    /// (partition → leader) of `topic`.
    pub fn leaders(&mut self, topic: &str) -> Result<BTreeMap<i32, i32>, ClientError> {
        let response = self.metadata(Some(vec![topic.to_owned()]))?;
        let found = response
            .topics
            .first()
            .ok_or_else(|| ClientError::Missing("no topic in the answer".to_owned()))?;
        check(found.error_code, &format!("topic {topic}"))?;
        Ok(found
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.leader_id.0))
            .collect())
    }

    /// Offsets of `topic`'s partitions at `timestamp` (-1 latest, -2 earliest).
    pub fn offsets(
        &mut self,
        topic: &str,
        timestamp: i64,
    ) -> Result<BTreeMap<i32, i64>, ClientError> {
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for (partition, leader) in self.leaders(topic)? {
            by_leader.entry(leader).or_default().push(partition);
        }
        let mut offsets = BTreeMap::new();
        for (leader, partitions) in by_leader {
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|&p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(p)
                                    .with_timestamp(timestamp)
                            })
                            .collect(),
                    )]);
            let response = self.node(leader)?.call(7, &request)?;
            for topic in response.topics {
                for p in topic.partitions {
                    check(
                        p.error_code,
                        &format!("ListOffsets partition {}", p.partition_index),
                    )?;
                    offsets.insert(p.partition_index, p.offset);
                }
            }
        }
        Ok(offsets)
    }

    /// Committed offsets of `group`: (topic, partition) → offset.
    pub fn committed(
        &mut self,
        group: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<BTreeMap<(String, i32), i64>, ClientError> {
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_topics(topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(TopicName(StrBytes::from_string(name)))
                            .with_partition_indexes(partitions)
                    })
                    .collect()
            }));
        let response = self.coordinator(group)?.call(7, &request)?;
        check(response.error_code, "OffsetFetch")?;
        let mut committed = BTreeMap::new();
        for topic in response.topics {
            for p in topic.partitions {
                check(p.error_code, "OffsetFetch partition")?;
                committed.insert(
                    (topic.name.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
        Ok(committed)
    }

    /// Creates `topics` and waits until every partition has a leader. A topic that still
    /// exists (a deletion in progress) is retried until `timeout`.
    pub fn create_topics(
        &mut self,
        topics: &[NewTopic],
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let started = Instant::now();
        let mut pending: Vec<&NewTopic> = topics.iter().collect();
        while !pending.is_empty() {
            let request = CreateTopicsRequest::default()
                .with_timeout_ms(timeout_ms(timeout))
                .with_topics(pending.iter().map(|topic| creatable(topic)).collect());
            let controller = self.controller()?;
            let version = controller.version::<CreateTopicsRequest>(2..=7)?;
            let response = controller.call(version, &request)?;
            let mut retry = Vec::new();
            for result in &response.topics {
                let what = format!("creating topic {}", result.name.as_str());
                match ResponseError::try_from_code(result.error_code) {
                    Some(ResponseError::TopicAlreadyExists) => retry.push(result.name.to_string()),
                    _ => check(result.error_code, &what)?,
                }
            }
            pending.retain(|topic| retry.contains(&topic.name));
            if !pending.is_empty() {
                wait_a_little(started, timeout, "an old topic of the same name to go away")?;
            }
        }
        let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
        self.wait_for_topics(&names, true, started, timeout)?;
        // A topic that was already there (auto-created by a client's Metadata, say) may have
        // another layout than asked: say so rather than measure the wrong thing.
        for topic in topics {
            let partitions = self.leaders(&topic.name)?.len();
            if partitions != usize::try_from(topic.partitions).unwrap_or(0) {
                return Err(ClientError::WrongLayout {
                    topic: topic.name.clone(),
                    partitions,
                    asked: topic.partitions,
                });
            }
        }
        Ok(())
    }

    /// Deletes `names` (those that do not exist are skipped) and waits until the metadata no
    /// longer lists them.
    pub fn delete_topics(
        &mut self,
        names: &[String],
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let started = Instant::now();
        let request = DeleteTopicsRequest::default()
            .with_timeout_ms(timeout_ms(timeout))
            .with_topic_names(names.iter().map(|name| topic_name(name)).collect());
        let controller = self.controller()?;
        let version = controller.version::<DeleteTopicsRequest>(1..=5)?;
        let response = controller.call(version, &request)?;
        let mut answers = Vec::new();
        for result in &response.responses {
            let name = result.name.as_ref().map_or("?", |n| n.as_str());
            answers.push(format!("{name}: error code {}", result.error_code));
            if result.error_code == ResponseError::UnknownTopicOrPartition.code() {
                continue;
            }
            check(result.error_code, &format!("deleting topic {name}"))?;
        }
        let answered = format!("DeleteTopics v{version} answered {}", answers.join(", "));
        self.wait_for_topics(names, false, started, timeout)
            .map_err(|error| match error {
                ClientError::Timeout { what, waited } => ClientError::Timeout {
                    what: format!("{what} ({answered})"),
                    waited,
                },
                other => other,
            })
    }

    /// Polls the metadata until every topic in `names` exists with a leader for each
    /// partition (`present`), or none of them exists (`!present`).
    fn wait_for_topics(
        &mut self,
        names: &[String],
        present: bool,
        started: Instant,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        loop {
            let response = self.metadata(Some(names.to_vec()))?;
            let ready = |name: &String| {
                response.topics.iter().any(|topic| {
                    topic.name.as_ref().is_some_and(|n| n.as_str() == name)
                        && topic.error_code == 0
                        && !topic.partitions.is_empty()
                        && topic.partitions.iter().all(|p| p.leader_id.0 >= 0)
                })
            };
            let gone = |name: &String| {
                !response.topics.iter().any(|topic| {
                    topic.name.as_ref().is_some_and(|n| n.as_str() == name)
                        && topic.error_code != ResponseError::UnknownTopicOrPartition.code()
                })
            };
            let done = if present {
                names.iter().all(ready)
            } else {
                names.iter().all(gone)
            };
            if done {
                return Ok(());
            }
            let what = if present {
                "the new topics' partitions to have leaders"
            } else {
                "the deleted topics to leave the metadata"
            };
            let listed: Vec<String> = response
                .topics
                .iter()
                .map(|topic| {
                    let name = topic.name.as_ref().map_or("?", |n| n.as_str());
                    format!(
                        "{name}: error code {}, {} partitions",
                        topic.error_code,
                        topic.partitions.len()
                    )
                })
                .collect();
            let what = format!("{what}; the metadata lists {}", listed.join(", "));
            wait_a_little(started, timeout, &what)?;
        }
    }
}

fn creatable(topic: &NewTopic) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(topic_name(&topic.name))
        .with_num_partitions(topic.partitions)
        .with_replication_factor(topic.replication_factor)
        .with_configs(
            topic
                .configs
                .iter()
                .map(|(name, value)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(name.clone()))
                        .with_value(Some(StrBytes::from_string(value.clone())))
                })
                .collect(),
        )
}

fn timeout_ms(timeout: Duration) -> i32 {
    i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX)
}

/// Sleeps one poll interval, or fails once `timeout` has passed since `started`.
fn wait_a_little(started: Instant, timeout: Duration, what: &str) -> Result<(), ClientError> {
    if started.elapsed() >= timeout {
        return Err(ClientError::Timeout {
            what: what.to_owned(),
            waited: started.elapsed(),
        });
    }
    std::thread::sleep(POLL_INTERVAL);
    Ok(())
}
