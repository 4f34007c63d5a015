"""Consumer groups (classic protocol) and committed offsets with real clients: confluent-kafka
groups under load with members leaving and joining (eager range, roundrobin and incremental
cooperative-sticky), committed offsets across a clean restart and a kill -9, kafka-python 3,
static membership, the admin APIs, raw-protocol error cases, and rebalance times."""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections import Counter

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import ConsumerGroupTopicPartitions

import kafkautil
from kafkautil import Reader, _string, frame, recv_exact

# Fast groups: no initial rebalance delay, short sessions and heartbeats.
FAST_GROUPS = ["--group-initial-rebalance-delay-ms", "0"]
SESSION_MS = 6000
HEARTBEAT_MS = 1000
# The same for groups of the KIP-848 protocol, where the broker sets them.
KIP848_GROUPS = FAST_GROUPS + ["--group-consumer-heartbeat-interval-ms", "500",
                               "--group-consumer-session-timeout-ms", str(SESSION_MS)]


def group_consumer(bootstrap: str, group: str, **config) -> Consumer:
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        "socket.timeout.ms": 30000,
    }
    if config.get("group.protocol") != "consumer":
        # With the KIP-848 protocol the broker sets these (librdkafka refuses them).
        conf.update({"session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": HEARTBEAT_MS})
    conf.update(config)
    return Consumer(conf)


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (OffsetFetch without joining)."""
    c = group_consumer(bootstrap, group)
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def wait_until(condition, timeout: float, what: str, step: float = 0.005) -> float:
    """Polls `condition` until true; returns the time (monotonic) it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


# ---------------------------------------------------------------------------------------------
# A group of confluent-kafka consumers under load.


class Stint:
    """One member's ownership of one partition: from an assignment to its revocation."""

    def __init__(self, member: str, partition: int):
        self.member, self.partition = member, partition
        self.first: int | None = None
        self.last: int | None = None
        self.committed: int | None = None  # last successfully committed offset (next to read)
        self.closed = False

    def uncommitted(self) -> range:
        """Offsets processed in this stint but not covered by its last successful commit."""
        if self.last is None:
            return range(0)
        start = self.committed if self.committed is not None else self.first
        return range(start, self.last + 1)


class GroupRun:
    PARTITIONS = 6

    def __init__(self, bootstrap: str, topic: str, group: str, total: int, strategy: str | None,
                 rate: float, heartbeat_ms: int = HEARTBEAT_MS, protocol: str = "classic"):
        self.heartbeat_ms = heartbeat_ms
        # "consumer": KIP-848, `strategy` names the server-side assignor (None: its default).
        self.protocol = protocol
        self.bootstrap, self.topic, self.group, self.total = bootstrap, topic, group, total
        self.strategy, self.rate = strategy, rate
        self.lock = threading.Lock()
        self.delivered: dict[int, tuple[int, int]] = {}  # value -> (partition, offset)
        self.produce_errors: list[str] = []
        self.produced_done = threading.Event()
        self.processed: list[tuple[int, int, int, str]] = []  # (partition, offset, value, member)
        self.distinct: set[tuple[int, int]] = set()
        self.assignment: dict[str, set[int]] = {}
        self.stints: list[Stint] = []
        self.open_stints: dict[tuple[str, int], Stint] = {}
        self.group_committed: dict[int, int] = {}
        self.resume_mismatches: list[str] = []
        self.commit_failures: list[str] = []
        self.errors: list[str] = []
        self.stop_flags: dict[str, threading.Event] = {}
        self.closed: dict[str, threading.Event] = {}
        self.close_started: dict[str, float] = {}
        self.threads: list[threading.Thread] = []
        self.all_done = threading.Event()

    # -- producer
    def produce(self):
        p = kafkautil.producer(self.bootstrap, acks="all", **{"linger.ms": 5})
        try:
            started = time.monotonic()
            for i in range(self.total):
                def report(err, msg, i=i):
                    if err is not None:
                        self.produce_errors.append(f"{i}: {err}")
                    else:
                        self.delivered[i] = (msg.partition(), msg.offset())
                while True:
                    try:
                        p.produce(self.topic, key=f"key-{i % 9973}".encode(),
                                  value=str(i).encode(), on_delivery=report)
                        break
                    except BufferError:
                        p.poll(0.05)
                if i % 1000 == 999:
                    p.poll(0)
                    ahead = (i + 1) / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            remaining = p.flush(60)
            if remaining:
                self.produce_errors.append(f"{remaining} records not delivered")
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.produce_errors.append(repr(e))
        finally:
            self.produced_done.set()

    # -- members
    def start_member(self, name: str) -> None:
        self.stop_flags[name] = threading.Event()
        self.closed[name] = threading.Event()
        with self.lock:
            self.assignment[name] = set()
        t = threading.Thread(target=self.member, args=(name,), daemon=True, name=name)
        self.threads.append(t)
        t.start()

    def _open(self, name, partitions):
        with self.lock:
            for tp in partitions:
                self.assignment[name].add(tp.partition)
                stint = Stint(name, tp.partition)
                self.open_stints[(name, tp.partition)] = stint
                self.stints.append(stint)

    def _close(self, name, partitions):
        with self.lock:
            for tp in partitions:
                self.assignment[name].discard(tp.partition)
                stint = self.open_stints.pop((name, tp.partition), None)
                if stint is not None:
                    stint.closed = True

    def member(self, name: str) -> None:
        if self.protocol == "consumer":
            config = {"client.id": name, "group.protocol": "consumer"}
            if self.strategy:
                config["group.remote.assignor"] = self.strategy
        else:
            config = {"client.id": name, "heartbeat.interval.ms": self.heartbeat_ms}
            if self.strategy:
                config["partition.assignment.strategy"] = self.strategy
        c = group_consumer(self.bootstrap, self.group, **config)
        try:
            c.subscribe([self.topic],
                        on_assign=lambda _c, parts: self._open(name, parts),
                        on_revoke=lambda _c, parts: self._close(name, parts),
                        on_lost=lambda _c, parts: self._close(name, parts))
            # Commits that failed (e.g. ILLEGAL_GENERATION or STALE_MEMBER_EPOCH while the group
            # rebalances) are retried, as an application would, while the same stint lasts.
            retry: dict[int, tuple[int, Stint]] = {}
            while not self.stop_flags[name].is_set():
                msgs = c.consume(num_messages=1000, timeout=0.1)
                batch_end: dict[int, int] = {}
                with self.lock:
                    for m in msgs:
                        if m.error():
                            if m.error().code() != KafkaError._PARTITION_EOF:
                                self.errors.append(f"{name}: {m.error()}")
                            continue
                        part, off = m.partition(), m.offset()
                        stint = self.open_stints.get((name, part))
                        if stint is None:
                            self.errors.append(f"{name}: record {part}/{off} of no stint")
                            continue
                        if stint.first is None:
                            stint.first = off
                            want = self.group_committed.get(part, 0)
                            if off != want:
                                self.resume_mismatches.append(
                                    f"{name} started {part} at {off}, group committed {want}")
                        elif off != stint.last + 1:
                            self.errors.append(f"{name}: {part} jumped {stint.last} -> {off}")
                        stint.last = off
                        self.processed.append((part, off, int(m.value()), name))
                        self.distinct.add((part, off))
                        batch_end[part] = off + 1
                with self.lock:
                    for p, (o, stint) in retry.items():
                        if p not in batch_end and self.open_stints.get((name, p)) is stint:
                            batch_end[p] = o
                    stints = {p: self.open_stints.get((name, p)) for p in batch_end}
                retry = {}
                if batch_end:
                    offsets = [TopicPartition(self.topic, p, o) for p, o in batch_end.items()]
                    try:
                        result = c.commit(offsets=offsets, asynchronous=False)
                        ok = [tp for tp in result if tp.error is None]
                        bad = [tp for tp in result if tp.error is not None]
                    except KafkaException as e:
                        ok, bad = [], offsets
                        self.commit_failures.append(f"{name}: {e}")
                    with self.lock:
                        for tp in ok:
                            stint = self.open_stints.get((name, tp.partition))
                            if stint is not None:
                                stint.committed = tp.offset
                            self.group_committed[tp.partition] = tp.offset
                        for tp in bad:
                            if tp.error is not None:
                                self.commit_failures.append(f"{name}: {tp.partition} {tp.error}")
                            if stints.get(tp.partition) is not None:
                                retry[tp.partition] = (tp.offset, stints[tp.partition])
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{name}: {e!r}")
        finally:
            self.close_started[name] = time.monotonic()
            c.close()
            self.closed[name].set()

    def stop_member(self, name: str) -> None:
        self.stop_flags[name].set()

    def covered(self, members: list[str]) -> bool:
        """The members' assignments are disjoint and cover every partition."""
        with self.lock:
            sets = [self.assignment[m] for m in members]
        union = set().union(*sets)
        return len(union) == self.PARTITIONS and sum(len(s) for s in sets) == self.PARTITIONS


