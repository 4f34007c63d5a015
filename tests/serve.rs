//! End-to-end tests of `ringlog serve`: each starts the real binary on a free loopback port
//! with one core and talks to it over TCP, with raw Kafka requests (kafka-protocol) and with
//! kcat (librdkafka 2.0.2 on Debian, which reads ApiVersions v3 replies strictly).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::ResponseError;

use common::Broker;

fn send_request<R: Encodable + HeaderVersion>(
    stream: &mut TcpStream,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("serve-test")));
    let mut payload = BytesMut::new();
    header
        .encode(&mut payload, R::header_version(version))
        .expect("encode header");
    body.encode(&mut payload, version).expect("encode body");
    let mut frame = BytesMut::new();
    frame.put_i32(i32::try_from(payload.len()).expect("small"));
    frame.put(payload);
    stream.write_all(&frame).expect("send request");
}

fn read_response<R: Decodable + HeaderVersion>(
    stream: &mut TcpStream,
    version: i16,
    correlation_id: i32,
) -> R {
    let mut size = [0_u8; 4];
    stream.read_exact(&mut size).expect("response size");
    let mut payload = vec![0_u8; usize::try_from(i32::from_be_bytes(size)).expect("size")];
    stream.read_exact(&mut payload).expect("response payload");
    let mut payload = Bytes::from(payload);
    let header = ResponseHeader::decode(&mut payload, R::header_version(version)).expect("header");
    assert_eq!(header.correlation_id, correlation_id);
    let body = R::decode(&mut payload, version).expect("decode response");
    assert_eq!(payload.remaining(), 0, "response has trailing bytes");
    body
}

fn api_versions(stream: &mut TcpStream, version: i16, correlation_id: i32) -> ApiVersionsResponse {
    let request = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("serve-test"))
        .with_client_software_version(StrBytes::from_static_str("1"));
    send_request(
        stream,
        ApiKey::ApiVersions,
        version,
        correlation_id,
        &request,
    );
    read_response(stream, version, correlation_id)
}

fn metadata(
    stream: &mut TcpStream,
    version: i16,
    correlation_id: i32,
    request: &MetadataRequest,
) -> MetadataResponse {
    send_request(stream, ApiKey::Metadata, version, correlation_id, request);
    read_response(stream, version, correlation_id)
}

fn assert_api_ranges(response: &ApiVersionsResponse) {
    assert_eq!(response.error_code, 0);
    let ranges: Vec<(i16, i16, i16)> = response
        .api_keys
        .iter()
        .map(|api| (api.api_key, api.min_version, api.max_version))
        .collect();
    let expected = [
        (ApiKey::Produce, 3, 11),
        (ApiKey::Fetch, 4, 15),
        (ApiKey::ListOffsets, 1, 10),
        (ApiKey::Metadata, 0, 12),
        (ApiKey::ApiVersions, 0, 4),
        (ApiKey::CreateTopics, 2, 7),
        (ApiKey::DeleteTopics, 1, 6),
        (ApiKey::DescribeConfigs, 1, 4),
        (ApiKey::AlterConfigs, 0, 2),
        (ApiKey::CreatePartitions, 0, 3),
        (ApiKey::IncrementalAlterConfigs, 0, 1),
        (ApiKey::DescribeCluster, 0, 1),
        (ApiKey::ElectLeaders, 0, 2),
        (ApiKey::DescribeQuorum, 0, 1),
        (ApiKey::DescribeTopicPartitions, 0, 0),
        (ApiKey::FindCoordinator, 0, 4),
        (ApiKey::JoinGroup, 0, 9),
        (ApiKey::SyncGroup, 0, 5),
        (ApiKey::Heartbeat, 0, 4),
        (ApiKey::LeaveGroup, 0, 5),
        (ApiKey::OffsetCommit, 2, 9),
        (ApiKey::OffsetFetch, 1, 9),
        (ApiKey::ListGroups, 0, 5),
        (ApiKey::DescribeGroups, 0, 5),
        (ApiKey::DeleteGroups, 0, 2),
        (ApiKey::OffsetDelete, 0, 0),
        (ApiKey::InitProducerId, 0, 5),
        (ApiKey::OffsetForLeaderEpoch, 2, 4),
        (ApiKey::ConsumerGroupHeartbeat, 0, 1),
        (ApiKey::ConsumerGroupDescribe, 0, 1),
    ];
    let expected: Vec<(i16, i16, i16)> = expected
        .iter()
        .map(|&(api, min, max)| (api as i16, min, max))
        .collect();
    assert_eq!(ranges, expected);
}

