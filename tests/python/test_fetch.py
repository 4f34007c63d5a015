"""Fetch and Produce corner cases with confluent-kafka: records larger than the fetch size,
starting inside a compressed batch, out-of-range offsets, max.message.bytes,
LogAppendTime, unknown configs, and retention by time."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition, TIMESTAMP_LOG_APPEND_TIME
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic,
                                   ResourceType)

import kafkautil
from conftest import serve_setting_env
from kafkautil import ADMIN_TIMEOUT_S


def produce(bootstrap, topic, records, **config):
    """records: (partition, key, value[, timestamp]). Returns delivery results in order."""
    p = kafkautil.producer(bootstrap, acks="all", **config)
    results = [None] * len(records)

    def report(index):
        def cb(err, msg):
            results[index] = (err, msg.partition(), msg.offset())
        return cb

    for index, record in enumerate(records):
        partition, key, value = record[:3]
        extra = {"timestamp": record[3]} if len(record) > 3 else {}
        p.produce(topic, key=key, value=value, partition=partition, on_delivery=report(index),
                  **extra)
        p.poll(0)
    assert p.flush(60) == 0
    return results


def read_from(bootstrap, topic, partition, offset, count, timeout=30, **config):
    """`count` records of one partition from `offset` (may be a logical offset)."""
    c = kafkautil.consumer(bootstrap, **config)
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            assert time.monotonic() < deadline, f"read {len(out)} of {count} records"
            for msg in c.consume(num_messages=count - len(out), timeout=0.5):
                if msg.error():
                    raise KafkaException(msg.error())
                out.append(msg)
        return out
    finally:
        c.close()


def test_fetch_sizes_and_offsets(broker, topic_name):
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 1)
    big = bytes(range(256)) * 3000  # 768,000 bytes, incompressible enough
    records = [(0, b"k%d" % i, b"small-%d" % i) for i in range(1000)]
    records.insert(500, (0, b"big", big))
    # zstd, many records per compressed batch; the big record alone in its batch.
    results = []
    for part in (records[:500], records[500:501], records[501:]):
        results += produce(bootstrap, topic_name, part, **{"compression.type": "zstd",
                                                           "linger.ms": 50})
    assert [r[0] for r in results] == [None] * len(records)
    assert [r[2] for r in results] == list(range(len(records)))

    # Batches larger than the partition's fetch limit still come (Kafka returns the first batch
    # whole). librdkafka caps a batch's decompressed size at message.max.bytes and wants
    # fetch.max.bytes >= message.max.bytes, so only the per-partition limit is small.
    out = read_from(bootstrap, topic_name, 0, 499, 3, **{
        "max.partition.fetch.bytes": 1024, "fetch.max.bytes": 2_000_000,
        "message.max.bytes": 2_000_000, "receive.message.max.bytes": 3_000_000})
    assert [m.offset() for m in out] == [499, 500, 501]
    assert out[1].value() == big

    # Starting in the middle of a compressed batch: the first record is the one asked for.
    for start in (1, 7, 333, 999):
        out = read_from(bootstrap, topic_name, 0, start, 2)
        assert [m.offset() for m in out] == [start, start + 1]
        assert out[0].value() == records[start][2]

    # Out of range: auto.offset.reset decides.
    out = read_from(bootstrap, topic_name, 0, 10_000_000, 1, **{"auto.offset.reset": "earliest"})
    assert out[0].offset() == 0
    c = kafkautil.consumer(bootstrap, **{"auto.offset.reset": "latest"})
    try:
        c.assign([TopicPartition(topic_name, 0, 10_000_000)])
        # Nothing to read at the end: no record, no error but EOF-like silence.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            assert msg is None or msg.error() is not None, f"record at {msg.offset()}"
        produce(bootstrap, topic_name, [(0, b"late", b"late")])
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "record produced after reset never came"
            msg = c.poll(0.2)
            if msg is not None and not msg.error():
                break
        assert (msg.offset(), msg.value()) == (len(records), b"late")
    finally:
        c.close()


def test_max_message_bytes_refused(broker, topic_name):
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 1, config={"max.message.bytes": "10000"})
    # One request each, so that the refused batch holds only the big record.
    results = [produce(bootstrap, topic_name, [record], **{"retries": 0})[0]
               for record in [(0, b"ok", b"x" * 100), (0, b"big", b"y" * 50_000),
                              (0, b"ok2", b"z" * 100)]]
    assert results[0][0] is None and results[2][0] is None, results
    assert results[1][0] is not None and results[1][0].code() == KafkaError.MSG_SIZE_TOO_LARGE, \
        results
    out = read_from(bootstrap, topic_name, 0, 0, 2)
    assert [m.value() for m in out] == [b"x" * 100, b"z" * 100]


def test_log_append_time_topic(broker, topic_name):
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 1,
                           config={"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    produce(bootstrap, topic_name, [(0, b"k%d" % i, b"v%d" % i, 1000 + i) for i in range(50)],
            **{"compression.type": "lz4"})
    after = int(time.time() * 1000)
    out = read_from(bootstrap, topic_name, 0, 0, 50)
    for m in out:
        kind, ts = m.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME, m.offset()
        assert before - 1000 <= ts <= after + 1000, (m.offset(), ts, before, after)
    c = kafkautil.consumer(bootstrap)
    try:
        [tp] = c.offsets_for_times([TopicPartition(topic_name, 0, 5000)], timeout=30)
        assert tp.offset == 0  # every append time is after 5000 (the producer's stamps)
    finally:
        c.close()


def test_unknown_and_invalid_topic_configs_refused(broker, topic_name):
    client = kafkautil.admin(broker.bootstrap)
    for config in ({"no.such.config": "1"}, {"retention.ms": "soon"}):
        futures = client.create_topics(
            [NewTopic(topic_name, num_partitions=1, replication_factor=1, config=config)],
            request_timeout=ADMIN_TIMEOUT_S)
        with pytest.raises(KafkaException) as error:
            futures[topic_name].result(timeout=ADMIN_TIMEOUT_S)
        assert error.value.args[0].code() == KafkaError.INVALID_CONFIG, config
    assert topic_name not in client.list_topics(timeout=15).topics

    kafkautil.create_topic(broker.bootstrap, topic_name, 1)
    resource = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as error:
        list(client.incremental_alter_configs([resource], request_timeout=ADMIN_TIMEOUT_S)
             .values())[0].result(timeout=ADMIN_TIMEOUT_S)
    assert error.value.args[0].code() == KafkaError.INVALID_CONFIG


def test_retention_by_time_deletes_old_segments(broker_factory, topic_name):
    env_name = serve_setting_env("log-retention-check-interval-ms")
    assert env_name, "`ringlog serve --help` lists no --log-retention-check-interval-ms"
    broker = broker_factory(env={env_name: "200"})
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 1, config={"segment.bytes": str(64 * 1024)})
    now = int(time.time() * 1000)
    old = [(0, b"old%d" % i, b"o" * 1000, now - 86_400_000 + i) for i in range(600)]
    new = [(0, b"new%d" % i, b"n" * 1000, now + i) for i in range(100)]
    produce(bootstrap, topic_name, old, **{"linger.ms": 0, "batch.num.messages": 10})
    produce(bootstrap, topic_name, new, **{"linger.ms": 0, "batch.num.messages": 10})
    assert kafkautil.watermarks(bootstrap, topic_name, 1) == {0: (0, 700)}

    client = kafkautil.admin(bootstrap)
    resource = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET)])
    for future in client.incremental_alter_configs([resource], request_timeout=ADMIN_TIMEOUT_S).values():
        future.result(timeout=ADMIN_TIMEOUT_S)
    deadline = time.monotonic() + 30
    while True:
        low, high = kafkautil.watermarks(bootstrap, topic_name, 1)[0]
        if low > 0:
            break
        assert time.monotonic() < deadline, "retention deleted nothing in 30 s"
        time.sleep(0.2)
    time.sleep(1)  # let it finish every expired segment
    low, high = kafkautil.watermarks(bootstrap, topic_name, 1)[0]
    assert high == 700
    # Whole segments go, and only expired ones: every record after `low` is still there.
    assert 0 < low <= 600, low
    out = read_from(bootstrap, topic_name, 0, -2, 700 - low)  # -2: OFFSET_BEGINNING
    assert [m.offset() for m in out] == list(range(low, 700))
    assert [m.key() for m in out[-100:]] == [b"new%d" % i for i in range(100)]
    # Fetching below the log start is out of range: reset to the earliest that exists.
    out = read_from(bootstrap, topic_name, 0, 0, 1, **{"auto.offset.reset": "earliest"})
    assert out[0].offset() == low

    # The log start survives a restart.
    assert broker.restart() == 0
    kafkautil.wait_for_topic(bootstrap, topic_name, 1)
    low_after, high_after = kafkautil.watermarks(bootstrap, topic_name, 1)[0]
    assert high_after == 700 and low_after >= low, (low, low_after, high_after)


def test_a_fetch_answer_keeps_to_the_requests_max_bytes(broker, topic_name):
    """fetch.max.bytes bounds the whole answer (KIP-74): with a larger per-partition limit,
    the broker used to send every partition's bytes and librdkafka dropped the connection
    ("Invalid response size") over and over (issue 18, bug 1)."""
    import os

    bootstrap = broker.bootstrap
    partitions = 3
    kafkautil.create_topic(bootstrap, topic_name, partitions)
    value = os.urandom(900 * 1024)
    per_partition = 4
    records = [(p, b"k%d" % i, value) for p in range(partitions) for i in range(per_partition)]
    results = produce(bootstrap, topic_name, records, **{"linger.ms": 0})
    assert [r[0] for r in results] == [None] * len(records)
    c = kafkautil.consumer(bootstrap, **{
        "fetch.max.bytes": 1_000_000, "max.partition.fetch.bytes": 20_000_000,
        "receive.message.max.bytes": 1_000_512, "auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic_name, p, 0) for p in range(partitions)])
        got = {p: 0 for p in range(partitions)}
        deadline = time.monotonic() + 60
        while sum(got.values()) < len(records):
            assert time.monotonic() < deadline, f"read {got} of {per_partition} each"
            for msg in c.consume(num_messages=100, timeout=0.5):
                if msg.error():
                    raise KafkaException(msg.error())
                assert msg.value() == value
                got[msg.partition()] += 1
        assert got == {p: per_partition for p in range(partitions)}
    finally:
        c.close()