def run_group(broker, topic: str, strategy: str | None, total: int = 200_000,
              rate: float = 25_000, heartbeat_ms: int = HEARTBEAT_MS,
              protocol: str = "classic") -> dict:
    """A 3-member group under load, one member leaving at 1/3 and one joining at 1/2.
    `protocol` "consumer": KIP-848, whose heartbeat interval the broker sets (the caller
    starts it with `heartbeat_ms`)."""
    kafkautil.create_topic(broker.bootstrap, topic, GroupRun.PARTITIONS)
    group = f"g-{topic}"
    run = GroupRun(broker.bootstrap, topic, group, total, strategy, rate, heartbeat_ms, protocol)
    if protocol == "consumer":
        label = f"consumer protocol, {strategy or 'uniform'} (server-side, incremental)"
    else:
        label = strategy or "default (range,roundrobin: eager)"

    for name in ("m0", "m1", "m2"):
        run.start_member(name)
    wait_until(lambda: run.covered(["m0", "m1", "m2"]) and all(run.assignment[m] for m in
               ("m0", "m1", "m2")), 60, "the first assignment of three members")
    producer = threading.Thread(target=run.produce, daemon=True)
    producer.start()

    # Mid-way one member leaves...
    wait_until(lambda: len(run.distinct) >= total // 3, 90, "a third of the records processed",
               step=0.05)
    start = time.monotonic()
    run.stop_member("m1")
    end = wait_until(lambda: "m1" in run.close_started and run.covered(["m0", "m2"]), 60,
                     "the survivors' assignment after m1 left")
    leave_s = end - run.close_started["m1"]
    assert run.closed["m1"].wait(30)
    # ...and a new one joins.
    wait_until(lambda: len(run.distinct) >= total // 2, 90, "half of the records processed",
               step=0.05)
    start = time.monotonic()
    run.start_member("m3")
    wait_until(lambda: run.assignment["m3"] and run.covered(["m0", "m2", "m3"]), 60,
               "the assignment after m3 joined")
    join_s = time.monotonic() - start

    producer.join(120)
    assert run.produced_done.is_set()
    assert not run.produce_errors, run.produce_errors[:5]
    assert len(run.delivered) == total
    wait_until(lambda: len(run.distinct) >= total, 90, "every record processed", step=0.05)
    for name in ("m0", "m2", "m3"):
        run.stop_member(name)
    for t in run.threads:
        t.join(60)
        assert not t.is_alive()

    assert not run.errors, run.errors[:10]
    # Every record was processed, at the (partition, offset) its delivery report named.
    marks = kafkautil.watermarks(broker.bootstrap, topic, GroupRun.PARTITIONS)
    assert sum(high for _, high in marks.values()) == total
    counts = Counter((p, o) for p, o, _, _ in run.processed)
    expected = {(p, o) for p, (_, high) in marks.items() for o in range(high)}
    assert set(counts) == expected
    for p, o, value, member in run.processed:
        assert run.delivered[value] == (p, o), (value, member)
    # Duplicates only where the protocol allows them: records a member processed after its
    # last successful commit of a partition it then lost.
    duplicates = {po: n - 1 for po, n in counts.items() if n > 1}
    allowed = set()
    for stint in run.stints:
        for o in stint.uncommitted():
            allowed.add((stint.partition, o))
    outside = [po for po in duplicates if po not in allowed]
    assert not outside, f"duplicates outside uncommitted ranges: {outside[:10]}"
    bound = sum(len(s.uncommitted()) for s in run.stints)
    dup_count = sum(duplicates.values())
    assert dup_count <= bound
    # Every new owner started at the group's committed offset.
    assert not run.resume_mismatches, run.resume_mismatches[:10]
    # The final committed offsets are the high watermarks.
    committed = committed_offsets(broker.bootstrap, group, topic, GroupRun.PARTITIONS)
    assert committed == {p: high for p, (_, high) in marks.items()}
    summary = dict(strategy=label, records=total, duplicates=dup_count, bound=bound,
                   commit_failures=len(run.commit_failures), leave_rebalance_s=round(leave_s, 3),
                   join_rebalance_s=round(join_s, 3), stints=len(run.stints),
                   heartbeat_ms=heartbeat_ms)
    print(f"\nGROUP RUN {summary}")
    if run.commit_failures:
        print("commit failures:", run.commit_failures[:10])
    return summary


def test_group_eager_range_members_leave_and_join(broker_factory, topic_name):
    broker = broker_factory(extra_args=FAST_GROUPS)
    run_group(broker, topic_name, None)


def test_group_cooperative_sticky_members_leave_and_join(broker_factory, topic_name):
    broker = broker_factory(extra_args=FAST_GROUPS)
    run_group(broker, topic_name, "cooperative-sticky")


def test_group_roundrobin_members_leave_and_join(broker_factory, topic_name):
    broker = broker_factory(extra_args=FAST_GROUPS)
    run_group(broker, topic_name, "roundrobin")


# ---------------------------------------------------------------------------------------------
# Committed offsets across restarts.


def produce_values(bootstrap: str, topic: str, count: int, partitions: int) -> None:
    p = kafkautil.producer(bootstrap, acks="all")
    errors = []
    for i in range(count):
        p.produce(topic, value=f"v{i}".encode(), partition=i % partitions,
                  on_delivery=lambda err, _m: err and errors.append(err))
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    assert not errors


