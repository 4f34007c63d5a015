//! The blocking tool client (`ringlog_net::client::blocking`, used by `ringlog groups` and
//! `ringlog-bench`) against the real broker: version negotiation, creating topics with configs
//! (each partition then has a leader), refusing a bad one, deleting and recreating them.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Broker;
use kafka_protocol::messages::CreateTopicsRequest;
use ringlog_net::client::blocking::{Cluster, NewTopic};
use ringlog_net::client::ClientError;

const TIMEOUT: Duration = Duration::from_secs(10);

fn topic(name: &str, partitions: i32) -> NewTopic {
    NewTopic {
        name: name.to_owned(),
        partitions,
        replication_factor: 1,
        configs: BTreeMap::from([("retention.ms".to_owned(), "600000".to_owned())]),
    }
}

#[test]
fn creates_and_deletes_topics_on_every_core() {
    let broker = Broker::start("admin-client", 2, &[]);
    let mut cluster = Cluster::connect(&broker.address(), "admin-test").expect("connect");
    let version = cluster
        .bootstrap()
        .version::<CreateTopicsRequest>(2..=7)
        .expect("CreateTopics version");
    assert!((2..=7).contains(&version), "negotiated {version}");

    let topics = [topic("admin-a", 3), topic("admin-b", 1)];
    cluster.create_topics(&topics, TIMEOUT).expect("create");
    let leaders = cluster.leaders("admin-a").expect("leaders");
    assert_eq!(leaders.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(leaders.values().all(|&leader| leader >= 0), "{leaders:?}");
    let ends = cluster.offsets("admin-a", -1).expect("offsets");
    assert_eq!(ends, BTreeMap::from([(0, 0), (1, 0), (2, 0)]));

    let refused = cluster.create_topics(&[topic("admin-c", 0)], TIMEOUT);
    assert!(
        matches!(refused, Err(ClientError::Kafka { .. })),
        "zero partitions: {refused:?}"
    );

    let names = vec!["admin-a".to_owned(), "admin-b".to_owned()];
    cluster.delete_topics(&names, TIMEOUT).expect("delete");
    assert!(cluster.leaders("admin-a").is_err(), "admin-a still listed");
    // Deleting what is gone is not an error; recreating with another layout works.
    cluster
        .delete_topics(&names, TIMEOUT)
        .expect("delete again");
    cluster
        .create_topics(&[topic("admin-a", 1)], TIMEOUT)
        .expect("recreate");
    assert_eq!(cluster.leaders("admin-a").expect("leaders").len(), 1);
}
