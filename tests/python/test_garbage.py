"""Garbage, truncated and oversized frames on raw sockets while real clients keep working: the
broker drops the bad connections and keeps serving everyone else."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

from confluent_kafka import KafkaError, TopicPartition

import kafkautil


def closed_by_peer(sock: socket.socket, timeout: float = 10) -> bool:
    """True if the broker closes (or resets) the connection within `timeout`."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


class Traffic:
    """A confluent-kafka producer (acks=all) and consumer running in threads on one topic."""

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.stop = threading.Event()
        self.producer_done = threading.Event()
        self.acked: list[tuple[int, int, bytes]] = []
        self.errors: list[str] = []
        self.consumed: list[tuple[int, int, bytes]] = []
        self.threads = [threading.Thread(target=self.produce, daemon=True),
                        threading.Thread(target=self.consume, daemon=True)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.threads[0].join(60)
        self.producer_done.set()
        self.threads[1].join(60)

    def produce(self):
        p = kafkautil.producer(self.bootstrap, acks="all", **{"message.timeout.ms": 30000})

        def report(err, msg):
            if err is not None:
                self.errors.append(f"produce: {err}")
            else:
                self.acked.append((msg.partition(), msg.offset(), msg.value()))

        n = 0
        while not self.stop.is_set():
            for _ in range(20):
                p.produce(self.topic, value=f"live-{n}".encode(), key=str(n).encode(),
                          on_delivery=report)
                n += 1
            p.poll(0.05)
        if p.flush(30) != 0:
            self.errors.append("produce: not flushed in 30 s")

    def consume(self):
        """Reads until the producer is done and everything it got acknowledged has been read
        (at most 30 s after that)."""
        c = kafkautil.consumer(self.bootstrap)
        c.assign([TopicPartition(self.topic, p, 0) for p in range(self.partitions)])
        drain_deadline = None
        try:
            while True:
                if self.producer_done.is_set():
                    if drain_deadline is None:
                        drain_deadline = time.monotonic() + 30
                    if len(self.consumed) >= len(self.acked) or time.monotonic() > drain_deadline:
                        return
                for msg in c.consume(num_messages=500, timeout=0.2):
                    if msg.error():
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            self.errors.append(f"consume: {msg.error()}")
                        continue
                    self.consumed.append((msg.partition(), msg.offset(), msg.value()))
        finally:
            c.close()

    def progress(self, what: str, timeout: float = 15):
        """Asserts both clients make progress within `timeout` after `what`."""
        acked, consumed = len(self.acked), len(self.consumed)
        deadline = time.monotonic() + timeout
        while len(self.acked) <= acked + 20 or len(self.consumed) <= consumed + 20:
            assert all(t.is_alive() for t in self.threads), f"a client thread died after {what}"
            assert time.monotonic() < deadline, (
                f"clients stalled after {what}: acked {acked}->{len(self.acked)}, "
                f"consumed {consumed}->{len(self.consumed)}, errors {self.errors[:5]}")
            time.sleep(0.05)


def test_garbage_and_truncated_frames_do_not_disturb_other_clients(broker, topic_name):
    bootstrap = broker.bootstrap
    address = ("127.0.0.1", broker.port)
    kafkautil.create_topic(bootstrap, topic_name, 3)
    held_open: list[socket.socket] = []

    def connect():
        return socket.create_connection(address, timeout=10)

    with Traffic(bootstrap, topic_name, 3) as traffic:
        traffic.progress("start")

        # Each case on several connections, so that every shard (SO_REUSEPORT spreads
        # connections) sees it. `closes`: the broker must drop the connection.
        cases = [
            ("negative frame size", b"\xff" * 4096, True),
            ("HTTP request (size prefix 1.1 GB > socket.request.max.bytes)",
             b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
            ("frame size 2^31-1", struct.pack(">i", 2**31 - 1) + b"\x00" * 100, True),
            ("zero-size frame", struct.pack(">i", 0), True),
            ("garbage header, unknown api key", struct.pack(">i", 40) + b"\xab" * 40, True),
            ("valid header, unknown api key 9999",
             kafkautil.frame(9999, 0, 1, b"\x00" * 16), True),
            ("Produce v7 with a body cut short",
             kafkautil.frame(0, 7, 1, b"\xff\xff\x00\x01\x00\x00\x27\x10\x00\x00\x00\x05"), True),
            ("Metadata with a string length past the frame",
             kafkautil.frame(3, 1, 1, struct.pack(">i", 1) + struct.pack(">h", 30000) + b"ab"),
             True),
            ("Metadata v1 header, then random bytes",
             kafkautil.frame(3, 1, 1, os.urandom(4096)), True),
        ]
        for name, payload, closes in cases:
            for _ in range(4):
                sock = connect()
                try:
                    sock.sendall(payload)
                except (ConnectionResetError, BrokenPipeError):
                    continue
                if closes:
                    assert closed_by_peer(sock), f"broker kept the connection open after: {name}"
                sock.close()
            traffic.progress(name)
            assert kafkautil.api_versions_ok(address), f"new connection refused after: {name}"

        # Truncated frames: the client goes away mid-frame, or stays, silent, mid-frame.
        partial = kafkautil.frame(3, 1, 5, struct.pack(">i", -1))
        for cut in (1, 3, 4, 6, len(partial) - 1):
            for _ in range(4):
                sock = connect()
                sock.sendall(partial[:cut])
                sock.close()
                sock = connect()
                sock.sendall(partial[:cut])
                held_open.append(sock)
        sock = connect()
        sock.sendall(struct.pack(">i", 1000) + b"\x00\x03\x00\x01")  # 4 of 1000 bytes
        held_open.append(sock)
        traffic.progress("truncated frames (closed and held open)")
        assert kafkautil.api_versions_ok(address)

        # A valid request after garbage on the same connection is never answered as if nothing
        # happened: either the connection is gone or no answer comes.
        sock = connect()
        sock.sendall(b"\xff" * 8 + kafkautil.frame(18, 0, 42, b""))
        assert closed_by_peer(sock)
        sock.close()

        # Connection churn: many connections opened and dropped at once.
        socks = [connect() for _ in range(200)]
        for s in socks:
            s.close()
        traffic.progress("200 connections opened and closed")

        for sock in held_open:
            sock.close()
        traffic.progress("closing the held-open truncated connections")
        assert broker.alive()

    assert not traffic.errors, traffic.errors[:10]
    # Every acknowledged record is in the log once, where it was acknowledged.
    log = kafkautil.consume_all(bootstrap, topic_name, 3)
    positions = {(r.partition, r.offset): r.value for records in log.values() for r in records}
    assert len(positions) == len(traffic.acked)
    for p, o, v in traffic.acked:
        assert positions[(p, o)] == v
    assert sorted(traffic.consumed) == sorted(traffic.acked)


def test_corrupt_batch_is_refused_and_not_stored(broker, topic_name):
    """A Produce whose RecordBatch fails its CRC gets an error and is not appended; a correct
    one sent the same way (raw Produce v7) is appended."""
    bootstrap = broker.bootstrap
    address = ("127.0.0.1", broker.port)
    kafkautil.create_topic(bootstrap, topic_name, 1)

    good = kafkautil.record_batch([b"raw-0", b"raw-1"])
    answer = kafkautil.parse_produce_v3_7(
        kafkautil.roundtrip(address, kafkautil.produce_v3_7(topic_name, 0, good)))
    assert answer == [(topic_name, 0, 0, 0)]

    bad = bytearray(kafkautil.record_batch([b"raw-2"]))
    bad[-1] ^= 0xFF  # last byte of the last record: the CRC no longer matches
    answer = kafkautil.parse_produce_v3_7(
        kafkautil.roundtrip(address, kafkautil.produce_v3_7(topic_name, 0, bytes(bad))))
    assert len(answer) == 1 and answer[0][2] == KafkaError.INVALID_MSG, answer

    # Partition that does not exist in an existing topic.
    answer = kafkautil.parse_produce_v3_7(
        kafkautil.roundtrip(address, kafkautil.produce_v3_7(topic_name, 7, good)))
    assert len(answer) == 1 and answer[0][2] == KafkaError.UNKNOWN_TOPIC_OR_PART, answer

    assert kafkautil.watermarks(bootstrap, topic_name, 1) == {0: (0, 2)}
    log = kafkautil.consume_all(bootstrap, topic_name, 1)
    assert [r.value for r in log[0]] == [b"raw-0", b"raw-1"]
    assert broker.alive()


def test_acks0_produce_gets_no_response(broker, topic_name):
    """Produce with acks=0 is appended and never answered (clients do not read a reply)."""
    address = ("127.0.0.1", broker.port)
    kafkautil.create_topic(broker.bootstrap, topic_name, 1)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(kafkautil.produce_v3_7(topic_name, 0, kafkautil.record_batch([b"a0"]), acks=0))
        # The next request's answer is the first thing to come back.
        sock.sendall(kafkautil.frame(18, 0, 99, b""))
        (size,) = struct.unpack(">i", kafkautil.recv_exact(sock, 4))
        payload = kafkautil.recv_exact(sock, size)
        assert struct.unpack(">i", payload[:4])[0] == 99
    assert kafkautil.watermarks(broker.bootstrap, topic_name, 1) == {0: (0, 1)}


def test_client_that_never_reads_does_not_block_others(broker, topic_name):
    """Connections that ask for megabytes of Fetch answers and never read them fill their
    socket buffers; the broker's cores must keep serving everyone else meanwhile."""
    bootstrap = broker.bootstrap
    big_topic = f"{topic_name}-big"
    kafkautil.create_topic(bootstrap, big_topic, 1)
    kafkautil.create_topic(bootstrap, topic_name, 3)
    p = kafkautil.producer(bootstrap, acks="1")
    chunk = os.urandom(10_000)
    for i in range(2000):  # 20 MB, incompressible
        p.produce(big_topic, value=chunk[i % 100:] + chunk[:i % 100], partition=0)
        if i % 100 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    del p

    stuck = []
    with Traffic(bootstrap, topic_name, 3) as traffic:
        traffic.progress("start")
        for n in range(8):
            sock = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            for k in range(20):
                try:
                    sock.sendall(kafkautil.fetch_v4(big_topic, 0, 0, 50_000_000,
                                                    correlation_id=k))
                except (socket.timeout, BlockingIOError):
                    break  # the broker stopped reading: fine, it is backed up on us
            stuck.append(sock)
        traffic.progress("8 connections with 20 pipelined 20 MB Fetch answers each, unread")
        rss_kib = int(next(line.split()[1] for line in
                           open(f"/proc/{broker.process.pid}/status")
                           if line.startswith("VmRSS:")))
        # Answers wait in socket buffers and at most one in the broker per connection, not all
        # 160 of them (3.2 GB).
        assert rss_kib < 1_000_000, f"broker RSS {rss_kib} KiB with unread Fetch answers"
        print(f"broker RSS with unread answers: {rss_kib} KiB")
        assert kafkautil.api_versions_ok(("127.0.0.1", broker.port))
        time.sleep(2)
        traffic.progress("2 s later")
        for sock in stuck:
            sock.close()
        traffic.progress("closing the unread connections")
        assert broker.alive()
    assert not traffic.errors, traffic.errors[:10]
