"""Helpers shared by the tests: confluent-kafka admin/produce/consume with time limits, and a
minimal raw Kafka wire client (framing, ApiVersions, Produce with a hand-built RecordBatch v2)
for requests that real clients refuse to send."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ADMIN_TIMEOUT_S = 30


def admin(bootstrap: str) -> AdminClient:
    # An AdminClient is a producer inside, and producers ask Metadata to auto-create the topics
    # they look up; these tests create every topic explicitly.
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000,
                        "allow.auto.create.topics": False})


def create_topic(bootstrap: str, name: str, partitions: int, config: dict | None = None) -> None:
    client = admin(bootstrap)  # must outlive the futures: destroying it fails them
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=ADMIN_TIMEOUT_S, request_timeout=ADMIN_TIMEOUT_S,
    )
    futures[name].result(timeout=ADMIN_TIMEOUT_S)
    wait_for_topic(bootstrap, name, partitions)


def wait_for_topic(bootstrap: str, name: str, partitions: int, timeout: float = 30) -> None:
    """Waits until Metadata shows `name` with `partitions` partitions, each with a leader."""
    client = admin(bootstrap)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        md = client.list_topics(topic=name, timeout=10)
        topic = md.topics.get(name)
        last = topic
        if topic is not None and topic.error is None and len(topic.partitions) == partitions \
                and all(p.leader >= 0 for p in topic.partitions.values()):
            return
        time.sleep(0.2)
    raise AssertionError(f"topic {name} not ready with {partitions} partitions: {last!r}")


def producer(bootstrap: str, **config) -> Producer:
    conf = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 5,
        "message.timeout.ms": 60000,
        "socket.timeout.ms": 30000,
    }
    conf.update(config)
    return Producer(conf)


def consumer(bootstrap: str, **config) -> Consumer:
    # group.id is required by the Python client even for assign(); no group APIs are used (the
    # client sends no FindCoordinator while the broker does not advertise it) and nothing is
    # committed.
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": "ringlog-pytest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        "socket.timeout.ms": 30000,
    }
    conf.update(config)
    return Consumer(conf)


@dataclass
class Rec:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list | None
    timestamp: int = field(default=-1)
    timestamp_type: int = field(default=-1)


def consume_all(bootstrap: str, topic: str, partitions: int, end_offsets: dict[int, int] | None = None,
                timeout: float = 120, **config) -> dict[int, list[Rec]]:
    """Reads every partition of `topic` from offset 0 until each reaches its end offset (by
    default the high watermark at the start). Returns records per partition, in log order."""
    c = consumer(bootstrap, **config)
    try:
        if end_offsets is None:
            end_offsets = {}
            for p in range(partitions):
                low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                end_offsets[p] = high
        out: dict[int, list[Rec]] = {p: [] for p in range(partitions)}
        todo = {p for p in range(partitions) if end_offsets[p] > 0}
        if todo:
            c.assign([TopicPartition(topic, p, 0) for p in sorted(todo)])
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                progress = {p: (len(out[p]), end_offsets[p]) for p in range(partitions)}
                raise AssertionError(f"consume of {topic} timed out; (got, want) {progress}")
            for msg in c.consume(num_messages=2000, timeout=0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(msg.error())
                p = msg.partition()
                ts_type, ts = msg.timestamp()
                out[p].append(Rec(p, msg.offset(), msg.key(), msg.value(), msg.headers(), ts, ts_type))
                if msg.offset() + 1 >= end_offsets[p]:
                    todo.discard(p)
        return out
    finally:
        c.close()


def watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
    c = consumer(bootstrap)
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30, cached=False)
                for p in range(partitions)}
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# Raw wire protocol.

_CRC32C_TABLE = []
for _i in range(256):
    _crc = _i
    for _ in range(8):
        _crc = (_crc >> 1) ^ 0x82F63B78 if _crc & 1 else _crc >> 1
    _CRC32C_TABLE.append(_crc)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _varint(n: int) -> bytes:
    return uvarint((n << 1) ^ (n >> 63))  # zigzag


def uvarint(n: int) -> bytes:
    """An unsigned varint (flexible versions' lengths and tagged field counts)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def record_batch(values: list[bytes], timestamp_ms: int | None = None, producer_id: int = -1,
                 producer_epoch: int = -1, base_sequence: int = -1) -> bytes:
    """An uncompressed RecordBatch v2 (magic 2) with null keys and no headers; with a producer
    id, epoch and base sequence for an idempotent producer's batch."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    records = b""
    for delta, value in enumerate(values):
        body = (b"\x00" + _varint(0) + _varint(delta) + _varint(-1)
                + _varint(len(value)) + value + _varint(0))
        records += _varint(len(body)) + body
    # From attributes on: covered by the CRC.
    after_crc = struct.pack(">hiqqqhii", 0, len(values) - 1, ts, ts, producer_id, producer_epoch,
                            base_sequence, len(values)) + records
    crc = crc32c(after_crc)
    after_length = struct.pack(">ibI", -1, 2, crc) + after_crc  # leader epoch, magic, crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


def _string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    data = s.encode()
    return struct.pack(">h", len(data)) + data


def frame(api_key: int, api_version: int, correlation_id: int, body: bytes,
          client_id: str = "ringlog-pytest-raw") -> bytes:
    """A request with header v1 (non-flexible versions only)."""
    payload = struct.pack(">hhi", api_key, api_version, correlation_id) + _string(client_id) + body
    return struct.pack(">i", len(payload)) + payload


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def roundtrip(address: tuple[str, int], request: bytes, timeout: float = 10) -> bytes:
    """Sends one framed request on a new connection; returns the response payload after the
    correlation id (response header v0)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(request)
        (size,) = struct.unpack(">i", recv_exact(sock, 4))
        payload = recv_exact(sock, size)
        return payload[4:]


