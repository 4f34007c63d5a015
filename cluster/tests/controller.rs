//! The controller's decisions applied to its own image, as the quorum would commit them.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::ResponseError;
use ringlog_cluster::records::{Endpoint, Registration};
use ringlog_cluster::{Controller, ControllerSettings, HostId, MetadataImage, NewTopic, NodeId};

const SESSION_MS: u64 = 1_500;

/// A controller whose every decision is committed at once.
struct Committed {
    controller: Controller,
    index: u64,
    epochs: BTreeMap<HostId, u64>,
}

impl Committed {
    fn new() -> Self {
        Self::with_min_insync(1)
    }

    /// A controller whose default `min.insync.replicas` is `min_insync`.
    fn with_min_insync(min_insync: usize) -> Self {
        Self::with_settings(ControllerSettings {
            min_insync_replicas: min_insync,
            ..ControllerSettings::new(SESSION_MS)
        })
    }

    fn with_settings(settings: ControllerSettings) -> Self {
        Self {
            controller: Controller::new(settings, MetadataImage::default()),
            index: 0,
            epochs: BTreeMap::new(),
        }
    }

    fn commit(&mut self, batch: ringlog_cluster::RecordBatch) {
        if batch.records.is_empty() {
            return;
        }
        self.index += 1;
        self.controller.apply(self.index, &batch);
    }

    fn registration(host: u32, cores: u32, rack: Option<&str>, incarnation: u128) -> Registration {
        Registration {
            host: HostId(host),
            incarnation,
            endpoints: (0..cores)
                .map(|core| Endpoint {
                    node: NodeId::of(HostId(host), core),
                    host: format!("127.0.0.{}", host + 1),
                    port: 9093 + core as u16,
                })
                .collect(),
            rack: rack.map(str::to_owned),
            cores,
            clean_shutdown_epoch: None,
        }
    }

    /// Registers and unfences a host.
    fn join(&mut self, host: u32, cores: u32, rack: Option<&str>, now_ms: u64) {
        let registration = Self::registration(host, cores, rack, u128::from(host) + 1);
        let batch = self
            .controller
            .register(registration, now_ms)
            .expect("registers");
        self.commit(batch);
        let epoch = self.index;
        self.epochs.insert(HostId(host), epoch);
        let (batch, answer) = self
            .controller
            .heartbeat(HostId(host), epoch, true, false, now_ms)
            .expect("heartbeat");
        assert!(!answer.fenced);
        self.commit(batch);
    }

    fn heartbeat(&mut self, host: u32, now_ms: u64) {
        let epoch = self.epochs[&HostId(host)];
        let (batch, _) = self
            .controller
            .heartbeat(HostId(host), epoch, true, false, now_ms)
            .expect("heartbeat");
        self.commit(batch);
    }

    fn create(&mut self, name: &str, id: u128, partitions: u32, factor: u16) -> Result<(), String> {
        let topic = NewTopic {
            name: name.into(),
            id,
            partitions,
            replication_factor: factor,
            assignment: None,
            configs: BTreeMap::new(),
        };
        let (mut results, batch) = self.controller.create_topics(vec![topic]);
        self.commit(batch);
        results
            .remove(0)
            .map(|_| ())
            .map_err(|refusal| format!("{:?}: {}", refusal.code, refusal.message))
    }

    fn check_invariants(&self) {
        self.check_invariants_with(1);
    }

    fn image(&self) -> &MetadataImage {
        self.controller.image()
    }

    /// Every partition: leader in the ISR, ISR within the replicas, the leader live; an empty
    /// ISR only without a leader; the ELR and the last known ELR within the replicas, apart
    /// from the ISR and each other, and an ELR only while the ISR is below
    /// `min.insync.replicas` (`min_insync`, no topic here overrides it).
    fn check_invariants_with(&self, min_insync: usize) {
        let image = self.image();
        for topic in image.topics.values() {
            for partition in &topic.partitions {
                let replicas: BTreeSet<_> = partition.replicas.iter().collect();
                let (isr, elr, last) = (&partition.isr, &partition.elr, &partition.last_known_elr);
                assert!(
                    isr.iter()
                        .chain(elr)
                        .chain(last)
                        .all(|n| replicas.contains(n)),
                    "{partition:?}"
                );
                assert!(!elr.iter().any(|n| isr.contains(n)), "{partition:?}");
                assert!(
                    !last.iter().any(|n| isr.contains(n) || elr.contains(n)),
                    "{partition:?}"
                );
                if !elr.is_empty() || !last.is_empty() {
                    assert!(isr.len() < min_insync, "{partition:?}");
                }
                if isr.is_empty() {
                    assert_eq!(partition.leader, NodeId(-1), "{partition:?}");
                }
                if partition.leader.0 >= 0 {
                    assert!(partition.isr.contains(&partition.leader), "{partition:?}");
                    assert!(image.is_live(partition.leader), "{partition:?}");
                }
            }
        }
    }
}

#[test]
fn replicas_spread_over_hosts_on_one_core_and_leaders_over_hosts_and_cores() {
    let mut cluster = Committed::new();
    for host in 0..3 {
        cluster.join(host, 2, None, 0);
    }
    cluster.create("orders", 1, 6, 3).expect("created");
    let topic = cluster.image().topic("orders").expect("topic");
    let mut leaders = BTreeMap::new();
    for partition in &topic.partitions {
        let hosts: BTreeSet<_> = partition.replicas.iter().map(|n| n.host()).collect();
        let cores: BTreeSet<_> = partition.replicas.iter().map(|n| n.core()).collect();
        assert_eq!(hosts.len(), 3, "{partition:?}");
        assert_eq!(cores.len(), 1, "one core index: {partition:?}");
        assert_eq!(partition.leader, partition.replicas[0]);
        *leaders.entry(partition.leader).or_insert(0) += 1;
    }
    // Six partitions, six (host, core) nodes: each leads one.
    assert_eq!(leaders.len(), 6, "{leaders:?}");
    assert!(cluster.create("orders", 2, 1, 1).is_err(), "name taken");
    let refused = cluster.create("wide", 3, 1, 4).expect_err("4 > 3 hosts");
    assert!(refused.starts_with("InvalidReplicationFactor"), "{refused}");
    cluster.check_invariants();
}