def wait_assigned(c: Consumer, partitions: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(c.assignment()) < partitions:
        assert time.monotonic() < deadline, "no assignment"
        c.consume(num_messages=1, timeout=0.1)  # nothing consumed is committed


def resume_and_check(bootstrap: str, group: str, topic: str, partitions: int,
                     expected: dict[int, int], **config) -> None:
    """A new member of `group` reads from exactly `expected` to the high watermark."""
    marks = kafkautil.watermarks(bootstrap, topic, partitions)
    c = group_consumer(bootstrap, group, **config)
    got: dict[int, list[int]] = {p: [] for p in range(partitions)}
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 60
        while any((got[p][-1] + 1 if got[p] else expected[p]) < marks[p][1]
                  for p in range(partitions)):
            assert time.monotonic() < deadline, {p: len(v) for p, v in got.items()}
            for m in c.consume(num_messages=1000, timeout=0.2):
                assert not m.error(), m.error()
                got[m.partition()].append(m.offset())
    finally:
        c.close()
    for p in range(partitions):
        assert got[p] == list(range(expected[p], marks[p][1])), \
            (p, expected[p], got[p][:3], marks[p])


def commit_as_member(bootstrap: str, group: str, topic: str, partitions: int,
                     offsets: list[dict[int, int]], **config) -> None:
    """Joins the group, commits each of `offsets` in turn (synchronously), leaves."""
    c = group_consumer(bootstrap, group, **config)
    try:
        c.subscribe([topic])
        wait_assigned(c, partitions)
        for commit in offsets:
            result = c.commit(offsets=[TopicPartition(topic, p, o) for p, o in commit.items()],
                              asynchronous=False)
            assert all(tp.error is None for tp in result), result
    finally:
        c.close()


def offsets_survive_restarts(broker, topic_name: str, **config) -> None:
    """Commits as a member, restarts cleanly, checks and resumes; commits again, kill -9,
    checks and resumes. `config`: the members' consumer settings (e.g. the group protocol)."""
    partitions = 3
    kafkautil.create_topic(broker.bootstrap, topic_name, partitions)
    produce_values(broker.bootstrap, topic_name, 3000, partitions)
    group = f"g-{topic_name}"

    first = {0: 100, 1: 357, 2: 999}
    commit_as_member(broker.bootstrap, group, topic_name, partitions,
                     [{p: o - 50 for p, o in first.items()}, first], **config)
    assert committed_offsets(broker.bootstrap, group, topic_name, partitions) == first

    assert broker.restart(clean=True) == 0
    assert committed_offsets(broker.bootstrap, group, topic_name, partitions) == first
    resume_and_check(broker.bootstrap, group, topic_name, partitions, first, **config)

    second = {0: 10, 1: 500, 2: 1000}
    commit_as_member(broker.bootstrap, group, topic_name, partitions,
                     [{0: 700, 1: 1, 2: 2}, second], **config)
    broker.restart(clean=False)  # kill -9
    assert committed_offsets(broker.bootstrap, group, topic_name, partitions) == second
    resume_and_check(broker.bootstrap, group, topic_name, partitions, second, **config)
    assert "committed offsets replayed" in broker.log_paths[-1].read_text()


def test_committed_offsets_survive_restart_and_kill9(broker_factory, topic_name):
    offsets_survive_restarts(broker_factory(extra_args=FAST_GROUPS), topic_name)


def test_many_committed_offsets_are_all_replayed(broker_factory, topic_name):
    """50,000 committed offsets (1,000 groups x 50 partitions, spread over every
    __consumer_offsets partition and both shards; with metadata, about 2 MiB of log per
    partition) all come back after a kill -9: the replay reads the offsets log to its end, a
    bounded amount at a time."""
    broker = broker_factory(extra_args=FAST_GROUPS)
    partitions, groups = 50, 1000
    kafkautil.create_topic(broker.bootstrap, topic_name, partitions)
    address = ("127.0.0.1", broker.port)
    names = [f"replay-{g}-{topic_name}" for g in range(groups)]

    def offset(g: int, p: int) -> int:
        return g * 1000 + p

    commits = [kafkautil.offset_commit_v2(name, topic_name,
                                          {p: offset(g, p) for p in range(partitions)},
                                          metadata="m" * 250)
               for g, name in enumerate(names)]
    for answer in kafkautil.pipelined(address, commits):
        errors = kafkautil.parse_offset_commit_v2(answer)
        assert len(errors) == partitions and set(errors.values()) == {0}, errors

    broker.restart(clean=False)
    fetches = [kafkautil.offset_fetch_v1(name, {topic_name: list(range(partitions))})
               for name in names]
    for g, answer in enumerate(kafkautil.pipelined(address, fetches)):
        got = kafkautil.parse_offset_fetch_v1(answer)
        assert got == {(topic_name, p): (offset(g, p), 0) for p in range(partitions)}, g
    replayed = [int(n) for n in re.findall(r"committed offsets replayed.*?records=(\d+)",
                                           broker.log_paths[-1].read_text())]
    assert sum(replayed) == partitions * groups, replayed


def test_offsets_of_unknown_topics_and_partitions_are_refused(broker_factory, topic_name):
    """As Kafka does: an OffsetCommit for a topic or partition that does not exist is answered
    UNKNOWN_TOPIC_OR_PARTITION and nothing is stored for it; the request's other partitions
    are committed."""
    broker = broker_factory()
    kafkautil.create_topic(broker.bootstrap, topic_name, 2)
    group, missing = f"unknown-{topic_name}", f"missing-{topic_name}"
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False, "socket.timeout.ms": 30000})
    try:
        asked = [TopicPartition(topic_name, 0, 7), TopicPartition(topic_name, 5, 8),
                 TopicPartition(missing, 0, 9)]
        # librdkafka raises the first partition error of a synchronous commit.
        with pytest.raises(KafkaException) as raised:
            c.commit(offsets=asked, asynchronous=False)
        assert raised.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART, raised.value
    finally:
        c.close()
    # Per partition, in the raw protocol: only the real one was stored.
    address = ("127.0.0.1", broker.port)
    answer = kafkautil.roundtrip(address, kafkautil.offset_commit_v2(group, missing, {0: 10, 1: 11}))
    assert kafkautil.parse_offset_commit_v2(answer) == {(missing, 0): 3, (missing, 1): 3}
    answer = kafkautil.roundtrip(address, kafkautil.offset_commit_v2(group, topic_name, {1: 12, 2: 13}))
    assert kafkautil.parse_offset_commit_v2(answer) == {(topic_name, 1): 0, (topic_name, 2): 3}
    answer = kafkautil.roundtrip(address, kafkautil.offset_fetch_v1(
        group, {topic_name: [0, 1, 2, 5], missing: [0, 1]}))
    assert kafkautil.parse_offset_fetch_v1(answer) == {
        (topic_name, 0): (7, 0), (topic_name, 1): (12, 0), (topic_name, 2): (-1, 0),
        (topic_name, 5): (-1, 0), (missing, 0): (-1, 0), (missing, 1): (-1, 0)}


# ---------------------------------------------------------------------------------------------
# kafka-python 3.


