"""A cluster of three hosts, each a `ringlog serve` process (broker and controller) on its own
loopback address (127.0.0.1, 127.0.0.2, 127.0.0.3), driven by real Kafka clients
(confluent-kafka, kcat): brokers register with the controller quorum, a topic of 6 partitions
is spread over the hosts, produced with acks=all and consumed in a group; the active
controller is killed with SIGKILL and a new one accepts CreateTopics; the killed host restarts
and is back in Metadata; a second process with a live broker's node id is refused."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

import struct

import kafkautil
from conftest import _die_with_parent, data_root

HOSTS = 3
NODES_PER_HOST = 1024
# Cores (Kafka nodes) per host: CLUSTER_CORES=2 runs the cluster tests on two-core hosts.
CORES = int(os.environ.get("CLUSTER_CORES", "1"))


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.hosts = [f"127.0.0.{i + 1}" for i in range(HOSTS)]
        self.ports = [free_port(host) for host in self.hosts]
        controller_ports = [free_port(host) for host in self.hosts]
        self.voters = ",".join(f"{i}@{host}:{port}" for i, (host, port)
                               in enumerate(zip(self.hosts, controller_ports)))
        self.processes: dict[int, subprocess.Popen] = {}
        # Flags every host is started with, besides the cluster's own.
        self.extra_args: list[str] = []
        self.cores = CORES

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in zip(self.hosts, self.ports))

    def start(self, node: int, roles: str = "broker,controller", port: int | None = None,
              data: str | None = None) -> subprocess.Popen:
        data_dir = self.root / (data or f"node-{node}")
        data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"{data or f'node-{node}'}.log", "ab")
        command = [*self.command_prefix(node), os.environ["RINGLOG_BIN"], "serve",
                   "--cores", str(self.cores), "--node-id", str(node),
                   "--listen", f"{self.hosts[node]}:{port or self.ports[node]}",
                   "--process-roles", roles, "--controller-quorum-voters", self.voters,
                   "--data-dir", str(data_dir), "--fetch-cache-bytes", str(8 << 20),
                   *self.extra_args]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        if data is None:
            self.processes[node] = process
        return process

    def command_prefix(self, node: int) -> list[str]:
        return []

    def stop(self):
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")


def netns_available() -> bool:
    """Whether this process may create network namespaces (root with `ip netns`)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"rlprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if made:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"