/// Asserts the server closed the connection: a read sees end of stream or a reset.
fn assert_closed(stream: &mut TcpStream) {
    let mut buffer = [0_u8; 64];
    match stream.read(&mut buffer) {
        Ok(0) => {}
        Ok(count) => panic!("expected a closed connection, got {count} bytes"),
        Err(error) => assert!(
            matches!(
                error.kind(),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ),
            "expected a closed connection, got {error}"
        ),
    }
}

#[test]
fn raw_client_gets_api_versions_and_metadata_for_the_advertised_listener() {
    let broker = Broker::start(
        "raw",
        1,
        &[
            (
                "RINGLOG_ADVERTISED_LISTENER",
                "broker.example:19093".to_owned(),
            ),
            // An unknown topic must stay unknown below.
            ("RINGLOG_AUTO_CREATE_TOPICS_ENABLE", "false".to_owned()),
        ],
    );
    let mut stream = broker.connect();
    for (version, correlation_id) in [(3, 1), (4, 2), (0, 3)] {
        assert_api_ranges(&api_versions(&mut stream, version, correlation_id));
    }

    let all_topics = MetadataRequest::default().with_topics(None);
    for (version, correlation_id) in [(1, 10), (9, 11), (12, 12)] {
        let response = metadata(&mut stream, version, correlation_id, &all_topics);
        assert_eq!(response.brokers.len(), 1);
        let broker_entry = &response.brokers[0];
        assert_eq!(broker_entry.node_id.0, 0);
        assert_eq!(broker_entry.host.as_str(), "broker.example");
        assert_eq!(broker_entry.port, 19093);
        assert_eq!(response.controller_id.0, 0);
        // Only the internal offsets topic exists (internal from v1).
        let names: Vec<&str> = response
            .topics
            .iter()
            .filter_map(|topic| topic.name.as_ref().map(|name| name.0.as_str()))
            .collect();
        assert_eq!(names, ["__consumer_offsets"]);
        assert!(response.topics[0].is_internal);
        if version >= 2 {
            // The cluster id is the one kept in the data directory's meta.properties.
            let properties = std::fs::read_to_string(broker.data_dir.join("meta.properties"))
                .expect("meta.properties");
            let stored = properties
                .lines()
                .find_map(|line| line.strip_prefix("cluster.id="))
                .expect("cluster.id line");
            let cluster_id = response.cluster_id.as_ref().expect("cluster id");
            assert_eq!(cluster_id.as_str(), stored);
        }
    }

    let named = MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
        .with_name(Some(TopicName(StrBytes::from_static_str("orders"))))]));
    let response = metadata(&mut stream, 12, 13, &named);
    assert_eq!(response.topics.len(), 1);
    let topic = &response.topics[0];
    assert_eq!(
        topic.name.as_ref().map(|name| name.0.as_str()),
        Some("orders")
    );
    assert_eq!(
        topic.error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
}