def test_kafka_python_group_commit_and_resume(broker_factory, topic_name):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP

    broker = broker_factory(extra_args=FAST_GROUPS)
    partitions, total = 3, 3000
    kafkautil.create_topic(broker.bootstrap, topic_name, partitions)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5,
                             request_timeout_ms=30000, max_block_ms=30000)
    try:
        futures = [producer.send(topic_name, key=f"k{i}".encode(), value=f"kp-{i}".encode())
                   for i in range(total)]
        producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close(timeout=10)

    group = f"kp-{topic_name}"
    common = dict(bootstrap_servers=broker.bootstrap, group_id=group,
                  auto_offset_reset="earliest", enable_auto_commit=False,
                  session_timeout_ms=SESSION_MS, heartbeat_interval_ms=HEARTBEAT_MS,
                  request_timeout_ms=30000)
    seen: list[tuple[int, int, bytes]] = []
    c1 = KafkaConsumer(topic_name, **common)
    try:
        deadline = time.monotonic() + 60
        while len(seen) < total // 3:
            assert time.monotonic() < deadline, len(seen)
            for tp, records in c1.poll(timeout_ms=200, max_records=200).items():
                seen.extend((tp.partition, r.offset, r.value) for r in records)
        c1.commit()
        committed = {p: c1.committed(KTP(topic_name, p)) for p in range(partitions)}
    finally:
        c1.close()
    # The commit is the position after what was consumed.
    for p in range(partitions):
        mine = [o for q, o, _ in seen if q == p]
        if mine:
            assert committed[p] == max(mine) + 1, (p, committed)
        else:  # fetched from 0 without records yet (committed as 0) or not fetched at all
            assert committed[p] in (None, 0), (p, committed)
    assert committed_offsets(broker.bootstrap, group, topic_name, partitions) == \
        {p: (committed[p] if committed[p] is not None else -1001) for p in range(partitions)}

    c2 = KafkaConsumer(topic_name, **common)
    rest: list[tuple[int, int, bytes]] = []
    try:
        deadline = time.monotonic() + 60
        while len(seen) + len(rest) < total:
            assert time.monotonic() < deadline, len(rest)
            for tp, records in c2.poll(timeout_ms=200).items():
                rest.extend((tp.partition, r.offset, r.value) for r in records)
        c2.commit()
    finally:
        c2.close()
    for p in range(partitions):
        firsts = [o for q, o, _ in rest if q == p]
        if firsts:
            assert firsts[0] == (committed[p] or 0), (p, firsts[0], committed[p])
    values = sorted(v for _, _, v in seen + rest)
    assert values == sorted(f"kp-{i}".encode() for i in range(total))  # exactly once
    marks = kafkautil.watermarks(broker.bootstrap, topic_name, partitions)
    assert committed_offsets(broker.bootstrap, group, topic_name, partitions) == \
        {p: high for p, (_, high) in marks.items()}


# ---------------------------------------------------------------------------------------------
# Static membership.


def static_rejoin(broker, topic_name: str, **config) -> tuple[dict, dict, int]:
    """Two static members share 4 partitions; one closes and comes back under the same
    group.instance.id. Returns the assignments before and after, and how many times the other
    member had partitions revoked meanwhile."""
    partitions = 4
    kafkautil.create_topic(broker.bootstrap, topic_name, partitions)
    group = f"static-{topic_name}"
    owned: dict[str, set[int]] = {}
    revocations: Counter = Counter()
    lock = threading.Lock()

    def make(instance):
        c = group_consumer(broker.bootstrap, group, **config, **{"group.instance.id": instance})

        # Incremental callbacks (cooperative, KIP-848) name the partitions that change; eager
        # ones name the whole assignment: updating the set works for both.
        def assign(_c, parts):
            with lock:
                owned.setdefault(instance, set()).update(tp.partition for tp in parts)

        def revoke(_c, parts):
            with lock:
                owned.setdefault(instance, set()).difference_update(tp.partition for tp in parts)
                revocations[instance] += 1

        c.subscribe([topic_name], on_assign=assign, on_revoke=revoke, on_lost=revoke)
        return c

    def settled():
        with lock:
            a, b = owned.get("static-a", set()), owned.get("static-b", set())
        return a and b and a | b == set(range(partitions)) and not a & b

    a, b = make("static-a"), make("static-b")
    stop = threading.Event()

    def poll_b():
        while not stop.is_set():
            b.consume(num_messages=100, timeout=0.1)

    poller = threading.Thread(target=poll_b, daemon=True)
    poller.start()
    try:
        deadline = time.monotonic() + 60
        while not settled():
            assert time.monotonic() < deadline, owned
            a.consume(num_messages=100, timeout=0.1)
        with lock:
            before = {k: set(v) for k, v in owned.items()}
            b_revocations = revocations["static-b"]
        a.close()
        with lock:
            owned["static-a"] = set()
        a = make("static-a")
        deadline = time.monotonic() + 60
        while not settled():
            assert time.monotonic() < deadline, owned
            a.consume(num_messages=100, timeout=0.1)
        # Time for a rebalance the rejoin might have started to show in b's callbacks.
        time.sleep(2 * HEARTBEAT_MS / 1000)
        a.consume(num_messages=100, timeout=0.1)
        with lock:
            after = {k: set(v) for k, v in owned.items()}
            b_revoked = revocations["static-b"] - b_revocations
        # The restarted member's session never expired: it replaced itself.
        assert "member session expired" not in broker.log_paths[-1].read_text()
        return before, after, b_revoked
    finally:
        stop.set()
        poller.join(10)
        a.close()
        b.close()


def test_static_member_rejoins_with_its_partitions(broker_factory, topic_name):
    broker = broker_factory(extra_args=FAST_GROUPS)
    before, after, b_revoked = static_rejoin(broker, topic_name)
    assert after == before
    # KIP-345: a static member rejoining with unchanged metadata gets its assignment back
    # without a rebalance, so the other member keeps its partitions throughout.
    assert b_revoked == 0, "the rejoin rebalanced the group"
    assert "static member rejoined with its assignment" in broker.log_paths[-1].read_text()


class StaticGroup:
    """Static members of one group, each polled by its own thread (calling a consumer from
    another thread while its own polls can deadlock the Python client). `owned` follows the
    rebalance callbacks, `revocations` counts them, `errors` holds what error_cb and poll
    report, per instance."""

    def __init__(self, broker, topic: str):
        self.broker, self.topic = broker, topic
        self.group = f"static-{topic}"
        self.lock = threading.Lock()
        self.owned: dict[str, set[int]] = {}
        self.revocations: Counter = Counter()
        self.errors: dict[str, list[KafkaError]] = {}
        self.members: list[tuple[Consumer, threading.Event, threading.Thread]] = []

    def start(self, instance: str, name: str | None = None, **config) -> Consumer:
        """Starts a member with `instance` as its group.instance.id; its bookkeeping goes
        under `name` (the instance id unless given)."""
        key = name or instance
        errors = self.errors.setdefault(key, [])

        def on_error(err):
            with self.lock:
                errors.append(err)

        c = group_consumer(self.broker.bootstrap, self.group, error_cb=on_error,
                           **{"group.instance.id": instance}, **config)

        def assign(_c, parts):
            with self.lock:
                self.owned.setdefault(key, set()).update(tp.partition for tp in parts)

        def revoke(_c, parts):
            with self.lock:
                self.owned.setdefault(key, set()).difference_update(
                    tp.partition for tp in parts)
                self.revocations[key] += 1

        c.subscribe([self.topic], on_assign=assign, on_revoke=revoke, on_lost=revoke)
        stop = threading.Event()

        def poll():
            while not stop.is_set():
                try:
                    m = c.poll(0.1)
                except KafkaException as e:
                    with self.lock:
                        errors.append(e.args[0])
                    time.sleep(0.1)
                    continue
                if m is not None and m.error():
                    with self.lock:
                        errors.append(m.error())

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        self.members.append((c, stop, thread))
        return c

    def stop(self, c: Consumer) -> None:
        """Stops polling `c` and closes it (a static member sends no LeaveGroup)."""
        for entry in self.members:
            if entry[0] is c:
                entry[1].set()
                entry[2].join(10)
                self.members.remove(entry)
                c.close()
                return

    def stop_all(self) -> None:
        for c, _, _ in list(self.members):
            self.stop(c)

    def owns(self) -> dict[str, set[int]]:
        with self.lock:
            return {k: set(v) for k, v in self.owned.items()}