#[test]
fn racks_alternate_where_hosts_name_them() {
    let mut cluster = Committed::new();
    cluster.join(0, 1, Some("a"), 0);
    cluster.join(1, 1, Some("a"), 0);
    cluster.join(2, 1, Some("b"), 0);
    cluster.create("t", 1, 3, 2).expect("created");
    let image = cluster.image();
    let rack = |node: NodeId| {
        image.brokers[&node.host().expect("host")]
            .registration
            .rack
            .clone()
    };
    for partition in &image.topic("t").expect("topic").partitions {
        let racks: BTreeSet<_> = partition.replicas.iter().map(|&n| rack(n)).collect();
        assert_eq!(racks.len(), 2, "both racks: {partition:?}");
    }
}

#[test]
fn a_silent_host_is_fenced_and_its_leaderships_move_then_return() {
    let mut cluster = Committed::new();
    for host in 0..3 {
        cluster.join(host, 1, None, 0);
    }
    cluster.create("replicated", 1, 3, 3).expect("created");
    cluster.create("single", 2, 3, 1).expect("created");
    // Hosts 0 and 1 heartbeat; host 2 falls silent.
    for now in (0..SESSION_MS).step_by(250) {
        cluster.heartbeat(0, now);
        cluster.heartbeat(1, now);
        let batch = cluster.controller.tick(now);
        assert!(batch.records.is_empty(), "nobody expired at {now}");
    }
    let batch = cluster.controller.tick(SESSION_MS);
    cluster.commit(batch);
    cluster.check_invariants();
    let image = cluster.image();
    assert!(image.brokers[&HostId(2)].fenced);
    let on_2 = |n: &NodeId| n.host() == Some(HostId(2));
    for partition in &image.topic("replicated").expect("topic").partitions {
        assert!(!on_2(&partition.leader), "{partition:?}");
        assert!(!partition.isr.iter().any(on_2), "{partition:?}");
    }
    let single = &image.topic("single").expect("topic").partitions;
    let orphaned: Vec<_> = single.iter().filter(|p| on_2(&p.replicas[0])).collect();
    assert_eq!(orphaned.len(), 1);
    assert_eq!(orphaned[0].leader, NodeId(-1));
    assert_eq!(orphaned[0].leader_epoch, 1);
    let epoch_before = orphaned[0].leader_epoch;

    // A new process of host 2 registers (the old one is fenced) and catches up.
    let now = SESSION_MS + 100;
    let registration = Committed::registration(2, 1, None, 99);
    let batch = cluster
        .controller
        .register(registration, now)
        .expect("re-registers");
    cluster.commit(batch);
    cluster.epochs.insert(HostId(2), cluster.index);
    cluster.heartbeat(2, now);
    cluster.check_invariants();
    let back = &cluster.image().topic("single").expect("topic").partitions;
    let returned = back
        .iter()
        .find(|p| on_2(&p.replicas[0]))
        .expect("partition");
    assert!(on_2(&returned.leader), "{returned:?}");
    assert_eq!(returned.leader_epoch, epoch_before + 1);
}

#[test]
fn a_second_live_process_with_the_same_node_id_is_refused() {
    let mut cluster = Committed::new();
    cluster.join(0, 1, None, 0);
    let other = Committed::registration(0, 1, None, 12345);
    let refused = cluster
        .controller
        .register(other.clone(), 500)
        .expect_err("alive");
    assert_eq!(refused.code, ResponseError::DuplicateBrokerRegistration);
    // Once the first process's session is over, the new one takes the id.
    let batch = cluster
        .controller
        .register(other, SESSION_MS + 1)
        .expect("session over");
    cluster.commit(batch);
    assert_eq!(
        cluster.image().brokers[&HostId(0)].registration.incarnation,
        12345
    );
    // The old process's heartbeats carry a stale epoch.
    let stale = cluster
        .controller
        .heartbeat(
            HostId(0),
            cluster.epochs[&HostId(0)],
            true,
            false,
            SESSION_MS + 2,
        )
        .expect_err("stale");
    assert_eq!(stale.code, ResponseError::StaleBrokerEpoch);
}

#[test]
fn controlled_shutdown_moves_leadership_first_and_preferred_election_brings_it_back() {
    let mut cluster = Committed::new();
    for host in 0..3 {
        cluster.join(host, 1, None, 0);
    }
    cluster.create("t", 1, 3, 3).expect("created");
    let led_by_0 = |image: &MetadataImage| {
        image
            .topic("t")
            .expect("topic")
            .partitions
            .iter()
            .filter(|p| p.leader.host() == Some(HostId(0)))
            .count()
    };
    assert_eq!(led_by_0(cluster.image()), 1);
    let epoch = cluster.epochs[&HostId(0)];
    let (batch, answer) = cluster
        .controller
        .heartbeat(HostId(0), epoch, true, true, 10)
        .expect("shutdown");
    assert!(answer.may_shut_down);
    cluster.commit(batch);
    assert_eq!(led_by_0(cluster.image()), 0);
    cluster.check_invariants();
    // The host comes back: it is unfenced but not in the ISR it left, so the preferred
    // election leaves the partition where it is until the ISR takes it back (replication).
    cluster.heartbeat(0, 20);
    let batch = cluster.controller.elect_preferred(None);
    assert!(batch.records.is_empty(), "host 0 is out of the ISR");
    cluster.check_invariants();
}

