//! Three controller voters in one process: the real driver (`ringlog::controller::driver`),
//! their metadata logs on disk, links over the in-memory network of `ringlog_env`. A broker
//! registers through the quorum client, topics are created, the active controller is stopped
//! and a new one takes over, the stopped voter restarts from its own disk and catches up.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringlog::controller::driver::{self, QuorumClient, Voter, VoterConfig};
use ringlog_cluster::controller::ControllerSettings;
use ringlog_cluster::quorum::{Command, QuorumSettings, Reply};
use ringlog_cluster::records::{Endpoint, Registration};
use ringlog_cluster::{HostId, MetadataImage, NewTopic, NodeId};
use ringlog_env::{Clock, Env, MemoryNetwork, Random, SystemClock};
use ringlog_net::connection::Shutdown;

const VOTERS: u32 = 3;
const DEADLINE: Duration = Duration::from_secs(20);

fn settings() -> QuorumSettings {
    QuorumSettings {
        tick_interval_ms: 10,
        election_ticks: 15,
        heartbeat_ticks: 3,
        compact_entries: 8,
        controller: ControllerSettings::new(5_000),
        ..QuorumSettings::default()
    }
}

fn topic(name: &str, id: u128) -> Command {
    Command::CreateTopics(vec![NewTopic {
        name: name.into(),
        id,
        partitions: 2,
        replication_factor: 1,
        assignment: None,
        configs: BTreeMap::new(),
    }])
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn three_voters_elect_commit_fail_over_and_recover_from_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_owned();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let clock: Rc<dyn Clock> = Rc::new(SystemClock);
            let network = MemoryNetwork::new(Rc::clone(&clock), Random::seeded(7), Duration::ZERO);
            let addresses: BTreeMap<HostId, String> = (0..VOTERS)
                .map(|id| (HostId(id), format!("c{id}:9093")))
                .collect();
            let start = |id: u32| {
                let config = VoterConfig {
                    id: HostId(id),
                    voters: addresses.clone(),
                    data_dir: root.join(format!("voter-{id}")),
                    settings: settings(),
                };
                let stop = Rc::new(Shutdown::default());
                let transport = network.host(&format!("c{id}"));
                let voter = driver::start(
                    config,
                    transport,
                    Env::system(),
                    u64::from(id),
                    Rc::clone(&stop),
                )
                .expect("voter starts");
                (voter, stop)
            };
            let mut voters: Vec<(Rc<Voter>, Rc<Shutdown>)> = (0..VOTERS).map(start).collect();
            let active = |voters: &[(Rc<Voter>, Rc<Shutdown>)]| {
                voters.iter().position(|(voter, _)| voter.is_active())
            };
            wait_for("a controller to be elected", || active(&voters).is_some()).await;

            let mut client = QuorumClient::new(network.host("broker"), addresses.clone());
            let retry = Duration::from_millis(50);
            let registration = Registration {
                host: HostId(7),
                incarnation: 1,
                endpoints: vec![Endpoint {
                    node: NodeId::of(HostId(7), 0),
                    host: "127.0.0.7".into(),
                    port: 9092,
                }],
                rack: None,
                cores: 1,
                clean_shutdown_epoch: None,
            };
            let reply = client
                .command(Command::Register(registration), &*clock, 100, retry)
                .await
                .expect("reached")
                .expect("registered");
            let Reply::Registered { epoch } = reply else {
                panic!("{reply:?}")
            };
            let heartbeat = Command::Heartbeat {
                host: HostId(7),
                epoch,
                caught_up: true,
                shutting_down: false,
            };
            let reply = client.command(heartbeat.clone(), &*clock, 100, retry).await;
            assert!(matches!(reply, Ok(Ok(Reply::Heartbeat(answer))) if !answer.fenced));
            let created = client.command(topic("first", 1), &*clock, 100, retry).await;
            assert!(
                matches!(created, Ok(Ok(Reply::CreateTopics(ref r))) if r[0].is_ok()),
                "{created:?}"
            );

            // Stop the active controller: another is elected and takes commands.
            let stopped = active(&voters).expect("active");
            voters[stopped].1.trigger();
            let stopped_at = Instant::now();
            let created = client
                .command(topic("second", 2), &*clock, 400, retry)
                .await;
            assert!(
                matches!(created, Ok(Ok(Reply::CreateTopics(ref r))) if r[0].is_ok()),
                "{created:?}"
            );
            eprintln!(
                "failover: CreateTopics committed {:?} after the stop",
                stopped_at.elapsed()
            );
            let new_active = active(&voters).expect("a new controller");
            assert_ne!(new_active, stopped);
            // The broker stays registered and live across the failover.
            let reply = client.command(heartbeat, &*clock, 100, retry).await;
            assert!(matches!(reply, Ok(Ok(Reply::Heartbeat(answer))) if !answer.fenced));

            // The stopped voter restarts from its own disk and catches up with the others.
            glommio::timer::sleep(Duration::from_millis(50)).await;
            voters[stopped] = start(stopped as u32);
            wait_for("every voter to hold the same metadata", || {
                let images: Vec<MetadataImage> =
                    voters.iter().map(|(voter, _)| voter.image()).collect();
                images.iter().all(|image| {
                    image.topics == images[0].topics && image.brokers == images[0].brokers
                }) && images[0].topic("second").is_some()
            })
            .await;

            // A broker catching up from the start sees both topics and its own registration.
            let mut image = MetadataImage::default();
            client.update(&mut image).await.expect("catch up");
            assert!(image.topic("first").is_some() && image.topic("second").is_some());
            assert!(!image.brokers[&HostId(7)].fenced);
            for (_, stop) in &voters {
                stop.trigger();
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        })
        .expect("executor")
        .join()
        .expect("test body");
}

#[test]
fn a_voter_that_accepts_and_never_answers_does_not_hang_the_client() {
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let clock: Rc<dyn Clock> = Rc::new(SystemClock);
            let network = MemoryNetwork::new(Rc::clone(&clock), Random::seeded(3), Duration::ZERO);
            // Listens (so connects succeed) but never reads or answers, like a stopped process.
            let _silent =
                ringlog_env::Transport::listen(&network.host("c0"), "c0:9093").expect("listen");
            let voters: BTreeMap<HostId, String> = [(HostId(0), "c0:9093".to_owned())].into();
            let mut client = QuorumClient::new(network.host("broker"), voters)
                .with_timeout(Rc::clone(&clock), Duration::from_millis(200));
            // Bounded here too, so that a client without its timeout fails the test instead of
            // hanging it.
            let asked = async { Some(client.catch_up(0).await) };
            let bound = async {
                glommio::timer::sleep(Duration::from_secs(5)).await;
                None
            };
            let result = futures_lite::future::or(asked, bound).await;
            let result = result.expect("the client hung on a silent voter");
            assert!(result.is_err(), "a silent voter answered: {result:?}");
        })
        .expect("executor")
        .join()
        .expect("test body");
}
