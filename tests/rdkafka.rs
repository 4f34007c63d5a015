//! End-to-end test of `ringlog serve` on two cores with a current librdkafka (2.12, through
//! the Rust `rdkafka` crate): admin, producer and consumer, checked record by record.
//!
//! The broker has no consumer groups or FindCoordinator yet, so the consumer has no `group.id`
//! and assigns partitions itself. The producer is idempotent (InitProducerId, sequences).
//! Every client call has a timeout, so a broker that stops answering fails the test within
//! seconds instead of hanging it.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigSource, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use common::Broker;

const TOPIC: &str = "rdkafka-roundtrip";
const PARTITIONS: i32 = 4;
const RECORDS: usize = 20_000;
/// Keys repeat, so each key's records land in one partition, in the order they were sent.
const DISTINCT_KEYS: usize = 500;
const RETENTION_MS: &str = "3600000";
/// Small segments (the records take ~2.5 MB per partition), so that fetches and time lookups
/// cross segment boundaries, and so that preallocated segments take little disk.
const SEGMENT_BYTES: &str = "1048576";
/// First record's timestamp; record `i` carries `TIMESTAMP_BASE_MS + i`.
const TIMESTAMP_BASE_MS: i64 = 1_700_000_000_000;
/// Admin requests, watermarks and time lookups.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// librdkafka's message.timeout.ms: a record not acknowledged by then fails its delivery.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// Reading every record back.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(20);

/// What the test sent as record `i`, to compare with what comes back.
struct Expected {
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp_ms: i64,
}

fn expected(index: usize) -> Expected {
    let index_bytes = u32::try_from(index).expect("small").to_be_bytes().to_vec();
    // Values of several sizes (up to ~1 KiB) so that batches hold a mix.
    let mut value = format!("value-{index}-").into_bytes();
    value.resize(
        value.len() + index % 997,
        b'a' + u8::try_from(index % 26).expect("< 26"),
    );
    Expected {
        key: format!("key-{}", index % DISTINCT_KEYS).into_bytes(),
        value,
        headers: vec![
            ("index".to_owned(), Some(index_bytes)),
            ("source".to_owned(), Some(b"rdkafka-test".to_vec())),
            ("empty".to_owned(), Some(Vec::new())),
            ("null".to_owned(), None),
        ],
        timestamp_ms: TIMESTAMP_BASE_MS + i64::try_from(index).expect("small"),
    }
}

fn owned_headers(headers: &[(String, Option<Vec<u8>>)]) -> OwnedHeaders {
    headers
        .iter()
        .fold(OwnedHeaders::new(), |owned, (key, value)| {
            owned.insert(Header {
                key,
                value: value.as_deref(),
            })
        })
}

fn headers_of<M: Message>(message: &M) -> Vec<(String, Option<Vec<u8>>)> {
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    headers
        .iter()
        .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
        .collect()
}

fn client_config(broker: &Broker) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker.address())
        .set("client.id", "ringlog-rdkafka-test")
        .set("socket.timeout.ms", "10000")
        .set("log_level", "6");
    config
}

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(CLIENT_TIMEOUT))
        .operation_timeout(Some(CLIENT_TIMEOUT))
}

#[test]
fn rdkafka_admin_produce_consume_round_trip_on_two_cores() {
    let broker = Broker::start("rdkafka", 2, &[("RUST_LOG", "info".to_owned())]);
    let test_deadline = Instant::now() + Duration::from_secs(55);

    let admin: AdminClient<DefaultClientContext> =
        client_config(&broker).create().expect("admin client");
    create_topic(&admin);
    check_topic_config(&admin);

    let deliveries = produce_all(&broker);
    let offsets = check_deliveries(&deliveries);

    let consumer: BaseConsumer = client_config(&broker)
        // librdkafka's assign() needs a group handle (without group.id it fails with "Local:
        // Unknown group"), but with assign and no commits the group is never joined.
        .set("group.id", "ringlog-rdkafka-test-unused")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    check_watermarks(&consumer, &offsets);
    check_offsets_for_times(&consumer, &offsets);
    consume_all(&consumer, &offsets);
    assert!(
        Instant::now() < test_deadline,
        "the test took longer than its 55 s budget"
    );
}

fn create_topic(admin: &AdminClient<DefaultClientContext>) {
    let topic = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1))
        .set("retention.ms", RETENTION_MS)
        .set("segment.bytes", SEGMENT_BYTES);
    let results = block_on(admin.create_topics([&topic], &admin_options())).expect("CreateTopics");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0], Ok(TOPIC.to_owned()));
}

fn check_topic_config(admin: &AdminClient<DefaultClientContext>) {
    let results =
        block_on(admin.describe_configs([&ResourceSpecifier::Topic(TOPIC)], &admin_options()))
            .expect("DescribeConfigs");
    assert_eq!(results.len(), 1);
    let resource = results[0].as_ref().expect("topic config");
    let retention = resource.get("retention.ms").expect("retention.ms listed");
    assert_eq!(retention.value.as_deref(), Some(RETENTION_MS));
    assert_eq!(retention.source, ConfigSource::DynamicTopic);
    assert!(!retention.is_default);
    let segment = resource.get("segment.bytes").expect("segment.bytes listed");
    assert_eq!(segment.value.as_deref(), Some(SEGMENT_BYTES));
    // A setting the topic did not override is reported as a default.
    let cleanup = resource
        .get("cleanup.policy")
        .expect("cleanup.policy listed");
    assert!(cleanup.is_default, "{cleanup:?}");
    assert_eq!(cleanup.value.as_deref(), Some("delete"));
}