#[derive(Debug, Clone)]
enum Op {
    Heartbeat(u32),
    Silence(u64),
    Create(u32, u16),
    Shutdown(u32),
    Restart(u32),
    ElectPreferred,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (0u32..4).prop_map(Op::Heartbeat),
        (1u64..2_000).prop_map(Op::Silence),
        (1u32..5, 1u16..4).prop_map(|(p, f)| Op::Create(p, f)),
        (0u32..4).prop_map(Op::Shutdown),
        (0u32..4).prop_map(Op::Restart),
        Just(Op::ElectPreferred),
    ]
}

proptest::proptest! {
    /// Whatever happens to the hosts, every partition's leader is a live member of its ISR
    /// (or none, and only then may the ISR be empty), the ELR rules hold, and its epochs only
    /// grow.
    #[test]
    fn any_history_keeps_partitions_consistent(ops in proptest::collection::vec(op(), 1..60)) {
        let mut cluster = Committed::new();
        for host in 0..4 {
            cluster.join(host, 2, None, 0);
        }
        let mut now = 0;
        let mut next_topic = 1u128;
        let mut epochs: BTreeMap<(u128, u32), (i32, i32)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Heartbeat(host) => {
                    let epoch = cluster.epochs[&HostId(host)];
                    if let Ok((batch, _)) =
                        cluster.controller.heartbeat(HostId(host), epoch, true, false, now)
                    {
                        cluster.commit(batch);
                    }
                }
                Op::Silence(ms) => now += ms,
                Op::Create(partitions, factor) => {
                    let _ = cluster.create(&format!("t{next_topic}"), next_topic, partitions, factor);
                    next_topic += 1;
                }
                Op::Shutdown(host) => {
                    let epoch = cluster.epochs[&HostId(host)];
                    if let Ok((batch, _)) =
                        cluster.controller.heartbeat(HostId(host), epoch, true, true, now)
                    {
                        cluster.commit(batch);
                    }
                }
                Op::Restart(host) => {
                    let incarnation = u128::from(now) << 8 | u128::from(host);
                    let registration = Committed::registration(host, 2, None, incarnation);
                    if let Ok(batch) = cluster.controller.register(registration, now) {
                        cluster.commit(batch);
                        cluster.epochs.insert(HostId(host), cluster.index);
                    }
                }
                Op::ElectPreferred => {
                    let batch = cluster.controller.elect_preferred(None);
                    cluster.commit(batch);
                }
            }
            let batch = cluster.controller.tick(now);
            cluster.commit(batch);
            cluster.check_invariants();
            proptest::prop_assert_eq!(cluster.image().skipped_records, 0);
            for topic in cluster.image().topics.values() {
                for p in &topic.partitions {
                    let seen = epochs.entry((p.topic, p.partition)).or_insert((0, 0));
                    proptest::prop_assert!(p.leader_epoch >= seen.0 && p.partition_epoch >= seen.1);
                    *seen = (p.leader_epoch, p.partition_epoch);
                }
            }
        }
    }
}

#[test]
fn alter_partition_is_accepted_from_the_current_leader_and_epochs_only() {
    use ringlog_cluster::AlterPartition;
    let mut cluster = Committed::new();
    for host in 0..3 {
        cluster.join(host, 1, None, 0);
    }
    cluster.create("orders", 1, 1, 3).expect("created");
    let partition = cluster.image().topic("orders").expect("topic").partitions[0].clone();
    let follower = partition.replicas[1];
    let shrunk: Vec<NodeId> = partition
        .isr
        .iter()
        .copied()
        .filter(|&n| n != follower)
        .collect();
    let request = AlterPartition {
        topic: "orders".into(),
        partition: 0,
        leader: partition.leader,
        leader_epoch: partition.leader_epoch,
        partition_epoch: partition.partition_epoch,
        isr: shrunk.clone(),
        broker_epochs: Vec::new(),
    };
    let code = |request: &AlterPartition, cluster: &Committed| {
        cluster
            .controller
            .alter_partition(request)
            .map(|_| ())
            .map_err(|refusal| refusal.code)
    };
    let stale_leader = AlterPartition {
        leader: follower,
        ..request.clone()
    };
    assert_eq!(
        code(&stale_leader, &cluster),
        Err(ResponseError::NotLeaderOrFollower)
    );
    let old_epoch = AlterPartition {
        leader_epoch: partition.leader_epoch - 1,
        ..request.clone()
    };
    assert_eq!(
        code(&old_epoch, &cluster),
        Err(ResponseError::FencedLeaderEpoch)
    );
    let foreign = AlterPartition {
        isr: vec![partition.leader, NodeId::of(HostId(9), 0)],
        ..request.clone()
    };
    assert_eq!(code(&foreign, &cluster), Err(ResponseError::InvalidRequest));

    let (epoch, batch) = cluster
        .controller
        .alter_partition(&request)
        .expect("shrinks");
    cluster.commit(batch);
    let now = cluster.image().topic("orders").expect("topic").partitions[0].clone();
    assert_eq!(now.partition_epoch, epoch);
    assert_eq!(now.partition_epoch, partition.partition_epoch + 1);
    assert_eq!(now.isr, shrunk);
    assert_eq!(now.leader_epoch, partition.leader_epoch, "no leader change");
    // The same request again was made against an older partition epoch.
    assert_eq!(
        code(&request, &cluster),
        Err(ResponseError::InvalidUpdateVersion)
    );

    // The follower's host is fenced: it cannot be added back.
    cluster.heartbeat(0, 1_000);
    cluster.heartbeat(1, 1_000);
    cluster.heartbeat(2, 1_000);
    let fenced_host = follower.host().expect("a host").0;
    for host in (0..3).filter(|&h| h != fenced_host) {
        cluster.heartbeat(host, 2_000);
    }
    let batch = cluster.controller.tick(2_600);
    cluster.commit(batch);
    let now = cluster.image().topic("orders").expect("topic").partitions[0].clone();
    let grow = AlterPartition {
        leader: now.leader,
        leader_epoch: now.leader_epoch,
        partition_epoch: now.partition_epoch,
        isr: partition.replicas.clone(),
        ..request.clone()
    };
    assert_eq!(code(&grow, &cluster), Err(ResponseError::IneligibleReplica));
    cluster.check_invariants();
}

