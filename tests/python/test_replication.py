"""Replicated partitions on three hosts (each a `ringlog serve` process, broker and controller,
on its own loopback address), driven by real clients: a topic of replication factor 3 with
min.insync.replicas=2, an idempotent confluent-kafka producer with acks=all writing while a
leader's host is killed with SIGKILL, paused with SIGSTOP/SIGCONT, or restarted, and a
read_uncommitted consumer reading all along. Afterwards every acknowledged record is present
exactly once at the offset it was acknowledged at, nothing a consumer saw disappeared, and the
three replicas' logs are identical (read back with `ringlog dump-log`).

Faults: kill (SIGKILL), pause (SIGSTOP, then SIGCONT), restart (SIGTERM: controlled shutdown),
wipe (SIGKILL and the host's partition directories deleted before it restarts), partition (the
host's network cut while its process runs on, then joined again), isolate (cut from the other
hosts only: clients still reach it). The last two need the hosts in network namespaces, which
needs root; each fault runs twice by default. The CI run does
a few fault cycles; `REPLICATION_FAULT_CYCLES=20 scripts/python-tests.sh -s -k
replication_survives` runs more and prints the failover figures; REPLICATION_FAULTS chooses the
faults."""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kafkautil
from test_cluster import (CORES, HOSTS, NODES_PER_HOST, NetnsCluster, cluster,
                          every_host_answers, metadata_v1, netns_available, netns_cluster,
                          percentile, quorum_status, wait_until)

__all__ = ["cluster", "netns_cluster"]  # the fixtures, imported for pytest

TOPIC = "replicated"
PARTITIONS = 3


def fully_in_sync(addresses: list[tuple[str, int]]) -> bool:
    """Every host, asked itself, names a leader and all replicas in the ISR of every partition,
    and all hosts agree: a host that was cut off or paused answers from its stale metadata
    (itself still the leader, everyone in sync) until it has caught up with the controller."""
    views = [partition_views(address) for address in addresses]
    first = views[0]
    return (first is not None and len(first) == PARTITIONS and all(v == first for v in views)
            and all(leader >= 0 and len(isr) == HOSTS for leader, isr, _ in first.values()))


class Load:
    """An idempotent acks=all producer writing numbered records round the partitions, and a
    consumer reading them, in background threads until stopped."""

    def __init__(self, bootstrap: str):
        self.acked: dict[bytes, tuple[int, int]] = {}
        self.failed: list[str] = []
        self.seen: dict[tuple[int, int], bytes] = {}
        self.last_ack = {p: time.monotonic() for p in range(PARTITIONS)}
        self.stop = threading.Event()
        self.bootstrap = bootstrap
        self.producer = Producer({
            "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
            "linger.ms": 5, "message.timeout.ms": 60000, "request.timeout.ms": 5000,
            "retry.backoff.ms": 50, "topic.metadata.refresh.interval.ms": 1000,
            # librdkafka waits for a Metadata answer up to socket.timeout.ms (60 s) and sends
            # no other while one is outstanding: one asked of a host cut off the network (the
            # partition fault) would keep the producer on the old leader for a minute, as it
            # would against Kafka. Clients that must ride out partitions lower it.
            "socket.timeout.ms": 6000,
            # librdkafka backs off up to 1 s between retries by default (KIP-580), which adds
            # up to that to a failover; REPLICATION_RETRY_BACKOFF_MAX_MS measures with less.
            "retry.backoff.max.ms": int(os.environ.get("REPLICATION_RETRY_BACKOFF_MAX_MS",
                                                       "1000"))})
        self.sent = 0
        self.threads = [threading.Thread(target=self._produce, daemon=True),
                        threading.Thread(target=self._consume, daemon=True)]

    def start(self):
        for thread in self.threads:
            thread.start()

    def _delivered(self, error, message):
        if error is not None:
            self.failed.append(str(error))
            return
        self.acked[message.value()] = (message.partition(), message.offset())
        self.last_ack[message.partition()] = time.monotonic()

    def _produce(self):
        while not self.stop.is_set():
            value = b"record-%07d" % self.sent
            try:
                self.producer.produce(TOPIC, value=value, partition=self.sent % PARTITIONS,
                                      on_delivery=self._delivered)
                self.sent += 1
            except BufferError:
                pass
            self.producer.poll(0.002)
        self.producer.flush(90)

    def _consume(self):
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "unused",
                             "enable.auto.commit": False, "auto.offset.reset": "earliest",
                             "topic.metadata.refresh.interval.ms": 1000,
                             "socket.timeout.ms": 6000})
        consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
        while not self.stop.is_set():
            message = consumer.poll(0.1)
            if message is not None and not message.error():
                self.seen[(message.partition(), message.offset())] = message.value()
        consumer.close()

    def acks_since(self, partition: int, moment: float) -> bool:
        return self.last_ack[partition] > moment

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(120)


def read_all(bootstrap: str) -> dict[tuple[int, int], bytes]:
    """Every record of the topic, by (partition, offset), read from the leaders."""
    # auto.offset.reset=error: an out-of-range answer is reported, never skipped over.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "verify",
                         "enable.auto.commit": False, "auto.offset.reset": "error"})
    ends = {}
    for p in range(PARTITIONS):
        _, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)
        ends[p] = high
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
    records = {}
    errors = []
    below_end = 0  # counted as they come: recounting every poll is quadratic
    deadline = time.monotonic() + 60
    while below_end < sum(ends.values()) and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is None:
            continue
        if message.error():
            errors.append(str(message.error()))
            continue
        position = (message.partition(), message.offset())
        if position not in records and position[1] < ends[position[0]]:
            below_end += 1
        records[position] = message.value()
    consumer.close()
    # Not reaching the end is a failure to read, not a loss: say so.
    short = {}
    for p, end in ends.items():
        offsets = sorted(o for (q, o) in records if q == p and o < end)
        if len(offsets) < end:
            gaps = [(a + 1, b) for a, b in zip([-1, *offsets], [*offsets, end]) if b > a + 1]
            short[p] = f"{len(offsets)} of {end} records, missing {gaps[:5]}"
    assert not short, f"read back only {short}; errors {errors[-5:]}"
    return records


