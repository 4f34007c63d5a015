//! The classic consumer-group protocol, for one member subscribed to one topic.
//!
//! FindCoordinator, then JoinGroup (again with the member id the broker hands out, for
//! versions that require one); the member the coordinator names leader runs the range
//! assignor over every member's subscription and hands the result to SyncGroup. Heartbeats
//! keep the membership; OffsetFetch and OffsetCommit read and store positions; LeaveGroup ends
//! it. When the coordinator goes away (its connection breaks, or it answers NOT_COORDINATOR or
//! COORDINATOR_NOT_AVAILABLE: `is_coordinator_lost`), `find_coordinator_again` asks the
//! bootstrap servers where it is now; the caller then joins again. Subscriptions and assignments are `kafka-protocol`'s consumer-protocol messages, written
//! at version 0 and read at the version the writer put in front (other members may be Java
//! or librdkafka consumers writing later versions):
//!
//! ```text
//! subscription: version i16 | topics [string] | user_data bytes (null)
//! assignment:   version i16 | [topic string | partitions [i32]] | user_data bytes (null)
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, FindCoordinatorRequest, GroupId,
    HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, OffsetCommitRequest, OffsetFetchRequest,
    SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};

use std::time::Instant;

use super::cluster::{is_retriable_kafka_error, Cluster, ClusterInfo, RETRIABLE_RETRY};
use super::connection::Connection;
use super::error::{check_code, error_name, is_retriable_code, ClientError, RetryLimit};
use super::reconnect::{is_connection_error, retry};

/// MEMBER_ID_REQUIRED: JoinGroup v4+ answers a first join with the member id to use.
const MEMBER_ID_REQUIRED: i16 = 79;
/// REBALANCE_IN_PROGRESS, as a Heartbeat answer: the member must join again.
pub const REBALANCE_IN_PROGRESS: i16 = 27;
/// ILLEGAL_GENERATION: the group moved on to a generation this member has not joined.
pub const ILLEGAL_GENERATION: i16 = 22;
/// UNKNOWN_MEMBER_ID: the coordinator forgot the member (session expired); join afresh.
pub const UNKNOWN_MEMBER_ID: i16 = 25;
/// COORDINATOR_LOAD_IN_PROGRESS: the coordinator is still reading the group's offsets.
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
/// COORDINATOR_NOT_AVAILABLE: no coordinator for the group right now.
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
/// NOT_COORDINATOR: this broker does not coordinate the group (any more).
pub const NOT_COORDINATOR: i16 = 16;
/// The assignor this member offers.
const RANGE: &str = "range";
/// Attempts at a coordinator request that keeps failing with retriable errors.
const ATTEMPTS_MAX: u32 = 50;

/// Whether a coordinator error code means the member must find its coordinator again.
/// COORDINATOR_LOAD_IN_PROGRESS counts: the coordinator was just (re)started, so the member
/// it knew is gone with its memory.
pub fn is_coordinator_code(code: i16) -> bool {
    matches!(
        code,
        COORDINATOR_LOAD_IN_PROGRESS | COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR
    )
}

/// Whether an error from a coordinator request means the coordinator is lost: the connection
/// broke (or a request went unanswered) or the broker no longer coordinates the group.
pub fn is_coordinator_lost(error: &ClientError) -> bool {
    match error {
        ClientError::Kafka { code, .. } => is_coordinator_code(*code),
        other => is_connection_error(other),
    }
}

/// How the member joins.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub group: String,
    pub topic: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
}

/// A joined member: its coordinator connection, generation and assignment.
pub struct GroupMember {
    connection: Connection,
    /// The bootstrap servers and API versions, for finding the coordinator again.
    cluster: ClusterInfo,
    settings: GroupSettings,
    pub member_id: String,
    pub generation_id: i32,
    pub assignment: Vec<i32>,
    /// What this member, as leader, hands out in its next SyncGroup.
    pending_assignments: Vec<SyncGroupRequestAssignment>,
}

/// The consumer protocol version this member writes: v0, topics and user data only.
const CONSUMER_PROTOCOL_VERSION: i16 = 0;