#[test]
fn unclean_leader_election_lets_an_out_of_sync_replica_lead_only_when_the_topic_allows_it() {
    use ringlog_cluster::AlterPartition;
    let mut cluster = Committed::new();
    for host in 0..3 {
        cluster.join(host, 1, None, 0);
    }
    cluster.create("clean", 1, 1, 3).expect("created");
    let topic = NewTopic {
        name: "unclean".into(),
        id: 2,
        partitions: 1,
        replication_factor: 3,
        assignment: None,
        configs: BTreeMap::from([(
            "unclean.leader.election.enable".to_owned(),
            "true".to_owned(),
        )]),
    };
    let (results, batch) = cluster.controller.create_topics(vec![topic]);
    assert!(results[0].is_ok());
    cluster.commit(batch);
    // Both partitions' ISR shrinks to the leader alone (the followers lagged).
    for name in ["clean", "unclean"] {
        let partition = cluster.image().topic(name).expect("topic").partitions[0].clone();
        let request = AlterPartition {
            topic: name.into(),
            partition: 0,
            leader: partition.leader,
            leader_epoch: partition.leader_epoch,
            partition_epoch: partition.partition_epoch,
            isr: vec![partition.leader],
            broker_epochs: Vec::new(),
        };
        let (_, batch) = cluster
            .controller
            .alter_partition(&request)
            .expect("shrinks");
        cluster.commit(batch);
    }
    // The leaders' hosts fall silent (both leaders may be on one host or two).
    let leader_hosts: BTreeSet<u32> = ["clean", "unclean"]
        .iter()
        .map(|name| {
            let partition = &cluster.image().topic(name).expect("topic").partitions[0];
            partition.leader.host().expect("a host").0
        })
        .collect();
    let live: Vec<u32> = (0..3).filter(|h| !leader_hosts.contains(h)).collect();
    assert!(!live.is_empty(), "three hosts, at most two leaders' hosts");
    for now in (0..=SESSION_MS).step_by(250) {
        for &host in &live {
            cluster.heartbeat(host, now);
        }
    }
    let batch = cluster.controller.tick(SESSION_MS + 1);
    cluster.commit(batch);
    let image = cluster.image();
    let clean = &image.topic("clean").expect("topic").partitions[0];
    assert_eq!(
        clean.leader,
        NodeId(-1),
        "no in-sync replica is live: {clean:?}"
    );
    let unclean = &image.topic("unclean").expect("topic").partitions[0];
    assert!(
        image.is_live(unclean.leader),
        "an out-of-sync replica leads: {unclean:?}"
    );
    assert_eq!(unclean.isr, vec![unclean.leader]);
    cluster.check_invariants();
}

// ---------------------------------------------------------------- eligible leader replicas

/// The partition of a one-partition topic.
fn partition_of(cluster: &Committed, name: &str) -> ringlog_cluster::records::PartitionRecord {
    cluster.image().topic(name).expect("topic").partitions[0].clone()
}

/// The partition's leader asks for `isr` (its ISR in replica order), committed.
fn alter_isr(cluster: &mut Committed, name: &str, isr: &[NodeId]) {
    let partition = partition_of(cluster, name);
    let request = ringlog_cluster::AlterPartition {
        topic: name.into(),
        partition: 0,
        leader: partition.leader,
        leader_epoch: partition.leader_epoch,
        partition_epoch: partition.partition_epoch,
        isr: isr.to_vec(),
        broker_epochs: Vec::new(),
    };
    let (_, batch) = cluster
        .controller
        .alter_partition(&request)
        .expect("ISR change");
    cluster.commit(batch);
}

/// Only `alive` heartbeat for a session: every other host is fenced.
fn fence_all_but(cluster: &mut Committed, alive: &[u32], from_ms: u64) -> u64 {
    for now in (from_ms..=from_ms + SESSION_MS).step_by(250) {
        for &host in alive {
            cluster.heartbeat(host, now);
        }
    }
    let now = from_ms + SESSION_MS + 1;
    let batch = cluster.controller.tick(now);
    cluster.commit(batch);
    now
}

/// A new process of `host` registers (`clean`: naming the broker epoch the controller has for
/// it) and heartbeats once caught up.
fn restart(cluster: &mut Committed, host: u32, clean_shutdown_epoch: Option<u64>, now: u64) {
    let mut registration = Committed::registration(host, 1, None, u128::from(now) << 8);
    registration.clean_shutdown_epoch = clean_shutdown_epoch;
    let batch = cluster
        .controller
        .register(registration, now)
        .expect("registers");
    cluster.commit(batch);
    cluster.epochs.insert(HostId(host), cluster.index);
    cluster.heartbeat(host, now);
}

/// Three hosts, topic "t" of one partition on all three, `min.insync.replicas` 2 (the
/// controller's default): the replicas, the preferred leader first.
fn three_replicas_min_two() -> (Committed, [NodeId; 3]) {
    let mut cluster = Committed::with_min_insync(2);
    for host in 0..3 {
        cluster.join(host, 1, None, 0);
    }
    cluster.create("t", 1, 1, 3).expect("created");
    let replicas = partition_of(&cluster, "t").replicas;
    (cluster, [replicas[0], replicas[1], replicas[2]])
}