#[test]
fn unsupported_api_versions_version_gets_an_error_in_v0_format() {
    let broker = Broker::start("unsupported-api-versions", 1, &[]);
    let mut stream = broker.connect();
    // kafka-protocol cannot encode a version it does not know; this is what a future client
    // sends: key 18, version 9, correlation id 5, null client id, no tagged fields.
    let request = frame(&[0, 18, 0, 9, 0, 0, 0, 5, 0xff, 0xff, 0, 0]);
    stream.write_all(&request).expect("send");
    let response: ApiVersionsResponse = read_response(&mut stream, 0, 5);
    assert_eq!(
        response.error_code,
        ResponseError::UnsupportedVersion.code()
    );
    // The client retries with a listed version on the same connection.
    assert_api_ranges(&api_versions(&mut stream, 3, 6));
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = i32::try_from(payload.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(payload);
    out
}

#[test]
fn bad_input_closes_only_its_own_connection() {
    let broker = Broker::start("bad-input", 1, &[]);
    let mut healthy = broker.connect();
    assert_api_ranges(&api_versions(&mut healthy, 3, 1));

    let unknown_key = frame(&[0x03, 0xe7, 0, 0, 0, 0, 0, 1, 0xff, 0xff]);
    let produce = frame(&[0, 0, 0, 9, 0, 0, 0, 1, 0xff, 0xff, 0]);
    // A Metadata v1 request claiming two billion topics in four bytes.
    let huge_array = frame(&[0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff]);
    let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let oversized = vec![0x7f, 0xff, 0xff, 0xff, 1, 2, 3];
    let malformed_body = frame(&[0, 18, 0, 3, 0, 0, 0, 1, 0, 0, 0x7f]);
    let cases: [(&str, Vec<u8>, bool); 7] = [
        ("garbage", garbage, false),
        ("size 0x7fffffff", oversized, false),
        ("unknown API key", unknown_key, false),
        ("Produce with a truncated body", produce, false),
        ("claimed huge array", huge_array, false),
        ("malformed ApiVersions body", malformed_body, false),
        ("truncated frame", vec![0, 0, 0, 100, 0, 18, 0, 3], true),
    ];
    for (name, bytes, then_half_close) in cases {
        let mut stream = broker.connect();
        stream.write_all(&bytes).expect(name);
        if then_half_close {
            stream.shutdown(Shutdown::Write).expect("half close");
        }
        assert_closed(&mut stream);
        // Neither the old connection nor a new one is disturbed.
        assert_api_ranges(&api_versions(&mut healthy, 4, 2));
        assert_api_ranges(&api_versions(&mut broker.connect(), 3, 3));
    }
}

#[test]
fn kcat_lists_the_broker() {
    let broker = Broker::start("kcat", 1, &[]);
    let output = Command::new("timeout")
        .args([
            "30",
            "kcat",
            "-b",
            &broker.address(),
            "-L",
            "-J",
            "-m",
            "10",
        ])
        .output()
        .expect("run kcat (scripts/test.sh installs it: apt-get install kcat)");
    assert!(
        output.status.success(),
        "kcat failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listing: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("kcat prints JSON");
    let brokers = listing["brokers"].as_array().expect("brokers array");
    assert_eq!(brokers.len(), 1, "{listing}");
    assert_eq!(brokers[0]["id"], 0);
    assert_eq!(brokers[0]["name"], broker.address());
    let topics: Vec<&str> = listing["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .filter_map(|topic| topic["topic"].as_str())
        .collect();
    assert_eq!(topics, ["__consumer_offsets"], "{listing}");
}

#[test]
fn sigterm_exits_zero_within_seconds_with_a_client_connected() {
    let mut broker = Broker::start("sigterm", 1, &[]);
    let mut idle = broker.connect();
    assert_api_ranges(&api_versions(&mut idle, 3, 1));
    let pid = i32::try_from(broker.child.id()).expect("pid fits");
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = broker
        .wait_exit(Duration::from_secs(5))
        .expect("exits within 5 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{status}");
    assert_closed(&mut idle);
}

/// Runs kcat with a time limit, feeding `input` on stdin; returns stdout.
fn kcat(args: &[&str], input: &[u8]) -> String {
    let mut child = Command::new("timeout")
        .arg("60")
        .arg("kcat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kcat (scripts/test.sh installs it: apt-get install kcat)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("feed kcat");
    let output = child.wait_with_output().expect("kcat output");
    assert!(
        output.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// Whether this machine has the two cores a two-shard test needs; says so when it has not.
fn has_two_cores() -> bool {
    let enough = std::thread::available_parallelism().map_or(1, usize::from) >= 2;
    if !enough {
        eprintln!("skipped: needs 2 cores");
    }
    enough
}

/// Two shards, partitions on both: records produced through either topology (one node that
/// forwards between cores, or a node per core) all come back, in order per partition, with
/// contiguous offsets, and Metadata names the owning core's node as leader.
#[test]
fn two_shards_serve_partitions_on_both_cores_in_both_topologies() {
    if !has_two_cores() {
        return;
    }
    for node_per_shard in [false, true] {
        let broker = Broker::start(
            &format!("two-shards-{node_per_shard}"),
            2,
            &[
                ("RINGLOG_NUM_PARTITIONS", "4".to_owned()),
                ("RINGLOG_NODE_PER_SHARD", node_per_shard.to_string()),
            ],
        );
        let address = broker.address();
        let input: String = (0..400).map(|i| format!("key{i}:value{i}\n")).collect();
        kcat(
            &["-b", &address, "-P", "-t", "spread", "-K:"],
            input.as_bytes(),
        );
        let consumed = kcat(
            &[
                "-b",
                &address,
                "-C",
                "-t",
                "spread",
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%p %o %k %s\n",
            ],
            b"",
        );
        let mut next_offset = [0_i64; 4];
        let mut seen = std::collections::BTreeSet::new();
        for line in consumed.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let [partition, offset, key, value] = fields[..] else {
                panic!("unexpected line {line:?}");
            };
            let partition: usize = partition.parse().expect("partition");
            let offset: i64 = offset.parse().expect("offset");
            assert_eq!(
                offset, next_offset[partition],
                "offsets contiguous in {line:?}"
            );
            next_offset[partition] += 1;
            assert_eq!(key.strip_prefix("key"), value.strip_prefix("value"));
            assert!(seen.insert(key.to_owned()), "{key} twice");
        }
        assert_eq!(seen.len(), 400, "node_per_shard={node_per_shard}");
        assert!(
            next_offset.iter().all(|&n| n > 0),
            "every partition used: {next_offset:?}"
        );

        let listing: serde_json::Value =
            serde_json::from_str(&kcat(&["-b", &address, "-L", "-J", "-t", "spread"], b""))
                .expect("kcat prints JSON");
        let brokers = listing["brokers"].as_array().expect("brokers");
        let partitions = listing["topics"][0]["partitions"]
            .as_array()
            .expect("partitions");
        let leaders: std::collections::BTreeSet<i64> = partitions
            .iter()
            .map(|p| p["leader"].as_i64().expect("leader"))
            .collect();
        if node_per_shard {
            assert_eq!(brokers.len(), 2, "{listing}");
            assert_eq!(leaders.len(), 2, "partitions led by both cores: {listing}");
        } else {
            assert_eq!(brokers.len(), 1, "{listing}");
            assert_eq!(leaders.into_iter().collect::<Vec<_>>(), vec![0]);
        }
    }
}

/// The CPUs a thread may run on, as /proc prints them (`0-1`, `3`).
fn cpus_allowed(status_path: &std::path::Path) -> String {
    let status = std::fs::read_to_string(status_path).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_owned()
}

/// Each shard's threads and the CPUs they may run on, by thread name.
fn shard_cpus(pid: u32) -> Vec<(String, String)> {
    let mut shards = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let task = task.expect("task").path();
        let Ok(name) = std::fs::read_to_string(task.join("comm")) else {
            continue; // the thread exited
        };
        if name.starts_with("ringlog-shard-") {
            shards.push((name.trim().to_owned(), cpus_allowed(&task.join("status"))));
        }
    }
    shards.sort();
    shards
}

#[test]
fn shards_are_pinned_to_one_cpu_each_unless_pin_cores_is_false() {
    let own_cpus = cpus_allowed(std::path::Path::new("/proc/self/status"));
    if !has_two_cores() {
        return;
    }
    for pin in [true, false] {
        let broker = Broker::start(
            &format!("pin-cores-{pin}"),
            2,
            &[("RINGLOG_PIN_CORES", pin.to_string())],
        );
        let shards = shard_cpus(broker.child.id());
        let cpus_of = |shard: &str| -> Vec<&String> {
            let named = shards.iter().filter(|(name, _)| name == shard);
            named.map(|(_, cpus)| cpus).collect()
        };
        let (zero, one) = (cpus_of("ringlog-shard-0"), cpus_of("ringlog-shard-1"));
        assert!(
            !zero.is_empty() && !one.is_empty(),
            "both shards' threads: {shards:?}"
        );
        if pin {
            for (name, cpus) in &shards {
                assert!(
                    cpus.parse::<usize>().is_ok(),
                    "{name} on one CPU: {shards:?}"
                );
            }
            assert!(
                zero.iter().all(|cpu| !one.contains(cpu)),
                "different CPUs: {shards:?}"
            );
        } else {
            for (name, cpus) in &shards {
                assert_eq!(cpus, &own_cpus, "{name} may run on every CPU: {shards:?}");
            }
        }
        // An unpinned broker still serves: records in, the same records out.
        let address = broker.address();
        kcat(
            &["-b", &address, "-P", "-t", "floating"],
            b"one\ntwo\nthree\n",
        );
        let consumed = kcat(
            &[
                "-b",
                &address,
                "-C",
                "-t",
                "floating",
                "-o",
                "beginning",
                "-e",
                "-q",
            ],
            b"",
        );
        let mut values: Vec<&str> = consumed.lines().collect();
        values.sort_unstable();
        assert_eq!(values, ["one", "three", "two"], "pin_cores={pin}");
    }
}

/// A core that cannot bind its own port (node per core, port taken) stops the whole broker
/// before any core accepts a client: exit code 1 within seconds, and a line saying why.
#[test]
fn a_taken_shard_port_stops_the_broker_before_it_accepts() {
    if !has_two_cores() {
        return;
    }
    let port = common::free_port_run(3);
    // Shard 1's own port (PORT + 2) is taken.
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port + 2)).expect("bind");
    let data_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let child = Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args([
            "serve",
            "--cores",
            "2",
            "--node-per-shard",
            "true",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringlog serve");
    let output = exit_within(child, Duration::from_secs(20))
        .expect("the broker kept running with a shard that could not bind");
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("cannot listen on 127.0.0.1:{}", port + 2)),
        "{log}"
    );
}

/// Waits at most `limit` for `child` to exit and returns its output (stderr piped by the
/// caller); kills it and returns `None` if it is still running then.
fn exit_within(mut child: std::process::Child, limit: Duration) -> Option<std::process::Output> {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(child.wait_with_output().expect("output"))
}

/// glommio binds with SO_REUSEPORT, which would let a second broker share the port of a running
/// one (and take half its new connections): the second must refuse to start, saying why, and the
/// first keeps serving every connection.
#[test]
fn a_listen_port_in_use_by_another_broker_is_refused() {
    let broker = Broker::start("port-owner", 1, &[]);
    let data_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let child = Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args(["serve", "--cores", "1", "--listen"])
        .arg(broker.address())
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a second ringlog serve");
    let output = exit_within(child, Duration::from_secs(20))
        .expect("a second broker started on a port in use");
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("cannot listen on {}", broker.address())),
        "{log}"
    );
    assert!(log.contains("in use by another process"), "{log}");
    for correlation_id in 0..8 {
        let mut stream = broker.connect();
        assert_api_ranges(&api_versions(&mut stream, 3, correlation_id));
    }
}