DATA_LINE = re.compile(r"offset: (\d+) .*payload: (\S+)")


def replica_records(data_dir: Path, partition: int) -> list[tuple[int, str]]:
    """A replica's records (offset, payload) as `ringlog dump-log` reads them off its disk."""
    return replica_records_of(data_dir / f"{TOPIC}-{partition}")


def replica_records_of(directory: Path) -> list[tuple[int, str]]:
    """The records (offset, payload) of the partition directory `directory`."""
    if not directory.exists():
        return []
    segments = sorted(directory.glob("*.log"))
    if not segments:
        return []
    dump = subprocess.run([os.environ["RINGLOG_BIN"], "dump-log", "--print-data-log",
                           *map(str, segments)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    return [(int(m.group(1)), m.group(2)) for m in DATA_LINE.finditer(dump.stdout)]


def partition_views(address: tuple[str, int], topic: str = TOPIC
                    ) -> dict[int, tuple[int, tuple[int, ...], tuple[int, ...]]] | None:
    """`topic`'s partitions as `address` itself answers on a new connection,
    {partition: (leader, sorted ISR, replicas in order)}; None when it does not answer. (A
    client's own metadata request may go to a paused host, whose TCP stays open and silent,
    or use a cached view.)"""
    try:
        _, described = metadata_v1(address, [topic])
    except OSError:
        return None
    return described.get(topic, (0, {}))[1]


def leader_host(address: tuple[str, int], partition: int, topic: str = TOPIC) -> int:
    """The host leading `partition` as `address` answers (-1: none, or no answer)."""
    views = partition_views(address, topic) or {}
    return views.get(partition, (-1, (), ()))[0] // NODES_PER_HOST


def start_hosts(cluster) -> tuple[list[tuple[str, int]], AdminClient]:
    """Starts the three hosts and waits until each answers Metadata itself listing all three
    (on new connections: a client that first connected while the brokers were starting may
    keep a stale view for a while). Returns their addresses and an admin client."""
    for node in range(HOSTS):
        cluster.start(node)
    every_node = {host * NODES_PER_HOST + core for host in range(HOSTS)
                  for core in range(cluster.cores)}
    addresses = list(zip(cluster.hosts, cluster.ports))
    wait_until(lambda: every_host_answers(addresses, every_node), 60, "three registered brokers")
    return addresses, AdminClient({"bootstrap.servers": cluster.bootstrap})


def create_replicated(admin: AdminClient, addresses: list[tuple[str, int]]) -> None:
    """Creates TOPIC (replication factor 3, min.insync.replicas=2) and waits until every
    replica of every partition is in sync."""
    futures = admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS,
                                            replication_factor=3,
                                            config={"min.insync.replicas": "2"})],
                                  request_timeout=15)
    futures[TOPIC].result(15)
    wait_until(lambda: fully_in_sync(addresses), 30, "the topic on every host")


NETNS = netns_available()
FAULTS = os.environ.get("REPLICATION_FAULTS", "kill,pause,restart,wipe" +
                        (",partition,isolate" if NETNS else "")).split(",")