/// `message` behind the consumer protocol's version prefix.
fn encode_consumer_protocol<M: Encodable>(
    message: &M,
    what: &'static str,
) -> Result<Bytes, ClientError> {
    let mut out = BytesMut::new();
    out.put_i16(CONSUMER_PROTOCOL_VERSION);
    message
        .encode(&mut out, CONSUMER_PROTOCOL_VERSION)
        .map_err(|e| ClientError::Encode {
            api: what,
            version: CONSUMER_PROTOCOL_VERSION,
            reason: e.to_string(),
        })?;
    Ok(out.freeze())
}

/// Reads the version prefix, then the message. A version above what `kafka-protocol` knows
/// is read as its highest: later versions of the consumer protocol only append fields.
fn decode_consumer_protocol<M: Decodable + Message>(
    mut data: Bytes,
    what: &'static str,
) -> Result<M, ClientError> {
    let bad = |reason: String| ClientError::Decode { what, reason };
    if data.remaining() < 2 {
        return Err(bad("truncated".to_owned()));
    }
    let version = data.get_i16().clamp(M::VERSIONS.min, M::VERSIONS.max);
    M::decode(&mut data, version).map_err(|e| bad(e.to_string()))
}

/// The consumer protocol's subscription to one topic.
pub fn encode_subscription(topic: &str) -> Result<Bytes, ClientError> {
    let subscription = ConsumerProtocolSubscription::default().with_topics(vec![str_bytes(topic)]);
    encode_consumer_protocol(&subscription, "consumer subscription")
}

/// The topics of a consumer-protocol subscription.
pub fn decode_subscription(data: Bytes) -> Result<Vec<String>, ClientError> {
    let subscription: ConsumerProtocolSubscription =
        decode_consumer_protocol(data, "consumer subscription")?;
    Ok(subscription
        .topics
        .iter()
        .map(ToString::to_string)
        .collect())
}

/// The consumer protocol's assignment of partitions of one topic.
pub fn encode_assignment(topic: &str, partitions: &[i32]) -> Result<Bytes, ClientError> {
    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
        TopicPartition::default()
            .with_topic(TopicName(str_bytes(topic)))
            .with_partitions(partitions.to_vec()),
    ]);
    encode_consumer_protocol(&assignment, "consumer assignment")
}

/// The partitions of `topic` in a consumer-protocol assignment (empty for an empty one).
pub fn decode_assignment(data: Bytes, topic: &str) -> Result<Vec<i32>, ClientError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let assignment: ConsumerProtocolAssignment =
        decode_consumer_protocol(data, "consumer assignment")?;
    Ok(assignment
        .assigned_partitions
        .into_iter()
        .filter(|assigned| assigned.topic.as_str() == topic)
        .flat_map(|assigned| assigned.partitions)
        .collect())
}

/// Kafka's range assignor for one topic: members sorted by id, each a run of consecutive
/// partitions, the first `partitions mod members` one more.
pub fn range_assign(members: &[String], partition_count: i32) -> BTreeMap<String, Vec<i32>> {
    let mut sorted: Vec<&String> = members.iter().collect();
    sorted.sort();
    let count = sorted.len().max(1) as i32;
    let (each, extra) = (partition_count / count, partition_count % count);
    let mut next = 0;
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, member)| {
            let take = each + i32::from((i as i32) < extra);
            let assigned = (next..next + take).collect();
            next += take;
            (member.clone(), assigned)
        })
        .collect()
}

fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

impl GroupMember {
    /// Finds the coordinator, joins and syncs; returns the member with its assignment.
    pub async fn join(
        cluster: &mut Cluster,
        settings: GroupSettings,
        partition_count: i32,
    ) -> Result<Self, ClientError> {
        let address = find_coordinator(cluster, &settings.group).await?;
        let connection = Connection::connect(&address, &cluster.info().client_id).await?;
        let mut member = Self {
            connection,
            cluster: cluster.info().clone(),
            settings,
            member_id: String::new(),
            generation_id: -1,
            assignment: Vec::new(),
            pending_assignments: Vec::new(),
        };
        member.rejoin(partition_count).await?;
        Ok(member)
    }

