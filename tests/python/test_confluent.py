"""confluent-kafka (librdkafka 2.16) against ringlog: produce and consume every compression
codec with every acks setting, ListOffsets (watermarks and by timestamp), and the admin APIs
(CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs, IncrementalAlterConfigs,
DescribeCluster, Metadata)."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,
                                   NewPartitions, NewTopic, ResourceType)

import kafkautil
from kafkautil import ADMIN_TIMEOUT_S

PARTITIONS = 6
# 5 codecs x 20,000 records = 100,000 records, each codec's share split over acks 0, 1, all.
RECORDS_PER_CODEC = 20_000
ACKS = ["0", "1", "all"]
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
BIG_VALUE_BYTES = 200 * 1024
TIMESTAMP_CREATE_TIME = 1  # confluent_kafka.TIMESTAMP_CREATE_TIME


def expected_record(codec: str, acks: str, i: int, base_ts: int):
    """Deterministic content of record i: key, value, headers, timestamp. Values vary in size
    (some empty, some null, some 200 KiB) and are compressible but not constant."""
    key = f"key-{i % 997}-{i}".encode()
    if i % 1000 == 999:
        value = None  # tombstone
    elif i % 1000 == 500:
        value = b""
    elif i % 5000 == 1234:
        value = (f"big-{i}-".encode() * (BIG_VALUE_BYTES // 10))[:BIG_VALUE_BYTES]
    else:
        value = f"{codec}/{acks}/{i}:".encode() + bytes((i * 7 + j) % 251 for j in range(i % 150))
    if i % 3 == 0:
        headers = None
    else:
        headers = [("i", str(i).encode()), ("codec", codec.encode()), ("acks", acks.encode()),
                   ("empty", b""), ("null", None), ("i", b"dup-key")]
    return key, value, headers, base_ts + i


def produce_matrix(bootstrap: str, topic: str, codec: str, base_ts: int):
    """Produces RECORDS_PER_CODEC records, a third with each acks setting (one producer each,
    flushed before the next). Returns {i: (acks, partition, offset)} from delivery reports."""
    delivered: dict[int, tuple[str, int, int]] = {}
    errors: list[str] = []
    per_acks = RECORDS_PER_CODEC // len(ACKS)
    i = 0
    for n, acks in enumerate(ACKS):
        p = kafkautil.producer(bootstrap, **{
            "acks": acks,
            "compression.type": codec,
            "linger.ms": 10,
            "batch.num.messages": 1000,
            # No retries: every record is sent once, so order per partition is production order
            # and nothing can be duplicated by the client.
            "retries": 0,
            "max.in.flight.requests.per.connection": 5,
        })
        count = per_acks if n < len(ACKS) - 1 else RECORDS_PER_CODEC - i

        def report(err, msg, i=None, acks=acks):
            if err is not None:
                errors.append(f"record {i} (acks={acks}): {err}")
            else:
                delivered[i] = (acks, msg.partition(), msg.offset())

        for _ in range(count):
            key, value, headers, ts = expected_record(codec, acks, i, base_ts)
            while True:
                try:
                    p.produce(topic, value=value, key=key, headers=headers, timestamp=ts,
                              on_delivery=lambda err, msg, i=i: report(err, msg, i))
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
            i += 1
        remaining = p.flush(60)
        assert remaining == 0, f"{remaining} records of acks={acks} not delivered in 60 s"
        del p
        if acks == "0":
            # acks=0 "delivered" only means written to the socket: wait until the broker has
            # appended them all, so that the next phase's records come after them.
            deadline = time.monotonic() + 30
            while True:
                marks = kafkautil.watermarks(bootstrap, topic, PARTITIONS)
                if sum(high for _, high in marks.values()) >= i:
                    break
                assert time.monotonic() < deadline, f"acks=0 records not all appended: {marks}"
                time.sleep(0.1)
    assert not errors, f"{len(errors)} delivery errors, first: {errors[:5]}"
    assert len(delivered) == RECORDS_PER_CODEC
    return delivered


@pytest.mark.parametrize("codec", CODECS)
def test_produce_consume_every_codec_and_acks(broker, topic_name, codec):
    bootstrap = broker.bootstrap
    topic = f"{topic_name}-{codec}"
    kafkautil.create_topic(bootstrap, topic, PARTITIONS)
    base_ts = int(time.time() * 1000) - 3_600_000  # an hour ago: inside any retention
    delivered = produce_matrix(bootstrap, topic, codec, base_ts)

    # What each partition must hold, in production order.
    per_partition: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    for i in sorted(delivered):
        per_partition[delivered[i][1]].append(i)
    assert sum(1 for p in per_partition.values() if p) > 1, "all records went to one partition"

    # ListOffsets latest/earliest.
    marks = kafkautil.watermarks(bootstrap, topic, PARTITIONS)
    assert marks == {p: (0, len(per_partition[p])) for p in range(PARTITIONS)}

    log = kafkautil.consume_all(bootstrap, topic, PARTITIONS,
                                end_offsets={p: len(per_partition[p]) for p in range(PARTITIONS)})
    for p in range(PARTITIONS):
        records = log[p]
        assert [r.offset for r in records] == list(range(len(per_partition[p]))), \
            f"partition {p}: offsets not contiguous from 0"
        for r, i in zip(records, per_partition[p]):
            acks, part, offset = delivered[i]
            key, value, headers, ts = expected_record(codec, acks, i, base_ts)
            where = f"partition {p} offset {r.offset} (record {i}, acks={acks})"
            assert r.key == key, where
            assert r.value == value, where
            assert r.headers == headers, where
            assert (r.timestamp_type, r.timestamp) == (TIMESTAMP_CREATE_TIME, ts), where
            if acks != "0":
                assert offset == r.offset, f"{where}: acknowledged at offset {offset}"

    # ListOffsets by timestamp: the first offset whose timestamp is >= the one asked for, -1
    # past the end. One request per probe (a request may name a partition only once).
    c = kafkautil.consumer(bootstrap)
    try:
        for probe in range(7):
            asked = []
            for p in range(PARTITIONS):
                stamps = [r.timestamp for r in log[p]]
                if not stamps:
                    continue
                middle = stamps[len(stamps) // 2]
                t = [stamps[0] - 1000, stamps[0], stamps[0] + 1, middle, middle + 1,
                     stamps[-1], stamps[-1] + 1][probe]
                asked.append(TopicPartition(topic, p, t))
            answer = c.offsets_for_times(asked, timeout=30)
            assert sorted(tp.partition for tp in answer) == sorted(tp.partition for tp in asked)
            for tp in answer:
                assert tp.error is None, tp.error
                t = next(a.offset for a in asked if a.partition == tp.partition)
                want = next((r.offset for r in log[tp.partition] if r.timestamp >= t), -1)
                assert tp.offset == want, f"partition {tp.partition}: offsets_for_times({t})"
    finally:
        c.close()


def describe_topic_configs(client, topic: str) -> dict[str, str]:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    result = client.describe_configs([resource], request_timeout=ADMIN_TIMEOUT_S)
    entries = list(result.values())[0].result(timeout=ADMIN_TIMEOUT_S)
    return {name: entry.value for name, entry in entries.items()}


def test_metadata_list_topics_and_describe_cluster(broker, topic_name):
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, f"{topic_name}-a", 6)
    kafkautil.create_topic(bootstrap, f"{topic_name}-b", 1)
    client = kafkautil.admin(bootstrap)
    md = client.list_topics(timeout=15)
    assert {f"{topic_name}-a", f"{topic_name}-b"} <= set(md.topics)
    for name, count in [(f"{topic_name}-a", 6), (f"{topic_name}-b", 1)]:
        topic = md.topics[name]
        assert topic.error is None
        assert sorted(topic.partitions) == list(range(count))
        for partition in topic.partitions.values():
            assert partition.error is None
            # Each partition is led by the node of the core that owns it.
            assert partition.leader in md.brokers
            assert partition.replicas == [partition.leader]
            assert partition.isrs == [partition.leader]
        if count > 1:
            assert len({p.leader for p in topic.partitions.values()}) == min(count, broker.cores)
    # A topic that does not exist (auto-creation is never asked for by an AdminClient).
    md = client.list_topics(topic=f"{topic_name}-missing", timeout=15)
    missing = md.topics[f"{topic_name}-missing"]
    assert missing.error is not None
    assert missing.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    cluster = client.describe_cluster(request_timeout=ADMIN_TIMEOUT_S).result(timeout=ADMIN_TIMEOUT_S)
    assert cluster.cluster_id == md.cluster_id
    assert sorted((n.id, n.host, n.port) for n in cluster.nodes) == [
        (core, "127.0.0.1", broker.port + 1 + core) for core in range(broker.cores)]
    assert cluster.controller is not None and cluster.controller.id == 0


def test_create_topic_errors(broker, topic_name):
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 2)
    client = kafkautil.admin(bootstrap)
    futures = client.create_topics([NewTopic(topic_name, num_partitions=3, replication_factor=1)],
                                   request_timeout=ADMIN_TIMEOUT_S)
    with pytest.raises(KafkaException) as error:
        futures[topic_name].result(timeout=ADMIN_TIMEOUT_S)
    assert error.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    # The existing topic is untouched.
    kafkautil.wait_for_topic(bootstrap, topic_name, 2)

    # Names Kafka refuses (and that must never become paths under the data directory).
    for bad in ["..", "bad/name", "a" * 250, "sp ace"]:
        futures = client.create_topics([NewTopic(bad, num_partitions=1, replication_factor=1)],
                                       request_timeout=ADMIN_TIMEOUT_S)
        with pytest.raises(KafkaException) as error:
            futures[bad].result(timeout=ADMIN_TIMEOUT_S)
        assert error.value.args[0].code() == KafkaError.TOPIC_EXCEPTION, bad
    # A replication factor sized from the brokers Metadata lists (one node per core), or an
    # assignment over those nodes, is refused with what is actually missing, not with a
    # message that contradicts Metadata (issue 18, bug 5).
    nodes = sorted(client.list_topics(timeout=15).brokers)
    assert len(nodes) == broker.cores
    wide = f"{topic_name}-wide"
    futures = client.create_topics([NewTopic(wide, num_partitions=1,
                                             replication_factor=len(nodes))],
                                   request_timeout=ADMIN_TIMEOUT_S)
    with pytest.raises(KafkaException) as error:
        futures[wide].result(timeout=ADMIN_TIMEOUT_S)
    assert error.value.args[0].code() == KafkaError.INVALID_REPLICATION_FACTOR
    message = error.value.args[0].str()
    assert "one replica of each partition" in message and "available broker" not in message
    futures = client.create_topics([NewTopic(wide, num_partitions=1, replication_factor=-1, replica_assignment=[nodes])],
                                   request_timeout=ADMIN_TIMEOUT_S)
    with pytest.raises(KafkaException) as error:
        futures[wide].result(timeout=ADMIN_TIMEOUT_S)
    assert error.value.args[0].code() == KafkaError.INVALID_REPLICA_ASSIGNMENT
    message = error.value.args[0].str()
    assert f"assigned to {len(nodes)} nodes" in message, message
    futures = client.create_topics([NewTopic(wide, num_partitions=1, replication_factor=-1, replica_assignment=[[99]])],
                                   request_timeout=ADMIN_TIMEOUT_S)
    with pytest.raises(KafkaException) as error:
        futures[wide].result(timeout=ADMIN_TIMEOUT_S)
    assert "node 99 is not one of this broker's nodes" in error.value.args[0].str()
    # One node per partition is accepted, and the partition lives on that node.
    futures = client.create_topics([NewTopic(wide, num_partitions=1, replication_factor=-1, replica_assignment=[[nodes[-1]]])],
                                   request_timeout=ADMIN_TIMEOUT_S)
    futures[wide].result(timeout=ADMIN_TIMEOUT_S)
    kafkautil.wait_for_topic(bootstrap, wide, 1)
    leader = client.list_topics(wide, timeout=15).topics[wide].partitions[0].leader
    assert leader == nodes[-1]

    md = client.list_topics(timeout=15)
    # __consumer_offsets is listed too, as Kafka lists it.
    assert set(md.topics) - {"__consumer_offsets"} == {topic_name, wide}
    assert broker.alive()


def test_describe_and_alter_topic_configs(broker, topic_name):
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 3, config={"retention.ms": "3600000"})
    client = kafkautil.admin(bootstrap)
    configs = describe_topic_configs(client, topic_name)
    assert configs.get("retention.ms") == "3600000", configs

    resource = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET)])
    for future in client.incremental_alter_configs([resource], request_timeout=ADMIN_TIMEOUT_S).values():
        future.result(timeout=ADMIN_TIMEOUT_S)
    assert describe_topic_configs(client, topic_name).get("retention.ms") == "7200000"

    # DELETE returns the setting to the broker default (Kafka's: 7 days).
    resource = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)])
    for future in client.incremental_alter_configs([resource], request_timeout=ADMIN_TIMEOUT_S).values():
        future.result(timeout=ADMIN_TIMEOUT_S)
    assert describe_topic_configs(client, topic_name).get("retention.ms") == "604800000"

    # Configs of a topic that does not exist: an error, not an empty answer.
    missing = ConfigResource(ResourceType.TOPIC, f"{topic_name}-missing")
    result = client.describe_configs([missing], request_timeout=ADMIN_TIMEOUT_S)
    with pytest.raises(KafkaException) as error:
        list(result.values())[0].result(timeout=ADMIN_TIMEOUT_S)
    assert error.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def produce_some(bootstrap: str, topic: str, count: int, partition: int | None = None,
                 prefix: str = "v") -> list[tuple[int, int, bytes]]:
    """Produces `count` records with acks=all; returns (partition, offset, value) per record."""
    p = kafkautil.producer(bootstrap, acks="all")
    out, errors = [], []

    def report(err, msg):
        if err is not None:
            errors.append(err)
        else:
            out.append((msg.partition(), msg.offset(), msg.value()))

    for i in range(count):
        kwargs = {} if partition is None else {"partition": partition}
        p.produce(topic, value=f"{prefix}-{i}".encode(), key=f"k{i}".encode(),
                  on_delivery=report, **kwargs)
        p.poll(0)
    assert p.flush(60) == 0
    assert not errors, errors[:5]
    return out


def test_delete_topic_and_recreate(broker, topic_name):
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 3)
    produce_some(bootstrap, topic_name, 300)
    client = kafkautil.admin(bootstrap)
    futures = client.delete_topics([topic_name], operation_timeout=ADMIN_TIMEOUT_S,
                                   request_timeout=ADMIN_TIMEOUT_S)
    futures[topic_name].result(timeout=ADMIN_TIMEOUT_S)
    deadline = time.monotonic() + 30
    while topic_name in client.list_topics(timeout=15).topics:
        assert time.monotonic() < deadline, "deleted topic still listed after 30 s"
        time.sleep(0.2)

    # Deleting it again: UNKNOWN_TOPIC_OR_PARTITION.
    futures = client.delete_topics([topic_name], request_timeout=ADMIN_TIMEOUT_S)
    with pytest.raises(KafkaException) as error:
        futures[topic_name].result(timeout=ADMIN_TIMEOUT_S)
    assert error.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    # Same name again, fewer partitions: empty, offsets start from 0 again.
    kafkautil.create_topic(bootstrap, topic_name, 2)
    assert kafkautil.watermarks(bootstrap, topic_name, 2) == {0: (0, 0), 1: (0, 0)}
    written = produce_some(bootstrap, topic_name, 10, partition=1, prefix="new")
    assert [o for _, o, _ in written] == list(range(10))
    log = kafkautil.consume_all(bootstrap, topic_name, 2)
    assert [r.value for r in log[1]] == [f"new-{i}".encode() for i in range(10)]
    assert log[0] == []

    # Survives a restart: the deleted topic's data does not come back.
    assert broker.restart() == 0
    kafkautil.wait_for_topic(bootstrap, topic_name, 2)
    assert kafkautil.watermarks(bootstrap, topic_name, 2) == {0: (0, 0), 1: (0, 10)}


def test_create_partitions(broker, topic_name):
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 2)
    produce_some(bootstrap, topic_name, 20, partition=0)
    client = kafkautil.admin(bootstrap)
    futures = client.create_partitions([NewPartitions(topic_name, 5)],
                                       operation_timeout=ADMIN_TIMEOUT_S,
                                       request_timeout=ADMIN_TIMEOUT_S)
    futures[topic_name].result(timeout=ADMIN_TIMEOUT_S)
    kafkautil.wait_for_topic(bootstrap, topic_name, 5)

    written = produce_some(bootstrap, topic_name, 7, partition=4, prefix="p4")
    assert [(p, o) for p, o, _ in written] == [(4, o) for o in range(7)]
    marks = kafkautil.watermarks(bootstrap, topic_name, 5)
    assert marks == {0: (0, 20), 1: (0, 0), 2: (0, 0), 3: (0, 0), 4: (0, 7)}
    log = kafkautil.consume_all(bootstrap, topic_name, 5)
    assert [r.value for r in log[4]] == [f"p4-{i}".encode() for i in range(7)]
    assert [r.value for r in log[0]] == [f"v-{i}".encode() for i in range(20)]

    # Fewer partitions than today: INVALID_PARTITIONS, and nothing changes.
    futures = client.create_partitions([NewPartitions(topic_name, 3)],
                                       request_timeout=ADMIN_TIMEOUT_S)
    with pytest.raises(KafkaException) as error:
        futures[topic_name].result(timeout=ADMIN_TIMEOUT_S)
    assert error.value.args[0].code() == KafkaError.INVALID_PARTITIONS
    kafkautil.wait_for_topic(bootstrap, topic_name, 5)

    # Unknown topic.
    futures = client.create_partitions([NewPartitions(f"{topic_name}-missing", 3)],
                                       request_timeout=ADMIN_TIMEOUT_S)
    with pytest.raises(KafkaException) as error:
        futures[f"{topic_name}-missing"].result(timeout=ADMIN_TIMEOUT_S)
    assert error.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