def test_replication_survives_leader_faults_with_every_acknowledged_record(request):
    cycles = int(os.environ.get("REPLICATION_FAULT_CYCLES", str(2 * len(FAULTS))))
    # Hosts in network namespaces where this process may make them (root), so a leader's host
    # can be cut off from the network; on loopback addresses otherwise, without that fault.
    cluster = request.getfixturevalue("netns_cluster" if NETNS else "cluster")
    assert not {"partition", "isolate"} & set(FAULTS) or isinstance(cluster, NetnsCluster), \
        "the partition and isolate faults need network namespaces (root and iproute2)"
    addresses, admin = start_hosts(cluster)
    create_replicated(admin, addresses)

    load = Load(cluster.bootstrap)
    load.start()
    wait_until(lambda: len(load.acked) > 200, 60, "the first acknowledgements")
    failovers = []
    for cycle in range(cycles):
        fault = FAULTS[cycle % len(FAULTS)]
        victim = leader_host(addresses[0], cycle % PARTITIONS)
        watcher = addresses[(victim + 1) % HOSTS]
        process = cluster.processes[victim]
        started = time.monotonic()
        if fault in ("kill", "wipe"):
            process.kill()
            process.wait(10)
            if fault == "wipe":
                # The host lost its partitions' disks (KIP-903): it comes back empty, is out
                # of every ISR until it has copied everything again, and is never elected
                # with less.
                for directory in (cluster.root / f"node-{victim}").glob(f"{TOPIC}-*"):
                    shutil.rmtree(directory)
        elif fault == "pause":
            process.send_signal(signal.SIGSTOP)
        elif fault == "partition":
            # The leader's host is cut off from its peers, the controllers and the clients; it
            # runs on believing it leads until it hears otherwise, and may append records no
            # follower copies: those it must truncate when it is joined again.
            cluster.cut(victim)
        elif fault == "isolate":
            # Cut off from the other hosts (its followers and the quorum's majority) while the
            # clients still reach it: a leader that may accept writes it cannot replicate and
            # must never acknowledge with acks=all.
            cluster.isolate(victim)
        else:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            # Controlled shutdown: the host stopped serving only after the controller moved
            # its leaderships, so the survivors name other leaders at once (within their next
            # metadata catch-ups), not after its session expires.
            wait_until(lambda: all(leader_host(watcher, p) not in (victim, -1)
                                   for p in range(PARTITIONS)), 1.0,
                       f"new leaders as host {victim} shut down")
        # The survivors take over: acknowledgements resume while the victim is down.
        wait_until(lambda: load.acks_since(cycle % PARTITIONS, started) and
                   leader_host(watcher, cycle % PARTITIONS) not in (victim, -1), 30,
                   f"acknowledgements after {fault} of host {victim}")
        failovers.append((fault, time.monotonic() - started))
        time.sleep(1)
        if fault == "pause":
            process.send_signal(signal.SIGCONT)
        elif fault == "partition":
            cluster.heal(victim)
        elif fault == "isolate":
            cluster.rejoin(victim)
        else:
            cluster.start(victim)
        wait_until(lambda: fully_in_sync(addresses), 60, f"host {victim} back in every ISR")
        time.sleep(0.5)
    load.finish()
    assert not load.failed, load.failed[:5]
    assert len(load.acked) > 200

    # Every acknowledged record, once, where it was acknowledged.
    wait_until(lambda: fully_in_sync(addresses), 60, "every replica in sync")
    final = read_all(cluster.bootstrap)
    by_value: dict[bytes, list[tuple[int, int]]] = {}
    for position, value in final.items():
        by_value.setdefault(value, []).append(position)
    lost = [v for v in load.acked if v not in by_value]
    assert not lost, f"{len(lost)} acknowledged records lost, e.g. {lost[:5]}"
    duplicated = {v: p for v, p in by_value.items() if len(p) > 1}
    assert not duplicated, f"duplicates: {list(duplicated.items())[:5]}"
    # librdkafka acknowledges some records without an offset (None): those a request timed
    # out for, once a later batch of the same idempotent producer is acknowledged (they were
    # stored, it never learned where). They must be present once like the others.
    moved = {v: (at, by_value[v][0]) for v, at in load.acked.items()
             if at[1] is not None and by_value[v][0] != at}
    assert not moved, f"records not at their acknowledged offset: {list(moved.items())[:5]}"
    # Nothing a consumer saw disappeared or changed.
    vanished = {at: v for at, v in load.seen.items() if final.get(at) != v}
    assert not vanished, f"consumed records that vanished: {list(vanished.items())[:5]}"

    # The three replicas hold the same records at the same offsets.
    cluster.stop()
    for partition in range(PARTITIONS):
        replicas = [replica_records(cluster.root / f"node-{host}", partition)
                    for host in range(HOSTS)]
        assert replicas[0], f"partition {partition}: empty replica"
        for host in range(1, HOSTS):
            assert replicas[host] == replicas[0], (
                f"partition {partition}: host {host} differs from host 0 "
                f"({len(replicas[host])} vs {len(replicas[0])} records)")
    # Each host checkpointed the high watermarks at its clean stop (Kafka's
    # replication-offset-checkpoint): never past its log end, and the leader's (all replicas in
    # sync) at the end. A follower learns the high watermark with its next fetch, so it may
    # trail by the last batches.
    marks = {}
    for host in range(HOSTS):
        marks[host] = {}
        for shard in range(CORES):
            path = cluster.root / f"node-{host}" / f"replication-offset-checkpoint.{shard}"
            lines = path.read_text().splitlines()
            assert lines[0] == "0" and int(lines[1]) == len(lines) - 2, lines
            marks[host].update({int(p): int(o) for t, p, o in (line.split() for line in lines[2:])
                                if t == TOPIC})
    for partition in range(PARTITIONS):
        end = replica_records(cluster.root / "node-0", partition)[-1][0] + 1
        assert all(0 < marks[host][partition] <= end for host in range(HOSTS)), (partition, marks)
        assert max(marks[host][partition] for host in range(HOSTS)) == end, (partition, marks)
    without_offset = sum(1 for _, offset in load.acked.values() if offset is None)
    print(f"{cycles} fault cycles, {len(load.acked)} records acknowledged "
          f"({without_offset} without an offset), 0 lost")
    for fault in FAULTS:
        samples = [seconds for kind, seconds in failovers if kind == fault]
        if samples:
            print(f"first acknowledgement after {fault} ({len(samples)}): p50 "
                  f"{percentile(samples, 0.5):.3f} s, p99 {percentile(samples, 0.99):.3f} s, "
                  f"max {max(samples):.3f} s")


FINAL_LINE = re.compile(r"([\d.]+) records/sec \(([\d.]+) MB/sec\).*?([\d.]+) ms 50th, "
                        r"([\d.]+) ms 95th, ([\d.]+) ms 99th, ([\d.]+) ms 99.9th")


def perf_producer(bootstrap: str, topic: str, acks: str, seconds: int) -> tuple[float, ...]:
    """One `ringlog-perf producer` run at 50,000 records/s of 1 KiB: (records/s, MB/s, p50,
    p95, p99, p99.9 ms), from its Kafka-style final line."""
    perf = os.environ.get("RINGLOG_PERF_BIN", str(Path(os.environ["RINGLOG_BIN"]).parent
                                                   / "ringlog-perf"))
    run = subprocess.run([perf, "producer", "--topic", topic, "--record-size", "1024",
                          "--throughput", "50000", "--duration", str(seconds),
                          "--warmup-records", "50000", "--bootstrap-server", bootstrap,
                          "--producer-props", f"acks={acks}", "linger.ms=5"],
                         capture_output=True, text=True, timeout=seconds + 120)
    assert run.returncode == 0, run.stderr
    match = FINAL_LINE.search(run.stdout.strip().splitlines()[-1])
    assert match, run.stdout
    return tuple(float(group) for group in match.groups())


