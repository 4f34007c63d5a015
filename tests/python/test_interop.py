"""kafka-python (3.x, pure Python) and kcat (Debian's, librdkafka 2.0.2) produce to and consume
from the same topic, and each sees the other's records (and confluent-kafka's gzip batches)."""

from __future__ import annotations

import subprocess
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import kafkautil

PARTITIONS = 3
EACH = 500


def kafka_python_produce(bootstrap: str, topic: str) -> list[tuple[int, int, bytes, bytes]]:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        # kafka-python 3's defaults: idempotence on, acks=all.
        linger_ms=5,
        request_timeout_ms=30000,
        max_block_ms=30000,
    )
    try:
        futures = []
        for i in range(EACH):
            key, value = f"kp-{i}".encode(), f"from-kafka-python-{i}".encode()
            futures.append((key, value, producer.send(
                topic, key=key, value=value, headers=[("src", b"kafka-python")])))
        producer.flush(timeout=60)
        out = []
        for key, value, future in futures:
            meta = future.get(timeout=30)
            out.append((meta.partition, meta.offset, key, value))
        return out
    finally:
        producer.close(timeout=10)


def kafka_python_consume(bootstrap: str, topic: str) -> dict[tuple[int, int], tuple]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=30000,
        fetch_max_wait_ms=100,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        out = {}
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, (
                f"kafka-python consumer stuck: positions "
                f"{[consumer.position(tp) for tp in partitions]}, ends {ends}")
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    out[(r.partition, r.offset)] = (r.key, r.value)
        return out
    finally:
        consumer.close()


def kcat_produce(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    lines = [(f"kc-{i}".encode(), f"from-kcat-{i}".encode()) for i in range(EACH)]
    stdin = b"".join(k + b":" + v + b"\n" for k, v in lines)
    result = subprocess.run(
        ["kcat", "-b", bootstrap, "-P", "-t", topic, "-K:", "-X", "message.timeout.ms=30000"],
        input=stdin, capture_output=True, timeout=90)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"failed" not in result.stderr.lower(), result.stderr.decode(errors="replace")
    return lines


def kcat_consume(bootstrap: str, topic: str) -> dict[tuple[int, int], tuple]:
    result = subprocess.run(
        ["kcat", "-b", bootstrap, "-C", "-t", topic, "-e", "-o", "beginning", "-q",
         "-f", "%p\t%o\t%k\t%s\n"],
        capture_output=True, timeout=90)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    out = {}
    for line in result.stdout.splitlines():
        p, o, k, v = line.split(b"\t")
        out[(int(p), int(o))] = (k, v)
    return out


def test_kafka_python_and_kcat_see_each_other(broker, topic_name):
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, PARTITIONS)

    from_python = kafka_python_produce(bootstrap, topic_name)
    from_kcat = kcat_produce(bootstrap, topic_name)
    # And gzip batches from librdkafka 2.16, which kafka-python decodes without extra packages.
    from_confluent = [(f"cf-{i}".encode(), f"from-confluent-gzip-{i}".encode()) for i in range(EACH)]
    p = kafkautil.producer(bootstrap, acks="all", **{"compression.type": "gzip"})
    for k, v in from_confluent:
        p.produce(topic_name, key=k, value=v)
    assert p.flush(60) == 0

    seen_by_kcat = kcat_consume(bootstrap, topic_name)
    seen_by_python = kafka_python_consume(bootstrap, topic_name)

    expected_pairs = sorted([(k, v) for _, _, k, v in from_python] + from_kcat + from_confluent)
    assert sorted(seen_by_kcat.values()) == expected_pairs
    assert seen_by_python == seen_by_kcat, "kafka-python and kcat read different logs"
    # kafka-python's records are where its acknowledgements said.
    for p, o, k, v in from_python:
        assert seen_by_kcat[(p, o)] == (k, v)
    # Offsets contiguous from 0 in every partition.
    for p in range(PARTITIONS):
        offsets = sorted(o for (q, o) in seen_by_kcat if q == p)
        assert offsets == list(range(len(offsets)))

    # A third client reads the same: confluent-kafka, headers included.
    log = kafkautil.consume_all(bootstrap, topic_name, PARTITIONS)
    for p, records in log.items():
        for r in records:
            assert seen_by_kcat[(p, r.offset)] == (r.key, r.value)
            if r.key.startswith(b"kp-"):
                assert r.headers == [("src", b"kafka-python")]


def test_kafka_python_admin_and_offsets(broker, topic_name):
    """kafka-python's own request versions (CreateTopics v7, CreatePartitions v3,
    IncrementalAlterConfigs, DescribeConfigs, DeleteTopics, ListOffsets v10): same answers."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.errors import TopicAlreadyExistsError

    bootstrap = broker.bootstrap
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    try:
        admin.create_topics({topic_name: {"num_partitions": 3, "replication_factor": 1,
                                          "configs": {"retention.ms": "3600000"}}},
                            wait_for_metadata=True)
        try:
            admin.create_topics({topic_name: {"num_partitions": 1, "replication_factor": 1}})
            raise AssertionError("second CreateTopics of the same name succeeded")
        except TopicAlreadyExistsError:
            pass
        other = f"{topic_name}-other"
        admin.create_topics({other: {}}, wait_for_metadata=True)  # broker default partitions
        user_topics = [t for t in admin.list_topics() if t != "__consumer_offsets"]
        assert sorted(user_topics) == sorted([topic_name, other])

        def retention():
            configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic_name)])
            return configs["topic"][topic_name]["retention.ms"]["value"]

        assert retention() == "3600000"
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic_name,
                                            configs={"retention.ms": "7200000"})])
        assert retention() == "7200000"
        admin.create_partitions({topic_name: 5})
        [described] = admin.describe_topics([topic_name])
        assert sorted(p["partition_index"] for p in described["partitions"]) == list(range(5))
        assert {p["leader_id"] for p in described["partitions"]} == set(range(broker.cores))
        cluster = admin.describe_cluster()
        assert sorted((b["broker_id"], b["host"], b["port"]) for b in cluster["brokers"]) == \
            [(core, "127.0.0.1", broker.port + 1 + core) for core in range(broker.cores)]
        admin.delete_topics([other])
        deadline = time.monotonic() + 30
        while other in admin.list_topics():
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        admin.close()

    # Timestamps 1000, 2000, ... in partition 4 (a partition added by CreatePartitions).
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for i in range(10):
            producer.send(topic_name, value=b"t%d" % i, partition=4, timestamp_ms=1000 * (i + 1))
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic_name, 4)
        assert consumer.beginning_offsets([tp]) == {tp: 0}
        assert consumer.end_offsets([tp]) == {tp: 10}
        for ts, want in [(0, 0), (1000, 0), (1001, 1), (5500, 5), (10_000, 9)]:
            found = consumer.offsets_for_times({tp: ts})[tp]
            assert found is not None and (found.offset, found.timestamp) == (want, 1000 * (want + 1)), ts
        assert consumer.offsets_for_times({tp: 10_001})[tp] is None
    finally:
        consumer.close()

    # kcat's ListOffsets v2 by time: -Q -t topic:partition:timestamp.
    result = subprocess.run(["kcat", "-b", bootstrap, "-Q", "-t", f"{topic_name}:4:5500"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "offset 5" in result.stdout, result.stdout