def fenced(errors: list[KafkaError]) -> bool:
    """Whether librdkafka reported FENCED_INSTANCE_ID (raised as a fatal error, _FATAL, whose
    text names the fencing)."""
    return any(e.code() == KafkaError.FENCED_INSTANCE_ID
               or (is_fatal(e) and "fenced" in e.str().lower()) for e in errors)


def is_fatal(e: KafkaError) -> bool:
    # A fatal error returned by poll() has the code _FATAL (its fatal() flag is not set).
    return e.fatal() or e.code() == KafkaError._FATAL


def test_static_member_taken_over_by_a_second_consumer_is_fenced(broker_factory, topic_name):
    """KIP-345: a second live consumer with a group.instance.id already in use takes the
    instance over (its old assignment, no rebalance); the first one's next request carries the
    instance id with a member id that is no longer the instance's and is refused with
    FENCED_INSTANCE_ID, a fatal error for librdkafka. (It used to see only UNKNOWN_MEMBER_ID,
    rejoin and take the instance back, forever.)"""
    broker = broker_factory(extra_args=FAST_GROUPS)
    partitions = 4
    kafkautil.create_topic(broker.bootstrap, topic_name, partitions)
    g = StaticGroup(broker, topic_name)
    try:
        g.start("static-a")
        g.start("static-b")
        wait_until(lambda: len(g.owns().get("static-a", ())) == 2
                   and len(g.owns().get("static-b", ())) == 2, 60, "both members assigned",
                   step=0.05)
        before = g.owns()
        revocations = dict(g.revocations)
        # A second "static-a" while the first is alive.
        g.start("static-a", name="second-a")
        wait_until(lambda: len(g.owns().get("second-a", ())) == 2, 30, "the newcomer assigned",
                   step=0.05)
        # The first "static-a" heartbeats within a second: fenced, fatally.
        wait_until(lambda: fenced(list(g.errors["static-a"])), 30, "the first static-a fenced",
                   step=0.05)
        assert not any(is_fatal(e) for e in g.errors["second-a"]), g.errors["second-a"]
        # Time for a rebalance the takeover might have started to show.
        time.sleep(3 * HEARTBEAT_MS / 1000)
        after = g.owns()
        assert after["second-a"] == before["static-a"], (before, after)
        assert after["static-b"] == before["static-b"], (before, after)
        assert g.revocations["static-b"] == revocations.get("static-b", 0), \
            "the takeover rebalanced the group"
        assert g.revocations["second-a"] == 0
        log = broker.log_paths[-1].read_text()
        assert "static member replaced" in log
        assert "static member rejoined with its assignment" in log
    finally:
        g.stop_all()


def test_describe_groups_shows_group_instance_ids(broker_factory, topic_name):
    """DescribeGroups v4+ names each static member's group.instance.id (and a dynamic
    member's is empty)."""
    broker = broker_factory(extra_args=FAST_GROUPS)
    partitions = 3
    kafkautil.create_topic(broker.bootstrap, topic_name, partitions)
    g = StaticGroup(broker, topic_name)
    dynamic = group_consumer(broker.bootstrap, g.group, **{"client.id": "dynamic-member"})
    dynamic_owned: set[int] = set()
    stop = threading.Event()

    def poll_dynamic():
        def assign(_c, parts):
            dynamic_owned.clear()
            dynamic_owned.update(tp.partition for tp in parts)

        dynamic.subscribe([topic_name], on_assign=assign)
        while not stop.is_set():
            dynamic.poll(0.1)

    thread = threading.Thread(target=poll_dynamic, daemon=True)
    try:
        g.start("instance-one")
        g.start("instance-two")
        thread.start()
        wait_until(lambda: len(g.owns().get("instance-one", ())) == 1
                   and len(g.owns().get("instance-two", ())) == 1 and len(dynamic_owned) == 1,
                   60, "three members assigned", step=0.05)
        client = kafkautil.admin(broker.bootstrap)
        desc = client.describe_consumer_groups([g.group], request_timeout=30)[g.group].result(30)
        assert str(desc.state).endswith("STABLE"), desc.state
        by_instance = {m.group_instance_id: m for m in desc.members}
        assert set(by_instance) == {"instance-one", "instance-two", None}, by_instance
        for instance in ("instance-one", "instance-two"):
            assert by_instance[instance].member_id.startswith(f"{instance}-")
        assert by_instance[None].client_id == "dynamic-member"
    finally:
        stop.set()
        thread.join(10)
        dynamic.close()
        g.stop_all()


def test_static_member_gone_past_its_session_timeout_is_removed(broker_factory, topic_name):
    """A static member closed without coming back (it sends no LeaveGroup) keeps its
    partitions while its session runs (no rebalance), and is removed when its session times
    out: the other member then gets its partitions."""
    broker = broker_factory(extra_args=FAST_GROUPS)
    partitions = 4
    kafkautil.create_topic(broker.bootstrap, topic_name, partitions)
    g = StaticGroup(broker, topic_name)
    try:
        a = g.start("static-a")
        g.start("static-b")
        wait_until(lambda: len(g.owns().get("static-a", ())) == 2
                   and len(g.owns().get("static-b", ())) == 2, 60, "both members assigned",
                   step=0.05)
        revocations = g.revocations["static-b"]
        g.stop(a)
        closed = time.monotonic()
        # Within the session timeout nothing changes for the other member.
        time.sleep(SESSION_MS / 1000 / 2)
        assert g.revocations["static-b"] == revocations, "rebalanced before the session ended"
        assert len(g.owns()["static-b"]) == 2
        wait_until(lambda: g.owns()["static-b"] == set(range(partitions)), 60,
                   "static-b owns every partition")
        took = time.monotonic() - closed
        assert took >= SESSION_MS / 1000 * 0.8, took
        assert "member session expired" in broker.log_paths[-1].read_text()
    finally:
        g.stop_all()


# ---------------------------------------------------------------------------------------------
# Raw protocol: error cases.

JOIN_GROUP, SYNC_GROUP, HEARTBEAT, OFFSET_COMMIT = 11, 14, 12, 8
UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, INVALID_SESSION_TIMEOUT = 25, 22, 26