@pytest.mark.skipif("REPLICATION_FIGURES" not in os.environ,
                    reason="a measurement: RINGLOG_BIN=target/release/ringlog "
                           "REPLICATION_FIGURES=1 scripts/python-tests.sh -s -k replication_figures")
def test_replication_figures(cluster):
    """Issue 16's throughput and latency figure: acks=all on replication factor 3
    (min.insync.replicas=2) against acks=1 on replication factor 1, 1 KiB records at a fixed
    50,000 records/s, the same three hosts, runs alternated (REPLICATION_FIGURES runs of 15 s
    each way)."""
    rounds = int(os.environ["REPLICATION_FIGURES"])
    _, admin = start_hosts(cluster)
    topics = [NewTopic("rf3", num_partitions=3, replication_factor=3,
                       config={"min.insync.replicas": "2"}),
              NewTopic("rf1", num_partitions=3, replication_factor=1)]
    for name, future in admin.create_topics(topics, request_timeout=15).items():
        future.result(15)
    time.sleep(2)
    results = {"acks=all RF3": [], "acks=1 RF1": []}
    # CPU seconds the three broker processes spent during each kind of run.
    cpu = {"acks=all RF3": 0.0, "acks=1 RF1": 0.0}
    ticks = os.sysconf("SC_CLK_TCK")

    def broker_cpu() -> float:
        total = 0
        for process in cluster.processes.values():
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    for _ in range(rounds):
        for label, topic, acks in [("acks=all RF3", "rf3", "all"), ("acks=1 RF1", "rf1", "1")]:
            before = broker_cpu()
            results[label].append(perf_producer(cluster.bootstrap, topic, acks, 15))
            cpu[label] += broker_cpu() - before
    for label, runs in results.items():
        for records, mb, p50, p95, p99, p999 in runs:
            print(f"{label}: {records:.0f} records/s, {mb:.1f} MB/s, p50 {p50} ms, "
                  f"p95 {p95} ms, p99 {p99} ms, p99.9 {p999} ms")
    all3, one1 = results["acks=all RF3"], results["acks=1 RF1"]
    ratio = sum(r[1] for r in all3) / sum(r[1] for r in one1)
    p99_ratio = sorted(r[4] for r in all3)[len(all3) // 2] / sorted(r[4] for r in one1)[len(one1) // 2]
    print(f"acks=all RF3 / acks=1 RF1: throughput {ratio:.2f}x, median p99 {p99_ratio:.2f}x")
    for label, runs in results.items():
        # Warm-up and run: the records each run wrote, in GB of values (1 KiB each).
        written_gb = sum(records * 15 + 50_000 for records, *_ in runs) * 1024 / 1e9
        print(f"{label}: {cpu[label]:.1f} broker CPU-seconds for {written_gb:.2f} GB produced: "
              f"{cpu[label] / written_gb:.1f} CPU-s per GB (RF3 writes each GB three times)")


def test_committed_offsets_survive_the_loss_of_their_coordinator(cluster):
    """The group offsets topic is replicated (factor 3 here): a group's committed offsets,
    acknowledged by its coordinator, are still there after that coordinator's host is killed
    with SIGKILL, served by the new leader of the group's offsets partition; and again after the
    killed host restarts and leads once more."""
    addresses, admin = start_hosts(cluster)
    create_replicated(admin, addresses)
    offsets = admin.list_topics("__consumer_offsets", timeout=10).topics["__consumer_offsets"]
    assert all(len(p.replicas) == HOSTS for p in offsets.partitions.values()), offsets.partitions

    group = "survivors"
    committed = [TopicPartition(TOPIC, p, 100 + p) for p in range(PARTITIONS)]

    def commit_all():
        consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group,
                             "enable.auto.commit": False})
        try:
            consumer.commit(offsets=committed, asynchronous=False)
        finally:
            consumer.close()

    def committed_offsets() -> list[int]:
        consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group,
                             "enable.auto.commit": False})
        try:
            found = consumer.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)],
                                       timeout=10)
            return [tp.offset for tp in found]
        finally:
            consumer.close()

    wait_until(lambda: commit_all() is None, 30, "the first commit")
    assert committed_offsets() == [100, 101, 102]
    coordinator = admin.describe_consumer_groups([group])[group].result(10).coordinator.id
    victim = coordinator // NODES_PER_HOST
    cluster.processes[victim].kill()
    cluster.processes[victim].wait(10)
    watcher = addresses[(victim + 1) % HOSTS]

    def moved() -> bool:
        return committed_offsets() == [100, 101, 102]

    wait_until(moved, 30, "the committed offsets from the new coordinator")
    new = AdminClient({"bootstrap.servers": f"{watcher[0]}:{watcher[1]}"})
    assert new.describe_consumer_groups([group])[group].result(10).coordinator.id // \
        NODES_PER_HOST != victim
    # A commit to the new coordinator, then the killed host comes back: nothing is lost.
    committed[0] = TopicPartition(TOPIC, 0, 500)
    wait_until(lambda: commit_all() is None, 30, "a commit to the new coordinator")
    cluster.start(victim)
    wait_until(lambda: fully_in_sync(addresses), 60, f"host {victim} back in every ISR")
    assert committed_offsets() == [500, 101, 102]


