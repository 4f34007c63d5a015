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
        # kafka-python 3 enables idempotence by default, which needs InitProducerId; ringlog does
        # not implement it yet, so ask for a plain producer.
        enable_idempotence=False,
        acks=1,
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
