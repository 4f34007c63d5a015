//! One ControllerNode driven by hand: refusals, garbage from peers, a one-voter quorum.

use ringlog_cluster::quorum::{Recovered, VOTERS_MAX};
use ringlog_cluster::sim;
use ringlog_cluster::{Command, CommandError, ControllerNode, HostId, Input, Output, Reply};

fn node(id: u32, voters: u32) -> ControllerNode {
    let voters: Vec<HostId> = (0..voters).map(HostId).collect();
    ControllerNode::new(HostId(id), &voters, sim::settings(), 7).expect("starts")
}

/// Makes every persist batch durable at once, as a driver with an instant disk would.
fn settle(node: &mut ControllerNode, mut output: Output, disk: &mut Recovered) -> Vec<Output> {
    let mut outputs = Vec::new();
    while let Some(batch) = output.persist.take() {
        disk.absorb(&batch);
        outputs.push(output);
        output = node.handle(Input::Persisted {
            number: batch.number,
        });
    }
    outputs.push(output);
    outputs
}

#[test]
fn a_follower_refuses_commands_with_the_leader_it_knows() {
    let mut follower = node(1, 3);
    let output = follower.handle(Input::Client {
        id: 9,
        command: Command::ElectPreferred,
    });
    let expected = Err(CommandError::NotController { leader: None });
    assert_eq!(output.replies, vec![(9, expected)]);
}

#[test]
fn garbage_from_peers_is_dropped_and_counted() {
    let mut voter = node(0, 3);
    let mut rng = ringlog_cluster::rng::Rng::new(1);
    for length in 0..200 {
        let bytes: Vec<u8> = (0..length).map(|_| rng.next_u64() as u8).collect();
        let output = voter.handle(Input::Peer {
            from: HostId(1),
            bytes,
        });
        assert!(output.send_now.is_empty() && output.persist.is_none());
    }
    assert_eq!(voter.stats().peer_messages_dropped, 200);
}

#[test]
fn a_one_voter_quorum_elects_itself_decides_and_restores() {
    let mut voter = node(0, 1);
    let mut disk = Recovered::default();
    let mut now_ms = 0;
    while !voter.is_active() {
        now_ms += 50;
        let output = voter.handle(Input::Tick { now_ms });
        settle(&mut voter, output, &mut disk);
        assert!(now_ms < 5_000, "no election");
    }
    let command = Command::DeleteTopics(vec!["missing".into()]);
    let output = voter.handle(Input::Client { id: 1, command });
    let Some((1, Ok(Reply::DeleteTopics(results)))) = output.replies.first().cloned() else {
        panic!("answered at once: {:?}", output.replies);
    };
    assert!(results[0].is_err());
    let registration = ringlog_cluster::records::Registration {
        host: HostId(100),
        incarnation: 1,
        endpoints: vec![],
        rack: None,
        cores: 1,
        clean_shutdown_epoch: None,
    };
    let output = voter.handle(Input::Client {
        id: 2,
        command: Command::Register(registration),
    });
    let outputs = settle(&mut voter, output, &mut disk);
    let replies: Vec<_> = outputs.iter().flat_map(|o| o.replies.clone()).collect();
    assert!(
        matches!(replies[..], [(2, Ok(Reply::Registered { epoch: 2 }))]),
        "{replies:?}"
    );
    let image = voter.image().clone();
    let restored = ControllerNode::restore(HostId(0), &[HostId(0)], disk, sim::settings(), 8);
    let mut restored = restored.expect("restores");
    let output = restored.handle(Input::Tick { now_ms: 0 });
    assert_eq!(restored.image(), &image, "{:?}", output.committed);
    assert!(ControllerNode::new(HostId(5), &[HostId(0)], sim::settings(), 1).is_err());
    let too_many: Vec<HostId> = (0..=VOTERS_MAX as u32).map(HostId).collect();
    assert!(ControllerNode::new(HostId(0), &too_many, sim::settings(), 1).is_err());
}