def test_min_insync_replicas_refuses_acks_all_writes_it_cannot_replicate(cluster):
    """min.insync.replicas=3 on three replicas: with one host down, an acks=all write is
    refused with NOT_ENOUGH_REPLICAS while acks=1 still works; once the host is back in the ISR, acks=all succeeds again."""
    from confluent_kafka import KafkaError
    addresses, admin = start_hosts(cluster)
    futures = admin.create_topics([NewTopic("strict", num_partitions=1, replication_factor=3,
                                            config={"min.insync.replicas": "3"})],
                                  request_timeout=15)
    futures["strict"].result(15)

    def produce(acks: str) -> list:
        outcomes = []
        # No retries: the broker's own answer reaches the callback.
        producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": acks,
                             "message.timeout.ms": 4000, "request.timeout.ms": 2000,
                             "retries": 0})
        producer.produce("strict", value=b"x", partition=0,
                         on_delivery=lambda err, _msg: outcomes.append(err and err.code()))
        producer.flush(10)
        return outcomes

    wait_until(lambda: produce("all") == [None], 30, "an acks=all write with every replica")
    strict = admin.list_topics("strict", timeout=10).topics["strict"].partitions[0]
    victim = next(h for h in range(HOSTS) if h != strict.leader // NODES_PER_HOST)
    cluster.processes[victim].kill()
    cluster.processes[victim].wait(10)

    # Once the controller has fenced the host and the ISR has shrunk, the leader refuses
    # before appending (until then the write waits for the dead replica and times out).
    wait_until(lambda: produce("all") == [KafkaError.NOT_ENOUGH_REPLICAS], 30,
               "acks=all refused with NOT_ENOUGH_REPLICAS")
    assert produce("1") == [None]
    cluster.start(victim)
    wait_until(lambda: produce("all") == [None], 60, "acks=all again with the host back")


class SmallFs:
    """A small ext4 filesystem in a file, loop-mounted at `mount_point`, unmounted by
    `unmount`."""

    def __init__(self, image: Path, mount_point: Path, megabytes: int):
        self.mount_point = mount_point
        mount_point.mkdir(parents=True, exist_ok=True)
        with open(image, "wb") as file:
            file.truncate(megabytes << 20)
        for command in (["mkfs.ext4", "-q", "-F", str(image)],
                        ["mount", "-o", "loop", str(image), str(mount_point)]):
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{command}: {done.stderr}"

    def free_bytes(self) -> int:
        stats = os.statvfs(self.mount_point)
        return stats.f_bavail * stats.f_frsize

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(self.mount_point)], capture_output=True)


def loop_mounts_available() -> bool:
    return (os.geteuid() == 0 and shutil.which("mkfs.ext4") is not None
            and Path("/dev/loop-control").exists())


@pytest.mark.skipif(not loop_mounts_available(),
                    reason="a small filesystem per replica needs root, mkfs.ext4 and loop devices")
