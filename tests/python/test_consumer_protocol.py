"""The new consumer group protocol (KIP-848, `group.protocol=consumer`) with confluent-kafka
2.16 (librdkafka 2.16): a 3-member group under 200k records with a leave and a join for the
uniform and range server-side assignors, committed offsets across a restart and a kill -9,
static membership, the admin APIs and `ringlog groups`, session expiry, groups of both
protocols refusing each other's members, and raw ConsumerGroupHeartbeat / OffsetCommit error
cases. (A live member across a broker restart, and rebalance times next to the classic
protocol, are in test_groups.py.)"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
import uuid

import pytest

import kafkautil
from conftest import ringlog_bin
from test_groups import (KIP848_GROUPS, committed_offsets, group_consumer, join_group_v3,
                         offsets_survive_restarts, parse_join_group_v3, produce_values, Reader,
                         run_group, static_rejoin, wait_until)

CONSUMER = {"group.protocol": "consumer"}
# Short heartbeats and sessions (broker settings with this protocol) so the tests run quickly.
HEARTBEAT_MS = 500
SESSION_MS = 6000
KIP848 = KIP848_GROUPS


@pytest.mark.parametrize("assignor", ["uniform", "range"])
def test_consumer_protocol_group_members_leave_and_join(broker_factory, topic_name, assignor):
    broker = broker_factory(extra_args=KIP848)
    summary = run_group(broker, topic_name, assignor, protocol="consumer",
                        heartbeat_ms=HEARTBEAT_MS)
    log = broker.log_paths[-1].read_text()
    assert f'assignor="{assignor}"' in log
    assert "member fenced" not in log  # members left by heartbeat, none timed out


def test_consumer_protocol_committed_offsets_survive_restart(broker_factory, topic_name):
    offsets_survive_restarts(broker_factory(extra_args=KIP848), topic_name, **CONSUMER)


def test_consumer_protocol_static_member_gets_its_partitions_back(broker_factory, topic_name):
    """A static member (group.instance.id) that closes (epoch -2) and comes back within the
    session timeout gets the same partitions, and the other member is not disturbed."""
    broker = broker_factory(extra_args=KIP848)
    before, after, b_revoked = static_rejoin(broker, topic_name, **CONSUMER)
    assert after == before
    assert b_revoked == 0, "the other member was disturbed"
    log = broker.log_paths[-1].read_text()
    assert "epoch=-2" in log
    assert "member fenced" not in log


def test_consumer_protocol_groups_in_admin_and_cli(broker_factory, topic_name):
    broker = broker_factory(extra_args=KIP848)
    partitions = 4
    kafkautil.create_topic(broker.bootstrap, topic_name, partitions)
    produce_values(broker.bootstrap, topic_name, 400, partitions)
    group = f"adm-{topic_name}"
    members = [group_consumer(broker.bootstrap, group, **CONSUMER, **{"client.id": f"adm-{i}"})
               for i in range(2)]
    owned: list[set[int]] = [set(), set()]
    stop = threading.Event()

    def poll(i):
        def assign(_c, parts):
            owned[i].update(tp.partition for tp in parts)

        def revoke(_c, parts):
            owned[i].difference_update(tp.partition for tp in parts)

        members[i].subscribe([topic_name], on_assign=assign, on_revoke=revoke)
        while not stop.is_set():
            members[i].consume(num_messages=100, timeout=0.1)

    threads = [threading.Thread(target=poll, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(owned[0]) == 2 and len(owned[1]) == 2, 60,
                   "both members assigned", step=0.05)
        client = kafkautil.admin(broker.bootstrap)
        listed = client.list_consumer_groups(request_timeout=30).result(timeout=30)
        ids = {g.group_id: g for g in listed.valid}
        assert group in ids, list(ids)
        assert str(ids[group].type).endswith("CONSUMER"), ids[group].type
        desc = client.describe_consumer_groups([group], request_timeout=30)[group].result(30)
        assert str(desc.type).endswith("CONSUMER"), desc.type
        assert str(desc.state).endswith("STABLE"), desc.state
        assert desc.partition_assignor == "uniform"
        assert {m.client_id for m in desc.members} == {"adm-0", "adm-1"}
        assigned = sorted(tp.partition for m in desc.members
                          for tp in m.assignment.topic_partitions)
        assert assigned == list(range(partitions))

        listing = subprocess.run(
            [str(ringlog_bin()), "groups", "--bootstrap-server", broker.bootstrap, "list"],
            capture_output=True, text=True, timeout=60, check=True).stdout
        line = next(row for row in listing.splitlines() if row.startswith(group))
        assert "Stable" in line and "consumer" in line, line
        described = subprocess.run(
            [str(ringlog_bin()), "groups", "--bootstrap-server", broker.bootstrap,
             "describe", group],
            capture_output=True, text=True, timeout=60, check=True).stdout
        assert "uniform" in described, described
        rows = [row.split() for row in described.splitlines() if row.startswith(topic_name)]
        assert sorted(int(row[1]) for row in rows) == list(range(partitions)), described
        assert {row[-1] for row in rows} == {"adm-0", "adm-1"}, described
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for c in members:
            c.close()


# ---------------------------------------------------------------------------------------------
# Raw protocol: ConsumerGroupHeartbeat v1 and OffsetCommit v8/v9 (flexible encodings).

CONSUMER_GROUP_HEARTBEAT, OFFSET_COMMIT = 68, 8
UNKNOWN_MEMBER_ID, INCONSISTENT_GROUP_PROTOCOL, INVALID_REQUEST = 25, 23, 42
UNSUPPORTED_VERSION, GROUP_ID_NOT_FOUND = 35, 69
FENCED_MEMBER_EPOCH, UNSUPPORTED_ASSIGNOR, STALE_MEMBER_EPOCH = 110, 112, 113


def uvarint(n: int) -> bytes:
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def cstr(s: str | None) -> bytes:
    """COMPACT_(NULLABLE_)STRING."""
    if s is None:
        return uvarint(0)
    data = s.encode()
    return uvarint(len(data) + 1) + data


def carray(items: list[bytes] | None) -> bytes:
    if items is None:
        return uvarint(0)
    return uvarint(len(items) + 1) + b"".join(items)


TAGS = b"\x00"


def flexible_frame(api_key: int, version: int, body: bytes, correlation_id: int = 77) -> bytes:
    """Request header v2: v1 plus (empty) tagged fields."""
    payload = (struct.pack(">hhi", api_key, version, correlation_id)
               + kafkautil._string("ringlog-pytest-raw") + TAGS + body)
    return struct.pack(">i", len(payload)) + payload


def heartbeat_v1(group: str, member: str, epoch: int, topics: list[str] | None = None,
                 owned: dict[uuid.UUID, list[int]] | None = None, assignor: str | None = None,
                 instance: str | None = None, rebalance_ms: int = -1) -> bytes:
    owned_items = None if owned is None else [
        topic.bytes + carray([struct.pack(">i", p) for p in parts]) + TAGS
        for topic, parts in owned.items()]
    body = (cstr(group) + cstr(member) + struct.pack(">i", epoch) + cstr(instance) + cstr(None)
            + struct.pack(">i", rebalance_ms)
            + carray(None if topics is None else [cstr(t) for t in topics])
            + cstr(None) + cstr(assignor) + carray(owned_items) + TAGS)
    return flexible_frame(CONSUMER_GROUP_HEARTBEAT, 1, body)


class FlexReader(Reader):
    """Reads the compact encodings of flexible versions."""

    def uvarint(self) -> int:
        shift = result = 0
        while True:
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    def cstr(self) -> str | None:
        n = self.uvarint()
        if n == 0:
            return None
        s = self.data[self.pos:self.pos + n - 1].decode()
        self.pos += n - 1
        return s

    def skip_tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self.pos += self.uvarint()


def heartbeat_call(address, request: bytes) -> dict:
    body = kafkautil.roundtrip(address, request, timeout=30)
    r = FlexReader(body)
    r.skip_tags()  # response header v1
    _throttle, error = r.unpack(">ih")
    message, member, epoch, interval = r.cstr(), r.cstr(), r.unpack(">i"), r.unpack(">i")
    assignment = None
    if r.unpack(">b") == 1:
        assignment = {}
        for _ in range(r.uvarint() - 1):
            topic = uuid.UUID(bytes=r.data[r.pos:r.pos + 16])
            r.pos += 16
            assignment[topic] = sorted(r.unpack(">i") for _ in range(r.uvarint() - 1))
            r.skip_tags()
    return dict(error=error, message=message, member=member, epoch=epoch, interval=interval,
                assignment=assignment)


def offset_commit(version: int, group: str, epoch: int, member: str, topic: str,
                  offsets: dict[int, int]) -> bytes:
    """OffsetCommit v8 or v9 (flexible from v8; same body layout)."""
    parts = [struct.pack(">iqi", p, o, -1) + cstr("") + TAGS for p, o in offsets.items()]
    body = (cstr(group) + struct.pack(">i", epoch) + cstr(member) + cstr(None)
            + carray([cstr(topic) + carray(parts) + TAGS]) + TAGS)
    return flexible_frame(OFFSET_COMMIT, version, body)


def commit_errors(address, request: bytes) -> dict[int, int]:
    r = FlexReader(kafkautil.roundtrip(address, request, timeout=30))
    r.skip_tags()
    r.unpack(">i")
    out = {}
    for _ in range(r.uvarint() - 1):
        r.cstr()
        for _ in range(r.uvarint() - 1):
            p, err = r.unpack(">ih")
            r.skip_tags()
            out[p] = err
        r.skip_tags()
    return out


def test_raw_consumer_group_heartbeat_errors(broker_factory, topic_name):
    broker = broker_factory(extra_args=KIP848)
    address = ("127.0.0.1", broker.port)
    kafkautil.create_topic(broker.bootstrap, topic_name, 2)
    group = f"raw-{topic_name}"
    member = uuid.uuid4().hex

    joined = heartbeat_call(address, heartbeat_v1(group, member, 0, [topic_name], {},
                                                  rebalance_ms=30000))
    assert joined["error"] == 0, joined
    assert joined["member"] == member and joined["epoch"] == 1
    assert joined["interval"] == HEARTBEAT_MS
    (topic_id, partitions), = joined["assignment"].items()
    assert partitions == [0, 1]

    # Unknown member, fenced epochs, a first heartbeat without a subscription, an unknown
    # assignor, an invalid epoch.
    unknown = heartbeat_call(address, heartbeat_v1(group, "nobody", 1))
    assert unknown["error"] == UNKNOWN_MEMBER_ID, unknown
    ahead = heartbeat_call(address, heartbeat_v1(group, member, 5))
    assert ahead["error"] == FENCED_MEMBER_EPOCH and ahead["message"], ahead
    assert heartbeat_call(address, heartbeat_v1(
        f"{group}-x", member, 0, None, {}, rebalance_ms=30000))["error"] == INVALID_REQUEST
    assert heartbeat_call(address, heartbeat_v1(
        f"{group}-x", member, 0, [topic_name], {}, assignor="sticky",
        rebalance_ms=30000))["error"] == UNSUPPORTED_ASSIGNOR
    assert heartbeat_call(address, heartbeat_v1(group, member, -7))["error"] == INVALID_REQUEST
    steady = heartbeat_call(address, heartbeat_v1(group, member, 1,
                                                  owned={topic_id: [0, 1]}))
    assert steady["error"] == 0 and steady["epoch"] == 1, steady

    # OffsetCommit: v8 is refused for a consumer-protocol member, v9 needs its current epoch.
    assert commit_errors(address, offset_commit(8, group, 1, member, topic_name, {0: 5})) == \
        {0: UNSUPPORTED_VERSION}
    assert commit_errors(address, offset_commit(9, group, 3, member, topic_name, {0: 5})) == \
        {0: STALE_MEMBER_EPOCH}
    assert commit_errors(address, offset_commit(9, group, 1, "nobody", topic_name, {0: 5})) == \
        {0: UNKNOWN_MEMBER_ID}
    assert commit_errors(address, offset_commit(9, group, 1, member, topic_name,
                                                {0: 5, 1: 6})) == {0: 0, 1: 0}
    assert committed_offsets(broker.bootstrap, group, topic_name, 2) == {0: 5, 1: 6}

    # A classic member cannot join the consumer group, nor a consumer-protocol member a
    # classic group with members.
    error, *_ = parse_join_group_v3(kafkautil.roundtrip(
        address, join_group_v3(group, ""), timeout=30))
    assert error == INCONSISTENT_GROUP_PROTOCOL
    classic = f"classic-{topic_name}"
    error, *_ = parse_join_group_v3(kafkautil.roundtrip(
        address, join_group_v3(classic, ""), timeout=30))
    assert error == 0
    assert heartbeat_call(address, heartbeat_v1(
        classic, uuid.uuid4().hex, 0, [topic_name], {}, rebalance_ms=30000))["error"] == \
        GROUP_ID_NOT_FOUND

    # A truncated heartbeat: that connection is dropped, the broker serves the others.
    whole = heartbeat_v1(group, member, 1, owned={topic_id: [0, 1]})
    cut = whole[4:][:-12]
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(cut)) + cut)
        sock.settimeout(10)
        try:
            closed = sock.recv(65536) == b""
        except (ConnectionResetError, BrokenPipeError):
            closed = True
        assert closed
    assert kafkautil.api_versions_ok(address)

    # Leaving: the member is gone; leaving again is an unknown member.
    left = heartbeat_call(address, heartbeat_v1(group, member, -1))
    assert left["error"] == 0 and left["epoch"] == -1, left
    assert heartbeat_call(address, heartbeat_v1(group, member, -1))["error"] == \
        UNKNOWN_MEMBER_ID
    # An empty group takes simple commits again (no member, epoch -1).
    assert commit_errors(address, offset_commit(9, group, -1, "", topic_name, {0: 7})) == {0: 0}


def test_member_that_stops_heartbeating_is_fenced(broker_factory, topic_name):
    """Session timeout: a member that goes silent loses its partitions to the others."""
    broker = broker_factory(extra_args=KIP848)
    address = ("127.0.0.1", broker.port)
    kafkautil.create_topic(broker.bootstrap, topic_name, 2)
    group = f"silent-{topic_name}"
    silent = uuid.uuid4().hex
    assert heartbeat_call(address, heartbeat_v1(group, silent, 0, [topic_name], {},
                                                 rebalance_ms=30000))["epoch"] == 1
    c = group_consumer(broker.bootstrap, group, **CONSUMER)
    got: set[int] = set()
    try:
        c.subscribe([topic_name], on_assign=lambda _c, ps: got.update(tp.partition for tp in ps))
        started = time.monotonic()
        deadline = started + SESSION_MS / 1000 + 30
        while got != {0, 1}:
            assert time.monotonic() < deadline, got
            c.consume(num_messages=10, timeout=0.1)
        # Not before the silent member's session expired.
        assert time.monotonic() - started > SESSION_MS / 1000 - 2
    finally:
        c.close()
    assert "session expired" in broker.log_paths[-1].read_text()
