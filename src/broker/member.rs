//! A broker's membership in a cluster with a controller quorum (`--controller-quorum-voters`
//! with the broker role). It runs on shard 0:
//!
//! - registers the host with the active controller (its node per core, each core's address,
//!   its cores, a random incarnation); a live process with the same node id makes the
//!   controller refuse, and this broker then stops with that reason;
//! - every `heartbeat_interval` (or at once when an admin request committed something), brings
//!   its [`MetadataImage`] up to what the quorum committed, turns it into this host's catalog
//!   ([`catalog::from_image`]) and hands the changes to every shard through the mesh (so they
//!   open the partitions this host keeps and Metadata lists every live broker), then
//!   heartbeats (caught up once it has applied the log up to its own registration, which
//!   unfences it);
//! - makes sure the cluster has the group offsets topic;
//! - when the broker stops, tells the controller first (controlled shutdown), so leadership
//!   moves before the host goes away;
//! - tells the controller whether the previous process stopped cleanly (KIP-966): a clean stop
//!   leaves [`CLEAN_SHUTDOWN_FILE`] in the data directory with its broker epoch, once every
//!   partition is closed; a start takes the file away before registering, so a process killed
//!   or crashed later leaves none, and its replicas, which may have lost their unflushed tail,
//!   leave the eligible leader replicas.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use event_listener::Event;
use kafka_protocol::ResponseError;
use ringlog_cluster::quorum::{Command, CommandError, Reply};
use ringlog_cluster::records::{Endpoint, Registration};
use ringlog_cluster::{HostId, MetadataImage, NewTopic, NodeId};
use ringlog_env::TcpTransport;
use tracing::{debug, error, info, warn};

use super::admin::Apply;
use super::catalog::{self, Catalog};
use super::{groups, Shard};
use crate::controller::driver::QuorumClient;

/// How a broker reaches the quorum and how often it heartbeats.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub host: HostId,
    /// Every voter's controller address.
    pub voters: BTreeMap<HostId, String>,
    pub heartbeat_interval: Duration,
    /// The controller's broker session timeout: how long an earlier process of this host may
    /// still count as alive after it died.
    pub session_timeout: Duration,
}

/// How long one request to a voter may take before the next voter is tried: a commit takes
/// milliseconds, so this only cuts off a voter that hangs.
pub const QUORUM_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The membership's own limit per voter request: a third of the session timeout (at most
/// [`QUORUM_REQUEST_TIMEOUT`]). A voter that hangs (a paused process: its TCP stays open and
/// silent) must not hold the heartbeats back until the new active controller, which started
/// every session afresh when it took over, fences this host.
pub fn member_request_timeout(session_timeout: Duration) -> Duration {
    (session_timeout / 3).clamp(Duration::from_millis(100), QUORUM_REQUEST_TIMEOUT)
}
/// Tries of one command at each wake-up (the loop itself retries at the next one).
const ATTEMPTS: usize = 3;
const RETRY_DELAY: Duration = Duration::from_millis(50);

/// Wakes the member's loop before its next heartbeat (an admin command committed).
#[derive(Default)]
pub struct Wake(Event);

impl Wake {
    pub fn now(&self) {
        self.0.notify(usize::MAX);
    }
}

/// In the data directory after a clean stop: the broker epoch of the process that wrote it.
pub const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";
/// [`Stopping::registered_epoch`] while the process holds no registration.
pub const NO_EPOCH: u64 = u64::MAX;

