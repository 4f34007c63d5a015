//! The blocking Kafka client for tools: kafka-protocol codecs over a `std` TCP stream, one
//! request in flight per connection. `ringlog groups` and the `ringlog-bench` harness use it
//! for admin work (metadata, topics, groups, offsets) against any Kafka-compatible broker,
//! ringlog or not.
//!
//! It is not for the data path: it blocks the calling thread on every request (the glommio
//! client in the modules beside it is for that). It shares their wire code (`wire`: framing
//! and the response size limit, request headers, response decoding with its correlation
//! check, ApiVersions negotiation) and their error type (`ClientError`); only the socket
//! reads and writes are its own. Requests go to the right node: group requests to the group's
//! coordinator (FindCoordinator), ListOffsets to each partition's leader (Metadata), topic
//! creation and deletion to the controller the metadata names (brokers that forward admin
//! requests accept them anywhere).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    ApiVersionsRequest, CreateTopicsRequest, DeleteTopicsRequest, FindCoordinatorRequest, GroupId,
    MetadataRequest, MetadataResponse, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::ResponseError;

use super::cluster::{collect_offsets, list_offsets_requests};
use super::connection::CONTROL_TIMEOUT;
use super::error::{check_code, ClientError};
use super::wire::{
    api_name, decode_response, encode_request, request_what, topic_name, ApiVersions, FrameBuffer,
    API_VERSIONS_VERSION,
};

/// Pause between polls while waiting for the cluster to converge (topics created or gone).
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// One connection to one broker node.
pub struct Connection {
    address: String,
    stream: TcpStream,
    frames: FrameBuffer,
    client_id: &'static str,
    next_correlation_id: i32,
    /// The versions the broker supports, from ApiVersions (asked on first need).
    versions: Option<ApiVersions>,
}

impl Connection {
    pub fn open(address: &str, client_id: &'static str) -> Result<Self, ClientError> {
        let connect_error = |source| ClientError::Connect {
            address: address.to_owned(),
            source,
        };
        let stream = TcpStream::connect(address).map_err(connect_error)?;
        stream
            .set_read_timeout(Some(CONTROL_TIMEOUT))
            .map_err(connect_error)?;
        stream
            .set_write_timeout(Some(CONTROL_TIMEOUT))
            .map_err(connect_error)?;
        // Admin requests are small and strictly request-response: do not let Nagle hold them.
        stream.set_nodelay(true).map_err(connect_error)?;
        Ok(Self {
            address: address.to_owned(),
            stream,
            frames: FrameBuffer::default(),
            client_id,
            next_correlation_id: 1,
            versions: None,
        })
    }