/// A second broker on a data directory in use refuses to start, saying so, and the first keeps
/// serving.
#[test]
fn a_data_dir_in_use_is_refused() {
    let broker = Broker::start("locked", 1, &[]);
    let output = Command::new(env!("CARGO_BIN_EXE_ringlog"))
        .args(["serve", "--cores", "1", "--listen"])
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .arg("--data-dir")
        .arg(&broker.data_dir)
        .output()
        .expect("run a second broker");
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(log.contains("in use by another ringlog process"), "{log}");
    let mut stream = broker.connect();
    assert_api_ranges(&api_versions(&mut stream, 3, 1));
}

#[test]
fn offset_for_leader_epoch_answers_where_each_epoch_ends() {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
    let broker = Broker::start("epochs", 1, &[]);
    // Three records in one batch each: the leader (epoch 0) stamps its epoch in them.
    kcat(
        &["-b", &broker.address(), "-P", "-t", "epochs", "-p", "0"],
        b"a\nb\nc\n",
    );
    let partition = |current: i32, epoch: i32, index: i32| {
        OffsetForLeaderPartition::default()
            .with_partition(index)
            .with_current_leader_epoch(current)
            .with_leader_epoch(epoch)
    };
    let request = OffsetForLeaderEpochRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("epochs")))
            .with_partitions(vec![
                partition(0, 0, 0),
                partition(5, 0, 0),
                partition(-1, 7, 0),
                partition(-1, 0, 9),
            ])]);
    let mut stream = broker.connect();
    for (version, correlation_id) in [(2, 1), (4, 2)] {
        send_request(
            &mut stream,
            ApiKey::OffsetForLeaderEpoch,
            version,
            correlation_id,
            &request,
        );
        let response: OffsetForLeaderEpochResponse =
            read_response(&mut stream, version, correlation_id);
        let answers: Vec<(i16, i32, i64)> = response.topics[0]
            .partitions
            .iter()
            .map(|p| (p.error_code, p.leader_epoch, p.end_offset))
            .collect();
        assert_eq!(
            answers,
            [
                // The current epoch ends at the log end.
                (0, 0, 3),
                // A caller that knows a newer epoch than the leader's.
                (ResponseError::UnknownLeaderEpoch.code(), -1, -1),
                // An epoch above every one the log has: unknown (Kafka's answer).
                (0, -1, -1),
                (ResponseError::UnknownTopicOrPartition.code(), -1, -1),
            ],
            "version {version}"
        );
    }
}