/// Reads and removes the clean-shutdown file: the broker epoch of the previous process if it
/// stopped cleanly. Removed (and the removal made durable) before this process registers, so
/// a crash of this process is never reported as clean. A file that cannot be removed counts as
/// no file: claiming a clean stop that might be reported again after a crash is the one thing
/// not to do.
pub fn take_clean_shutdown_epoch(data_dir: &Path) -> Option<u64> {
    let path = data_dir.join(CLEAN_SHUTDOWN_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    if let Err(error) = std::fs::remove_file(&path) {
        warn!(path = %path.display(), "cannot remove the clean-shutdown file: {error}");
        return None;
    }
    if let Err(error) = std::fs::File::open(data_dir).and_then(|dir| dir.sync_all()) {
        warn!(path = %path.display(), "cannot sync the removal of the clean-shutdown file: {error}");
        return None;
    }
    text.trim().parse().ok()
}

/// Writes the clean-shutdown file for broker epoch `epoch`, durably (temporary file, sync,
/// rename, directory sync): called once every partition of this process is closed.
pub fn write_clean_shutdown(data_dir: &Path, epoch: u64) -> std::io::Result<()> {
    use std::io::Write;
    let path = data_dir.join(CLEAN_SHUTDOWN_FILE);
    let temporary = data_dir.join(format!("{CLEAN_SHUTDOWN_FILE}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(format!("{epoch}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

fn registration(
    shard: &Shard,
    host: HostId,
    incarnation: u128,
    clean_shutdown_epoch: Option<u64>,
) -> Registration {
    let endpoints = shard
        .nodes()
        .into_iter()
        .map(|(node, host, port)| Endpoint {
            node: NodeId(node),
            host,
            port,
        })
        .collect();
    Registration {
        host,
        incarnation,
        endpoints,
        rack: None,
        cores: u32::try_from(shard.settings.shards).unwrap_or(u32::MAX),
        clean_shutdown_epoch,
    }
}

/// A stop asked of the process, and the membership's answer to it.
pub struct Stopping {
    /// Set when the process is asked to stop (a signal).
    pub asked: Arc<AtomicBool>,
    /// Set by the membership once the controller has moved this host's leaderships away (or
    /// there is nothing to move): the shards may stop serving.
    pub leaders_moved: Arc<AtomicBool>,
    /// The broker epoch this process is registered with ([`NO_EPOCH`]: none), for the
    /// clean-shutdown file written once the shards have closed.
    pub registered_epoch: Arc<AtomicU64>,
}

/// Runs the membership until the broker stops; `Err` is a reason the broker must stop now.
///
/// A stop is a controlled shutdown, as in Kafka: the host tells the controller it is shutting
/// down (which moves its leaderships to other in-sync replicas and takes it out of every ISR),
/// applies the result, and only then lets the shards stop serving, so clients that retry find
/// the new leaders while this host still answers.
pub async fn run(
    shard: Rc<Shard>,
    cluster: ClusterSettings,
    stopping: Stopping,
) -> Result<(), String> {
    let clock = Rc::clone(&shard.env.clock);
    let host = cluster.host;
    let mut client = QuorumClient::new(TcpTransport, cluster.voters.clone()).with_timeout(
        Rc::clone(&clock),
        member_request_timeout(cluster.session_timeout),
    );
    let clean_shutdown_epoch = take_clean_shutdown_epoch(&shard.settings.data_dir);
    info!(
        ?clean_shutdown_epoch,
        "previous stop (a broker epoch: clean)"
    );
    let registration = registration(
        &shard,
        host,
        shard.env.random.uuid().as_u128(),
        clean_shutdown_epoch,
    );
    let mut image = MetadataImage::default();
    let mut current = Catalog::default();
    let mut epoch: Option<u64> = None;
    // When the controller first refused this process as a duplicate: a process restarted after
    // kill -9 is refused until its predecessor's session ends, and only a refusal that outlasts
    // that means another live process has the node id.
    let mut refused_since: Option<std::time::Instant> = None;
    // The host whose controller answered the last heartbeat: the active one.
    let mut active: Option<HostId> = None;
    // What the shards' catalog was last built from: (applied index, active controller).
    let mut built_from: (u64, Option<HostId>) = (u64::MAX, None);
    // The controller confirmed the controlled shutdown.
    let mut shut_down = false;
    while !shard.stopping.is_triggered() {
        let asked = stopping.asked.load(Ordering::Acquire);
        if asked && epoch.is_none() {
            // Never registered: nothing to move.
            stopping.leaders_moved.store(true, Ordering::Release);
        }
        if epoch.is_none() && !asked {
            let command = Command::Register(registration.clone());
            match client
                .command(command, &*clock, ATTEMPTS, RETRY_DELAY)
                .await
            {
                Ok(Ok(Reply::Registered { epoch: registered })) => {
                    info!(node_id = %host, epoch = registered, "registered with the controller quorum");
                    epoch = Some(registered);
                    stopping
                        .registered_epoch
                        .store(registered, Ordering::Release);
                    refused_since = None;
                }
                Ok(Err(CommandError::Refused(refusal)))
                    if refusal.code == ResponseError::DuplicateBrokerRegistration =>
                {
                    let now = clock.now();
                    let since = *refused_since.get_or_insert(now);
                    if now.saturating_duration_since(since) > cluster.session_timeout * 2 {
                        return Err(format!(
                            "the controller refused this broker: {} (stop the other process \
                             with node id {host}, or give this one another --node-id)",
                            refusal.message
                        ));
                    }
                    info!("node id {host} is still registered to an earlier process: waiting for its session to end");
                }
                other => debug!(?other, "registration not done yet"),
            }
        }
        match client.update(&mut image).await {
            // The catalog is rebuilt (a walk over every partition) only when something it is
            // made of moved: not on every idle heartbeat, on the shard that also serves clients.
            Ok(()) if (image.applied_index, active) != built_from => {
                let mut next = catalog::from_image(&image, host);
                next.controller = active.map(|active| NodeId::of(active, 0).0).filter(|node| {
                    next.brokers
                        .iter()
                        .flatten()
                        .any(|(broker, _, _)| broker == node)
                });
                let changes = catalog::changes(&current, &next);
                let mut applied = true;
                for target in 0..shard.settings.shards {
                    if changes.is_empty() {
                        break;
                    }
                    if let Err(error) = shard.call(target, Apply(changes.clone())).await {
                        warn!(shard = target, "cannot apply metadata: {error}");
                        applied = false;
                    }
                }
                // A shard that missed the changes gets them again at the next wake-up.
                if applied {
                    current = next;
                    built_from = (image.applied_index, active);
                }
            }
            Ok(()) => {}
            Err(error) => debug!("cannot catch up with the metadata log: {error}"),
        }
        if let (Some(registered), true) = (epoch, asked) {
            if shut_down {
                // The catalog applied above has the leaderships moved away.
                stopping.leaders_moved.store(true, Ordering::Release);
            } else if controlled_shutdown(&mut client, &*clock, host, registered).await {
                shut_down = true;
                // Apply the moved leaderships before the shards stop serving.
                continue;
            }
        } else if let Some(registered) = epoch {
            let caught_up = image.applied_index >= registered;
            let heartbeat = Command::Heartbeat {
                host,
                epoch: registered,
                caught_up,
                shutting_down: false,
            };
            match client
                .command(heartbeat, &*clock, ATTEMPTS, RETRY_DELAY)
                .await
            {
                Ok(Ok(Reply::Heartbeat(answer))) => {
                    active = client.active();
                    if caught_up && !answer.fenced {
                        let factor = offsets_replication_factor(cluster.voters.len());
                        ensure_offsets_topic(&shard, &mut client, &image, factor).await;
                    }
                }
                Ok(Err(CommandError::Refused(refusal))) => {
                    warn!(
                        "the controller refused a heartbeat ({}): registering again",
                        refusal.message
                    );
                    epoch = None;
                    stopping.registered_epoch.store(NO_EPOCH, Ordering::Release);
                }
                other => debug!(?other, "heartbeat"),
            }
        }
        let wake = shard.member_wake.0.listen();
        futures_lite::future::or(
            futures_lite::future::or(clock.sleep(cluster.heartbeat_interval), wake),
            shard.stopping.wait(),
        )
        .await;
    }
    if let (Some(registered), false) = (epoch, shut_down) {
        controlled_shutdown(&mut client, &*clock, host, registered).await;
    }
    Ok(())
}

/// Tells the controller this host is shutting down; true once it confirmed (its leaderships
/// moved in the metadata log).
async fn controlled_shutdown(
    client: &mut QuorumClient<TcpTransport>,
    clock: &dyn ringlog_env::Clock,
    host: HostId,
    registered: u64,
) -> bool {
    let shutdown = Command::Heartbeat {
        host,
        epoch: registered,
        caught_up: true,
        shutting_down: true,
    };
    match client.command(shutdown, clock, ATTEMPTS, RETRY_DELAY).await {
        Ok(Ok(Reply::Heartbeat(answer))) if answer.may_shut_down => {
            info!("controlled shutdown: the controller moved this broker's leaderships");
            true
        }
        other => {
            warn!(?other, "controlled shutdown not confirmed");
            false
        }
    }
}

/// The replication factor of the group offsets topic: Kafka's
/// `offsets.topic.replication.factor` (3), at most the number of controller voters (a cluster
/// of fewer hosts still gets its groups).
fn offsets_replication_factor(voters: usize) -> u16 {
    u16::try_from(voters.clamp(1, 3)).unwrap_or(1)
}

/// Creates the group offsets topic in the cluster if it has none (any broker may race to:
/// the loser is told the topic exists).
async fn ensure_offsets_topic(
    shard: &Shard,
    client: &mut QuorumClient<TcpTransport>,
    image: &MetadataImage,
    replication_factor: u16,
) {
    if image.topic(groups::OFFSETS_TOPIC).is_some() {
        return;
    }
    // As Kafka's offsets.topic.replication.factor: not created with fewer replicas than asked
    // (group requests get COORDINATOR_NOT_AVAILABLE until enough hosts have joined).
    if image.live_hosts().count() < usize::from(replication_factor) {
        return;
    }
    let topic = NewTopic {
        name: groups::OFFSETS_TOPIC.to_owned(),
        id: shard.env.random.uuid().as_u128(),
        partitions: groups::OFFSETS_TOPIC_PARTITIONS as u32,
        replication_factor,
        assignment: None,
        configs: groups::OFFSETS_TOPIC_CONFIGS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    let command = Command::CreateTopics(vec![topic]);
    match client
        .command(command, &*shard.env.clock, ATTEMPTS, RETRY_DELAY)
        .await
    {
        Ok(Ok(Reply::CreateTopics(results))) => match results.first() {
            Some(Ok(_)) => info!("created the group offsets topic in the cluster"),
            Some(Err(refusal)) if refusal.code == ResponseError::TopicAlreadyExists => {}
            other => warn!(?other, "cannot create the group offsets topic"),
        },
        other => error!(?other, "cannot create the group offsets topic"),
    }
}