    /// Sends `request` at `version` and reads its answer; a socket that stays silent for
    /// `CONTROL_TIMEOUT` either way is a `Timeout`.
    pub fn call<Req: Request>(
        &mut self,
        version: i16,
        request: &Req,
    ) -> Result<Req::Response, ClientError> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let frame = encode_request(request, version, correlation_id, self.client_id)?;
        let payload = self.exchange(&frame).map_err(|error| match error {
            ClientError::Io(error)
                if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                ClientError::timeout(request_what::<Req>(version, &self.address), CONTROL_TIMEOUT)
            }
            other => other,
        })?;
        decode_response::<Req>(payload, version, correlation_id)
    }

    /// Writes a request frame and reads the next whole frame back.
    fn exchange(&mut self, frame: &[u8]) -> Result<Bytes, ClientError> {
        self.stream.write_all(frame)?;
        loop {
            if let Some(payload) = self.frames.next_frame()? {
                return Ok(payload);
            }
            let read = self.stream.read(self.frames.read_space());
            self.frames.filled(read)?;
        }
    }

    /// The highest version of `Req` that both this client (`ours`) and the broker speak.
    pub fn version<Req: Request>(&mut self, ours: RangeInclusive<i16>) -> Result<i16, ClientError> {
        let versions = match self.versions.take() {
            Some(versions) => versions,
            None => {
                let response = self.call(API_VERSIONS_VERSION, &ApiVersionsRequest::default())?;
                ApiVersions::from_response(&response, &self.address)?
            }
        };
        let versions = self.versions.insert(versions);
        versions.pick_key(Req::KEY, api_name::<Req>(), ours)
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
        match self.connections.entry(node) {
            Entry::Occupied(connection) => Ok(connection.into_mut()),
            Entry::Vacant(entry) => {
                let address = self
                    .nodes
                    .get(&node)
                    .ok_or(ClientError::UnknownNode { node })?;
                Ok(entry.insert(Connection::open(address, self.client_id)?))
            }
        }
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
        check_code(response.error_code, || {
            format!("FindCoordinator for group {group}")
        })?;
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
        let found = response.topics.first().ok_or_else(|| ClientError::Topic {
            topic: topic.to_owned(),
            reason: "not in the Metadata answer".to_owned(),
        })?;
        check_code(found.error_code, || format!("Metadata for topic {topic}"))?;
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
        let leaders = self.leaders(topic)?;
        let mut offsets = BTreeMap::new();
        for (leader, request) in list_offsets_requests(topic, leaders, timestamp) {
            let response = self.node(leader)?.call(7, &request)?;
            collect_offsets(topic, &response, &mut offsets)?;
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
        check_code(response.error_code, || {
            format!("OffsetFetch for group {group}")
        })?;
        let mut committed = BTreeMap::new();
        for topic in response.topics {
            for p in topic.partitions {
                check_code(p.error_code, || {
                    format!("OffsetFetch {}-{}", topic.name.as_str(), p.partition_index)
                })?;
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
                if result.error_code == ResponseError::TopicAlreadyExists.code() {
                    retry.push(result.name.to_string());
                    continue;
                }
                check_code(result.error_code, || {
                    format!("creating topic {}", result.name.as_str())
                })?;
            }
            pending.retain(|topic| retry.contains(&topic.name));
            if !pending.is_empty() {
                let what = "waiting for an old topic of the same name to go away";
                wait_a_little(started, timeout, what)?;
            }
        }
        let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
        self.wait_for_topics(&names, true, started, timeout)?;
        // A topic that was already there (auto-created by a client's Metadata, say) may have
        // another layout than asked: say so rather than measure the wrong thing.
        for topic in topics {
            let partitions = self.leaders(&topic.name)?.len();
            if partitions != usize::try_from(topic.partitions).unwrap_or(0) {
                return Err(ClientError::Topic {
                    topic: topic.name.clone(),
                    reason: format!(
                        "has {partitions} partitions, {} were asked for",
                        topic.partitions
                    ),
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
            check_code(result.error_code, || format!("deleting topic {name}"))?;
        }
        let answered = format!("DeleteTopics v{version} answered {}", answers.join(", "));
        self.wait_for_topics(names, false, started, timeout)
            .map_err(|error| match error {
                ClientError::Timeout { what, timeout_ms } => ClientError::Timeout {
                    what: format!("{what} ({answered})"),
                    timeout_ms,
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
                "waiting for the new topics' partitions to have leaders"
            } else {
                "waiting for the deleted topics to leave the metadata"
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

/// Sleeps one poll interval, or fails once `timeout` has passed since `started` (`what`:
/// "waiting for ...", the start of the error's message).
fn wait_a_little(started: Instant, timeout: Duration, what: &str) -> Result<(), ClientError> {
    if started.elapsed() >= timeout {
        return Err(ClientError::timeout(what.to_owned(), timeout));
    }
    std::thread::sleep(POLL_INTERVAL);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::ApiVersionsResponse;
    use kafka_protocol::protocol::Encodable;

    use super::*;
    use crate::{RequestPrefix, SIZE_PREFIX_BYTES};

    /// A one-connection broker: answers the first request with ApiVersions v0 offering
    /// CreateTopics v2..=5 only, and the second with a frame of negative size.
    fn fake_broker() -> (String, thread::JoinHandle<Vec<RequestPrefix>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let broker = thread::spawn(move || {
            let (mut socket, _) = listener.accept().expect("accept");
            let mut requests = Vec::new();
            for answer in 0..2 {
                let mut size = [0u8; SIZE_PREFIX_BYTES];
                if socket.read_exact(&mut size).is_err() {
                    break;
                }
                let mut payload = vec![0u8; i32::from_be_bytes(size) as usize];
                socket.read_exact(&mut payload).expect("request");
                let request = RequestPrefix::parse(&payload).expect("header");
                requests.push(request);
                let mut body = BytesMut::new();
                body.put_i32(request.correlation_id);
                ApiVersionsResponse::default()
                    .with_api_keys(vec![ApiVersion::default()
                        .with_api_key(CreateTopicsRequest::KEY)
                        .with_min_version(2)
                        .with_max_version(5)])
                    .encode(&mut body, 0)
                    .expect("encode");
                let size = if answer == 0 { body.len() as i32 } else { -1 };
                socket.write_all(&size.to_be_bytes()).expect("size");
                socket.write_all(&body).expect("answer");
            }
            requests
        });
        (address, broker)
    }

    #[test]
    fn versions_are_negotiated_once_and_bad_frames_are_refused() {
        let (address, broker) = fake_broker();
        let mut connection = Connection::open(&address, "blocking-test").expect("open");
        assert_eq!(
            connection
                .version::<CreateTopicsRequest>(2..=7)
                .expect("v5"),
            5
        );
        let not_offered = connection
            .version::<DeleteTopicsRequest>(1..=5)
            .expect_err("not offered");
        assert!(
            matches!(not_offered, ClientError::Unsupported { broker: None, .. }),
            "{not_offered}"
        );
        let garbled = connection
            .call(API_VERSIONS_VERSION, &ApiVersionsRequest::default())
            .expect_err("negative size");
        assert!(matches!(garbled, ClientError::Decode { .. }), "{garbled}");
        drop(connection);
        let requests = broker.join().expect("broker");
        // ApiVersions at the shared opening version, asked once; ids count from 1.
        let seen: Vec<(i16, i16, i32)> = requests
            .iter()
            .map(|r| (r.api_key, r.api_version, r.correlation_id))
            .collect();
        assert_eq!(
            seen,
            vec![
                (ApiVersionsRequest::KEY, API_VERSIONS_VERSION, 1),
                (ApiVersionsRequest::KEY, API_VERSIONS_VERSION, 2)
            ]
        );
    }
}