fn host_of(node: NodeId) -> u32 {
    node.host().expect("a host").0
}

#[test]
fn replicas_leaving_an_isr_below_min_insync_join_the_elr_until_it_is_back_at_the_minimum() {
    let (mut cluster, [leader, a, b]) = three_replicas_min_two();
    // At the minimum, a replica that leaves is not eligible: the watermark goes on without it.
    alter_isr(&mut cluster, "t", &[leader, a]);
    assert!(partition_of(&cluster, "t").elr.is_empty());
    // Below it, the one that leaves is.
    alter_isr(&mut cluster, "t", &[leader]);
    let partition = partition_of(&cluster, "t");
    assert_eq!(
        (partition.isr.clone(), partition.elr.clone()),
        (vec![leader], vec![a])
    );
    cluster.check_invariants_with(2);
    // Back at the minimum (with another replica): the ELR is cleared.
    alter_isr(&mut cluster, "t", &[leader, b]);
    let partition = partition_of(&cluster, "t");
    assert_eq!(partition.isr, vec![leader, b]);
    assert!(partition.elr.is_empty(), "{partition:?}");

    // A topic of min.insync.replicas 3: a replica rejoining leaves the ELR, the others stay.
    let topic = NewTopic {
        name: "three".into(),
        id: 2,
        partitions: 1,
        replication_factor: 3,
        assignment: Some(vec![vec![leader, a, b]]),
        configs: BTreeMap::from([("min.insync.replicas".to_owned(), "3".to_owned())]),
    };
    let (_, batch) = cluster.controller.create_topics(vec![topic]);
    cluster.commit(batch);
    alter_isr(&mut cluster, "three", &[leader]);
    assert_eq!(partition_of(&cluster, "three").elr, vec![a, b]);
    alter_isr(&mut cluster, "three", &[leader, a]);
    let partition = partition_of(&cluster, "three");
    assert_eq!((partition.isr, partition.elr), (vec![leader, a], vec![b]));

    // With the default minimum of 1, nothing is ever eligible outside the ISR.
    let mut one = Committed::new();
    for host in 0..3 {
        one.join(host, 1, None, 0);
    }
    one.create("t", 1, 1, 3).expect("created");
    let leader = partition_of(&one, "t").leader;
    alter_isr(&mut one, "t", &[leader]);
    assert!(partition_of(&one, "t").elr.is_empty());
}

#[test]
fn the_last_in_sync_replica_fenced_moves_to_the_elr_and_the_first_live_elr_member_leads() {
    let (mut cluster, [leader, a, b]) = three_replicas_min_two();
    alter_isr(&mut cluster, "t", &[leader]);
    let before = partition_of(&cluster, "t");
    fence_all_but(&mut cluster, &[host_of(a), host_of(b)], 0);
    let after = partition_of(&cluster, "t");
    assert_eq!(
        after.leader, a,
        "first live ELR member in replica order: {after:?}"
    );
    assert_eq!(after.isr, vec![a]);
    assert_eq!(
        after.elr,
        vec![leader, b],
        "the fenced leader is eligible again"
    );
    assert_eq!(after.leader_epoch, before.leader_epoch + 1);
    assert_eq!(after.partition_epoch, before.partition_epoch + 1);
    cluster.check_invariants_with(2);
}

#[test]
fn with_no_live_eligible_replica_the_partition_waits_and_a_clean_restart_leads_again() {
    let (mut cluster, [leader, a, b]) = three_replicas_min_two();
    alter_isr(&mut cluster, "t", &[leader]);
    let now = fence_all_but(&mut cluster, &[], 0);
    let partition = partition_of(&cluster, "t");
    assert_eq!(partition.leader, NodeId(-1));
    assert!(
        partition.isr.is_empty(),
        "the last member left the ISR: {partition:?}"
    );
    assert_eq!(partition.elr, vec![leader, a, b]);
    cluster.check_invariants_with(2);
    // The leader's host stopped cleanly (it names the epoch the controller has): still
    // eligible, it leads once unfenced.
    let epoch = cluster.image().brokers[&HostId(host_of(leader))].epoch;
    restart(&mut cluster, host_of(leader), Some(epoch), now + 10);
    let partition = partition_of(&cluster, "t");
    assert_eq!(partition.leader, leader, "{partition:?}");
    assert_eq!(partition.isr, vec![leader]);
    assert_eq!(partition.elr, vec![a, b]);
    cluster.check_invariants_with(2);
}

#[test]
fn an_unclean_restart_leaves_the_elr_and_the_partition_waits_for_an_intact_member() {
    let (mut cluster, [leader, a, b]) = three_replicas_min_two();
    alter_isr(&mut cluster, "t", &[leader]);
    let now = fence_all_but(&mut cluster, &[], 0);
    // A clean-shutdown epoch that is not the registered one is no proof: unclean.
    let stale = cluster.image().brokers[&HostId(host_of(leader))].epoch - 1;
    restart(&mut cluster, host_of(leader), Some(stale), now + 10);
    let partition = partition_of(&cluster, "t");
    assert_eq!(
        partition.leader,
        NodeId(-1),
        "the leader lost its tail: {partition:?}"
    );
    assert_eq!(partition.elr, vec![a, b]);
    assert!(partition.last_known_elr.is_empty(), "others may have more");
    // Replica a's host comes back with its process (and log) intact: it leads.
    cluster.heartbeat(host_of(a), now + 20);
    let partition = partition_of(&cluster, "t");
    assert_eq!(partition.leader, a, "{partition:?}");
    assert_eq!((partition.isr, partition.elr), (vec![a], vec![b]));
    cluster.check_invariants_with(2);
}