def test_a_follower_whose_disk_fills_leaves_the_isr_while_the_leader_goes_on(cluster):
    """Each host keeps the one partition of a topic (RF 3, min.insync.replicas=2) on a 64 MiB
    filesystem of its own (its partition directory links there). One follower's fills up (a
    filler file takes its free space): its appends fail with a full disk, its process runs on,
    and the leader takes it out of the ISR after replica.lag.time.max.ms and goes on
    acknowledging acks=all writes with the other two. Once space is freed the follower copies
    what it missed and rejoins; nothing acknowledged is lost; the three replicas are identical."""
    topic = "full"
    cluster.extra_args = ["--replica-lag-time-max-ms", "2000"]
    filesystems = []
    try:
        for host in range(HOSTS):
            filesystem = SmallFs(cluster.root / f"small-{host}.img", cluster.root / f"small-{host}",
                                 64)
            filesystems.append(filesystem)
            (filesystem.mount_point / f"{topic}-0").mkdir()
            (cluster.root / f"node-{host}").mkdir(parents=True, exist_ok=True)
            (cluster.root / f"node-{host}" / f"{topic}-0").symlink_to(
                filesystem.mount_point / f"{topic}-0")
        addresses, admin = start_hosts(cluster)
        futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3,
                                                config={"min.insync.replicas": "2"})],
                                      request_timeout=15)
        futures[topic].result(15)

        def isr() -> tuple[int, ...] | None:
            """Partition 0's ISR, when every host names the same leader and ISR."""
            views = [partition_views(address, topic) for address in addresses]
            if any(v is None or 0 not in v or v != views[0] for v in views):
                return None
            return views[0][0][1] if views[0][0][0] >= 0 else None

        every_node = tuple(sorted(host * NODES_PER_HOST for host in range(HOSTS)))
        wait_until(lambda: isr() == every_node, 30, "every replica in sync")
        leader = leader_host(addresses[0], 0, topic)
        follower = (leader + 1) % HOSTS
        full = filesystems[follower]
        filler = full.mount_point / "filler"
        subprocess.run(["fallocate", "-l", str(full.free_bytes()), str(filler)], check=True)
        assert full.free_bytes() < 1 << 20, full.free_bytes()

        producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all",
                             "enable.idempotence": True, "linger.ms": 5})
        acked: dict[bytes, int] = {}
        failed: list[str] = []

        def delivered(error, message):
            if error is not None:
                failed.append(str(error))
            else:
                acked[message.value()] = message.offset()

        payload = b"x" * 1000
        sent = 0

        def produce(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                producer.produce(topic, key=b"%08d" % sent, value=b"%08d" % sent + payload,
                                 partition=0, on_delivery=delivered)
                sent += 1
                producer.poll(0)
            assert producer.flush(60) == 0

        # Far more than the follower's preallocated room: its appends meet the full disk.
        deadline = time.monotonic() + 60
        while isr() != tuple(n for n in every_node if n // NODES_PER_HOST != follower):
            assert time.monotonic() < deadline, f"the follower stayed in the ISR: {isr()}"
            produce(2_000)
        assert cluster.processes[follower].poll() is None, "the follower's broker stopped"
        # The follower says so once (its retries every backoff are at debug level); the
        # engine's own warnings about each failed write are another matter (issue 17).
        log = cluster.log(f"node-{follower}")
        assert "No space left on device" in log, "the follower never met the full disk"
        full_disk_lines = log.count("cannot append the leader's batches")
        assert full_disk_lines == 1, f"{full_disk_lines} lines on the failed appends"
        # The engine's own warnings too: once per partition (segment) until writes succeed.
        assert log.count("write failed; failing unwritten appends (") <= 1, log[-3000:]
        assert log.count("preallocation failed (") <= 1, log[-3000:]
        shrunk_after = time.monotonic() - (deadline - 60)
        # The leader goes on with the two others.
        produce(2_000)
        assert not failed, failed[:5]

        # Space again: the follower copies what it missed and rejoins.
        filler.unlink()
        wait_until(lambda: isr() == every_node, 60, "the follower back in the ISR")
        assert "appending the leader's batches again" in cluster.log(f"node-{follower}")
        produce(500)
        assert not failed, failed[:5]
        wait_until(lambda: isr() == every_node, 30, "every replica in sync at the end")
        assert cluster.processes[follower].poll() is None, "the follower's broker stopped"
        cluster.stop()
        replicas = [replica_records_of(cluster.root / f"node-{host}" / f"{topic}-0")
                    for host in range(HOSTS)]
        assert len(replicas[leader]) == sent, (len(replicas[leader]), sent)
        for host in range(HOSTS):
            assert replicas[host] == replicas[leader], (
                f"host {host} differs from the leader ({len(replicas[host])} vs "
                f"{len(replicas[leader])} records)")
        stored = {payload_text[:8]: offset for offset, payload_text in replicas[leader]}
        assert all(stored.get(value[:8].decode()) == offset for value, offset in acked.items())
        print(f"follower disk full: out of the ISR {shrunk_after:.1f} s after the filler "
              f"({full_disk_lines} full-disk log line); {sent} records acknowledged with "
              f"acks=all, 0 lost, replicas identical")
    finally:
        cluster.stop()
        for filesystem in filesystems:
            filesystem.unmount()


def preferred_led_elsewhere(addresses) -> dict[int, int]:
    """Partitions whose preferred replica (the first) does not lead, as every host agrees:
    {partition: preferred node}; None while the hosts disagree."""
    views = [partition_views(address) for address in addresses]
    if any(v is None or v != views[0] for v in views):
        return None
    return {p: replicas[0] for p, (leader, _, replicas) in views[0].items() if leader != replicas[0]}


def move_leaderships_off_and_back(cluster, addresses, admin) -> int:
    """Restarts (SIGTERM: controlled shutdown) the host preferred for partition 0 and waits
    until it is back in every ISR: its preferred partitions are led by others now. Returns it."""
    views = partition_views(addresses[0])
    victim = views[0][2][0] // NODES_PER_HOST
    cluster.processes[victim].send_signal(signal.SIGTERM)
    cluster.processes[victim].wait(30)
    cluster.start(victim)
    wait_until(lambda: fully_in_sync(addresses), 60, f"host {victim} back in every ISR")
    moved = preferred_led_elsewhere(addresses)
    assert moved and 0 in moved, moved
    return victim


def test_elect_leaders_moves_leadership_back_to_preferred_replicas(cluster):
    """AdminClient.elect_leaders (confluent-kafka) against the cluster: a preferred election
    gives the partitions back to their preferred replica (which restarted and rejoined the
    ISR), answers ELECTION_NOT_NEEDED where it leads already and UNKNOWN_TOPIC_OR_PARTITION for
    a partition that does not exist; an unclean election of partitions with a leader is not
    needed."""
    from confluent_kafka import ElectionType, KafkaError
    cluster.extra_args = ["--auto-leader-rebalance-enable", "false"]
    addresses, admin = start_hosts(cluster)
    create_replicated(admin, addresses)
    move_leaderships_off_and_back(cluster, addresses, admin)
    moved = preferred_led_elsewhere(addresses)
    asked = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)] + [TopicPartition(TOPIC, 9)]
    results = admin.elect_leaders(ElectionType.PREFERRED, asked).result(30)
    codes = {tp.partition: (error.code() if error is not None else None)
             for tp, error in results.items()}
    for partition in range(PARTITIONS):
        expected = None if partition in moved else KafkaError.ELECTION_NOT_NEEDED
        assert codes[partition] == expected, (partition, codes, moved)
    assert codes[9] == KafkaError.UNKNOWN_TOPIC_OR_PART, codes
    wait_until(lambda: preferred_led_elsewhere(addresses) == {}, 10,
               "every partition led by its preferred replica on every host")
    results = admin.elect_leaders(ElectionType.UNCLEAN, asked[:1]).result(30)
    assert [error.code() for error in results.values()] == \
        [KafkaError.ELECTION_NOT_NEEDED], results


def test_auto_leader_rebalance_returns_leadership_to_preferred_replicas(cluster):
    """auto.leader.rebalance.enable (on by default; checked every 2 s here): once the
    restarted preferred replica is back in the ISR, the controller gives it its partitions
    back without being asked."""
    cluster.extra_args = ["--leader-imbalance-check-interval-seconds", "2"]
    addresses, admin = start_hosts(cluster)
    create_replicated(admin, addresses)
    move_leaderships_off_and_back(cluster, addresses, admin)
    started = time.monotonic()
    wait_until(lambda: preferred_led_elsewhere(addresses) == {}, 15,
               "the controller to give the preferred replicas their partitions back")
    print(f"leadership back at the preferred replica {time.monotonic() - started:.1f} s "
          f"after it rejoined the ISR (check interval 2 s)")