/// Where the producer was told each record went: `(partition, offset)` by record index.
type Deliveries = Vec<(i32, i64)>;

fn produce_all(broker: &Broker) -> Deliveries {
    let producer: FutureProducer = client_config(broker)
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        )
        .set("request.timeout.ms", "10000")
        .create()
        .expect("producer");
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(RECORDS);
    for index in 0..RECORDS {
        let record = expected(index);
        let mut future_record = FutureRecord::to(TOPIC)
            .key(&record.key)
            .payload(&record.value)
            .headers(owned_headers(&record.headers))
            .timestamp(record.timestamp_ms);
        loop {
            match producer.send_result(future_record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    assert!(Instant::now() < deadline, "producer queue stayed full");
                    future_record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => panic!("enqueue record {index}: {error}"),
            }
        }
    }
    pending
        .into_iter()
        .enumerate()
        .map(|(index, delivery)| {
            // librdkafka fails a delivery after message.timeout.ms, so this wait is bounded.
            match block_on(delivery).expect("producer alive") {
                Ok(delivery) => (delivery.partition, delivery.offset),
                Err((error, _)) => panic!("record {index} not delivered: {error}"),
            }
        })
        .collect()
}

/// Checks that each partition got offsets 0, 1, 2, … in the order the records were sent, and
/// returns, by partition, the record index at each offset.
fn check_deliveries(deliveries: &Deliveries) -> BTreeMap<i32, Vec<usize>> {
    let mut offsets: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    let mut partition_of_key: BTreeMap<usize, i32> = BTreeMap::new();
    for (index, &(partition, offset)) in deliveries.iter().enumerate() {
        assert!((0..PARTITIONS).contains(&partition), "record {index}");
        let in_partition = offsets.entry(partition).or_default();
        assert_eq!(
            offset,
            i64::try_from(in_partition.len()).expect("small"),
            "record {index} in partition {partition}"
        );
        in_partition.push(index);
        let key_partition = *partition_of_key
            .entry(index % DISTINCT_KEYS)
            .or_insert(partition);
        assert_eq!(key_partition, partition, "one key, one partition");
    }
    assert!(
        offsets.len() > 1,
        "500 keys should spread over several partitions: {:?}",
        offsets.keys()
    );
    offsets
}

fn check_watermarks(consumer: &BaseConsumer, offsets: &BTreeMap<i32, Vec<usize>>) {
    for partition in 0..PARTITIONS {
        let count = offsets.get(&partition).map_or(0, Vec::len);
        let watermarks = consumer
            .fetch_watermarks(TOPIC, partition, CLIENT_TIMEOUT)
            .expect("watermarks");
        assert_eq!(
            watermarks,
            (0, i64::try_from(count).expect("small")),
            "partition {partition}"
        );
    }
}

fn check_offsets_for_times(consumer: &BaseConsumer, offsets: &BTreeMap<i32, Vec<usize>>) {
    // Per partition: the timestamp of a record in the middle must find that record (timestamps
    // grow with the offset), one before everything finds offset 0, one after everything finds
    // the end.
    let mut queries = Vec::new();
    for (&partition, indexes) in offsets {
        let middle = indexes.len() / 2;
        let middle_timestamp = expected(indexes[middle]).timestamp_ms;
        queries.push((partition, middle_timestamp, Offset::Offset(as_i64(middle))));
        queries.push((partition, TIMESTAMP_BASE_MS - 1_000, Offset::Offset(0)));
        let after_all = TIMESTAMP_BASE_MS + as_i64(RECORDS) + 1_000;
        queries.push((partition, after_all, Offset::End));
    }
    for (partition, timestamp_ms, want) in queries {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(TOPIC, partition, Offset::Offset(timestamp_ms))
            .expect("timestamp query");
        let found = consumer
            .offsets_for_times(list, CLIENT_TIMEOUT)
            .expect("ListOffsets by time");
        let element = found.find_partition(TOPIC, partition).expect("answered");
        assert!(element.error().is_ok(), "{:?}", element.error());
        assert_eq!(
            element.offset(),
            want,
            "partition {partition}, timestamp {timestamp_ms}"
        );
    }
}

fn consume_all(consumer: &BaseConsumer, offsets: &BTreeMap<i32, Vec<usize>>) {
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");

    let deadline = Instant::now() + CONSUME_TIMEOUT;
    let mut next_offset: BTreeMap<i32, usize> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    let mut received = 0;
    while received < RECORDS {
        assert!(
            Instant::now() < deadline,
            "consumed {received} of {RECORDS} records before the timeout"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.expect("fetch");
        let partition = message.partition();
        let next = next_offset.get_mut(&partition).expect("assigned partition");
        assert_eq!(message.offset(), as_i64(*next), "partition {partition}");
        let index = offsets[&partition][*next];
        let want = expected(index);
        assert_eq!(message.key(), Some(&want.key[..]), "record {index}");
        assert_eq!(message.payload(), Some(&want.value[..]), "record {index}");
        assert_eq!(headers_of(&message), want.headers, "record {index}");
        assert_eq!(
            message.timestamp().to_millis(),
            Some(want.timestamp_ms),
            "record {index}"
        );
        *next += 1;
        received += 1;
    }
    // Nothing beyond the records sent.
    if let Some(message) = consumer.poll(Duration::from_millis(300)) {
        let message = message.expect("fetch");
        panic!(
            "unexpected record at partition {} offset {}",
            message.partition(),
            message.offset()
        );
    }
}

fn as_i64(value: usize) -> i64 {
    i64::try_from(value).expect("fits in i64")
}