#[test]
fn an_unclean_restart_before_the_session_ends_takes_the_replica_out_of_isr_and_elr() {
    let (mut cluster, [leader, a, b]) = three_replicas_min_two();
    alter_isr(&mut cluster, "t", &[leader]);
    // The leader's host restarts at once; its old process is not fenced yet.
    for now in (0..=SESSION_MS).step_by(250) {
        cluster.heartbeat(host_of(a), now);
        cluster.heartbeat(host_of(b), now);
    }
    restart(&mut cluster, host_of(leader), None, SESSION_MS + 1);
    let partition = partition_of(&cluster, "t");
    assert_eq!(partition.leader, a, "{partition:?}");
    assert_eq!(partition.isr, vec![a]);
    assert_eq!(partition.elr, vec![b], "the restarted leader is in neither");
    cluster.check_invariants_with(2);
}

#[test]
fn when_every_eligible_replica_restarted_uncleanly_the_last_one_leads_as_a_last_resort() {
    let (mut cluster, [leader, a, b]) = three_replicas_min_two();
    alter_isr(&mut cluster, "t", &[leader]);
    let mut now = fence_all_but(&mut cluster, &[], 0);
    for node in [leader, a, b] {
        now += 10;
        restart(&mut cluster, host_of(node), None, now);
    }
    let partition = partition_of(&cluster, "t");
    // Hosts of the leader and a came back first: none of them led while b might have had more.
    // b, the last known eligible one, leads when it is back (nobody can have more).
    assert_eq!(partition.leader, b, "{partition:?}");
    assert_eq!(partition.isr, vec![b]);
    assert!(partition.elr.is_empty() && partition.last_known_elr.is_empty());
    cluster.check_invariants_with(2);
}

#[test]
fn the_last_known_elr_waits_for_its_member() {
    let (mut cluster, [leader, a, b]) = three_replicas_min_two();
    alter_isr(&mut cluster, "t", &[leader]);
    let now = fence_all_but(&mut cluster, &[], 0);
    // a and b restart uncleanly first (the ELR keeps the leader), then the leader: it is the
    // last known eligible replica, but its process has not heartbeat yet.
    restart(&mut cluster, host_of(a), None, now + 10);
    restart(&mut cluster, host_of(b), None, now + 20);
    let partition = partition_of(&cluster, "t");
    assert_eq!(partition.leader, NodeId(-1));
    assert_eq!(partition.elr, vec![leader]);
    let mut registration = Committed::registration(host_of(leader), 1, None, 77);
    registration.clean_shutdown_epoch = None;
    let batch = cluster
        .controller
        .register(registration, now + 30)
        .expect("registers");
    cluster.commit(batch);
    let partition = partition_of(&cluster, "t");
    assert!(partition.elr.is_empty());
    assert_eq!(partition.last_known_elr, vec![leader]);
    assert_eq!(partition.leader, NodeId(-1), "fenced until it heartbeats");
    cluster
        .epochs
        .insert(HostId(host_of(leader)), cluster.index);
    cluster.heartbeat(host_of(leader), now + 40);
    assert_eq!(partition_of(&cluster, "t").leader, leader);
    cluster.check_invariants_with(2);
}

#[test]
fn unclean_election_only_when_no_isr_or_elr_member_is_live() {
    let (mut cluster, [leader, a, b]) = three_replicas_min_two();
    let topic = NewTopic {
        name: "unclean".into(),
        id: 2,
        partitions: 1,
        replication_factor: 3,
        assignment: Some(vec![vec![leader, a, b]]),
        configs: BTreeMap::from([(
            "unclean.leader.election.enable".to_owned(),
            "true".to_owned(),
        )]),
    };
    let (_, batch) = cluster.controller.create_topics(vec![topic]);
    cluster.commit(batch);
    // b leaves at the minimum (not eligible), then the leader's host and a's are fenced: the
    // leader to the ELR of a, then a to an empty ISR.
    alter_isr(&mut cluster, "t", &[leader, a]);
    alter_isr(&mut cluster, "unclean", &[leader, a]);
    fence_all_but(&mut cluster, &[host_of(b)], 0);
    let clean = partition_of(&cluster, "t");
    assert_eq!(clean.leader, NodeId(-1), "{clean:?}");
    assert!(clean.isr.is_empty());
    assert_eq!(clean.elr, vec![leader, a]);
    let unclean = partition_of(&cluster, "unclean");
    assert_eq!(
        unclean.leader, b,
        "no eligible replica is live: {unclean:?}"
    );
    assert_eq!(unclean.isr, vec![b]);
    assert!(unclean.elr.is_empty(), "{unclean:?}");
    cluster.check_invariants_with(2);
}

#[test]
fn lowering_min_insync_replicas_clears_the_elr_the_isr_now_reaches() {
    let (mut cluster, [leader, a, b]) = three_replicas_min_two();
    alter_isr(&mut cluster, "t", &[leader]);
    assert_eq!(partition_of(&cluster, "t").elr, vec![a, b]);
    let before = partition_of(&cluster, "t").partition_epoch;
    let batch = cluster
        .controller
        .alter_configs("t", vec![("min.insync.replicas".into(), Some("1".into()))])
        .expect("altered");
    cluster.commit(batch);
    let partition = partition_of(&cluster, "t");
    assert!(partition.elr.is_empty(), "{partition:?}");
    assert_eq!(partition.partition_epoch, before + 1);
}

