//! Finding a partition set's leader again after its connection broke or the broker said it
//! no longer leads (NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION): fresh metadata from
//! the bootstrap servers, then a connection to the leader, retried with exponential backoff
//! until a deadline, as librdkafka does; past it, one error that says what was tried.
//!
//! A connection carries the partitions of one leader. If they turn out to be led by
//! different brokers now, the caller's connection cannot follow them all: that is an error
//! too (the tools deal partitions to connections by leader once, at the start).

use std::time::{Duration, Instant};

use super::cluster::{Cluster, ClusterInfo};
use super::connection::Connection;
use super::error::ClientError;

/// The longest pause between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Kafka's NOT_LEADER_OR_FOLLOWER and UNKNOWN_TOPIC_OR_PARTITION: the metadata is stale.
pub fn is_stale_metadata_code(code: i16) -> bool {
    matches!(code, 6 | 3)
}

/// Whether an error on a connection is cured by reconnecting (the broker went away, or the
/// connection is in an unknown state after a timeout).
pub fn is_connection_error(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Closed
            | ClientError::Io(_)
            | ClientError::Connect { .. }
            | ClientError::Timeout { .. }
    )
}

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct ReconnectPolicy {
    /// The first pause (doubled after each failed attempt, up to 1 s).
    pub backoff: Duration,
    /// Give up this long after the first attempt.
    pub deadline: Duration,
}

/// A connection to the current leader of `partitions` of `topic`, and that leader's node id.
pub async fn reconnect_to_leader(
    cluster: &ClusterInfo,
    topic: &str,
    partitions: &[i32],
    policy: ReconnectPolicy,
    why: &str,
) -> Result<(i32, Connection), ClientError> {
    let started = Instant::now();
    let mut backoff = policy.backoff;
    let mut attempts = 0_u32;
    loop {
        glommio::timer::sleep(backoff).await;
        attempts += 1;
        let last_error = match try_once(cluster, topic, partitions).await {
            Ok(found) => return Ok(found),
            Err(error @ ClientError::Topic { .. }) => return Err(error),
            Err(error) => error,
        };
        if started.elapsed() >= policy.deadline {
            return Err(ClientError::Reconnect {
                what: format!("topic {topic} partitions {partitions:?} ({why})"),
                attempts,
                waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                last: last_error.to_string(),
            });
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn try_once(
    cluster: &ClusterInfo,
    topic: &str,
    partitions: &[i32],
) -> Result<(i32, Connection), ClientError> {
    let mut fresh = Cluster::connect(&cluster.bootstrap, &cluster.client_id).await?;
    let info = fresh.metadata(topic, false).await?;
    let mut leaders = info
        .partitions
        .iter()
        .filter(|p| partitions.contains(&p.index))
        .map(|p| p.leader);
    let leader = leaders.next().ok_or_else(|| ClientError::Kafka {
        what: format!("Metadata for {topic}: partitions {partitions:?} missing"),
        code: 3,
    })?;
    if leader < 0 {
        return Err(ClientError::Kafka {
            what: format!("Metadata for {topic}: no leader yet"),
            code: 5,
        });
    }
    if let Some(other) = leaders.find(|&l| l != leader) {
        return Err(ClientError::Topic {
            topic: topic.to_owned(),
            reason: format!(
                "partitions {partitions:?} shared one connection but are now led by nodes {leader} and {other}; \
                 this client cannot split a connection's partitions"
            ),
        });
    }
    let address = fresh.info().address(leader)?.to_owned();
    let connection = Connection::connect(&address, &cluster.client_id).await?;
    Ok((leader, connection))
}
