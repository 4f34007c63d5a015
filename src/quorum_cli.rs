//! `ringlog metadata-quorum`: the controller quorum seen from outside, like Kafka's
//! kafka-metadata-quorum: `describe --status` prints the leader, its epoch, the high watermark,
//! the followers' greatest lag and the voters; `describe --replication` a line per voter. It
//! sends DescribeQuorum through any broker, which carries it to the quorum's leader, so it
//! works against any KRaft-based broker too.

use std::process::ExitCode;

use clap::{Args as ClapArgs, Subcommand};
use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::describe_quorum_response::PartitionData as QuorumPartition;
use kafka_protocol::messages::{DescribeQuorumRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use ringlog_net::client::blocking::Connection;
use ringlog_net::client::error::check_code;

/// The client id the tool sends in every request header.
const CLIENT_ID: &str = "ringlog-metadata-quorum";

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// A broker to send the request through
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    bootstrap_server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The quorum's state (--status, the default) or each voter's replication (--replication).
    Describe {
        #[arg(long)]
        status: bool,
        #[arg(long, conflicts_with = "status")]
        replication: bool,
    },
}

pub fn run(args: &Args) -> ExitCode {
    match describe(args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("ringlog metadata-quorum: {message}");
            ExitCode::FAILURE
        }
    }
}

fn describe(args: &Args) -> Result<String, String> {
    let Command::Describe { replication, .. } = args.command;
    let mut connection =
        Connection::open(&args.bootstrap_server, CLIENT_ID).map_err(|e| e.to_string())?;
    let version = connection
        .version::<DescribeQuorumRequest>(0..=1)
        .map_err(|e| e.to_string())?;
    let request = DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
        .with_partitions(vec![PartitionData::default().with_partition_index(0)])]);
    let response = connection
        .call(version, &request)
        .map_err(|e| e.to_string())?;
    check_code(response.error_code, || "DescribeQuorum".to_owned()).map_err(|e| e.to_string())?;
    let partition = response
        .topics
        .first()
        .and_then(|topic| topic.partitions.first())
        .ok_or("the answer names no metadata partition")?;
    check_code(partition.error_code, || "DescribeQuorum".to_owned()).map_err(|e| e.to_string())?;
    Ok(if replication {
        replication_text(partition)
    } else {
        status_text(partition)
    })
}

/// The leader's own log end (the high watermark if it does not list itself).
fn leader_log_end(partition: &QuorumPartition) -> i64 {
    partition
        .current_voters
        .iter()
        .find(|voter| voter.replica_id == partition.leader_id)
        .map_or(partition.high_watermark, |voter| voter.log_end_offset)
}

/// Kafka's `--status` layout.
fn status_text(partition: &QuorumPartition) -> String {
    let leader_end = leader_log_end(partition);
    let leader_fetch = partition
        .current_voters
        .iter()
        .find(|voter| voter.replica_id == partition.leader_id)
        .map_or(-1, |voter| voter.last_caught_up_timestamp);
    let followers = partition
        .current_voters
        .iter()
        .filter(|voter| voter.replica_id != partition.leader_id);
    let max_lag = followers
        .clone()
        .map(|voter| (leader_end - voter.log_end_offset).max(0))
        .max()
        .unwrap_or(0);
    let max_lag_ms = followers
        .filter(|voter| voter.last_caught_up_timestamp >= 0 && leader_fetch >= 0)
        .map(|voter| (leader_fetch - voter.last_caught_up_timestamp).max(0))
        .max()
        .unwrap_or(0);
    let ids = |voters: &[kafka_protocol::messages::describe_quorum_response::ReplicaState]| {
        voters
            .iter()
            .map(|voter| voter.replica_id.0.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "LeaderId:               {}\nLeaderEpoch:            {}\nHighWatermark:          {}\n\
         MaxFollowerLag:         {max_lag}\nMaxFollowerLagTimeMs:   {max_lag_ms}\n\
         CurrentVoters:          [{}]\nCurrentObservers:       [{}]\n",
        partition.leader_id.0,
        partition.leader_epoch,
        partition.high_watermark,
        ids(&partition.current_voters),
        ids(&partition.observers),
    )
}

/// Kafka's `--replication` layout: a line per voter, the leader first.
fn replication_text(partition: &QuorumPartition) -> String {
    let leader_end = leader_log_end(partition);
    let mut voters: Vec<_> = partition.current_voters.iter().collect();
    voters.sort_by_key(|voter| (voter.replica_id != partition.leader_id, voter.replica_id.0));
    let mut text = String::from(
        "NodeId\tLogEndOffset\tLag\tLastFetchTimestamp\tLastCaughtUpTimestamp\tStatus\n",
    );
    for voter in voters {
        let status = if voter.replica_id == partition.leader_id {
            "Leader"
        } else {
            "Follower"
        };
        text.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{status}\n",
            voter.replica_id.0,
            voter.log_end_offset,
            (leader_end - voter.log_end_offset).max(0),
            voter.last_fetch_timestamp,
            voter.last_caught_up_timestamp,
        ));
    }
    text
}