def _bytes(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def join_group_v3(group: str, member: str, session_ms: int = 10000,
                  rebalance_ms: int = 10000, protocol_type: str = "consumer") -> bytes:
    body = (_string(group) + struct.pack(">ii", session_ms, rebalance_ms) + _string(member)
            + _string(protocol_type) + struct.pack(">i", 1) + _string("range") + _bytes(b"meta"))
    return frame(JOIN_GROUP, 3, 41, body)


def parse_join_group_v3(body: bytes) -> tuple[int, int, str, str]:
    """(error, generation, leader, member_id)."""
    r = Reader(body)
    _throttle, error, generation = r.unpack(">ihi")
    _protocol = r.string()
    leader, member_id = r.string(), r.string()
    return error, generation, leader, member_id


def sync_group_v2(group: str, generation: int, member: str, assignment: bytes) -> bytes:
    body = (_string(group) + struct.pack(">i", generation) + _string(member)
            + struct.pack(">i", 1) + _string(member) + _bytes(assignment))
    return frame(SYNC_GROUP, 2, 42, body)


def heartbeat_v2(group: str, generation: int, member: str) -> bytes:
    return frame(HEARTBEAT, 2, 43, _string(group) + struct.pack(">i", generation) + _string(member))


def error_after_throttle(body: bytes) -> int:
    return struct.unpack_from(">h", body, 4)[0]


def offset_commit_v5(group: str, generation: int, member: str, topic: str,
                     offsets: dict[int, int]) -> bytes:
    body = (_string(group) + struct.pack(">i", generation) + _string(member)
            + struct.pack(">i", 1) + _string(topic) + struct.pack(">i", len(offsets))
            + b"".join(struct.pack(">iq", p, o) + _string("") for p, o in offsets.items()))
    return frame(OFFSET_COMMIT, 5, 44, body)


def parse_offset_commit_v5(body: bytes) -> dict[int, int]:
    """partition -> error code, for the one topic."""
    r = Reader(body)
    _throttle, ntopics = r.unpack(">ii")
    out = {}
    for _ in range(ntopics):
        r.string()
        for _ in range(r.unpack(">i")):
            p, err = r.unpack(">ih")
            out[p] = err
    return out


def test_raw_group_errors(broker_factory, topic_name):
    broker = broker_factory(extra_args=FAST_GROUPS)
    address = ("127.0.0.1", broker.port)
    kafkautil.create_topic(broker.bootstrap, topic_name, 2)
    group = f"raw-{topic_name}"

    error, generation, leader, member = parse_join_group_v3(
        kafkautil.roundtrip(address, join_group_v3(group, ""), timeout=30))
    assert error == 0 and generation >= 1 and leader == member and member
    assert error_after_throttle(kafkautil.roundtrip(
        address, sync_group_v2(group, generation, member, b"assignment"))) == 0
    assert error_after_throttle(kafkautil.roundtrip(
        address, heartbeat_v2(group, generation, member))) == 0

    # Heartbeat: unknown member, wrong generation.
    assert error_after_throttle(kafkautil.roundtrip(
        address, heartbeat_v2(group, generation, "no-such-member"))) == UNKNOWN_MEMBER_ID
    assert error_after_throttle(kafkautil.roundtrip(
        address, heartbeat_v2(group, generation + 5, member))) == ILLEGAL_GENERATION
    # OffsetCommit: wrong generation is refused, the right one stored.
    assert parse_offset_commit_v5(kafkautil.roundtrip(address, offset_commit_v5(
        group, generation + 1, member, topic_name, {0: 5, 1: 6}))) == \
        {0: ILLEGAL_GENERATION, 1: ILLEGAL_GENERATION}
    assert parse_offset_commit_v5(kafkautil.roundtrip(address, offset_commit_v5(
        group, generation, member, topic_name, {0: 5, 1: 6}))) == {0: 0, 1: 0}
    assert committed_offsets(broker.bootstrap, group, topic_name, 2) == {0: 5, 1: 6}
    # JoinGroup with a session timeout below the minimum.
    error, *_ = parse_join_group_v3(kafkautil.roundtrip(
        address, join_group_v3(f"{group}-2", "", session_ms=10), timeout=30))
    assert error == INVALID_SESSION_TIMEOUT

    # A truncated JoinGroup body: the broker drops that connection and serves the others.
    whole = join_group_v3(f"{group}-3", "")
    payload = whole[4:]
    cut = payload[: len(payload) - 9]  # inside the protocols array
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(cut)) + cut)
        sock.settimeout(10)
        try:
            data = sock.recv(65536)
            closed = data == b""
        except (ConnectionResetError, BrokenPipeError):
            closed = True
        assert closed, f"answered a truncated JoinGroup: {data!r}"
    assert kafkautil.api_versions_ok(address)
    assert error_after_throttle(kafkautil.roundtrip(
        address, heartbeat_v2(group, generation, member))) == 0


# Static membership fields.

LEAVE_GROUP = 13
FENCED_INSTANCE_ID = 82


def join_group_v5(group: str, member: str, instance: str | None, session_ms: int = 10000) -> bytes:
    body = (_string(group) + struct.pack(">ii", session_ms, session_ms) + _string(member)
            + _string(instance) + _string("consumer") + struct.pack(">i", 1) + _string("range")
            + _bytes(b"meta"))
    return frame(JOIN_GROUP, 5, 51, body)


def parse_join_group_v5(body: bytes) -> tuple[int, int, str, str, list]:
    """(error, generation, leader, member_id, [(member_id, instance_id)])."""
    r = Reader(body)
    _throttle, error, generation = r.unpack(">ihi")
    _protocol = r.string()
    leader, member_id = r.string(), r.string()
    members = []
    for _ in range(r.unpack(">i")):
        mid, instance = r.string(), r.string()
        n = r.unpack(">i")
        r.pos += max(n, 0)
        members.append((mid, instance))
    return error, generation, leader, member_id, members


def sync_group_v3(group: str, generation: int, member: str, instance: str | None,
                  assignment: bytes) -> bytes:
    body = (_string(group) + struct.pack(">i", generation) + _string(member) + _string(instance)
            + struct.pack(">i", 1) + _string(member) + _bytes(assignment))
    return frame(SYNC_GROUP, 3, 52, body)


def parse_sync_group_v3(body: bytes) -> tuple[int, bytes]:
    r = Reader(body)
    _throttle, error = r.unpack(">ih")
    n = r.unpack(">i")
    return error, r.data[r.pos:r.pos + max(n, 0)]


def heartbeat_v3(group: str, generation: int, member: str, instance: str | None) -> bytes:
    return frame(HEARTBEAT, 3, 53, _string(group) + struct.pack(">i", generation)
                 + _string(member) + _string(instance))


def offset_commit_v7(group: str, generation: int, member: str, instance: str | None,
                     topic: str, offsets: dict[int, int]) -> bytes:
    body = (_string(group) + struct.pack(">i", generation) + _string(member) + _string(instance)
            + struct.pack(">i", 1) + _string(topic) + struct.pack(">i", len(offsets))
            + b"".join(struct.pack(">iqi", p, o, -1) + _string("") for p, o in offsets.items()))
    return frame(OFFSET_COMMIT, 7, 55, body)


def leave_group_v3(group: str, members: list[tuple[str, str | None]]) -> bytes:
    body = _string(group) + struct.pack(">i", len(members)) + b"".join(
        _string(m) + _string(i) for m, i in members)
    return frame(LEAVE_GROUP, 3, 54, body)


def parse_leave_group_v3(body: bytes) -> tuple[int, list[tuple[str, str | None, int]]]:
    r = Reader(body)
    _throttle, error = r.unpack(">ih")
    members = []
    for _ in range(r.unpack(">i")):
        mid, instance = r.string(), r.string()
        members.append((mid, instance, r.unpack(">h")))
    return error, members