#[test]
fn follower_fetches_from_a_non_replica_or_with_a_wrong_epoch_get_kafka_errors() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
    let broker = Broker::start("follower-fetch", 1, &[]);
    kcat(
        &["-b", &broker.address(), "-P", "-t", "replicas", "-p", "0"],
        b"a\nb\n",
    );
    let fetch = |replica: i32, current_epoch: i32, offset: i64| {
        FetchRequest::default()
            .with_replica_id(BrokerId(replica))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("replicas")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(current_epoch)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(-1)
                    .with_partition_max_bytes(1 << 20)])])
    };
    let mut stream = broker.connect();
    let cases = [
        // Node 7 holds no replica of the partition.
        (fetch(7, 0, 0), ResponseError::NotLeaderOrFollower.code()),
        // A fetcher that knows a newer leader epoch than this leader's.
        (fetch(-1, 9, 0), ResponseError::UnknownLeaderEpoch.code()),
        // A consumer past the log end.
        (fetch(-1, 0, 1_000), ResponseError::OffsetOutOfRange.code()),
        // A good consumer fetch still works on the same connection.
        (fetch(-1, 0, 0), 0),
    ];
    for (index, (request, expected)) in cases.iter().enumerate() {
        let correlation_id = index as i32 + 1;
        send_request(&mut stream, ApiKey::Fetch, 12, correlation_id, request);
        let response: FetchResponse = read_response(&mut stream, 12, correlation_id);
        let partition = &response.responses[0].partitions[0];
        assert_eq!(
            partition.error_code, *expected,
            "case {index}: {partition:?}"
        );
        if *expected == 0 {
            assert_eq!(partition.high_watermark, 2);
            assert!(partition.records.as_ref().is_some_and(|r| !r.is_empty()));
        }
    }
}

