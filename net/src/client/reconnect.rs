//! Finding a partition set's leader again after its connection broke or the broker said it
//! no longer leads (NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION): fresh metadata from
//! the bootstrap servers, then a connection to the leader, retried with exponential backoff
//! until a deadline, as librdkafka does; past it, one error that says what was tried.
//!
//! A connection carries the partitions of one leader. If they turn out to be led by
//! different brokers now, the caller's connection cannot follow them all: that is an error
//! too (the tools deal partitions to connections by leader once, at the start).
//!
//! `Backoff` paces any such recovery; the group member uses it to find its coordinator again.

use std::time::{Duration, Instant};

use super::cluster::{Cluster, ClusterInfo};
use super::connection::Connection;
use super::error::{ClientError, RetryLimit};

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

/// Paces the attempts of one recovery: a pause before each (from `policy.backoff`, doubled
/// after each failure up to 1 s), and an end `policy.deadline` after the first.
pub struct Backoff {
    policy: ReconnectPolicy,
    what: String,
    started: Instant,
    pause: Duration,
    attempts: u32,
}

impl Backoff {
    /// `what` names what is being re-established, for the error when it never is.
    pub fn new(policy: ReconnectPolicy, what: String) -> Self {
        Self {
            policy,
            what,
            started: Instant::now(),
            pause: policy.backoff,
            attempts: 0,
        }
    }

    /// Waits before the next attempt.
    pub async fn pause(&mut self) {
        glommio::timer::sleep(self.pause).await;
    }

    /// After a failed attempt: `Ok` to try again (with a longer pause), or, past the
    /// deadline, the error that says what was tried, the deadline and the last failure.
    pub fn failed(&mut self, last: &ClientError) -> Result<(), ClientError> {
        self.attempts += 1;
        if self.started.elapsed() >= self.policy.deadline {
            return Err(ClientError::GaveUp {
                what: self.what.clone(),
                attempts: self.attempts,
                waited_ms: millis(self.started.elapsed()),
                limit: RetryLimit::Time {
                    ms: millis(self.policy.deadline),
                },
                last: last.to_string(),
            });
        }
        self.pause = (self.pause * 2).min(BACKOFF_MAX);
        Ok(())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Runs `attempt` until it succeeds or fails with an error `retriable` does not accept;
/// after a retriable failure it waits (the policy's backoff) and tries again, until the
/// policy's deadline, past which the last failure is reported with that deadline.
pub async fn retry<T>(
    policy: ReconnectPolicy,
    what: impl Fn() -> String,
    retriable: impl Fn(&ClientError) -> bool,
    mut attempt: impl AsyncFnMut() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let mut backoff: Option<Backoff> = None;
    loop {
        let error = match attempt().await {
            Err(error) if retriable(&error) => error,
            outcome => return outcome,
        };
        let backoff = backoff.get_or_insert_with(|| Backoff::new(policy, what()));
        backoff.failed(&error)?;
        backoff.pause().await;
    }
}

/// A connection to the current leader of `partitions` of `topic`, and that leader's node id.
pub async fn reconnect_to_leader(
    cluster: &ClusterInfo,
    topic: &str,
    partitions: &[i32],
    policy: ReconnectPolicy,
    why: &str,
) -> Result<(i32, Connection), ClientError> {
    let mut backoff = Backoff::new(
        policy,
        format!("no usable leader for topic {topic} partitions {partitions:?} ({why})"),
    );
    loop {
        backoff.pause().await;
        match try_once(cluster, topic, partitions).await {
            Ok(found) => return Ok(found),
            Err(error @ ClientError::Topic { .. }) => return Err(error),
            Err(error) => backoff.failed(&error)?,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_second_and_ends_at_the_deadline() {
        let policy = ReconnectPolicy {
            backoff: Duration::from_millis(300),
            deadline: Duration::from_secs(3600),
        };
        let mut backoff = Backoff::new(policy, "x".to_owned());
        let pauses: Vec<Duration> = (0..3)
            .map(|_| {
                backoff
                    .failed(&ClientError::Closed)
                    .expect("within the deadline");
                backoff.pause
            })
            .collect();
        assert_eq!(
            pauses,
            [600, 1000, 1000].map(Duration::from_millis).to_vec()
        );
        let mut expired = Backoff::new(
            ReconnectPolicy {
                deadline: Duration::ZERO,
                ..policy
            },
            "the coordinator of g".to_owned(),
        );
        expired.attempts = 4;
        let error = expired.failed(&ClientError::Closed).expect_err("past it");
        let text = error.to_string();
        assert!(
            text.starts_with("the coordinator of g: gave up after 5 attempts"),
            "{text}"
        );
        assert!(text.contains("(the limit is 0 ms)"), "{text}");
        assert!(text.ends_with("the broker closed the connection"), "{text}");
    }

    /// Runs the future `make` makes on a fresh executor of its own.
    fn on_executor<T, F, G>(make: G) -> T
    where
        G: FnOnce() -> F + Send + 'static,
        F: std::future::Future<Output = T> + 'static,
        T: Send + 'static,
    {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(make)
            .expect("executor")
            .join()
            .expect("test task")
    }

    fn coordinator_not_available() -> ClientError {
        ClientError::Kafka {
            what: "FindCoordinator g".to_owned(),
            code: 15,
        }
    }

    /// A 1-ms first pause, so that a test spends its time on the deadline.
    fn quick_retries(deadline: Duration) -> ReconnectPolicy {
        ReconnectPolicy {
            backoff: Duration::from_millis(1),
            deadline,
        }
    }

    #[test]
    fn retry_reports_the_deadline_that_expired() {
        let policy = quick_retries(Duration::from_millis(30));
        let (error, attempts) = on_executor(move || async move {
            let mut attempts = 0_u32;
            let outcome: Result<(), ClientError> = retry(
                policy,
                || "FindCoordinator g".to_owned(),
                |_| true,
                async || {
                    attempts += 1;
                    Err(coordinator_not_available())
                },
            )
            .await;
            (outcome.expect_err("never succeeds").to_string(), attempts)
        });
        assert!(attempts > 2, "{attempts} attempts");
        let start = format!("FindCoordinator g: gave up after {attempts} attempts in ");
        assert!(error.starts_with(&start), "{error}");
        assert!(error.contains("(the limit is 30 ms)"), "{error}");
        assert!(error.ends_with("(15)"), "{error}");
    }

    #[test]
    fn retry_stops_at_success_or_at_an_error_it_does_not_retry() {
        let policy = quick_retries(Duration::from_secs(60));
        let (succeeded, refused) = on_executor(move || async move {
            let mut failures_left = 2;
            let succeeded = retry(
                policy,
                String::new,
                |_| true,
                async || {
                    if failures_left == 0 {
                        return Ok("found");
                    }
                    failures_left -= 1;
                    Err(coordinator_not_available())
                },
            )
            .await;
            let mut attempts = 0;
            let refused: Result<(), _> = retry(
                policy,
                String::new,
                |_| false,
                async || {
                    attempts += 1;
                    Err(ClientError::Closed)
                },
            )
            .await;
            (
                succeeded.expect("third attempt"),
                (refused.is_err(), attempts),
            )
        });
        assert_eq!(succeeded, "found");
        assert_eq!(refused, (true, 1));
    }
}
