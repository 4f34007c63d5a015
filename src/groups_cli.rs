//! `ringlog groups`: consumer groups seen from outside, like Kafka's kafka-consumer-groups —
//! list them, describe one (members, assignments, committed offset, log end offset and lag per
//! partition), reset its offsets (dry run unless `--execute`), delete one.
//!
//! A small blocking Kafka client (kafka-protocol codecs over a `std` TCP stream): group
//! requests go to the group's coordinator (FindCoordinator), ListOffsets to each partition's
//! leader (Metadata), so it works against any Kafka-compatible broker, not only ringlog.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::{Args as ClapArgs, Subcommand};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    ApiKey, BrokerId, ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse,
    ConsumerProtocolAssignment, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    ListGroupsRequest, ListGroupsResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::ResponseError;

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// A broker to bootstrap from
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    bootstrap_server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every consumer group with its state.
    List,
    /// Members, assignments, committed offsets, log end offsets and lag of a group.
    Describe { group: String },
    /// Move a group's committed offsets (the group must have no members). Prints the plan;
    /// commits it only with --execute.
    ResetOffsets {
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
        #[arg(long, group = "target")]
        to_earliest: bool,
        #[arg(long, group = "target")]
        to_latest: bool,
        #[arg(long, group = "target", value_name = "OFFSET")]
        to_offset: Option<i64>,
        #[arg(long)]
        execute: bool,
    },
    /// Delete a group without members, with its committed offsets.
    Delete { group: String },
}

pub fn run(args: &Args) -> ExitCode {
    match execute(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn execute(args: &Args) -> Result<(), String> {
    let mut cluster = Cluster::connect(&args.bootstrap_server)?;
    match &args.command {
        Command::List => list(&mut cluster),
        Command::Describe { group } => describe(&mut cluster, group),
        Command::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
            execute,
        } => {
            let target = match (to_earliest, to_latest, to_offset) {
                (true, _, _) => Target::Earliest,
                (_, true, _) => Target::Latest,
                (_, _, Some(offset)) => Target::Offset(*offset),
                _ => return Err("say where to: --to-earliest, --to-latest or --to-offset N".into()),
            };
            reset(&mut cluster, group, topic, target, *execute)
        }
        Command::Delete { group } => delete(&mut cluster, group),
    }
}

/// One connection per broker node, opened on first use.
struct Cluster {
    bootstrap: Connection,
    nodes: HashMap<i32, String>,
    connections: HashMap<i32, Connection>,
}

struct Connection {
    stream: TcpStream,
    correlation_id: i32,
}

impl Connection {
    fn open(address: &str) -> Result<Self, String> {
        let stream =
            TcpStream::connect(address).map_err(|e| format!("cannot connect to {address}: {e}"))?;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            stream,
            correlation_id: 0,
        })
    }

    fn call<Req, Resp>(&mut self, api: ApiKey, version: i16, request: &Req) -> Result<Resp, String>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("ringlog-groups")));
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        header
            .encode(&mut frame, Req::header_version(version))
            .and_then(|()| request.encode(&mut frame, version))
            .map_err(|e| format!("encoding {api:?}: {e:#}"))?;
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        self.stream
            .write_all(&frame)
            .map_err(|e| format!("sending {api:?}: {e}"))?;
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .map_err(|e| format!("reading {api:?}: {e}"))?;
        let size = usize::try_from(i32::from_be_bytes(size))
            .map_err(|_| "negative frame size".to_owned())?;
        let mut body = vec![0u8; size];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| format!("reading {api:?}: {e}"))?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, Resp::header_version(version))
            .map_err(|e| format!("decoding {api:?} header: {e:#}"))?;
        if header.correlation_id != self.correlation_id {
            return Err(format!("{api:?}: answer to another request"));
        }
        Resp::decode(&mut body, version).map_err(|e| format!("decoding {api:?}: {e:#}"))
    }
}