#[test]
fn fetch_v13_to_v15_name_topics_by_id_and_followers_by_replica_state() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ReplicaState};
    use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
    let broker = Broker::start("fetch-by-id", 1, &[]);
    kcat(
        &["-b", &broker.address(), "-P", "-t", "by-id", "-p", "0"],
        b"a\nb\n",
    );
    let mut stream = broker.connect();
    let described = metadata(
        &mut stream,
        12,
        1,
        &MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("by-id"))))])),
    );
    let id = described.topics[0].topic_id;
    assert!(!id.is_nil(), "{described:?}");
    let unknown = uuid::Uuid::from_u128(id.as_u128() ^ 1);
    let fetch = |topic_id: uuid::Uuid| {
        FetchRequest::default()
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic_id(topic_id)
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(0)
                    .with_last_fetched_epoch(-1)
                    .with_partition_max_bytes(1 << 20)])])
    };
    let follower = |replica: i32, epoch: i64| {
        fetch(id).with_replica_state(
            ReplicaState::default()
                .with_replica_id(BrokerId(replica))
                .with_replica_epoch(epoch),
        )
    };
    let cases = [
        // Consumers by topic id, in each version that names topics so.
        (13, fetch(id), 0),
        (14, fetch(id), 0),
        (15, fetch(id), 0),
        // An id this broker has no topic of, and the nil id.
        (13, fetch(unknown), ResponseError::UnknownTopicId.code()),
        (
            15,
            fetch(uuid::Uuid::nil()),
            ResponseError::UnknownTopicId.code(),
        ),
        // Node 7 holds no replica: the answer a v12 follower fetch from it gets.
        (
            15,
            follower(7, 3),
            ResponseError::NotLeaderOrFollower.code(),
        ),
        (
            15,
            follower(7, -1),
            ResponseError::NotLeaderOrFollower.code(),
        ),
    ];
    for (index, (version, request, expected)) in cases.iter().enumerate() {
        let correlation_id = index as i32 + 2;
        send_request(
            &mut stream,
            ApiKey::Fetch,
            *version,
            correlation_id,
            request,
        );
        let response: FetchResponse = read_response(&mut stream, *version, correlation_id);
        let topic = &response.responses[0];
        // The answer names the topic as the request did.
        assert_eq!(topic.topic_id, request.topics[0].topic_id, "case {index}");
        let partition = &topic.partitions[0];
        assert_eq!(
            partition.error_code, *expected,
            "case {index} (v{version}): {partition:?}"
        );
        if *expected == 0 {
            assert_eq!(partition.high_watermark, 2);
            let records = partition.records.clone().unwrap_or_default();
            assert_eq!(batch_records(&records), (0, 2), "case {index}: {records:?}");
        }
    }
    // v12 on the same connection still names topics by name.
    let by_name = fetch(uuid::Uuid::nil()).with_topics(vec![FetchTopic::default()
        .with_topic(TopicName(StrBytes::from_static_str("by-id")))
        .with_partitions(vec![FetchPartition::default()
            .with_partition(0)
            .with_current_leader_epoch(-1)
            .with_fetch_offset(1)
            .with_last_fetched_epoch(-1)
            .with_partition_max_bytes(1 << 20)])]);
    send_request(&mut stream, ApiKey::Fetch, 12, 99, &by_name);
    let response: FetchResponse = read_response(&mut stream, 12, 99);
    assert_eq!(response.responses[0].topic.0.as_str(), "by-id");
    assert_eq!(response.responses[0].partitions[0].error_code, 0);
    assert_eq!(response.responses[0].partitions[0].high_watermark, 2);
}