def pipelined(address: tuple[str, int], requests: list[bytes], window: int = 32,
              timeout: float = 30) -> list[bytes]:
    """Sends framed requests on one connection, `window` at a time, and returns each response
    payload after the correlation id (response header v0), in order."""
    out = []
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.settimeout(timeout)
        for start in range(0, len(requests), window):
            batch = requests[start:start + window]
            sock.sendall(b"".join(batch))
            for _ in batch:
                (size,) = struct.unpack(">i", recv_exact(sock, 4))
                out.append(recv_exact(sock, size)[4:])
    return out


def api_versions_ok(address: tuple[str, int], timeout: float = 10) -> bool:
    """ApiVersions v0 on a new connection answers with error code 0."""
    body = roundtrip(address, frame(18, 0, 7, b""), timeout=timeout)
    (error_code,) = struct.unpack(">h", body[:2])
    return error_code == 0


def produce_v3_7(topic: str, partition: int, batch: bytes, acks: int = 1, version: int = 7,
                 correlation_id: int = 11) -> bytes:
    body = (_string(None) + struct.pack(">hi", acks, 10000)
            + struct.pack(">i", 1) + _string(topic)
            + struct.pack(">i", 1) + struct.pack(">i", partition)
            + struct.pack(">i", len(batch)) + batch)
    return frame(0, version, correlation_id, body)


def parse_produce_v3_7(body: bytes) -> list[tuple[str, int, int, int]]:
    """(topic, partition, error_code, base_offset) from a Produce v5-v7 response."""
    out = []
    pos = 0
    (ntopics,) = struct.unpack_from(">i", body, pos)
    pos += 4
    for _ in range(ntopics):
        (nlen,) = struct.unpack_from(">h", body, pos)
        pos += 2
        name = body[pos:pos + nlen].decode()
        pos += nlen
        (nparts,) = struct.unpack_from(">i", body, pos)
        pos += 4
        for _ in range(nparts):
            index, error_code, base_offset, _log_append_time, _log_start = struct.unpack_from(">ihqqq", body, pos)
            pos += 4 + 2 + 8 + 8 + 8
            out.append((name, index, error_code, base_offset))
    return out


def init_producer_id_v0(transactional_id: str | None = None, correlation_id: int = 31) -> bytes:
    """An InitProducerId v0 request."""
    return frame(22, 0, correlation_id, _string(transactional_id) + struct.pack(">i", 60000))


def parse_init_producer_id_v0(body: bytes) -> tuple[int, int, int]:
    """(error_code, producer_id, producer_epoch) from an InitProducerId v0 response."""
    _throttle, error_code, producer_id, epoch = struct.unpack_from(">ihqh", body, 0)
    return error_code, producer_id, epoch