    /// One attempt at reaching the coordinator again, from the bootstrap servers (the broker
    /// that coordinated the group may have restarted or moved it); the membership stays as
    /// it was, for the caller to rejoin. The caller paces the attempts.
    pub async fn find_coordinator_again(&mut self) -> Result<(), ClientError> {
        let mut cluster =
            Cluster::connect(&self.cluster.bootstrap, &self.cluster.client_id).await?;
        let address = find_coordinator_once(&mut cluster, &self.settings.group).await?;
        self.connection = Connection::connect(&address, &self.cluster.client_id).await?;
        // A restarted broker may speak other versions.
        self.cluster.versions = cluster.info().versions.clone();
        Ok(())
    }

    /// JoinGroup and SyncGroup (again, after a rebalance). A SyncGroup refused because yet
    /// another rebalance began (or the member was forgotten) joins again, a bounded number of
    /// times.
    pub async fn rejoin(&mut self, partition_count: i32) -> Result<(), ClientError> {
        let started = Instant::now();
        let mut last = 0;
        for _ in 0..ATTEMPTS_MAX {
            self.join_once(partition_count).await?;
            last = self.sync().await?;
            match last {
                0 => return Ok(()),
                REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION => continue,
                UNKNOWN_MEMBER_ID => self.member_id.clear(),
                code => check_code(code, || format!("SyncGroup {}", self.settings.group))?,
            }
        }
        Err(ClientError::GaveUp {
            what: format!(
                "joining group {} (SyncGroup kept refusing)",
                self.settings.group
            ),
            attempts: ATTEMPTS_MAX,
            waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            limit: RetryLimit::Attempts(ATTEMPTS_MAX),
            last: error_name(last),
        })
    }

    /// JoinGroup until the coordinator answers with a generation; the assignments to hand
    /// out when this member leads, kept for `sync`.
    async fn join_once(&mut self, partition_count: i32) -> Result<(), ClientError> {
        let version = self.cluster.versions.pick::<JoinGroupRequest>(7)?;
        let subscription = encode_subscription(&self.settings.topic)?;
        let mut attempts = 0;
        let response = loop {
            let request = JoinGroupRequest::default()
                .with_group_id(GroupId(str_bytes(&self.settings.group)))
                .with_session_timeout_ms(self.settings.session_timeout_ms)
                .with_rebalance_timeout_ms(self.settings.rebalance_timeout_ms)
                .with_member_id(str_bytes(&self.member_id))
                .with_protocol_type(str_bytes("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(str_bytes(RANGE))
                    .with_metadata(subscription.clone())]);
            let response = self.connection.call(&request, version).await?;
            attempts += 1;
            if response.error_code == MEMBER_ID_REQUIRED && attempts < ATTEMPTS_MAX {
                self.member_id = response.member_id.to_string();
                continue;
            }
            if response.error_code == UNKNOWN_MEMBER_ID && attempts < ATTEMPTS_MAX {
                self.member_id.clear();
                continue;
            }
            // Asking this broker again cannot help: the caller finds the coordinator again.
            let lost = matches!(
                response.error_code,
                NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE
            );
            if !lost && is_retriable_code(response.error_code) && attempts < ATTEMPTS_MAX {
                glommio::timer::sleep(Duration::from_millis(100)).await;
                continue;
            }
            check_code(response.error_code, || {
                format!("JoinGroup {}", self.settings.group)
            })?;
            break response;
        };
        self.member_id = response.member_id.to_string();
        self.generation_id = response.generation_id;
        self.pending_assignments = if response.leader == response.member_id {
            self.assign(&response.members, partition_count)?
        } else {
            Vec::new()
        };
        Ok(())
    }