def test_raw_static_membership_fencing_and_batch_leave(broker_factory, topic_name):
    """JoinGroup v5 with a group.instance.id, its replacement by a second join (no rebalance,
    the old leader id named to a pre-v9 client), FENCED_INSTANCE_ID for the replaced member id
    on Heartbeat, SyncGroup, JoinGroup and OffsetCommit, and LeaveGroup v3 by instance id with per-member
    errors."""
    broker = broker_factory(extra_args=FAST_GROUPS)
    address = ("127.0.0.1", broker.port)
    kafkautil.create_topic(broker.bootstrap, topic_name, 1)
    group = f"raw-static-{topic_name}"
    rt = lambda request: kafkautil.roundtrip(address, request, timeout=30)  # noqa: E731

    error, generation, leader, m1, members = parse_join_group_v5(
        rt(join_group_v5(group, "", "s1")))
    assert error == 0 and m1.startswith("s1-") and leader == m1, (error, leader, m1)
    assert members == [(m1, "s1")]
    assert parse_sync_group_v3(rt(sync_group_v3(group, generation, m1, "s1", b"mine"))) == \
        (0, b"mine")

    # The same instance again, without a member id: a new member id, same generation, the
    # old leader id (so the client does not assign), and the stored assignment.
    error, generation2, leader2, m2, members2 = parse_join_group_v5(
        rt(join_group_v5(group, "", "s1")))
    assert error == 0 and m2.startswith("s1-") and m2 != m1
    assert generation2 == generation and leader2 == m1 and members2 == []
    assert parse_sync_group_v3(rt(sync_group_v3(group, generation, m2, "s1", b""))) == \
        (0, b"mine")

    # The replaced member id with the instance id: fenced everywhere.
    assert error_after_throttle(rt(heartbeat_v3(group, generation, m1, "s1"))) == \
        FENCED_INSTANCE_ID
    assert parse_sync_group_v3(rt(sync_group_v3(group, generation, m1, "s1", b"")))[0] == \
        FENCED_INSTANCE_ID
    assert parse_join_group_v5(rt(join_group_v5(group, m1, "s1")))[0] == FENCED_INSTANCE_ID
    # OffsetCommit v7 (with the instance id) likewise; the current member commits.
    assert parse_offset_commit_v5(rt(offset_commit_v7(
        group, generation, m1, "s1", topic_name, {0: 3}))) == {0: FENCED_INSTANCE_ID}
    assert parse_offset_commit_v5(rt(offset_commit_v7(
        group, generation, m2, "s1", topic_name, {0: 3}))) == {0: 0}
    # The current one is fine; an unknown instance is an unknown member.
    assert error_after_throttle(rt(heartbeat_v3(group, generation, m2, "s1"))) == 0
    assert error_after_throttle(rt(heartbeat_v3(group, generation, m2, "s9"))) == \
        UNKNOWN_MEMBER_ID

    # Batch leave: the fenced id, an unknown instance, then the instance by id alone.
    error, results = parse_leave_group_v3(rt(leave_group_v3(
        group, [(m1, "s1"), ("", "nope"), ("", "s1")])))
    assert error == 0
    assert results == [(m1, "s1", FENCED_INSTANCE_ID), ("", "nope", UNKNOWN_MEMBER_ID),
                       ("", "s1", 0)]
    assert error_after_throttle(rt(heartbeat_v3(group, generation, m2, "s1"))) == \
        UNKNOWN_MEMBER_ID


# ---------------------------------------------------------------------------------------------
# Admin APIs.


def describe_two_member_group(broker_factory, topic_name):
    """Lists, describes and fetches the offsets of a stable two-member group; returns the
    description."""
    broker = broker_factory(extra_args=FAST_GROUPS)
    partitions = 4
    kafkautil.create_topic(broker.bootstrap, topic_name, partitions)
    produce_values(broker.bootstrap, topic_name, 400, partitions)
    group = f"adm-{topic_name}"
    members = [group_consumer(broker.bootstrap, group, **{"client.id": f"adm-{i}"})
               for i in range(2)]
    # Assignments as the rebalance callbacks report them: calling a consumer from another
    # thread while its own thread polls can deadlock the Python client.
    owned: list[set[int]] = [set(), set()]
    to_commit: list[list[TopicPartition]] = []
    committed = threading.Event()
    stop = threading.Event()

    def poll(i):
        def assign(_c, parts):
            owned[i] = {tp.partition for tp in parts}

        def revoke(_c, parts):
            owned[i] = set()

        members[i].subscribe([topic_name], on_assign=assign, on_revoke=revoke)
        while not stop.is_set():
            members[i].consume(num_messages=100, timeout=0.1)
            if i == 0 and to_commit:
                members[0].commit(offsets=to_commit[0], asynchronous=False)
                committed.set()
                to_commit.clear()

    threads = [threading.Thread(target=poll, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(owned[0]) == 2 and len(owned[1]) == 2, 60,
                   "both members assigned", step=0.05)
        want = {p: 10 + p for p in owned[0]}
        to_commit.append([TopicPartition(topic_name, p, o) for p, o in want.items()])
        assert committed.wait(30)
        client = kafkautil.admin(broker.bootstrap)
        listed = client.list_consumer_groups(request_timeout=30).result(timeout=30)
        assert not listed.errors, listed.errors
        ids = {g.group_id: g for g in listed.valid}
        assert group in ids, list(ids)
        desc = client.describe_consumer_groups([group], request_timeout=30)[group].result(30)
        assert desc.group_id == group
        assert str(desc.state).endswith("STABLE"), desc.state
        assert len(desc.members) == 2
        assigned = sorted(tp.partition for m in desc.members
                          for tp in m.assignment.topic_partitions)
        assert assigned == list(range(partitions))
        offsets = client.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=30)[group].result(30)
        got = {tp.partition: tp.offset for tp in offsets.topic_partitions
               if tp.topic == topic_name}
        assert got == want
        return desc
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for c in members:
            c.close()


def test_admin_lists_and_describes_groups(broker_factory, topic_name):
    desc = describe_two_member_group(broker_factory, topic_name)
    assert all(m.member_id for m in desc.members)


def test_describe_groups_names_client_id_and_host(broker_factory, topic_name):
    desc = describe_two_member_group(broker_factory, topic_name)
    assert {m.client_id for m in desc.members} == {"adm-0", "adm-1"}
    assert all(m.host for m in desc.members)


# ---------------------------------------------------------------------------------------------
# Rebalance times (printed; bounded loosely).


@pytest.mark.parametrize("heartbeat_ms", [1000, 3000])  # 3000: librdkafka's default
@pytest.mark.parametrize("strategy", [None, "cooperative-sticky", "consumer:uniform"])
def test_rebalance_times(broker_factory, topic_name, strategy, heartbeat_ms):
    """Classic eager range and cooperative-sticky against KIP-848 with the uniform assignor,
    at the same heartbeat interval (client-set for classic, broker-set for KIP-848)."""
    protocol = "classic"
    args = list(FAST_GROUPS)
    if strategy and strategy.startswith("consumer:"):
        protocol, strategy = "consumer", strategy.split(":", 1)[1]
        args += ["--group-consumer-heartbeat-interval-ms", str(heartbeat_ms)]
    broker = broker_factory(extra_args=args)
    summary = run_group(broker, topic_name, strategy, total=20_000, rate=10_000,
                        heartbeat_ms=heartbeat_ms, protocol=protocol)
    # Members learn of a rebalance from their next heartbeat (every HEARTBEAT_MS) or poll.
    assert summary["leave_rebalance_s"] < 10 and summary["join_rebalance_s"] < 10
    print(f"REBALANCE TIMES {summary['strategy']}: leave {summary['leave_rebalance_s']} s, "
          f"join {summary['join_rebalance_s']} s (heartbeat.interval.ms={heartbeat_ms})")