def fetch_v4(topic: str, partition: int, offset: int, max_bytes: int, max_wait_ms: int = 0,
             correlation_id: int = 21) -> bytes:
    """A Fetch v4 request for one partition."""
    body = (struct.pack(">iiiib", -1, max_wait_ms, 1, max_bytes, 0)
            + struct.pack(">i", 1) + _string(topic)
            + struct.pack(">i", 1) + struct.pack(">iqi", partition, offset, max_bytes))
    return frame(1, 4, correlation_id, body)


def fetch_v4_high_watermark(body: bytes) -> tuple[int, int]:
    """(error_code, high_watermark) of the first partition of a Fetch v4 response."""
    pos = 4  # throttle time
    (ntopics,) = struct.unpack_from(">i", body, pos)
    assert ntopics >= 1, "no topic in the Fetch response"
    pos += 4
    (nlen,) = struct.unpack_from(">h", body, pos)
    pos += 2 + nlen + 4  # name, partition count
    _partition, error_code, high_watermark = struct.unpack_from(">ihq", body, pos)
    return error_code, high_watermark


# Consumer-group admin requests (non-flexible versions) and their answers.

OFFSET_COMMIT, OFFSET_FETCH, DELETE_GROUPS, OFFSET_DELETE = 8, 9, 42, 47


class Reader:
    """Reads big-endian fields from a response body in order."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def unpack(self, fmt: str):
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def string(self) -> str | None:
        n = self.unpack(">h")
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s


def _topics_array(topics: dict[str, list[int]], partition: Callable[[int], bytes]) -> bytes:
    return struct.pack(">i", len(topics)) + b"".join(
        _string(name) + struct.pack(">i", len(parts)) + b"".join(partition(p) for p in parts)
        for name, parts in topics.items())


def offset_commit_v2(group: str, topic: str, offsets: dict[int, int], metadata: str = "") -> bytes:
    """An OffsetCommit v2 outside any generation (generation -1, no member): how a consumer
    with manually assigned partitions commits."""
    body = (_string(group) + struct.pack(">i", -1) + _string("") + struct.pack(">q", -1)
            + _topics_array({topic: list(offsets)},
                            lambda p: struct.pack(">iq", p, offsets[p]) + _string(metadata)))
    return frame(OFFSET_COMMIT, 2, 51, body)


def _partition_errors(r: Reader) -> dict[tuple[str, int], int]:
    """A topics array of (name, [(partition index, error code)]): (topic, partition) -> error."""
    out = {}
    for _ in range(r.unpack(">i")):
        name = r.string()
        for _ in range(r.unpack(">i")):
            p, error = r.unpack(">ih")
            out[(name, p)] = error
    return out


def parse_offset_commit_v2(body: bytes) -> dict[tuple[str, int], int]:
    """(topic, partition) -> error code."""
    return _partition_errors(Reader(body))


def offset_fetch_v1(group: str, topics: dict[str, list[int]]) -> bytes:
    return frame(OFFSET_FETCH, 1, 52,
                 _string(group) + _topics_array(topics, lambda p: struct.pack(">i", p)))


def parse_offset_fetch_v1(body: bytes) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (committed offset, error code); -1 when none is committed."""
    r = Reader(body)
    out = {}
    for _ in range(r.unpack(">i")):
        name = r.string()
        for _ in range(r.unpack(">i")):
            p, offset = r.unpack(">iq")
            r.string()  # metadata
            out[(name, p)] = (offset, r.unpack(">h"))
    return out


def delete_groups_v1(groups: list[str]) -> bytes:
    return frame(DELETE_GROUPS, 1, 53,
                 struct.pack(">i", len(groups)) + b"".join(_string(g) for g in groups))


def parse_delete_groups_v1(body: bytes) -> dict[str, int]:
    """group id -> error code."""
    r = Reader(body)
    r.unpack(">i")  # throttle time
    return {r.string(): r.unpack(">h") for _ in range(r.unpack(">i"))}


def offset_delete_v0(group: str, topics: dict[str, list[int]]) -> bytes:
    return frame(OFFSET_DELETE, 0, 54,
                 _string(group) + _topics_array(topics, lambda p: struct.pack(">i", p)))


def parse_offset_delete_v0(body: bytes) -> tuple[int, dict[tuple[str, int], int]]:
    """(top-level error code, (topic, partition) -> error code)."""
    r = Reader(body)
    error, _throttle = r.unpack(">hi")
    return error, _partition_errors(r)
