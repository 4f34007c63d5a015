//! The `--group` consumer's member: one executor thread that joins the group, hands each
//! assignment to the reading side (`consumer::run`) and takes back the positions reached.
//!
//! It keeps the membership alive with heartbeats while the shards read. When the
//! coordinator announces a rebalance (a member joined or left), the member revokes the
//! assignment: the shards stop and hand their positions back, the member commits them and
//! joins again, and the shards start over on the new assignment from its committed offsets
//! (the classic eager protocol). When the coordinator is lost (a broker restart: the
//! connection breaks, or NOT_COORDINATOR and the like), the member stops the shards the same
//! way, finds the coordinator again (paced and bounded like the readers' reconnects), joins
//! again — afresh when the coordinator forgot it — commits their positions under the new
//! generation and hands out the new assignment. At the end it commits the final positions
//! and leaves.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringlog_net::client::cluster::{Cluster, TopicInfo};
use ringlog_net::client::error::{check_code, error_name, is_retriable_code};
use ringlog_net::client::fetch::FETCH_VERSION_MAX;
use ringlog_net::client::group::{
    is_coordinator_code, is_coordinator_lost, GroupMember, GroupSettings, ILLEGAL_GENERATION,
    REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID,
};
use ringlog_net::client::reconnect::{Backoff, ReconnectPolicy};
use ringlog_net::client::ClientError;

use super::consumer::{
    millis_since, start_offsets, Assignment, ConsumerConfig, Handback, MemberEvent,
};
use super::fetcher::ReadControl;
use super::shards;

/// How long the coordinator waits for every member to rejoin. Below the client's 30-s limit
/// on a control request, so that a JoinGroup held for a slow member is answered, not
/// abandoned.
const REBALANCE_TIMEOUT_MS: i32 = 25_000;
/// How the member looks for its coordinator again after losing it: as the readers look for
/// their leaders (100 ms doubling to 1 s, for up to 60 s).
const COORDINATOR_RECONNECT: ReconnectPolicy = ReconnectPolicy {
    backoff: Duration::from_millis(100),
    deadline: Duration::from_secs(60),
};

/// Why the member stopped serving an assignment.
enum Served {
    /// The run is over: the positions handed back are the final ones.
    End,
    /// The coordinator announced a rebalance: commit, then join again (with a fresh member
    /// id when the coordinator had forgotten this one).
    Rebalance { forget_member_id: bool },
    /// The coordinator went away (the connection broke, NOT_COORDINATOR, ...): find it
    /// again, join again, then commit.
    CoordinatorLost(String),
}