def test_explicit_replica_assignments_in_a_cluster(cluster):
    """CreateTopics and CreatePartitions with a replica assignment (confluent-kafka): the
    partitions get exactly the asked replicas, the first leading; an assignment naming a node
    that is not registered, or a node twice, is refused with INVALID_REPLICA_ASSIGNMENT."""
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import NewPartitions
    addresses, admin = start_hosts(cluster)
    node = [host * NODES_PER_HOST for host in range(HOSTS)]
    asked = [[node[2], node[0], node[1]], [node[1], node[2], node[0]]]
    admin.create_topics([NewTopic("placed", num_partitions=len(asked), replication_factor=-1,
                                  replica_assignment=asked)])["placed"].result(15)

    def placed(count: int):
        views = [partition_views(address, "placed") for address in addresses]
        if any(v is None or len(v) != count or v != views[0] for v in views):
            return None
        return [(views[0][p][0], list(views[0][p][2])) for p in range(count)]

    wait_until(lambda: placed(2) == [(a[0], a) for a in asked], 20, "the asked replicas")
    grown = [node[0], node[1], node[2]]
    admin.create_partitions([NewPartitions("placed", 3, replica_assignment=[grown])]
                            )["placed"].result(15)
    wait_until(lambda: placed(3) == [(a[0], a) for a in [*asked, grown]], 20,
               "the added partition's asked replicas")
    for name, bad in (("unknown-node", [[node[0], 7]]), ("twice", [[node[0], node[0]]])):
        future = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=-1,
                                               replica_assignment=bad)])[name]
        with pytest.raises(KafkaException) as refused:
            future.result(15)
        assert refused.value.args[0].code() == KafkaError.INVALID_REPLICA_ASSIGNMENT, name


REPLICATION_LINE = re.compile(r"replication: record bytes.*? shard=(\d+) served_bytes=(\d+) "
                              r"fetched_bytes=\{([^}]*)\}")


def test_replication_links_run_core_to_core(cluster):
    """Hosts of two cores (two Kafka nodes each): a topic of RF 3 whose partitions are led on
    both cores of every host, written with acks=all. At the stop each shard logs the record
    bytes it served to followers and appended from each leader node: every leader node a shard
    fetched from is the same core index on another host (no replication byte crossed cores),
    and every core of every host both served and fetched. Prints the bytes per core."""
    cluster.cores = 2
    addresses, admin = start_hosts(cluster)
    topic = "cores"
    futures = admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=3)],
                                  request_timeout=15)
    futures[topic].result(15)

    def led_on_every_core() -> bool:
        views = [partition_views(address, topic) for address in addresses]
        if any(v is None or len(v) != 6 or v != views[0] for v in views):
            return False
        leaders = {leader for leader, isr, _ in views[0].values() if len(isr) == HOSTS}
        return len(leaders) == HOSTS * cluster.cores and len(views[0]) == 6

    wait_until(led_on_every_core, 30, "a leader on every core, every replica in sync")
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all",
                         "linger.ms": 5})
    errors = []
    for i in range(6_000):
        producer.produce(topic, value=b"%06d" % i + b"x" * 1000, partition=i % 6,
                         on_delivery=lambda error, _: error and errors.append(error))
        producer.poll(0)
    assert producer.flush(60) == 0 and not errors, errors[:3]
    # The followers' last fetches came back before the stop: every replica in sync.
    wait_until(lambda: all(len(isr) == HOSTS for _, isr, _ in
                           (partition_views(addresses[0], topic) or {0: (0, (), ())}).values()),
               30, "every replica in sync")
    time.sleep(1)
    cluster.stop()
    per_core = []
    for host in range(HOSTS):
        lines = REPLICATION_LINE.findall(cluster.log(f"node-{host}"))
        assert {int(shard) for shard, _, _ in lines} == {0, 1}, (host, lines)
        for shard, served, fetched in lines:
            sources = {int(node): int(count) for node, count in
                       (entry.split(": ") for entry in fetched.split(", ") if entry)}
            assert int(served) > 0 and sources, (host, shard, served, fetched)
            for node, count in sources.items():
                assert node % NODES_PER_HOST == int(shard), (
                    f"host {host} core {shard} fetched {count} bytes from node {node}, "
                    f"core {node % NODES_PER_HOST} of host {node // NODES_PER_HOST}")
                assert node // NODES_PER_HOST != host, (host, shard, node)
            per_core.append((host, int(shard), int(served), sum(sources.values())))
    for host, core, served, fetched in per_core:
        print(f"host {host} core {core}: served {served / 1e6:.2f} MB to followers, "
              f"fetched {fetched / 1e6:.2f} MB from the same core of the other hosts")