#[test]
fn kip_903_a_replica_is_added_to_the_isr_only_in_the_broker_epoch_it_fetched_in() {
    let (mut cluster, [leader, a, b]) = three_replicas_min_two();
    alter_isr(&mut cluster, "t", &[leader, a]);
    let old_epoch = cluster.epochs[&HostId(host_of(b))];
    // b's host falls silent, is fenced, and comes back uncleanly (an emptied disk, perhaps)
    // in a new broker epoch.
    let now = fence_all_but(&mut cluster, &[host_of(leader), host_of(a)], 0);
    restart(&mut cluster, host_of(b), None, now);
    let new_epoch = cluster.epochs[&HostId(host_of(b))];
    assert!(new_epoch > old_epoch);
    let partition = partition_of(&cluster, "t");
    assert_eq!(partition.leader, leader, "{partition:?}");
    let grow = |broker_epochs: Vec<(NodeId, u64)>| ringlog_cluster::AlterPartition {
        topic: "t".into(),
        partition: 0,
        leader: partition.leader,
        leader_epoch: partition.leader_epoch,
        partition_epoch: partition.partition_epoch,
        isr: vec![leader, a, b],
        broker_epochs,
    };
    let code = |request: &ringlog_cluster::AlterPartition| {
        cluster
            .controller
            .alter_partition(request)
            .map(|_| ())
            .map_err(|refusal| refusal.code)
    };
    // The leader decided on fetches of b's old process: refused, nothing applied.
    assert_eq!(
        code(&grow(vec![(b, old_epoch)])),
        Err(ResponseError::IneligibleReplica)
    );
    // Naming a replica outside the asked ISR is malformed.
    let stray = ringlog_cluster::AlterPartition {
        isr: vec![leader, a],
        ..grow(vec![(b, new_epoch)])
    };
    assert_eq!(code(&stray), Err(ResponseError::InvalidRequest));
    // A member already in the ISR is not checked (it keeps its registration's terms), nor is
    // one the leader names no epoch for (a leader that does not know it).
    assert_eq!(code(&grow(vec![(a, old_epoch)])), Ok(()));
    assert_eq!(code(&grow(Vec::new())), Ok(()));
    // Fetches of the new process: accepted.
    let (_, batch) = cluster
        .controller
        .alter_partition(&grow(vec![
            (a, cluster.epochs[&HostId(host_of(a))]),
            (b, new_epoch),
        ]))
        .expect("grows");
    cluster.commit(batch);
    assert_eq!(partition_of(&cluster, "t").isr, vec![leader, a, b]);
    cluster.check_invariants_with(2);
}

/// Three hosts, topic "t" of one partition on all three (min.insync.replicas 1); the host of
/// the preferred leader is fenced (its leadership moves), comes back cleanly and is taken back
/// into the ISR by the new leader. Returns the cluster, the replicas and the time.
fn preferred_leader_back_in_sync() -> (Committed, Vec<NodeId>, u64) {
    let mut cluster = Committed::new();
    for host in 0..3 {
        cluster.join(host, 1, None, 0);
    }
    cluster.create("t", 1, 1, 3).expect("created");
    let replicas = partition_of(&cluster, "t").replicas;
    let preferred = host_of(replicas[0]);
    let others: Vec<u32> = (0..3).filter(|&h| h != preferred).collect();
    let now = fence_all_but(&mut cluster, &others, 0);
    assert_ne!(partition_of(&cluster, "t").leader, replicas[0]);
    let epoch = cluster.epochs[&HostId(preferred)];
    restart(&mut cluster, preferred, Some(epoch), now + 1);
    for &host in &others {
        cluster.heartbeat(host, now + 1);
    }
    alter_isr(&mut cluster, "t", &replicas);
    cluster.check_invariants();
    (cluster, replicas, now + 1)
}

#[test]
fn elect_leaders_moves_leadership_to_the_preferred_replica_when_it_is_live_and_in_sync() {
    let (mut cluster, replicas, _) = preferred_leader_back_in_sync();
    let before = partition_of(&cluster, "t");
    let asked = [
        ("t".to_owned(), 0),
        ("t".to_owned(), 5),
        ("nope".to_owned(), 0),
    ];
    let (answers, batch) = cluster.controller.elect_leaders(Some(&asked), false);
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0].result, Ok(()));
    for unknown in &answers[1..] {
        let refusal = unknown.result.as_ref().expect_err("no such partition");
        assert_eq!(refusal.code, ResponseError::UnknownTopicOrPartition);
    }
    cluster.commit(batch);
    let after = partition_of(&cluster, "t");
    assert_eq!(after.leader, replicas[0]);
    assert_eq!(after.leader_epoch, before.leader_epoch + 1);
    assert_eq!(after.partition_epoch, before.partition_epoch + 1);
    cluster.check_invariants();
    // Again: nothing to do. Asked for one partition it says so; asked for all it says nothing.
    let (answers, batch) = cluster.controller.elect_leaders(Some(&asked[..1]), false);
    assert!(batch.records.is_empty());
    let refusal = answers[0].result.as_ref().expect_err("not needed");
    assert_eq!(refusal.code, ResponseError::ElectionNotNeeded);
    let (answers, batch) = cluster.controller.elect_leaders(None, false);
    assert!(
        answers.is_empty() && batch.records.is_empty(),
        "{answers:?}"
    );
}

#[test]
fn elect_leaders_refuses_a_preferred_replica_out_of_the_isr() {
    let (mut cluster, replicas, _) = preferred_leader_back_in_sync();
    alter_isr(&mut cluster, "t", &replicas[1..]);
    let (answers, batch) = cluster
        .controller
        .elect_leaders(Some(&[("t".to_owned(), 0)]), false);
    assert!(batch.records.is_empty());
    let refusal = answers[0].result.as_ref().expect_err("not in sync");
    assert_eq!(refusal.code, ResponseError::PreferredLeaderNotAvailable);
    // Asked for every partition, a failed election is answered too.
    let (answers, _) = cluster.controller.elect_leaders(None, false);
    assert_eq!(answers.len(), 1, "{answers:?}");
}