impl Cluster {
    fn connect(bootstrap: &str) -> Result<Self, String> {
        let mut bootstrap = Connection::open(bootstrap)?;
        let metadata: MetadataResponse = bootstrap.call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(Some(Vec::new())),
        )?;
        let nodes = metadata
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
            .collect();
        Ok(Self {
            bootstrap,
            nodes,
            connections: HashMap::new(),
        })
    }

    fn node(&mut self, node: i32) -> Result<&mut Connection, String> {
        if !self.connections.contains_key(&node) {
            let address = self
                .nodes
                .get(&node)
                .ok_or(format!("node {node} is not in the cluster metadata"))?;
            let connection = Connection::open(address)?;
            self.connections.insert(node, connection);
        }
        self.connections
            .get_mut(&node)
            .ok_or_else(|| "no connection".to_owned())
    }

    fn coordinator(&mut self, group: &str) -> Result<&mut Connection, String> {
        let node = self.coordinator_node(group)?;
        self.node(node)
    }

    fn coordinator_node(&mut self, group: &str) -> Result<i32, String> {
        let request =
            FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.to_owned()));
        let response: FindCoordinatorResponse =
            self.bootstrap.call(ApiKey::FindCoordinator, 3, &request)?;
        check(response.error_code, "FindCoordinator")?;
        self.nodes
            .entry(response.node_id.0)
            .or_insert_with(|| format!("{}:{}", response.host, response.port));
        Ok(response.node_id.0)
    }

    /// (partition → leader) of `topic`.
    fn leaders(&mut self, topic: &str) -> Result<BTreeMap<i32, i32>, String> {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                TopicName(StrBytes::from_string(topic.to_owned())),
            ))]))
            .with_allow_auto_topic_creation(false);
        let response: MetadataResponse = self.bootstrap.call(ApiKey::Metadata, 12, &request)?;
        let found = response.topics.first().ok_or("no topic in the answer")?;
        check(found.error_code, &format!("topic {topic}"))?;
        Ok(found
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.leader_id.0))
            .collect())
    }

    /// Offsets of `topic`'s partitions at `timestamp` (-1 latest, -2 earliest).
    fn offsets(&mut self, topic: &str, timestamp: i64) -> Result<BTreeMap<i32, i64>, String> {
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for (partition, leader) in self.leaders(topic)? {
            by_leader.entry(leader).or_default().push(partition);
        }
        let mut offsets = BTreeMap::new();
        for (leader, partitions) in by_leader {
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
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
            let response: ListOffsetsResponse =
                self.node(leader)?.call(ApiKey::ListOffsets, 7, &request)?;
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
    fn committed(
        &mut self,
        group: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<BTreeMap<(String, i32), i64>, String> {
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
        let response: OffsetFetchResponse =
            self.coordinator(group)?
                .call(ApiKey::OffsetFetch, 7, &request)?;
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
}

fn check(code: i16, what: &str) -> Result<(), String> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(error) => Err(format!("{what}: {error:?} ({code})")),
    }
}

fn list(cluster: &mut Cluster) -> Result<(), String> {
    let response: ListGroupsResponse =
        cluster
            .bootstrap
            .call(ApiKey::ListGroups, 4, &ListGroupsRequest::default())?;
    check(response.error_code, "ListGroups")?;
    println!("{:<40} {:<20} PROTOCOL-TYPE", "GROUP", "STATE");
    let mut groups = response.groups;
    groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    for group in groups {
        println!(
            "{:<40} {:<20} {}",
            group.group_id.as_str(),
            group.group_state.as_str(),
            group.protocol_type.as_str()
        );
    }
    Ok(())
}

/// Who owns each partition: "member-id host client-id" by (topic, partition).
type Owners = HashMap<(String, i32), String>;

fn owner_label(member_id: &str, host: &str, client_id: &str) -> String {
    format!("{member_id} {host} {client_id}")
}

fn describe(cluster: &mut Cluster, group: &str) -> Result<(), String> {
    let owners = match describe_consumer_group(cluster, group)? {
        Some(owners) => owners,
        None => describe_classic_group(cluster, group)?,
    };
    print_partitions(cluster, group, &owners)
}

/// A group of the new protocol (KIP-848) through ConsumerGroupDescribe; `None` when the group
/// is not one (GROUP_ID_NOT_FOUND) or the broker does not know the API.
fn describe_consumer_group(cluster: &mut Cluster, group: &str) -> Result<Option<Owners>, String> {
    let node = cluster.coordinator_node(group)?;
    let request = ConsumerGroupDescribeRequest::default()
        .with_group_ids(vec![GroupId(StrBytes::from_string(group.to_owned()))]);
    let answer: Result<ConsumerGroupDescribeResponse, String> =
        cluster
            .node(node)?
            .call(ApiKey::ConsumerGroupDescribe, 0, &request);
    let Ok(response) = answer else {
        // A broker without the API closes the connection: open a fresh one for what follows.
        cluster.connections.remove(&node);
        return Ok(None);
    };
    let described = response.groups.first().ok_or("no group in the answer")?;
    if described.error_code == ResponseError::GroupIdNotFound.code() {
        return Ok(None);
    }
    check(described.error_code, "ConsumerGroupDescribe")?;
    let mut owners = Owners::new();
    for member in &described.members {
        let who = owner_label(&member.member_id, &member.client_host, &member.client_id);
        for topic in &member.assignment.topic_partitions {
            for &p in &topic.partitions {
                owners.insert((topic.topic_name.to_string(), p), who.clone());
            }
        }
    }
    println!(
        "group {group}: state {}, protocol consumer (KIP-848), assignor {}, group epoch {}, \
         assignment epoch {}, {} member(s)",
        described.group_state.as_str(),
        described.assignor_name.as_str(),
        described.group_epoch,
        described.assignment_epoch,
        described.members.len()
    );
    Ok(Some(owners))
}

fn describe_classic_group(cluster: &mut Cluster, group: &str) -> Result<Owners, String> {
    let request = DescribeGroupsRequest::default()
        .with_groups(vec![GroupId(StrBytes::from_string(group.to_owned()))]);
    let response: DescribeGroupsResponse =
        cluster
            .coordinator(group)?
            .call(ApiKey::DescribeGroups, 5, &request)?;
    let described = response.groups.first().ok_or("no group in the answer")?;
    check(described.error_code, "DescribeGroups")?;
    // Who owns each partition, from the members' consumer-protocol assignments.
    let mut owners = Owners::new();
    for member in &described.members {
        let who = owner_label(&member.member_id, &member.client_host, &member.client_id);
        let mut bytes = member.member_assignment.clone();
        if bytes.remaining() < 2 {
            continue;
        }
        let version = bytes.get_i16();
        if let Ok(assignment) = ConsumerProtocolAssignment::decode(&mut bytes, version) {
            for topic in assignment.assigned_partitions {
                for p in topic.partitions {
                    owners.insert((topic.topic.to_string(), p), who.clone());
                }
            }
        }
    }
    println!(
        "group {group}: state {}, protocol {} {}, {} member(s)",
        described.group_state.as_str(),
        described.protocol_type.as_str(),
        described.protocol_data.as_str(),
        described.members.len()
    );
    Ok(owners)
}

/// Committed offset, log end offset, lag and owner of every partition the group has a commit
/// for or an owner of.
fn print_partitions(cluster: &mut Cluster, group: &str, owners: &Owners) -> Result<(), String> {
    let committed = cluster.committed(group, None)?;
    let mut topics: Vec<String> = committed.keys().map(|(t, _)| t.clone()).collect();
    topics.extend(owners.keys().map(|(t, _)| t.clone()));
    topics.sort();
    topics.dedup();
    println!(
        "\n{:<30} {:>9} {:>15} {:>15} {:>10}  CONSUMER-ID HOST CLIENT-ID",
        "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"
    );
    for topic in topics {
        let ends = cluster.offsets(&topic, -1)?;
        for (partition, end) in ends {
            let current = committed
                .get(&(topic.clone(), partition))
                .copied()
                .filter(|&o| o >= 0);
            let owner = owners.get(&(topic.clone(), partition));
            if current.is_none() && owner.is_none() {
                continue;
            }
            let lag = current.map_or("-".to_owned(), |c| (end - c).to_string());
            println!(
                "{:<30} {:>9} {:>15} {:>15} {:>10}  {}",
                topic,
                partition,
                current.map_or("-".to_owned(), |c| c.to_string()),
                end,
                lag,
                owner.map_or("-", String::as_str)
            );
        }
    }
    Ok(())
}

enum Target {
    Earliest,
    Latest,
    Offset(i64),
}

fn reset(
    cluster: &mut Cluster,
    group: &str,
    topic: &str,
    target: Target,
    execute: bool,
) -> Result<(), String> {
    let earliest = cluster.offsets(topic, -2)?;
    let latest = cluster.offsets(topic, -1)?;
    let plan: Vec<(i32, i64)> = earliest
        .iter()
        .map(|(&partition, &low)| {
            let high = latest.get(&partition).copied().unwrap_or(low);
            let offset = match target {
                Target::Earliest => low,
                Target::Latest => high,
                Target::Offset(offset) => offset.clamp(low, high),
            };
            (partition, offset)
        })
        .collect();
    println!("{:<30} {:>9} {:>15}", "TOPIC", "PARTITION", "NEW-OFFSET");
    for (partition, offset) in &plan {
        println!("{topic:<30} {partition:>9} {offset:>15}");
    }
    if !execute {
        println!("\n(dry run: add --execute to commit these offsets)");
        return Ok(());
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(
                plan.iter()
                    .map(|&(p, offset)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                    })
                    .collect(),
            )]);
    let response: OffsetCommitResponse =
        cluster
            .coordinator(group)?
            .call(ApiKey::OffsetCommit, 8, &request)?;
    for topic in response.topics {
        for p in topic.partitions {
            check(
                p.error_code,
                &format!(
                    "committing partition {} (a group with members cannot be reset)",
                    p.partition_index
                ),
            )?;
        }
    }
    println!("\ncommitted");
    Ok(())
}

fn delete(cluster: &mut Cluster, group: &str) -> Result<(), String> {
    let request = DeleteGroupsRequest::default()
        .with_groups_names(vec![GroupId(StrBytes::from_string(group.to_owned()))]);
    let response: DeleteGroupsResponse =
        cluster
            .coordinator(group)?
            .call(ApiKey::DeleteGroups, 2, &request)?;
    for result in response.results {
        check(
            result.error_code,
            &format!("deleting {}", result.group_id.as_str()),
        )?;
    }
    println!("deleted group {group}");
    Ok(())
}