/// The member's side of one assignment: heartbeats until the run hands the positions back.
/// When the coordinator announces a rebalance or cannot be reached, the reading shards are
/// told to stop (`control.revoke`) and their positions awaited. Returns the positions and
/// what to do next.
async fn serve_assignment(
    member: &mut GroupMember,
    heartbeat_interval: Duration,
    control: &ReadControl,
    handbacks: &mpsc::Receiver<Handback>,
) -> Result<(Handback, Served), ClientError> {
    let mut next_heartbeat = Instant::now() + heartbeat_interval;
    let mut revoked_for = None;
    loop {
        match handbacks.try_recv() {
            Ok(handback) if handback.last => return Ok((handback, Served::End)),
            Ok(handback) => {
                let served = revoked_for.unwrap_or(Served::Rebalance {
                    forget_member_id: false,
                });
                return Ok((handback, served));
            }
            Err(mpsc::TryRecvError::Disconnected) => return Err(ClientError::Closed),
            Err(mpsc::TryRecvError::Empty) => {}
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
        if revoked_for.is_some() || Instant::now() < next_heartbeat {
            continue;
        }
        next_heartbeat = Instant::now() + heartbeat_interval;
        let served = match member.heartbeat().await {
            Ok(0) => continue,
            Ok(REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION) => Served::Rebalance {
                forget_member_id: false,
            },
            Ok(UNKNOWN_MEMBER_ID) => Served::Rebalance {
                forget_member_id: true,
            },
            Ok(code) if is_coordinator_code(code) => Served::CoordinatorLost(error_name(code)),
            Ok(code) if is_retriable_code(code) => continue,
            Ok(code) => {
                check_code(code, || "Heartbeat".to_owned())?;
                continue;
            }
            Err(error) if is_coordinator_lost(&error) => {
                Served::CoordinatorLost(format!("Heartbeat: {error}"))
            }
            Err(error) => return Err(error),
        };
        control.revoke();
        revoked_for = Some(served);
    }
}

/// The group member's state on its thread: the member, the bootstrap connection and the
/// topic's layout (for start offsets).
struct MemberSide {
    member: GroupMember,
    cluster: Cluster,
    topic: TopicInfo,
    fetch_version: i16,
    group: String,
    from_latest: bool,
}

impl MemberSide {
    async fn start(config: &ConsumerConfig, group: String) -> Result<Self, ClientError> {
        let mut cluster = Cluster::connect(&config.bootstrap, &config.client_id).await?;
        let info = cluster.wait_for_topic(&config.topic, false).await?;
        let fetch_version = cluster
            .info()
            .versions
            .pick::<kafka_protocol::messages::FetchRequest>(FETCH_VERSION_MAX)?;
        let settings = GroupSettings {
            group: group.clone(),
            topic: config.topic.clone(),
            session_timeout_ms: config.session_timeout_ms,
            rebalance_timeout_ms: REBALANCE_TIMEOUT_MS,
        };
        let member = GroupMember::join(&mut cluster, settings, info.partition_count()).await?;
        Ok(Self {
            member,
            cluster,
            topic: info,
            fetch_version,
            group,
            from_latest: config.from_latest,
        })
    }

    /// The member's current assignment, each partition from its committed offset.
    async fn assignment(
        &mut self,
        committed: &BTreeMap<i32, i64>,
        join_started: Instant,
    ) -> Result<Assignment, ClientError> {
        let assigned = start_offsets(
            &mut self.cluster,
            &self.topic,
            &self.member.assignment,
            committed,
            self.from_latest,
        )
        .await?;
        Ok(Assignment {
            cluster: self.cluster.info().clone(),
            assigned,
            fetch_version: self.fetch_version,
            generation_id: self.member.generation_id,
            rebalance_ms: millis_since(join_started),
        })
    }

    /// The classic eager rebalance: commit the revoked positions under the old generation,
    /// join again, read the committed offsets. A coordinator lost on the way is found again.
    async fn rebalance(
        &mut self,
        offsets: &BTreeMap<i32, i64>,
        forget_member_id: bool,
    ) -> Result<BTreeMap<i32, i64>, ClientError> {
        eprintln!(
            "ringlog-perf: group {} is rebalancing: partitions {:?} revoked, rejoining",
            self.group, self.member.assignment
        );
        let attempt = async {
            self.commit_or_warn(offsets).await?;
            if forget_member_id {
                self.member.member_id.clear();
            }
            self.member.rejoin(self.topic.partition_count()).await?;
            self.member.committed().await
        };
        match attempt.await {
            Err(error) if is_coordinator_lost(&error) => {
                self.recover(offsets, &error.to_string()).await
            }
            outcome => outcome,
        }
    }

    /// After losing the coordinator: find it again and join again (a restarted coordinator
    /// has forgotten the member, which then joins afresh), commit the positions the readers
    /// handed back under the new generation, and read the committed offsets to go on from.
    /// Paced like the readers' reconnects, and given up after as long.
    async fn recover(
        &mut self,
        offsets: &BTreeMap<i32, i64>,
        why: &str,
    ) -> Result<BTreeMap<i32, i64>, ClientError> {
        eprintln!(
            "ringlog-perf: group {}: lost the coordinator ({why}); finding it again and rejoining",
            self.group
        );
        let mut backoff = Backoff::new(
            COORDINATOR_RECONNECT,
            format!("group {}: no coordinator ({why})", self.group),
        );
        loop {
            backoff.pause().await;
            match self.rejoin_after_loss(offsets).await {
                Ok(committed) => return Ok(committed),
                Err(error) if is_coordinator_lost(&error) => backoff.failed(&error)?,
                Err(error) => return Err(error),
            }
        }
    }

    async fn rejoin_after_loss(
        &mut self,
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<BTreeMap<i32, i64>, ClientError> {
        self.member.find_coordinator_again().await?;
        // The bootstrap connection died with the broker too; the leaders may have moved.
        let info = self.cluster.info();
        self.cluster = Cluster::connect(&info.bootstrap, &info.client_id).await?;
        self.topic = self.cluster.wait_for_topic(&self.topic.name, false).await?;
        self.member.rejoin(self.topic.partition_count()).await?;
        self.commit_or_warn(offsets).await?;
        self.member.committed().await
    }

    /// Commits; a refusal (the generation moved on) is what the protocol allows: the next
    /// owner re-reads from the last committed position. Only a lost coordinator is an error.
    async fn commit_or_warn(&mut self, offsets: &BTreeMap<i32, i64>) -> Result<(), ClientError> {
        if offsets.is_empty() {
            return Ok(());
        }
        match self.member.commit(offsets).await {
            Err(error) if is_coordinator_lost(&error) => Err(error),
            Err(error) => {
                eprintln!(
                    "ringlog-perf: warning: group {}: committing positions failed ({error}); the next owner re-reads from the last commit",
                    self.group
                );
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// The end: commit the final positions and leave. When the coordinator was lost, find
    /// it again; if it has forgotten the member (a restart), commit as no member, which it
    /// takes while the group is empty, and there is nothing left to leave. Leaving only
    /// spares the other members the wait for this one's session to expire, so a failure to
    /// leave is a warning, as in Kafka's consumer.
    async fn finish(&mut self, offsets: &BTreeMap<i32, i64>) -> Result<(), ClientError> {
        let still_member = match self.commit_or_warn(offsets).await {
            Ok(()) => true,
            Err(error) => self.commit_after_loss(offsets, &error.to_string()).await?,
        };
        if still_member {
            if let Err(error) = self.member.leave().await {
                eprintln!(
                    "ringlog-perf: warning: group {}: leaving failed ({error}); the others rebalance once this member's session expires",
                    self.group
                );
            }
        }
        Ok(())
    }

    /// Returns whether the coordinator still knew the member.
    async fn commit_after_loss(
        &mut self,
        offsets: &BTreeMap<i32, i64>,
        why: &str,
    ) -> Result<bool, ClientError> {
        eprintln!(
            "ringlog-perf: group {}: lost the coordinator ({why}) before the final commit; finding it again",
            self.group
        );
        let mut backoff = Backoff::new(
            COORDINATOR_RECONNECT,
            format!(
                "group {}: no coordinator for the final commit ({why})",
                self.group
            ),
        );
        loop {
            backoff.pause().await;
            let attempt = async {
                self.member.find_coordinator_again().await?;
                match self.member.commit(offsets).await {
                    Err(ClientError::Kafka {
                        code: UNKNOWN_MEMBER_ID | ILLEGAL_GENERATION,
                        ..
                    }) => self
                        .member
                        .commit_without_membership(offsets)
                        .await
                        .map(|()| false),
                    outcome => outcome.map(|()| true),
                }
            };
            match attempt.await {
                Ok(still_member) => return Ok(still_member),
                Err(error) if is_coordinator_lost(&error) => backoff.failed(&error)?,
                Err(error) => {
                    eprintln!(
                        "ringlog-perf: warning: group {}: the final commit failed ({error})",
                        self.group
                    );
                    return Ok(false);
                }
            }
        }
    }
}

/// The group member's thread: join, hand each assignment to the reading side, and on a
/// rebalance commit the revoked partitions' positions before joining again (the classic
/// eager protocol: a member owns nothing while the group rebalances, so no partition is read
/// by two members at once); after losing the coordinator, find it and join again, then
/// commit; at the end commit and leave.
pub(super) fn spawn(
    config: &ConsumerConfig,
    group: String,
    started: Instant,
    control: Arc<ReadControl>,
    events: mpsc::Sender<MemberEvent>,
    handbacks: mpsc::Receiver<Handback>,
) -> Result<glommio::ExecutorJoinHandle<()>, String> {
    let config = config.clone();
    shards::spawn_shard("ringlog-perf-group", None, move || async move {
        let member_loop = async {
            let mut side = MemberSide::start(&config, group.clone()).await?;
            let mut committed = match side.member.committed().await {
                Err(error) if is_coordinator_lost(&error) => {
                    side.recover(&BTreeMap::new(), &error.to_string()).await?
                }
                outcome => outcome?,
            };
            let mut join_started = started;
            loop {
                let assignment = side.assignment(&committed, join_started).await?;
                if events.send(MemberEvent::Assigned(assignment)).is_err() {
                    return Ok(());
                }
                let (handback, served) = serve_assignment(
                    &mut side.member,
                    config.heartbeat_interval,
                    &control,
                    &handbacks,
                )
                .await?;
                join_started = Instant::now();
                committed = match served {
                    Served::End => return side.finish(&handback.offsets).await,
                    Served::Rebalance { forget_member_id } => {
                        side.rebalance(&handback.offsets, forget_member_id).await?
                    }
                    Served::CoordinatorLost(why) => side.recover(&handback.offsets, &why).await?,
                };
            }
        }
        .await;
        if let Err(error) = member_loop {
            // The reading side waits for an event or for its shards to stop: give it both.
            control.revoke();
            let _ = events.send(MemberEvent::Failed(format!("group {group}: {error}")));
        }
    })
}
