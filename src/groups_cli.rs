//! `ringlog groups`: consumer groups seen from outside, like Kafka's kafka-consumer-groups —
//! list them, describe one (members, assignments, committed offset, log end offset and lag per
//! partition), reset its offsets (dry run unless `--execute`), delete one.
//!
//! It talks through `ringlog_net::client`, the blocking tool client (group requests to the
//! group's coordinator, ListOffsets to each partition's leader), so it works against any
//! Kafka-compatible broker, not only ringlog.

use std::collections::HashMap;
use std::process::ExitCode;

use bytes::Buf;
use clap::{Args as ClapArgs, Subcommand};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerProtocolAssignment, DeleteGroupsRequest,
    DescribeGroupsRequest, GroupId, ListGroupsRequest, OffsetCommitRequest,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;
use ringlog_net::client::blocking::Cluster;
use ringlog_net::client::error::check_code;
use ringlog_net::client::wire::topic_name;

/// The client id the groups tool sends in every request header.
const CLIENT_ID: &str = "ringlog-groups";

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// A broker to bootstrap from
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    bootstrap_server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every consumer group with its state.
    List,
    /// Members, assignments, committed offsets, log end offsets and lag of a group.
    Describe { group: String },
    /// Move a group's committed offsets (the group must have no members). Prints the plan;
    /// commits it only with --execute.
    ResetOffsets {
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
        #[arg(long, group = "target")]
        to_earliest: bool,
        #[arg(long, group = "target")]
        to_latest: bool,
        #[arg(long, group = "target", value_name = "OFFSET")]
        to_offset: Option<i64>,
        #[arg(long)]
        execute: bool,
    },
    /// Delete a group without members, with its committed offsets.
    Delete { group: String },
}