def test_a_leader_cut_from_one_follower_drops_it_from_the_isr_and_goes_on(request):
    """A partial partition (network namespaces, root): the leader of a partition loses its
    link to one follower only; both still reach the third host (and so a quorum majority) and
    the clients. acks=all writes wait for the cut follower until replica.lag.time.max.ms (3 s
    here), then the leader drops it from the ISR and acknowledges with the other follower
    (min.insync.replicas=2); joined again, it catches up and rejoins. Nothing acknowledged is
    lost; the replicas are identical."""
    if not NETNS:
        pytest.skip("a partial partition needs network namespaces (root and iproute2)")
    cluster = request.getfixturevalue("netns_cluster")
    cluster.extra_args = ["--replica-lag-time-max-ms", "3000"]
    addresses, admin = start_hosts(cluster)
    create_replicated(admin, addresses)
    load = Load(cluster.bootstrap)
    load.start()
    wait_until(lambda: len(load.acked) > 200, 60, "the first acknowledgements")
    # Brokers heartbeat the active controller only (as in KRaft): a host cut from it is
    # fenced. So the cut is between the two hosts that are not the active controller, and the
    # partition is one of those two leads.
    controller = int(quorum_status(f"{addresses[0][0]}:{addresses[0][1]}")["LeaderId"])
    views = partition_views(addresses[0])
    partition = next(p for p, (leader, _, _) in views.items()
                     if leader // NODES_PER_HOST != controller)
    leader = views[partition][0] // NODES_PER_HOST
    follower = 3 - leader - controller
    cut_node = follower * NODES_PER_HOST
    started = time.monotonic()
    cluster.cut_between(leader, follower)
    watcher = addresses[controller]  # reaches both

    def dropped() -> bool:
        view = partition_views(watcher)
        return (view is not None and cut_node not in view[partition][1]
                and view[partition][0] == leader * NODES_PER_HOST)

    wait_until(dropped, 30, f"the cut follower out of partition {partition}'s ISR")
    shrunk_after = time.monotonic() - started
    moment = time.monotonic()
    wait_until(lambda: load.acks_since(partition, moment), 30,
               "acknowledgements without the follower")
    cluster.join_between(leader, follower)
    wait_until(lambda: fully_in_sync(addresses), 60, "the follower back in every ISR")
    time.sleep(0.5)
    load.finish()
    assert not load.failed, load.failed[:5]
    final = read_all(cluster.bootstrap)
    present = set(final.values())
    lost = [v for v in load.acked if v not in present]
    assert not lost, f"{len(lost)} acknowledged records lost, e.g. {lost[:5]}"
    assert len(present) == len(final), "duplicates"
    cluster.stop()
    for partition in range(PARTITIONS):
        replicas = [replica_records(cluster.root / f"node-{host}", partition)
                    for host in range(HOSTS)]
        assert all(r == replicas[0] for r in replicas), f"partition {partition} differs"
    print(f"leader cut from one follower (neither the active controller): the follower out "
          f"of the ISR {shrunk_after:.1f} s after the cut "
          f"(replica.lag.time.max.ms 3 s); {len(load.acked)} acks=all records, 0 lost")


def _read_uvarint(reader: kafkautil.Reader) -> int:
    shift, value = 0, 0
    while True:
        byte = reader.unpack(">B")
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        shift += 7


def describe_topic_partitions(address: tuple[str, int], topic: str
                              ) -> dict[int, dict[str, list[int]]]:
    """A raw DescribeTopicPartitions v0 (KIP-966; flexible encoding) for `topic`:
    {partition: {"isr", "elr", "last_known_elr", "offline"}}."""
    name = topic.encode()
    varint = kafkautil.uvarint
    header = struct.pack(">hhi", 75, 0, 7) + struct.pack(">h", 4) + b"test" + varint(0)
    body = (varint(2) + varint(len(name) + 1) + name + varint(0)
            + struct.pack(">i", 100) + struct.pack(">b", -1) + varint(0))
    payload = header + body
    answer = kafkautil.roundtrip(address, struct.pack(">i", len(payload)) + payload, 5)
    reader = kafkautil.Reader(answer)
    _read_uvarint(reader)  # response header tagged fields

    def ints() -> list[int]:
        count = _read_uvarint(reader) - 1
        return [reader.unpack(">i") for _ in range(max(count, 0))]

    reader.unpack(">i")  # throttle
    described = {}
    for _ in range(_read_uvarint(reader) - 1):
        error = reader.unpack(">h")
        length = _read_uvarint(reader) - 1
        reader.pos += max(length, 0) + 16 + 1  # name, topic id, is_internal
        assert error == 0, error
        for _ in range(_read_uvarint(reader) - 1):
            _, index, _, _ = reader.unpack(">hiii")  # error, index, leader, leader epoch
            ints()  # replicas
            isr, elr, last_known, offline = ints(), ints(), ints(), ints()
            _read_uvarint(reader)
            described[index] = {"isr": isr, "elr": elr, "last_known_elr": last_known,
                                "offline": offline}
        reader.unpack(">i")  # authorized operations
        _read_uvarint(reader)
    return described


def test_describe_topic_partitions_shows_eligible_leader_replicas(cluster):
    """KIP-966 seen by a client: a topic of RF 3 with min.insync.replicas=3; kill -9 of a
    follower's host shrinks the ISR below the minimum, so the follower joins the eligible
    leader replicas (and shows as offline) in DescribeTopicPartitions; restarted, it copies
    what it missed, rejoins the ISR, and the ELR is empty again."""
    addresses, admin = start_hosts(cluster)
    futures = admin.create_topics([NewTopic("eligible", num_partitions=1, replication_factor=3,
                                            config={"min.insync.replicas": "3"})],
                                  request_timeout=15)
    futures["eligible"].result(15)
    every_node = sorted(host * NODES_PER_HOST for host in range(HOSTS))

    def view(address):
        try:
            return describe_topic_partitions(address, "eligible").get(0)
        except (OSError, AssertionError):
            return None

    wait_until(lambda: (view(addresses[0]) or {}).get("isr") and
               sorted(view(addresses[0])["isr"]) == every_node, 30, "every replica in sync")
    leader = leader_host(addresses[0], 0, "eligible")
    victim = (leader + 1) % HOSTS
    cluster.processes[victim].kill()
    cluster.processes[victim].wait(10)
    watcher = addresses[leader]
    node = victim * NODES_PER_HOST
    wait_until(lambda: (view(watcher) or {}).get("elr") == [node], 30,
               "the fenced follower in the ELR")
    seen = view(watcher)
    assert node not in seen["isr"] and node in seen["offline"], seen
    cluster.start(victim)
    wait_until(lambda: (v := view(watcher)) is not None and sorted(v["isr"]) == every_node
               and v["elr"] == [] and v["offline"] == [], 60,
               "the follower back in the ISR, the ELR empty")