    /// SyncGroup: hands out the leader's assignments, takes this member's. Returns the error
    /// code (0: `assignment` is set).
    async fn sync(&mut self) -> Result<i16, ClientError> {
        let version = self.cluster.versions.pick::<SyncGroupRequest>(5)?;
        let request = SyncGroupRequest::default()
            .with_group_id(GroupId(str_bytes(&self.settings.group)))
            .with_generation_id(self.generation_id)
            .with_member_id(str_bytes(&self.member_id))
            .with_protocol_type(Some(str_bytes("consumer")))
            .with_protocol_name(Some(str_bytes(RANGE)))
            .with_assignments(std::mem::take(&mut self.pending_assignments));
        let response = self.connection.call(&request, version).await?;
        if response.error_code == 0 {
            self.assignment = decode_assignment(response.assignment, &self.settings.topic)?;
        }
        Ok(response.error_code)
    }

    fn assign(
        &self,
        members: &[kafka_protocol::messages::join_group_response::JoinGroupResponseMember],
        partition_count: i32,
    ) -> Result<Vec<SyncGroupRequestAssignment>, ClientError> {
        let mut subscribed = Vec::new();
        for member in members {
            if decode_subscription(member.metadata.clone())?.contains(&self.settings.topic) {
                subscribed.push(member.member_id.to_string());
            }
        }
        let plan = range_assign(&subscribed, partition_count);
        members
            .iter()
            .map(|member| {
                let partitions = plan
                    .get(member.member_id.as_str())
                    .map_or(&[][..], Vec::as_slice);
                Ok(SyncGroupRequestAssignment::default()
                    .with_member_id(member.member_id.clone())
                    .with_assignment(encode_assignment(&self.settings.topic, partitions)?))
            })
            .collect()
    }

    /// One heartbeat; the error code (REBALANCE_IN_PROGRESS means join again).
    pub async fn heartbeat(&mut self) -> Result<i16, ClientError> {
        let version = self.cluster.versions.pick::<HeartbeatRequest>(4)?;
        let request = HeartbeatRequest::default()
            .with_group_id(GroupId(str_bytes(&self.settings.group)))
            .with_generation_id(self.generation_id)
            .with_member_id(str_bytes(&self.member_id));
        Ok(self.connection.call(&request, version).await?.error_code)
    }

    /// The committed offset of each assigned partition (-1 when none).
    pub async fn committed(&mut self) -> Result<BTreeMap<i32, i64>, ClientError> {
        let version = self.cluster.versions.pick::<OffsetFetchRequest>(7)?;
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(str_bytes(&self.settings.group)))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(str_bytes(&self.settings.topic)))
                .with_partition_indexes(self.assignment.clone())]));
        let response = self.connection.call(&request, version).await?;
        check_code(response.error_code, || {
            format!("OffsetFetch {}", self.settings.group)
        })?;
        let mut offsets = BTreeMap::new();
        for topic in &response.topics {
            for partition in &topic.partitions {
                check_code(partition.error_code, || {
                    format!("OffsetFetch partition {}", partition.partition_index)
                })?;
                offsets.insert(partition.partition_index, partition.committed_offset);
            }
        }
        Ok(offsets)
    }

    /// Commits the next offset to read of each partition, as this member of its generation.
    pub async fn commit(&mut self, offsets: &BTreeMap<i32, i64>) -> Result<(), ClientError> {
        let (generation_id, member_id) = (self.generation_id, self.member_id.clone());
        self.commit_as(offsets, generation_id, &member_id).await
    }

    /// Commits as no member (generation -1): what a coordinator that lost the group's
    /// membership (a restarted broker) accepts while the group is empty, as it does from
    /// consumers that assign partitions themselves.
    pub async fn commit_without_membership(
        &mut self,
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<(), ClientError> {
        self.commit_as(offsets, -1, "").await
    }

    async fn commit_as(
        &mut self,
        offsets: &BTreeMap<i32, i64>,
        generation_id: i32,
        member_id: &str,
    ) -> Result<(), ClientError> {
        let version = self.cluster.versions.pick::<OffsetCommitRequest>(8)?;
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(str_bytes(&self.settings.group)))
            .with_generation_id_or_member_epoch(generation_id)
            .with_member_id(str_bytes(member_id))
            .with_retention_time_ms(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(str_bytes(&self.settings.topic)))
                .with_partitions(
                    offsets
                        .iter()
                        .map(|(&partition, &offset)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(partition)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(-1)
                        })
                        .collect(),
                )]);
        let response = self.connection.call(&request, version).await?;
        for topic in &response.topics {
            for partition in &topic.partitions {
                check_code(partition.error_code, || {
                    format!("OffsetCommit partition {}", partition.partition_index)
                })?;
            }
        }
        Ok(())
    }

    /// Leaves the group, so that the others rebalance at once instead of after the session
    /// timeout.
    pub async fn leave(&mut self) -> Result<(), ClientError> {
        let version = self.cluster.versions.pick::<LeaveGroupRequest>(4)?;
        let mut request =
            LeaveGroupRequest::default().with_group_id(GroupId(str_bytes(&self.settings.group)));
        if version >= 3 {
            request = request.with_members(vec![
                MemberIdentity::default().with_member_id(str_bytes(&self.member_id))
            ]);
        } else {
            request = request.with_member_id(str_bytes(&self.member_id));
        }
        let response = self.connection.call(&request, version).await?;
        check_code(response.error_code, || {
            format!("LeaveGroup {}", self.settings.group)
        })
    }
}