pub fn run(args: &Args) -> ExitCode {
    match execute(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn execute(args: &Args) -> Result<(), String> {
    let mut cluster = Cluster::connect(&args.bootstrap_server, CLIENT_ID)?;
    match &args.command {
        Command::List => list(&mut cluster),
        Command::Describe { group } => describe(&mut cluster, group),
        Command::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
            execute,
        } => {
            let target = match (to_earliest, to_latest, to_offset) {
                (true, _, _) => Target::Earliest,
                (_, true, _) => Target::Latest,
                (_, _, Some(offset)) => Target::Offset(*offset),
                _ => return Err("say where to: --to-earliest, --to-latest or --to-offset N".into()),
            };
            reset(&mut cluster, group, topic, target, *execute)
        }
        Command::Delete { group } => delete(&mut cluster, group),
    }
}

fn list(cluster: &mut Cluster) -> Result<(), String> {
    let response = cluster.bootstrap().call(4, &ListGroupsRequest::default())?;
    check_code(response.error_code, || "ListGroups".to_owned())?;
    println!("{:<40} {:<20} PROTOCOL-TYPE", "GROUP", "STATE");
    let mut groups = response.groups;
    groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    for group in groups {
        println!(
            "{:<40} {:<20} {}",
            group.group_id.as_str(),
            group.group_state.as_str(),
            group.protocol_type.as_str()
        );
    }
    Ok(())
}

/// Who owns each partition: "member-id host client-id" by (topic, partition).
type Owners = HashMap<(String, i32), String>;

fn owner_label(member_id: &str, host: &str, client_id: &str) -> String {
    format!("{member_id} {host} {client_id}")
}

fn describe(cluster: &mut Cluster, group: &str) -> Result<(), String> {
    let owners = match describe_consumer_group(cluster, group)? {
        Some(owners) => owners,
        None => describe_classic_group(cluster, group)?,
    };
    print_partitions(cluster, group, &owners)
}

/// A group of the new protocol (KIP-848) through ConsumerGroupDescribe; `None` when the group
/// is not one (GROUP_ID_NOT_FOUND) or the broker does not know the API.
fn describe_consumer_group(cluster: &mut Cluster, group: &str) -> Result<Option<Owners>, String> {
    let node = cluster.coordinator_node(group)?;
    let request = ConsumerGroupDescribeRequest::default()
        .with_group_ids(vec![GroupId(StrBytes::from_string(group.to_owned()))]);
    let answer = cluster.node(node)?.call(0, &request);
    let Ok(response) = answer else {
        // A broker without the API closes the connection: open a fresh one for what follows.
        cluster.forget(node);
        return Ok(None);
    };
    let described = response.groups.first().ok_or("no group in the answer")?;
    if described.error_code == ResponseError::GroupIdNotFound.code() {
        return Ok(None);
    }
    check_code(described.error_code, || "ConsumerGroupDescribe".to_owned())?;
    let mut owners = Owners::new();
    for member in &described.members {
        let who = owner_label(&member.member_id, &member.client_host, &member.client_id);
        for topic in &member.assignment.topic_partitions {
            for &p in &topic.partitions {
                owners.insert((topic.topic_name.to_string(), p), who.clone());
            }
        }
    }
    println!(
        "group {group}: state {}, protocol consumer (KIP-848), assignor {}, group epoch {}, \
         assignment epoch {}, {} member(s)",
        described.group_state.as_str(),
        described.assignor_name.as_str(),
        described.group_epoch,
        described.assignment_epoch,
        described.members.len()
    );
    Ok(Some(owners))
}

fn describe_classic_group(cluster: &mut Cluster, group: &str) -> Result<Owners, String> {
    let request = DescribeGroupsRequest::default()
        .with_groups(vec![GroupId(StrBytes::from_string(group.to_owned()))]);
    let response = cluster.coordinator(group)?.call(5, &request)?;
    let described = response.groups.first().ok_or("no group in the answer")?;
    check_code(described.error_code, || "DescribeGroups".to_owned())?;
    // Who owns each partition, from the members' consumer-protocol assignments.
    let mut owners = Owners::new();
    for member in &described.members {
        let who = owner_label(&member.member_id, &member.client_host, &member.client_id);
        let mut bytes = member.member_assignment.clone();
        if bytes.remaining() < 2 {
            continue;
        }
        let version = bytes.get_i16();
        if let Ok(assignment) = ConsumerProtocolAssignment::decode(&mut bytes, version) {
            for topic in assignment.assigned_partitions {
                for p in topic.partitions {
                    owners.insert((topic.topic.to_string(), p), who.clone());
                }
            }
        }
    }
    println!(
        "group {group}: state {}, protocol {} {}, {} member(s)",
        described.group_state.as_str(),
        described.protocol_type.as_str(),
        described.protocol_data.as_str(),
        described.members.len()
    );
    Ok(owners)
}

/// Committed offset, log end offset, lag and owner of every partition the group has a commit
/// for or an owner of.
fn print_partitions(cluster: &mut Cluster, group: &str, owners: &Owners) -> Result<(), String> {
    let committed = cluster.committed(group, None)?;
    let mut topics: Vec<String> = committed.keys().map(|(t, _)| t.clone()).collect();
    topics.extend(owners.keys().map(|(t, _)| t.clone()));
    topics.sort();
    topics.dedup();
    println!(
        "\n{:<30} {:>9} {:>15} {:>15} {:>10}  CONSUMER-ID HOST CLIENT-ID",
        "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"
    );
    for topic in topics {
        let ends = cluster.offsets(&topic, -1)?;
        for (partition, end) in ends {
            let current = committed
                .get(&(topic.clone(), partition))
                .copied()
                .filter(|&o| o >= 0);
            let owner = owners.get(&(topic.clone(), partition));
            if current.is_none() && owner.is_none() {
                continue;
            }
            let lag = current.map_or("-".to_owned(), |c| (end - c).to_string());
            println!(
                "{:<30} {:>9} {:>15} {:>15} {:>10}  {}",
                topic,
                partition,
                current.map_or("-".to_owned(), |c| c.to_string()),
                end,
                lag,
                owner.map_or("-", String::as_str)
            );
        }
    }
    Ok(())
}

enum Target {
    Earliest,
    Latest,
    Offset(i64),
}

fn reset(
    cluster: &mut Cluster,
    group: &str,
    topic: &str,
    target: Target,
    execute: bool,
) -> Result<(), String> {
    let earliest = cluster.offsets(topic, -2)?;
    let latest = cluster.offsets(topic, -1)?;
    let plan: Vec<(i32, i64)> = earliest
        .iter()
        .map(|(&partition, &low)| {
            let high = latest.get(&partition).copied().unwrap_or(low);
            let offset = match target {
                Target::Earliest => low,
                Target::Latest => high,
                Target::Offset(offset) => offset.clamp(low, high),
            };
            (partition, offset)
        })
        .collect();
    println!("{:<30} {:>9} {:>15}", "TOPIC", "PARTITION", "NEW-OFFSET");
    for (partition, offset) in &plan {
        println!("{topic:<30} {partition:>9} {offset:>15}");
    }
    if !execute {
        println!("\n(dry run: add --execute to commit these offsets)");
        return Ok(());
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(
                plan.iter()
                    .map(|&(p, offset)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                    })
                    .collect(),
            )]);
    let response = cluster.coordinator(group)?.call(8, &request)?;
    for topic in response.topics {
        for p in topic.partitions {
            check_code(p.error_code, || {
                format!(
                    "committing partition {} (a group with members cannot be reset)",
                    p.partition_index
                )
            })?;
        }
    }
    println!("\ncommitted");
    Ok(())
}

fn delete(cluster: &mut Cluster, group: &str) -> Result<(), String> {
    let request = DeleteGroupsRequest::default()
        .with_groups_names(vec![GroupId(StrBytes::from_string(group.to_owned()))]);
    let response = cluster.coordinator(group)?.call(2, &request)?;
    for result in response.results {
        check_code(result.error_code, || {
            format!("deleting {}", result.group_id.as_str())
        })?;
    }
    println!("deleted group {group}");
    Ok(())
}