#[test]
fn unclean_elect_leaders_gives_a_leaderless_partition_any_live_replica() {
    let mut cluster = Committed::new();
    for host in 0..3 {
        cluster.join(host, 1, None, 0);
    }
    cluster.create("t", 1, 1, 3).expect("created");
    let replicas = partition_of(&cluster, "t").replicas;
    let asked = [("t".to_owned(), 0)];
    let (answers, _) = cluster.controller.elect_leaders(Some(&asked), true);
    let refusal = answers[0].result.as_ref().expect_err("it has a leader");
    assert_eq!(refusal.code, ResponseError::ElectionNotNeeded);
    // The ISR shrinks to the leader, whose host is then fenced: no leader, nobody eligible
    // among the live (the others left the ISR at or above min.insync.replicas 1).
    alter_isr(&mut cluster, "t", &replicas[..1]);
    let others: Vec<u32> = replicas[1..].iter().map(|&node| host_of(node)).collect();
    let now = fence_all_but(&mut cluster, &others, 0);
    let leaderless = partition_of(&cluster, "t");
    assert_eq!(leaderless.leader, NodeId(-1), "{leaderless:?}");
    // A preferred election cannot help; an unclean one takes the first live replica.
    let (answers, batch) = cluster.controller.elect_leaders(Some(&asked), false);
    assert!(batch.records.is_empty() && answers[0].result.is_err());
    let (answers, batch) = cluster.controller.elect_leaders(Some(&asked), true);
    assert_eq!(answers[0].result, Ok(()));
    cluster.commit(batch);
    let elected = partition_of(&cluster, "t");
    assert_eq!(elected.leader, replicas[1]);
    assert_eq!(elected.isr, vec![replicas[1]]);
    assert!(elected.elr.is_empty() && elected.last_known_elr.is_empty());
    assert_eq!(elected.leader_epoch, leaderless.leader_epoch + 1);
    cluster.check_invariants();
    // With no live replica at all: ELIGIBLE_LEADERS_NOT_AVAILABLE.
    fence_all_but(&mut cluster, &[], now);
    assert_eq!(partition_of(&cluster, "t").leader, NodeId(-1));
    let (answers, batch) = cluster.controller.elect_leaders(Some(&asked), true);
    assert!(batch.records.is_empty());
    let refusal = answers[0].result.as_ref().expect_err("nobody is live");
    assert_eq!(refusal.code, ResponseError::EligibleLeadersNotAvailable);
}

#[test]
fn auto_leader_rebalance_returns_leadership_to_preferred_replicas_after_the_check_interval() {
    for (percentage, moves) in [(10, true), (100, false)] {
        let (mut cluster, replicas, now) = preferred_leader_back_in_sync();
        let mut settings = ControllerSettings::new(SESSION_MS);
        settings.leader_imbalance_check_interval_ms = Some(10_000);
        settings.leader_imbalance_per_broker_percentage = percentage;
        let image = cluster.image().clone();
        cluster.controller = Controller::new(settings, image);
        cluster.controller.activate(now);
        for host in 0..3 {
            cluster.heartbeat(host, now + 5_000);
        }
        let early = cluster.controller.tick(now + 5_000);
        assert!(early.records.is_empty(), "before the interval");
        for host in 0..3 {
            cluster.heartbeat(host, now + 10_000);
        }
        let due = cluster.controller.tick(now + 10_000);
        // The preferred node leads 0 of its 1 partition: 100 % imbalance.
        assert_eq!(
            due.records.len(),
            usize::from(moves),
            "{percentage} %: {due:?}"
        );
        cluster.commit(due);
        let leader = partition_of(&cluster, "t").leader;
        assert_eq!(leader == replicas[0], moves);
        cluster.check_invariants();
        // The next check is an interval later.
        let again = cluster.controller.tick(now + 10_001);
        assert!(again.records.is_empty());
    }
}

#[test]
fn the_controller_wide_unclean_election_setting_applies_where_a_topic_does_not_set_its_own() {
    let mut cluster = Committed::with_settings(ControllerSettings {
        unclean_leader_election: true,
        ..ControllerSettings::new(SESSION_MS)
    });
    for host in 0..3 {
        cluster.join(host, 1, None, 0);
    }
    for (id, name, own) in [(1, "inherits", None), (2, "refuses", Some("false"))] {
        let topic = NewTopic {
            name: name.into(),
            id,
            partitions: 1,
            replication_factor: 3,
            assignment: None,
            configs: own
                .map(|value| {
                    (
                        "unclean.leader.election.enable".to_owned(),
                        value.to_owned(),
                    )
                })
                .into_iter()
                .collect(),
        };
        let (results, batch) = cluster.controller.create_topics(vec![topic]);
        assert!(results[0].is_ok());
        cluster.commit(batch);
        let leader = partition_of(&cluster, name).leader;
        alter_isr(&mut cluster, name, &[leader]);
    }
    let leader_hosts: BTreeSet<u32> = ["inherits", "refuses"]
        .iter()
        .map(|name| host_of(partition_of(&cluster, name).leader))
        .collect();
    let live: Vec<u32> = (0..3).filter(|h| !leader_hosts.contains(h)).collect();
    fence_all_but(&mut cluster, &live, 0);
    let inherits = partition_of(&cluster, "inherits");
    assert!(
        cluster.image().is_live(inherits.leader),
        "the controller's setting lets an out-of-sync replica lead: {inherits:?}"
    );
    let refuses = partition_of(&cluster, "refuses");
    assert_eq!(
        refuses.leader,
        NodeId(-1),
        "the topic's own false wins: {refuses:?}"
    );
    cluster.check_invariants();
}