/// The first base offset and the number of records of the batches in `records` (v2 batch
/// headers: the length at byte 8, the record count at byte 57).
fn batch_records(records: &[u8]) -> (i64, i32) {
    let be_i32 = |at: usize| i32::from_be_bytes(records[at..at + 4].try_into().expect("4 bytes"));
    let first = i64::from_be_bytes(records[..8].try_into().expect("a batch"));
    let (mut at, mut count) = (0, 0);
    while at < records.len() {
        count += be_i32(at + 57);
        at += 12 + usize::try_from(be_i32(at + 8)).expect("length");
    }
    (first, count)
}

#[test]
fn a_one_node_broker_answers_elect_leaders_as_not_needed_and_has_no_quorum_to_describe() {
    use kafka_protocol::messages::describe_quorum_request;
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    use kafka_protocol::messages::{
        DescribeQuorumRequest, DescribeQuorumResponse, ElectLeadersRequest, ElectLeadersResponse,
    };
    let broker = Broker::start("elections", 1, &[]);
    kcat(
        &["-b", &broker.address(), "-P", "-t", "elections", "-p", "0"],
        b"a\n",
    );
    let mut stream = broker.connect();
    let request = ElectLeadersRequest::default()
        .with_election_type(0)
        .with_topic_partitions(Some(vec![TopicPartitions::default()
            .with_topic(TopicName(StrBytes::from_static_str("elections")))
            .with_partitions(vec![0, 7])]));
    for (version, correlation_id) in [(0, 1), (1, 2), (2, 3)] {
        send_request(
            &mut stream,
            ApiKey::ElectLeaders,
            version,
            correlation_id,
            &request,
        );
        let response: ElectLeadersResponse = read_response(&mut stream, version, correlation_id);
        assert_eq!(response.error_code, 0);
        let answers: Vec<(i32, i16)> = response.replica_election_results[0]
            .partition_result
            .iter()
            .map(|p| (p.partition_id, p.error_code))
            .collect();
        assert_eq!(
            answers,
            [
                (0, ResponseError::ElectionNotNeeded.code()),
                (7, ResponseError::UnknownTopicOrPartition.code()),
            ],
            "version {version}"
        );
    }
    // An election type that is neither preferred nor unclean: refused as a whole.
    send_request(
        &mut stream,
        ApiKey::ElectLeaders,
        2,
        4,
        &request.clone().with_election_type(5),
    );
    let response: ElectLeadersResponse = read_response(&mut stream, 2, 4);
    assert_eq!(response.error_code, ResponseError::InvalidRequest.code());

    let describe = DescribeQuorumRequest::default().with_topics(vec![
        describe_quorum_request::TopicData::default()
            .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
            .with_partitions(vec![
                describe_quorum_request::PartitionData::default().with_partition_index(0)
            ]),
    ]);
    send_request(&mut stream, ApiKey::DescribeQuorum, 1, 5, &describe);
    let response: DescribeQuorumResponse = read_response(&mut stream, 1, 5);
    assert_eq!(response.error_code, ResponseError::InvalidRequest.code());
}

