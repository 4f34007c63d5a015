"""Restarts: a clean one (SIGTERM) keeps topics, partition counts, configs and every record; a
kill -9 during production keeps every record whose acks=1 acknowledgement reached the client,
at its acknowledged offset, in order, once."""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

import pytest

from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,
                                   NewPartitions, NewTopic, ResourceType)

import kafkautil
from kafkautil import ADMIN_TIMEOUT_S
from test_confluent import describe_topic_configs


def produce_keyed(bootstrap: str, topic: str, count: int, codec: str, prefix: str) -> dict:
    p = kafkautil.producer(bootstrap, acks="all", **{"compression.type": codec})
    acked, errors = {}, []

    def report(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked[(msg.partition(), msg.offset())] = msg.value()

    for i in range(count):
        while True:
            try:
                p.produce(topic, key=f"{prefix}-k{i}".encode(), value=f"{prefix}-v{i}".encode() * (1 + i % 7),
                          headers=[("n", str(i).encode())], on_delivery=report)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(60) == 0
    assert not errors, errors[:5]
    return acked


def snapshot(bootstrap: str, topic: str, partitions: int):
    log = kafkautil.consume_all(bootstrap, topic, partitions)
    return {p: [(r.offset, r.key, r.value, r.headers, r.timestamp) for r in records]
            for p, records in log.items()}


def test_clean_restart_keeps_topics_configs_and_records(broker, topic_name):
    bootstrap = broker.bootstrap
    a, b = f"{topic_name}-a", f"{topic_name}-b"
    kafkautil.create_topic(bootstrap, a, 6, config={"retention.ms": "123456789"})
    kafkautil.create_topic(bootstrap, b, 2)
    produce_keyed(bootstrap, a, 20_000, "lz4", "a")
    produce_keyed(bootstrap, b, 500, "none", "b")

    client = kafkautil.admin(bootstrap)
    # Changed after creation: a config and a partition count.
    resource = ConfigResource(ResourceType.TOPIC, b, incremental_configs=[
        ConfigEntry("retention.ms", "86400000", incremental_operation=AlterConfigOpType.SET)])
    for future in client.incremental_alter_configs([resource], request_timeout=ADMIN_TIMEOUT_S).values():
        future.result(timeout=ADMIN_TIMEOUT_S)
    client.create_partitions([NewPartitions(b, 3)], request_timeout=ADMIN_TIMEOUT_S)[b].result(
        timeout=ADMIN_TIMEOUT_S)
    kafkautil.wait_for_topic(bootstrap, b, 3)

    before = {a: snapshot(bootstrap, a, 6), b: snapshot(bootstrap, b, 3)}
    marks_before = {a: kafkautil.watermarks(bootstrap, a, 6), b: kafkautil.watermarks(bootstrap, b, 3)}
    assert sum(len(r) for r in before[a].values()) == 20_000
    assert sum(len(r) for r in before[b].values()) == 500

    assert broker.restart() == 0, "SIGTERM did not end the broker cleanly (exit code 0)"

    kafkautil.wait_for_topic(bootstrap, a, 6)
    kafkautil.wait_for_topic(bootstrap, b, 3)
    client = kafkautil.admin(bootstrap)
    assert describe_topic_configs(client, a).get("retention.ms") == "123456789"
    assert describe_topic_configs(client, b).get("retention.ms") == "86400000"
    assert {a: kafkautil.watermarks(bootstrap, a, 6),
            b: kafkautil.watermarks(bootstrap, b, 3)} == marks_before
    assert snapshot(bootstrap, a, 6) == before[a]
    assert snapshot(bootstrap, b, 3) == before[b]

    # New records go after the old ones, and survive a second restart.
    more = produce_keyed(bootstrap, a, 600, "zstd", "after")
    for (p, o) in more:
        assert o >= marks_before[a][p][1], f"partition {p}: new record at old offset {o}"
    assert broker.restart() == 0
    kafkautil.wait_for_topic(bootstrap, a, 6)
    after = snapshot(bootstrap, a, 6)
    for p in range(6):
        assert after[p][:len(before[a][p])] == before[a][p]
        assert [o for o, *_ in after[p]] == list(range(len(after[p])))
    for (p, o), value in more.items():
        assert after[p][o][2] == value


class AckRecorder:
    """A confluent-kafka producer (acks=1, no retries) in a thread, producing sequence-numbered
    records round-robin over the partitions and recording (partition, offset, sequence) of
    every acknowledgement from its delivery callbacks."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, first_seq: int,
                 value_bytes: int = 300):
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.value_bytes = value_bytes
        self.seq = first_seq
        self.acked: list[tuple[int, int, int]] = []
        self.failed = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        p = kafkautil.producer(self.bootstrap, **{
            "acks": "1",
            # Never resend: a record is in the log at most once, and per partition in the order
            # produced, whatever the broker's death does to requests in flight.
            "retries": 0,
            "linger.ms": 2,
            "batch.num.messages": 200,
            "message.timeout.ms": 10000,
            "reconnect.backoff.max.ms": 200,
        })

        def report(err, msg):
            if err is None:
                self.acked.append((msg.partition(), msg.offset(),
                                   int(msg.value().split(b"-")[1])))
            else:
                self.failed += 1

        while not self.stop_event.is_set():
            seq = self.seq
            try:
                p.produce(self.topic,
                          value=f"seq-{seq}-".encode() + b"x" * (seq * 7919 % self.value_bytes),
                          key=str(seq).encode(), partition=seq % self.partitions,
                          on_delivery=report)
                self.seq += 1
            except BufferError:
                p.poll(0.01)
            if seq % 100 == 0:
                p.poll(0)
            if seq % 1000 == 0:
                time.sleep(0.002)  # keep requests flowing rather than one huge backlog
        # Give up on everything unsent or in flight; those are not acknowledged.
        p.purge(in_queue=True, in_flight=True)
        p.flush(15)

    def stop(self):
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "producer thread did not stop"


def check_log_after_crash(bootstrap, topic, partitions, acknowledged):
    """Every acknowledged record at its offset; per partition contiguous offsets, production
    order, no duplicates. Returns the log."""
    log = kafkautil.consume_all(bootstrap, topic, partitions)
    by_position = {}
    for p, records in log.items():
        assert [r.offset for r in records] == list(range(len(records))), f"partition {p}: gaps"
        seqs = [int(r.value.split(b"-")[1]) for r in records]
        assert all(s % partitions == p for s in seqs), f"partition {p}: foreign record"
        assert seqs == sorted(seqs), f"partition {p}: records out of production order"
        assert len(set(seqs)) == len(seqs), f"partition {p}: duplicated records"
        for r, s in zip(records, seqs):
            by_position[(p, r.offset)] = s
    lost = [(p, o, s) for p, o, s in acknowledged if by_position.get((p, o)) != s]
    assert not lost, (
        f"{len(lost)} of {len(acknowledged)} acknowledged records missing or moved after kill -9, "
        f"first (partition, offset, acked seq, seq found): "
        f"{[(p, o, s, by_position.get((p, o))) for p, o, s in lost[:5]]}; log ends "
        f"{ {p: len(r) for p, r in log.items()} }")
    return log


def test_kill9_while_producing_keeps_acknowledged_records(broker, topic_name):
    """Four rounds: produce, kill -9 the broker at a different moment each time, restart,
    check every acknowledgement so far; the next round appends after the recovered log. The
    last round's records are up to 100 KB (batches of several MB, many O_DIRECT blocks)."""
    bootstrap = broker.bootstrap
    partitions = 4
    kafkautil.create_topic(bootstrap, topic_name, partitions)
    acknowledged: list[tuple[int, int, int]] = []
    seq = 0
    rounds = [(2000, 0.0, 300), (5000, 0.37, 300), (20000, 0.11, 300), (300, 0.05, 100_000)]
    for round_no, (min_acks, extra_s, value_bytes) in enumerate(rounds):
        producer = AckRecorder(bootstrap, topic_name, partitions, seq, value_bytes)
        deadline = time.monotonic() + 60
        while len(producer.acked) < min_acks:
            assert producer.thread.is_alive()
            assert time.monotonic() < deadline, (
                f"round {round_no}: only {len(producer.acked)} acknowledgements in 60 s")
            time.sleep(0.01)
        time.sleep(extra_s)
        broker.kill9()
        time.sleep(0.3)
        producer.stop()
        seq = producer.seq
        assert producer.seq > len(producer.acked), "nothing was in flight at the kill"
        acknowledged += producer.acked

        broker.start()
        kafkautil.wait_for_topic(bootstrap, topic_name, partitions)
        log = check_log_after_crash(bootstrap, topic_name, partitions, acknowledged)

    # The restarted broker appends after what it recovered.
    p = kafkautil.producer(bootstrap, acks="all")
    offsets = []
    p.produce(topic_name, value=f"seq-{seq}-after".encode(), partition=0,
              on_delivery=lambda err, msg: offsets.append((err, msg.offset())))
    assert p.flush(30) == 0
    assert offsets == [(None, len(log[0]))]


def test_kill9_right_after_admin_operations(broker, topic_name):
    """Acknowledged CreateTopics, CreatePartitions, IncrementalAlterConfigs and DeleteTopics
    survive a kill -9 that comes right after their answers."""
    bootstrap = broker.bootstrap
    keep, grow, gone = f"{topic_name}-keep", f"{topic_name}-grow", f"{topic_name}-gone"
    kafkautil.create_topic(bootstrap, gone, 2)
    kafkautil.create_topic(bootstrap, grow, 1)
    client = kafkautil.admin(bootstrap)
    client.create_topics([NewTopic(keep, num_partitions=3, replication_factor=1,
                                   config={"retention.ms": "55555555"})],
                         request_timeout=ADMIN_TIMEOUT_S)[keep].result(timeout=ADMIN_TIMEOUT_S)
    client.create_partitions([NewPartitions(grow, 4)], request_timeout=ADMIN_TIMEOUT_S)[grow].result(
        timeout=ADMIN_TIMEOUT_S)
    resource = ConfigResource(ResourceType.TOPIC, grow, incremental_configs=[
        ConfigEntry("retention.ms", "4444444", incremental_operation=AlterConfigOpType.SET)])
    for future in client.incremental_alter_configs([resource], request_timeout=ADMIN_TIMEOUT_S).values():
        future.result(timeout=ADMIN_TIMEOUT_S)
    client.delete_topics([gone], request_timeout=ADMIN_TIMEOUT_S)[gone].result(
        timeout=ADMIN_TIMEOUT_S)
    broker.kill9()
    del client

    broker.start()
    kafkautil.wait_for_topic(bootstrap, keep, 3)
    kafkautil.wait_for_topic(bootstrap, grow, 4)
    client = kafkautil.admin(bootstrap)
    assert gone not in client.list_topics(timeout=15).topics, "deleted topic is back"
    assert describe_topic_configs(client, keep).get("retention.ms") == "55555555"
    assert describe_topic_configs(client, grow).get("retention.ms") == "4444444"


def test_sigterm_with_consumer_in_long_poll_exits_promptly(broker, topic_name):
    """A live consumer at the end of the log is almost always inside a Fetch long poll; SIGTERM
    must end that poll (Kafka completes delayed fetches at shutdown), not wait it out."""
    from confluent_kafka import TopicPartition

    kafkautil.create_topic(broker.bootstrap, topic_name, 1)
    c = kafkautil.consumer(broker.bootstrap, **{"fetch.wait.max.ms": 20000,
                                                "socket.timeout.ms": 60000})
    try:
        c.assign([TopicPartition(topic_name, 0, 0)])
        assert c.poll(1.0) is None  # parked in Fetch at offset 0 of an empty partition
        started = time.monotonic()
        code = broker.stop(timeout=30)
        took = time.monotonic() - started
    finally:
        c.close()
    assert code == 0
    assert took < 2.0, f"SIGTERM took {took:.1f} s with one consumer in a long poll"


def _batches(segment: Path) -> list[tuple[int, int, int]]:
    """(position, base offset, size) of each complete RecordBatch in a .log segment."""
    data = segment.read_bytes()
    out, pos = [], 0
    while pos + 12 <= len(data):
        base, length = struct.unpack_from(">qi", data, pos)
        if length <= 0 or pos + 12 + length > len(data):
            break
        out.append((pos, base, 12 + length))
        pos += 12 + length
    return out


@pytest.mark.parametrize("damage", ["torn last batch", "garbage after last batch"])
def test_recovery_after_damaged_tail(broker, topic_name, damage):
    """After a kill -9 whose last write was torn (or left garbage behind the last batch), the
    broker starts, serves every complete batch before the damage and appends after it."""
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 1)
    p = kafkautil.producer(bootstrap, acks="all", **{"linger.ms": 100})
    for batch in range(20):
        for i in range(10):
            p.produce(topic_name, value=b"b%d-r%d" % (batch, i), partition=0)
        assert p.flush(30) == 0
    del p
    broker.kill9()

    partition_dir = broker.data_dir / f"{topic_name}-0"
    segments = sorted(partition_dir.glob("*.log"))
    assert segments, f"no {partition_dir.name}/*.log segment (docs/storage-format.md)"
    segment = segments[-1]
    batches = _batches(segment)
    assert len(batches) >= 2 and batches[-1][1] + 10 == 200, batches[-3:]
    last_pos, last_base, last_size = batches[-1]
    with open(segment, "r+b") as f:
        if damage == "torn last batch":
            f.truncate(last_pos + last_size // 2)
            expected_end = last_base
        else:
            f.seek(last_pos + last_size)
            f.write(struct.pack(">qi", 200, 5000) + os.urandom(3000))
            expected_end = 200

    broker.start()
    kafkautil.wait_for_topic(bootstrap, topic_name, 1)
    assert kafkautil.watermarks(bootstrap, topic_name, 1) == {0: (0, expected_end)}
    log = kafkautil.consume_all(bootstrap, topic_name, 1)[0]
    assert [r.value for r in log] == [b"b%d-r%d" % (o // 10, o % 10) for o in range(expected_end)]
    p = kafkautil.producer(bootstrap, acks="all")
    offsets = []
    p.produce(topic_name, value=b"after", partition=0,
              on_delivery=lambda err, msg: offsets.append((err, msg.offset())))
    assert p.flush(30) == 0
    assert offsets == [(None, expected_end)]
    assert broker.restart() == 0
    log = kafkautil.consume_all(bootstrap, topic_name, 1)[0]
    assert [r.value for r in log][-1] == b"after" and len(log) == expected_end + 1