# ---------------------------------------------------------------------------------------------
# A live member across a broker restart.


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
@pytest.mark.parametrize("clean", [True, False], ids=["sigterm", "kill9"])
def test_live_member_survives_broker_restart(broker_factory, topic_name, clean, protocol):
    consumer_protocol = protocol == "consumer"
    broker = broker_factory(extra_args=KIP848_GROUPS if consumer_protocol else FAST_GROUPS)
    partitions = 3
    kafkautil.create_topic(broker.bootstrap, topic_name, partitions)
    group = f"live-{topic_name}"
    produce_values(broker.bootstrap, topic_name, 3000, partitions)
    c = group_consumer(broker.bootstrap, group, **{"reconnect.backoff.max.ms": 500,
                                                   "group.protocol": protocol})
    got: list[tuple[int, int]] = []
    commit_errors: list[str] = []
    uncommitted: set[tuple[int, int]] = set()  # records of batches whose commit failed

    def consume_until(total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(set(got)) < total:
            assert time.monotonic() < deadline, (len(got), len(set(got)), commit_errors[-3:])
            msgs = c.consume(num_messages=500, timeout=0.2)
            ends = {}
            batch = []
            for m in msgs:
                if m.error():
                    continue  # transport errors while the broker is down
                batch.append((m.partition(), m.offset()))
                ends[m.partition()] = m.offset() + 1
            got.extend(batch)
            if ends:
                try:
                    result = c.commit(
                        offsets=[TopicPartition(topic_name, p, o) for p, o in ends.items()],
                        asynchronous=False)
                    failed = {tp.partition for tp in result if tp.error is not None}
                except KafkaException as e:
                    commit_errors.append(str(e))
                    failed = set(ends)
                uncommitted.update(po for po in batch if po[0] in failed)

    try:
        c.subscribe([topic_name])
        consume_until(3000, 60)
        broker.restart(clean=clean)
        produce_values(broker.bootstrap, topic_name, 3000, partitions)
        consume_until(6000, 90)
    finally:
        c.close()
    counts = Counter(got)
    marks = kafkautil.watermarks(broker.bootstrap, topic_name, partitions)
    assert set(counts) == {(p, o) for p, (_, high) in marks.items() for o in range(high)}
    # Redelivered: only records whose commit failed. (The broker keeps no group membership
    # across a restart, unlike Kafka, so a live member's first commit after it is refused with
    # ILLEGAL_GENERATION and the member rejoins and rereads from the last commit.)
    dups = sorted(po for po, n in counts.items() if n > 1)
    assert set(dups) <= uncommitted, (dups[:3], commit_errors)
    assert all(n <= 2 for n in counts.values())
    assert committed_offsets(broker.bootstrap, group, topic_name, partitions) == \
        {p: high for p, (_, high) in marks.items()}
    if consumer_protocol:
        # Its heartbeat got UNKNOWN_MEMBER_ID from the restarted broker: it joined anew.
        assert "member joined" in broker.log_paths[-1].read_text()
    print(f"\nlive {protocol} member across restart ({'SIGTERM' if clean else 'kill -9'}): "
          f"{len(dups)} records redelivered; commit errors {commit_errors[:3]}")


def test_each_node_lists_only_the_groups_it_coordinates(broker, topic_name):
    """With a node per core, tools that ask every node for its groups and merge the answers
    (librdkafka's list_groups, AdminClient.list_consumer_groups) see each group once; the
    bootstrap address, shared by every core, lists them all (issue 18, bug 2)."""
    kafkautil.create_topic(broker.bootstrap, topic_name, 1)
    groups = [f"listed-{topic_name}-{i}" for i in range(6)]
    for group in groups:
        c = group_consumer(broker.bootstrap, group)
        try:
            c.commit(offsets=[TopicPartition(topic_name, 0, 0)], asynchronous=False)
        finally:
            c.close()
    client = kafkautil.admin(broker.bootstrap)
    listed = client.list_consumer_groups(request_timeout=30).result(timeout=30)
    assert not listed.errors, listed.errors
    counts = Counter(g.group_id for g in listed.valid if g.group_id in groups)
    assert counts == Counter(groups), counts
    # The older per-broker API: one answer per node, merged by the client.
    old = Counter(g.id for g in client.list_groups(timeout=30) if g.id in groups)
    assert old == Counter(groups), old
    # The shared bootstrap address speaks for every core.
    body = kafkautil.roundtrip(("127.0.0.1", broker.port), list_groups_v0())
    assert set(groups) <= set(parse_list_groups_v0(body))


def list_groups_v0() -> bytes:
    return frame(16, 0, 7, b"")


def parse_list_groups_v0(body: bytes) -> list[str]:
    reader = Reader(body)
    assert reader.unpack(">h") == 0
    count = reader.unpack(">i")
    ids = []
    for _ in range(count):
        ids.append(reader.string())
        reader.string()  # protocol type
    return ids


def test_member_ids_are_the_client_id_and_a_uuid_so_assignors_agree_with_kafka(broker,
                                                                                  topic_name):
    """Kafka's member ids are `<client.id>-<uuid>` (`<group.instance.id>-<uuid>` for a static
    member); librdkafka's roundrobin sorts members by id, so consumer c0 gets partition 0 as it
    does on Kafka (issue 18, bug 4)."""
    kafkautil.create_topic(broker.bootstrap, topic_name, 2)
    group = f"ids-{topic_name}"
    members = [group_consumer(broker.bootstrap, group, **{"client.id": f"c{i}",
                              "partition.assignment.strategy": "roundrobin"})
               for i in range(2)]
    owned: dict[int, set[int]] = {0: set(), 1: set()}
    try:
        for i, c in enumerate(members):
            c.subscribe([topic_name], on_assign=lambda _c, parts, i=i: owned.__setitem__(
                i, {p.partition for p in parts}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (owned[0] and owned[1]):
            for c in members:
                c.poll(0.05)
        assert owned == {0: {0}, 1: {1}}, owned
        client = kafkautil.admin(broker.bootstrap)
        desc = client.describe_consumer_groups([group], request_timeout=30)[group].result(30)
        pattern = re.compile(r"^(c[01])-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
        for member in desc.members:
            match = pattern.match(member.member_id)
            assert match and match.group(1) == member.client_id, member.member_id
    finally:
        for c in members:
            c.close()


VANISHING_MEMBER = """
import sys, time
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2],
              "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
              "auto.offset.reset": "earliest"})
c.subscribe([sys.argv[3]])
print("subscribed", flush=True)
while True:
    c.poll(0.05)
"""


def test_a_member_that_vanishes_mid_join_is_expired_and_the_group_moves_on(broker, topic_name):
    """A member killed while its JoinGroup waits (no LeaveGroup) must expire after its session
    timeout in whatever state the group is in, so the others rebalance and get its partitions
    (issue 18, bug 3: it used to stay a member for minutes and the group stalled)."""
    import signal
    import subprocess
    import sys

    partitions = 4
    kafkautil.create_topic(broker.bootstrap, topic_name, partitions)
    group = f"vanish-{topic_name}"
    stayer = group_consumer(broker.bootstrap, group)
    owned: set[int] = set()

    def assign(_c, parts):
        owned.clear()
        owned.update(p.partition for p in parts)

    stayer.subscribe([topic_name], on_assign=assign)
    try:
        wait_until(lambda: stayer.poll(0.05) is None and len(owned) == partitions, 60,
                   "the first member owns every partition", step=0)
        child = subprocess.Popen([sys.executable, "-c", VANISHING_MEMBER, broker.bootstrap, group,
                                  topic_name], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "subscribed"
            # Its JoinGroup is sent and waits for the first member to rejoin (within its
            # heartbeat interval): kill it in the middle of that.
            time.sleep(0.5)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        # The first member rejoins, the join completes with the dead member in it, and only
        # its session timeout (6 s) can end its membership; then the survivor owns all again.
        deadline = time.monotonic() + 45
        saw_rebalance = False
        while time.monotonic() < deadline:
            stayer.poll(0.05)
            saw_rebalance |= len(owned) < partitions
            if saw_rebalance and len(owned) == partitions:
                break
        assert saw_rebalance and len(owned) == partitions, (saw_rebalance, owned)
    finally:
        stayer.close()