#[test]
fn describe_topic_partitions_pages_through_topics_in_name_order() {
    use kafka_protocol::messages::describe_topic_partitions_request::{Cursor, TopicRequest};
    use kafka_protocol::messages::{
        DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse,
    };
    let broker = Broker::start(
        "describe-partitions",
        1,
        &[("RINGLOG_NUM_PARTITIONS", "3".to_owned())],
    );
    for topic in ["beta", "alpha"] {
        kcat(
            &["-b", &broker.address(), "-P", "-t", topic, "-p", "0"],
            b"x\n",
        );
    }
    let mut stream = broker.connect();
    let mut ask = |request: &DescribeTopicPartitionsRequest, correlation_id: i32| {
        send_request(
            &mut stream,
            ApiKey::DescribeTopicPartitions,
            0,
            correlation_id,
            request,
        );
        let response: DescribeTopicPartitionsResponse =
            read_response(&mut stream, 0, correlation_id);
        let topics: Vec<(String, i16, Vec<i32>)> = response
            .topics
            .iter()
            .map(|t| {
                let name = t.name.as_ref().map(|n| n.to_string()).unwrap_or_default();
                let partitions = t.partitions.iter().map(|p| p.partition_index).collect();
                (name, t.error_code, partitions)
            })
            .collect();
        for partition in response.topics.iter().flat_map(|t| &t.partitions) {
            assert_eq!(partition.isr_nodes, partition.replica_nodes);
            assert_eq!(partition.leader_id, partition.replica_nodes[0]);
            assert_eq!(partition.eligible_leader_replicas.as_deref(), Some(&[][..]));
            assert!(partition.offline_replicas.is_empty());
        }
        let cursor = response
            .next_cursor
            .map(|c| (c.topic_name.to_string(), c.partition_index));
        (topics, cursor)
    };
    // Every topic (the internal __consumer_offsets sorts first: the answer starts at the
    // cursor "alpha"), four partitions at a time: alpha whole, beta's first, and a cursor.
    let first = DescribeTopicPartitionsRequest::default()
        .with_response_partition_limit(4)
        .with_cursor(Some(
            Cursor::default().with_topic_name(TopicName(StrBytes::from_static_str("alpha"))),
        ));
    let (topics, cursor) = ask(&first, 1);
    assert_eq!(
        topics,
        [
            ("alpha".to_owned(), 0, vec![0, 1, 2]),
            ("beta".to_owned(), 0, vec![0])
        ]
    );
    assert_eq!(cursor, Some(("beta".to_owned(), 1)));
    let next = first.clone().with_cursor(Some(
        Cursor::default()
            .with_topic_name(TopicName(StrBytes::from_static_str("beta")))
            .with_partition_index(1),
    ));
    let (topics, cursor) = ask(&next, 2);
    assert_eq!(topics, [("beta".to_owned(), 0, vec![1, 2])]);
    assert_eq!(cursor, None);
    // Named topics, one unknown.
    let named = DescribeTopicPartitionsRequest::default()
        .with_response_partition_limit(100)
        .with_topics(
            ["nope", "beta"]
                .iter()
                .map(|name| {
                    TopicRequest::default().with_name(TopicName(StrBytes::from_static_str(name)))
                })
                .collect(),
        );
    let (topics, cursor) = ask(&named, 3);
    assert_eq!(
        topics,
        [
            ("beta".to_owned(), 0, vec![0, 1, 2]),
            (
                "nope".to_owned(),
                ResponseError::UnknownTopicOrPartition.code(),
                vec![]
            ),
        ]
    );
    assert_eq!(cursor, None);
}

#[test]
fn a_config_resource_named_twice_in_one_request_is_refused_both_times() {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::{
        IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    };
    let broker = Broker::start("twice", 1, &[]);
    kcat(
        &["-b", &broker.address(), "-P", "-t", "twice", "-p", "0"],
        b"x\n",
    );
    let resource = |topic: &'static str, retention: &'static str| {
        AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str(topic))
            .with_configs(vec![AlterableConfig::default()
                .with_name(StrBytes::from_static_str("retention.ms"))
                .with_config_operation(0)
                .with_value(Some(StrBytes::from_static_str(retention)))])
    };
    let mut stream = broker.connect();
    let mut ask = |resources: Vec<AlterConfigsResource>, correlation_id: i32| {
        let request = IncrementalAlterConfigsRequest::default().with_resources(resources);
        send_request(
            &mut stream,
            ApiKey::IncrementalAlterConfigs,
            1,
            correlation_id,
            &request,
        );
        let response: IncrementalAlterConfigsResponse =
            read_response(&mut stream, 1, correlation_id);
        response
            .responses
            .iter()
            .map(|r| r.error_code)
            .collect::<Vec<_>>()
    };
    let invalid = ResponseError::InvalidRequest.code();
    assert_eq!(
        ask(
            vec![resource("twice", "1000"), resource("twice", "2000")],
            1
        ),
        [invalid, invalid]
    );
    assert_eq!(ask(vec![resource("twice", "1000")], 2), [0]);
}