def _remove_stale_namespaces() -> None:
    """Removes the namespaces of earlier runs whose test process is gone (a run killed before
    its teardown leaves them in /run/netns; its bridge died with its own namespace)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        match = re.match(r"rl(\d+)h\d+\b", line)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            subprocess.run(["ip", "netns", "del", line.split()[0]], capture_output=True)


class NetnsCluster(Cluster):
    """The same three hosts, each in a network namespace of its own (`rl<pid>h<i>`), joined by
    veth pairs to a bridge in this namespace, on a private /24 chosen from the pid. A host can
    then be cut off from every peer, controller and client (`cut`) and joined again (`heal`)
    without touching its process: the network partition of a real data centre, not a crash.
    Every namespace, veth and the bridge are removed by `stop`."""

    def __init__(self, root: Path):
        pid = os.getpid()
        self.prefix = f"rl{pid % 100000}"
        subnet = f"10.{200 + pid % 50}.{pid % 250}"
        self.bridge = f"{self.prefix}br"
        _remove_stale_namespaces()
        self._remove_network()
        try:
            self._make_network(subnet)
        except BaseException:
            self._remove_network()
            raise
        self.root = root
        self.hosts = [f"{subnet}.{i + 1}" for i in range(HOSTS)]
        # Each host has a network stack of its own: the same ports are free in every one.
        self.ports = [9092] * HOSTS
        self.voters = ",".join(f"{i}@{host}:9093" for i, host in enumerate(self.hosts))
        self.processes = {}
        self.extra_args = []
        self.cores = CORES

    def _make_network(self, subnet: str) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{subnet}.254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(HOSTS):
            namespace, outside = self.namespace(i), f"{self.prefix}v{i}"
            _ip("netns", "add", namespace)
            _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("link", "set", outside, "master", self.bridge)
            _ip("link", "set", outside, "up")
            _ip("-n", namespace, "addr", "add", f"{subnet}.{i + 1}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def namespace(self, node: int) -> str:
        return f"{self.prefix}h{node}"

    def command_prefix(self, node: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(node)]

    def cut(self, node: int) -> None:
        """Cuts the host off: its link to the bridge goes down, its process runs on."""
        _ip("link", "set", f"{self.prefix}v{node}", "down")

    def heal(self, node: int) -> None:
        _ip("link", "set", f"{self.prefix}v{node}", "up")

    def cut_between(self, a: int, b: int) -> None:
        """Cuts the link between two hosts both ways (blackhole routes to each other's address
        in each one's namespace); each still reaches the others and the clients."""
        _ip("-n", self.namespace(a), "route", "add", "blackhole", f"{self.hosts[b]}/32")
        _ip("-n", self.namespace(b), "route", "add", "blackhole", f"{self.hosts[a]}/32")

    def join_between(self, a: int, b: int) -> None:
        _ip("-n", self.namespace(a), "route", "del", "blackhole", f"{self.hosts[b]}/32")
        _ip("-n", self.namespace(b), "route", "del", "blackhole", f"{self.hosts[a]}/32")

    def isolate(self, node: int) -> None:
        """Cuts the host off from the other hosts only (clients still reach it)."""
        for other in range(HOSTS):
            if other != node:
                self.cut_between(node, other)

    def rejoin(self, node: int) -> None:
        for other in range(HOSTS):
            if other != node:
                self.join_between(node, other)

    def _remove_network(self) -> None:
        for i in range(HOSTS):
            subprocess.run(["ip", "netns", "del", self.namespace(i)], capture_output=True)
            subprocess.run(["ip", "link", "del", f"{self.prefix}v{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def stop(self):
        super().stop()
        self._remove_network()


@pytest.fixture
def cluster(request):
    yield from _cluster(request, Cluster)


@pytest.fixture
def netns_cluster(request):
    """A cluster whose hosts live in network namespaces (skipped where this process may not
    create them: not root, or no `ip`)."""
    if not netns_available():
        pytest.skip("network namespaces need root and iproute2")
    yield from _cluster(request, NetnsCluster)


def _cluster(request, kind):
    root = data_root() / f"{request.node.name}-cluster"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cluster = kind(root)
    try:
        yield cluster
    finally:
        cluster.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for log in sorted(root.glob("*.log")):
                print(f"--- {log} ---\n{log.read_text(errors='replace')[-6000:]}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except KafkaException:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def live_brokers(admin: AdminClient) -> set[int]:
    return set(admin.list_topics(timeout=10).brokers)


def create(admin: AdminClient, name: str, partitions: int) -> None:
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions,
                                            replication_factor=1)], request_timeout=15)
    futures[name].result(15)


def test_three_hosts_spread_topics_survive_kill_9_of_the_controller_and_refuse_duplicates(
        cluster):
    for node in range(HOSTS):
        cluster.start(node)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    every_host = {host * NODES_PER_HOST for host in range(HOSTS)}
    wait_until(lambda: live_brokers(admin) == every_host, 60, "three registered brokers")

    # A topic of 6 partitions spread over the hosts, leaders on each.
    create(admin, "spread", 6)

    def spread_partitions():
        # Every host's metadata follows the controller's log within a heartbeat interval.
        topic = admin.list_topics("spread", timeout=10).topics["spread"]
        if topic.error is None and len(topic.partitions) == 6:
            return topic.partitions
        return None

    wait_until(lambda: all(spread_partitions() is not None for _ in range(HOSTS * 2)), 20,
               "every host to show the topic")
    partitions = spread_partitions()
    leaders = {p.id: p.leader for p in partitions.values()}
    assert {leader // NODES_PER_HOST for leader in leaders.values()} == set(range(HOSTS)), leaders

    # Produced with acks=all through every host, consumed in a group.
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    errors = []
    for i in range(600):
        producer.produce("spread", value=b"v%d" % i, partition=i % 6,
                         on_delivery=lambda err, _msg: err and errors.append(err))
    assert producer.flush(60) == 0 and errors == [], errors
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "cluster-g",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe(["spread"])
    values = set()
    deadline = time.monotonic() + 60
    while len(values) < 600 and time.monotonic() < deadline:
        message = consumer.poll(0.2)
        if message is not None and not message.error():
            values.add(message.value())
    consumer.close()
    assert values == {b"v%d" % i for i in range(600)}

    # kcat sees the same three brokers.
    listing = subprocess.run(["kcat", "-b", cluster.bootstrap, "-L", "-t", "spread"],
                             capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count(" at 127.0.0.") == HOSTS, listing.stdout

    # kill -9 of the active controller: another one accepts CreateTopics.
    addresses = list(zip(cluster.hosts, cluster.ports))
    controller = active_controller(addresses)
    killed = controller // NODES_PER_HOST
    cluster.processes[killed].kill()
    cluster.processes[killed].wait(10)
    survivors = ",".join(f"{h}:{p}" for i, (h, p) in enumerate(zip(cluster.hosts, cluster.ports))
                         if i != killed)
    started = time.monotonic()
    deadline = started + 30
    while True:
        # A fresh client each try: the one before may still send admin requests to the dead
        # controller it cached.
        admin = AdminClient({"bootstrap.servers": survivors})
        try:
            futures = admin.create_topics([NewTopic("after-failover", num_partitions=3,
                                                    replication_factor=1)], request_timeout=3)
            futures["after-failover"].result(4)
            break
        except (KafkaException, TimeoutError) as error:
            assert time.monotonic() < deadline, f"no controller accepted CreateTopics: {error}"
            time.sleep(0.1)
    print(f"CreateTopics committed {time.monotonic() - started:.3f} s after kill -9")
    wait_until(lambda: live_brokers(admin) == every_host - {killed * NODES_PER_HOST}, 30,
               "the killed host to be fenced")
    survivors_addresses = [a for i, a in enumerate(addresses) if i != killed]
    wait_until(lambda: active_controller(survivors_addresses) // NODES_PER_HOST != killed, 10,
               "the survivors to name the new controller")

    # The killed host restarts from its disk and is back in Metadata.
    cluster.start(killed)
    wait_until(lambda: live_brokers(admin) == every_host, 60, "the restarted host")

    # A second process with a live broker's node id is refused, and says why.
    other = (killed + 1) % HOSTS
    duplicate = cluster.start(other, roles="broker", port=free_port(cluster.hosts[other]),
                              data="duplicate")
    assert duplicate.wait(30) != 0
    assert "already registered and alive" in cluster.log("duplicate"), cluster.log("duplicate")


def metadata_v1(address: tuple[str, int], topics: list[str]):
    """One host's own answer to a Metadata v1 request on a new connection (no client cache in
    between): its live broker ids, and for each asked topic its error code and partitions
    {partition: (leader, sorted ISR, replicas in order)}."""
    body = struct.pack(">i", len(topics)) + b"".join(kafkautil._string(t) for t in topics)
    reader = kafkautil.Reader(kafkautil.roundtrip(address, kafkautil.frame(3, 1, 9, body), 2))
    brokers = set()
    for _ in range(reader.unpack(">i")):
        brokers.add(reader.unpack(">i"))
        reader.string()
        reader.unpack(">i")
        reader.string()  # rack
    reader.unpack(">i")  # controller id
    described = {}
    for _ in range(reader.unpack(">i")):
        error = reader.unpack(">h")
        name = reader.string()
        reader.unpack(">b")  # is_internal
        partitions = {}
        for _ in range(reader.unpack(">i")):
            _, index, leader = reader.unpack(">hii")
            replicas = [reader.unpack(">i") for _ in range(reader.unpack(">i"))]
            isr = [reader.unpack(">i") for _ in range(reader.unpack(">i"))]
            partitions[index] = (leader, tuple(sorted(isr)), tuple(replicas))
        described[name] = (error, partitions)
    return brokers, described


def raw_metadata(address: tuple[str, int], topics: list[str]) -> tuple[set[int], dict[str, int]]:
    """A host's live broker ids and each asked topic's error code (see `metadata_v1`)."""
    brokers, described = metadata_v1(address, topics)
    return brokers, {name: error for name, (error, _) in described.items()}


def active_controller(addresses) -> int:
    """The active controller's broker id, as a raw DescribeCluster v0 (flexible) names it.
    (librdkafka's describe_cluster reads Metadata, whose controller id is, as in KRaft, the
    answering broker itself.)"""
    header = struct.pack(">hhi", 60, 0, 11) + kafkautil._string("ringlog-pytest") + b"\x00"
    request = header + b"\x00" + b"\x00"  # include_cluster_authorized_operations, tags
    frame = struct.pack(">i", len(request)) + request
    for address in addresses:
        try:
            body = kafkautil.roundtrip(address, frame, 2)
        except OSError:
            continue
        at = 1  # the response header's tagged fields (none)
        at += 4  # throttle_time_ms
        (error,) = struct.unpack_from(">h", body, at)
        at += 2
        for _ in range(2):  # error_message (compact nullable), cluster_id (compact)
            length = body[at]
            at += 1 + max(length - 1, 0)
        (controller,) = struct.unpack_from(">i", body, at)
        assert error == 0, error
        return controller
    raise AssertionError("no host answered DescribeCluster")


def every_host_answers(addresses, every_host: set[int]) -> bool:
    """Every host answers Metadata itself and lists every host's broker."""
    try:
        return all(raw_metadata(address, [])[0] == every_host for address in addresses)
    except OSError:
        return False


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[round((len(ordered) - 1) * q)]


@pytest.mark.skipif("CLUSTER_FIGURE_TRIALS" not in os.environ,
                    reason="a measurement: CLUSTER_FIGURE_TRIALS=20 scripts/python-tests.sh "
                           "-s -k cluster_figures")
def test_cluster_figures(cluster):
    """Section 4 of issue 15, over CLUSTER_FIGURE_TRIALS trials each: controller failover
    (kill -9 of the active controller until the next CreateTopics succeeds), broker failure
    detection (kill -9 of a host until a survivor's Metadata drops it) and metadata propagation
    (CreateTopics answered until every host's Metadata shows the topic)."""
    trials = int(os.environ["CLUSTER_FIGURE_TRIALS"])
    for node in range(HOSTS):
        cluster.start(node)
    every_host = {host * NODES_PER_HOST for host in range(HOSTS)}
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    wait_until(lambda: live_brokers(admin) == every_host, 60, "three registered brokers")
    addresses = list(zip(cluster.hosts, cluster.ports))
    failover, fencing, propagation = [], [], []
    for trial in range(trials):
        # Metadata propagation.
        name = f"propagate-{trial}"
        create(admin, name, 3)
        answered = time.monotonic()
        while not all(raw_metadata(a, [name])[1].get(name) == 0 for a in addresses):
            assert time.monotonic() - answered < 30, "the topic did not reach every host"
            time.sleep(0.005)
        propagation.append(time.monotonic() - answered)

        # Controller failover.
        controller = active_controller(addresses)
        killed = controller // NODES_PER_HOST
        cluster.processes[killed].kill()
        started = time.monotonic()
        cluster.processes[killed].wait(10)
        others = [i for i in range(HOSTS) if i != killed]
        survivors = ",".join(f"{cluster.hosts[i]}:{cluster.ports[i]}" for i in others)
        while True:
            try:
                client = AdminClient({"bootstrap.servers": survivors})
                futures = client.create_topics([NewTopic(f"failover-{trial}", num_partitions=1,
                                                         replication_factor=1)],
                                               request_timeout=3)
                futures[f"failover-{trial}"].result(4)
                break
            except (KafkaException, TimeoutError):
                assert time.monotonic() - started < 60, "no controller took over"
                time.sleep(0.01)
        failover.append(time.monotonic() - started)
        cluster.start(killed)
        wait_until(lambda: every_host_answers(addresses, every_host), 60, "the restarted host")

        # Broker failure detection: kill -9 of a host that is not the active controller, until
        # a survivor's Metadata drops it.
        controller = active_controller(addresses)
        victim = next(i for i in range(HOSTS) if i != controller // NODES_PER_HOST)
        watcher = addresses[next(i for i in range(HOSTS) if i != victim)]
        cluster.processes[victim].kill()
        started = time.monotonic()
        cluster.processes[victim].wait(10)
        while victim * NODES_PER_HOST in raw_metadata(watcher, [])[0]:
            assert time.monotonic() - started < 60, "the killed host was never fenced"
            time.sleep(0.005)
        fencing.append(time.monotonic() - started)
        cluster.start(victim)
        wait_until(lambda: every_host_answers(addresses, every_host), 60, "the restarted host")
    for label, samples in [("controller failover", failover),
                           ("broker fencing", fencing),
                           ("metadata propagation", propagation)]:
        print(f"{label} over {trials} trials: p50 {percentile(samples, 0.5) * 1000:.0f} ms, "
              f"p99 {percentile(samples, 0.99) * 1000:.0f} ms, "
              f"max {max(samples) * 1000:.0f} ms")


def quorum_status(address: str) -> dict[str, str]:
    """`ringlog metadata-quorum describe --status` through the broker at `address`."""
    done = subprocess.run([os.environ["RINGLOG_BIN"], "metadata-quorum", "--bootstrap-server",
                           address, "describe", "--status"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return dict(line.split(":", 1) for line in done.stdout.splitlines())


def test_describe_quorum_names_the_leader_its_epoch_and_every_voter(cluster):
    """DescribeQuorum (Kafka's kafka-metadata-quorum describe), sent to any broker, is answered
    by the quorum's leader: the same leader, epoch and voters through every host, a high
    watermark that grows with the metadata log, followers caught up; after kill -9 of the
    leader, a new leader in a later epoch, the dead voter lagging."""
    for node in range(HOSTS):
        cluster.start(node)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    every_host = {host * NODES_PER_HOST for host in range(HOSTS)}
    wait_until(lambda: live_brokers(admin) == every_host, 60, "three registered brokers")
    addresses = [f"{h}:{p}" for h, p in zip(cluster.hosts, cluster.ports)]
    statuses = [quorum_status(address) for address in addresses]
    leader = statuses[0]["LeaderId"].strip()
    assert all(s["LeaderId"].strip() == leader for s in statuses), statuses
    assert all(s["LeaderEpoch"] == statuses[0]["LeaderEpoch"] for s in statuses), statuses
    assert statuses[0]["CurrentVoters"].strip() == "[0,1,2]", statuses[0]
    before = int(statuses[0]["HighWatermark"])
    create(admin, "quorum-grows", 3)
    wait_until(lambda: int(quorum_status(addresses[0])["HighWatermark"]) > before, 10,
               "the high watermark to grow")
    wait_until(lambda: int(quorum_status(addresses[0])["MaxFollowerLag"]) == 0, 10,
               "the followers to catch up")
    replication = subprocess.run(
        [os.environ["RINGLOG_BIN"], "metadata-quorum", "--bootstrap-server", addresses[0],
         "describe", "--replication"], capture_output=True, text=True, timeout=30)
    assert replication.returncode == 0, replication.stderr
    rows = [line.split("\t") for line in replication.stdout.splitlines()[1:]]
    assert [row[0] for row in rows][0] == leader and sorted(r[0] for r in rows) == ["0", "1", "2"]
    assert [row[-1] for row in rows] == ["Leader", "Follower", "Follower"], rows
    assert all(int(row[3]) > 0 for row in rows), rows  # every voter answered this leader

    killed = int(leader)
    cluster.processes[killed].kill()
    cluster.processes[killed].wait(10)
    survivor = addresses[(killed + 1) % HOSTS]

    def new_leader():
        try:
            status = quorum_status(survivor)
        except AssertionError:
            return False
        return status["LeaderId"].strip() != str(killed)

    wait_until(new_leader, 30, "a new quorum leader")
    after = quorum_status(survivor)
    assert int(after["LeaderEpoch"]) > int(statuses[0]["LeaderEpoch"]), (statuses[0], after)
    create(AdminClient({"bootstrap.servers": survivor}), "quorum-after", 1)
    wait_until(lambda: int(quorum_status(survivor)["MaxFollowerLag"]) > 0, 10,
               "the dead voter to lag")


def test_alter_configs_replaces_a_topics_overrides_in_a_cluster(cluster):
    """AlterConfigs (the non-incremental API) in a cluster: the controller commits exactly the
    named overrides, a key set before and not named goes back to its default, on every host."""
    from confluent_kafka.admin import ConfigResource, ResourceType
    for node in range(HOSTS):
        cluster.start(node)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    every_host = {host * NODES_PER_HOST for host in range(HOSTS)}
    wait_until(lambda: live_brokers(admin) == every_host, 60, "three registered brokers")
    futures = admin.create_topics([NewTopic("configured", num_partitions=1, replication_factor=1,
                                            config={"retention.ms": "3600000",
                                                    "segment.ms": "600000"})],
                                  request_timeout=15)
    futures["configured"].result(15)
    resource = ConfigResource(ResourceType.TOPIC, "configured",
                              set_config={"retention.ms": "7200000"})
    for future in admin.alter_configs([resource], request_timeout=15).values():
        future.result(15)

    def overrides(address: str) -> dict[str, str]:
        client = AdminClient({"bootstrap.servers": address})
        described = client.describe_configs(
            [ConfigResource(ResourceType.TOPIC, "configured")], request_timeout=10)
        configs = next(iter(described.values())).result(10)
        return {name: entry.value for name, entry in configs.items()
                if name in ("retention.ms", "segment.ms") and not entry.is_default}

    for host, port in zip(cluster.hosts, cluster.ports):
        wait_until(lambda: overrides(f"{host}:{port}") == {"retention.ms": "7200000"}, 10,
                   f"host {host} to show only the replaced override")
