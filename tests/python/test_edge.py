"""Edges real clients reach: timestamps out of order (ListOffsets by time), many partitions,
the longest legal topic name, null keys."""

from __future__ import annotations

import random

from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewTopic

import kafkautil
from kafkautil import ADMIN_TIMEOUT_S


def test_offsets_for_times_with_unordered_timestamps(broker, topic_name):
    """Kafka answers ListOffsets(timestamp) with the first offset, in log order, whose
    timestamp is >= the one asked for, also when timestamps go backwards."""
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 1)
    rng = random.Random(7)
    base = 1_700_000_000_000
    stamps = [base + rng.randrange(0, 1_000_000) for _ in range(3000)]
    for codec in ("none", "lz4"):
        p = kafkautil.producer(bootstrap, acks="all", **{"compression.type": codec,
                                                         "linger.ms": 20,
                                                         "batch.num.messages": 100})
        half = range(0, 1500) if codec == "none" else range(1500, 3000)
        for i in half:
            p.produce(topic_name, value=b"%d" % i, partition=0, timestamp=stamps[i])
        assert p.flush(60) == 0
    log = kafkautil.consume_all(bootstrap, topic_name, 1)[0]
    assert [r.timestamp for r in log] == stamps

    c = kafkautil.consumer(bootstrap)
    try:
        targets = [base - 1, base + 1_000_001] + [base + rng.randrange(0, 1_000_000)
                                                  for _ in range(40)]
        targets += sorted(stamps)[-5:]
        for t in targets:
            [tp] = c.offsets_for_times([TopicPartition(topic_name, 0, t)], timeout=30)
            want = next((r.offset for r in log if r.timestamp >= t), -1)
            assert (tp.error, tp.offset) == (None, want), f"offsets_for_times({t})"
    finally:
        c.close()


def test_many_partitions(broker, topic_name):
    bootstrap = broker.bootstrap
    partitions = 200
    kafkautil.create_topic(bootstrap, topic_name, partitions)
    p = kafkautil.producer(bootstrap, acks="all")
    delivered = []
    for i in range(partitions * 3):
        p.produce(topic_name, value=b"%d" % i, partition=i % partitions,
                  on_delivery=lambda err, msg: delivered.append((err, msg.partition(), msg.offset())))
    assert p.flush(60) == 0
    assert all(err is None for err, _, _ in delivered)
    assert kafkautil.watermarks(bootstrap, topic_name, partitions) == \
        {q: (0, 3) for q in range(partitions)}
    log = kafkautil.consume_all(bootstrap, topic_name, partitions)
    for q in range(partitions):
        assert [r.value for r in log[q]] == [b"%d" % i for i in range(q, partitions * 3, partitions)]


def test_longest_topic_name_and_null_keys(broker):
    bootstrap = broker.bootstrap
    name = ("long-name." + "x" * 300)[:249]
    kafkautil.create_topic(bootstrap, name, 2)
    p = kafkautil.producer(bootstrap, acks="all")
    for i in range(100):
        p.produce(name, key=None if i % 2 else b"", value=None if i % 3 == 0 else b"v%d" % i,
                  partition=i % 2)
    assert p.flush(30) == 0
    log = kafkautil.consume_all(bootstrap, name, 2)
    got = [(r.key, r.value) for q in (0, 1) for r in log[q]]
    want = [(None if i % 2 else b"", None if i % 3 == 0 else b"v%d" % i)
            for q in (0, 1) for i in range(q, 100, 2)]
    assert got == want

    assert broker.restart() == 0
    kafkautil.wait_for_topic(bootstrap, name, 2)
    assert kafkautil.watermarks(bootstrap, name, 2) == {0: (0, 50), 1: (0, 50)}
    client = kafkautil.admin(bootstrap)
    client.delete_topics([name], request_timeout=ADMIN_TIMEOUT_S)[name].result(timeout=ADMIN_TIMEOUT_S)
    # Deleting and creating again under the longest name (a rename-to-delete scheme that
    # lengthens directory names would hit the 255-byte limit here).
    client.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)],
                         request_timeout=ADMIN_TIMEOUT_S)[name].result(timeout=ADMIN_TIMEOUT_S)
    kafkautil.wait_for_topic(bootstrap, name, 1)
    assert kafkautil.watermarks(bootstrap, name, 1) == {0: (0, 0)}
    assert broker.restart() == 0
    kafkautil.wait_for_topic(bootstrap, name, 1)