/// The coordinator's `host:port`, asked once.
async fn find_coordinator_once(cluster: &mut Cluster, group: &str) -> Result<String, ClientError> {
    let version = cluster.info().versions.pick::<FindCoordinatorRequest>(3)?;
    let request = FindCoordinatorRequest::default()
        .with_key(str_bytes(group))
        .with_key_type(0);
    let response = cluster.connection().call(&request, version).await?;
    check_code(response.error_code, || format!("FindCoordinator {group}"))?;
    Ok(format!("{}:{}", response.host.as_str(), response.port))
}

/// The coordinator's `host:port`, asked again while the answer is a retriable error (no
/// coordinator yet), for a few seconds.
async fn find_coordinator(cluster: &mut Cluster, group: &str) -> Result<String, ClientError> {
    retry(
        RETRIABLE_RETRY,
        || format!("FindCoordinator {group}"),
        is_retriable_kafka_error,
        async || find_coordinator_once(cluster, group).await,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_or_a_moved_coordinator_is_a_lost_coordinator() {
        let kafka = |code| ClientError::Kafka {
            what: "Heartbeat".to_owned(),
            code,
        };
        for lost in [
            ClientError::Closed,
            ClientError::Io(std::io::ErrorKind::BrokenPipe.into()),
            kafka(NOT_COORDINATOR),
            kafka(COORDINATOR_NOT_AVAILABLE),
            kafka(COORDINATOR_LOAD_IN_PROGRESS),
        ] {
            assert!(is_coordinator_lost(&lost), "{lost}");
        }
        for other in [
            kafka(UNKNOWN_MEMBER_ID),
            kafka(REBALANCE_IN_PROGRESS),
            ClientError::Decode {
                what: "x",
                reason: "y".to_owned(),
            },
        ] {
            assert!(!is_coordinator_lost(&other), "{other}");
        }
    }

    #[test]
    fn range_assignment_gives_runs_and_the_extra_to_the_first() {
        let members = vec!["b".to_owned(), "a".to_owned(), "c".to_owned()];
        let plan = range_assign(&members, 8);
        assert_eq!(plan["a"], vec![0, 1, 2]);
        assert_eq!(plan["b"], vec![3, 4, 5]);
        assert_eq!(plan["c"], vec![6, 7]);
        let plan = range_assign(&members[..1], 2);
        assert_eq!(plan["b"], vec![0, 1]);
    }

    #[test]
    fn subscriptions_and_assignments_round_trip() {
        assert_eq!(
            decode_subscription(encode_subscription("t").expect("encode")).expect("sub"),
            vec!["t"]
        );
        let assignment = encode_assignment("t", &[2, 5]).expect("encode");
        assert_eq!(
            decode_assignment(assignment.clone(), "t").expect("mine"),
            vec![2, 5]
        );
        assert!(decode_assignment(assignment.clone(), "other")
            .expect("none")
            .is_empty());
        assert!(decode_assignment(Bytes::new(), "t")
            .expect("empty")
            .is_empty());
        assert!(decode_assignment(assignment.slice(..9), "t").is_err());
    }
}
