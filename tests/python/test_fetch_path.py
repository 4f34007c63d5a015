"""The fetch path under pressure, with confluent-kafka (librdkafka checks every batch's CRC):
a producer appending while retention deletes segments and a tiny tail cache evicts, several
consumers at the tail of the partition and consumers far behind it at the same time, in each
`--fetch-send` mode. Every record received is compared with what was produced."""

from __future__ import annotations

import hashlib
import re
import threading
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

import kafkautil

RECORDS = 8000
TAIL_CONSUMERS = 4
BACKLOG_CONSUMERS = 2
TIMEOUT_S = 120


def value_of(i: int) -> bytes:
    """Record i's value: 32..1600 bytes derived from i, so any corruption or mix-up shows."""
    digest = hashlib.sha256(str(i).encode()).digest()
    return digest * (1 + i % 50)


class Reader(threading.Thread):
    """One assigned consumer; records what it received and every mismatch."""

    def __init__(self, bootstrap: str, topic: str, start: int, done: threading.Event):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.start_at, self.done = bootstrap, topic, start, done
        self.offsets: list[int] = []
        self.errors: list[str] = []
        self.resets = 0

    def run(self) -> None:
        try:
            self.consume()
        except Exception as error:  # surfaced by the test through `errors`
            self.errors.append(f"reader failed: {error!r}")

    def consume(self) -> None:
        c = kafkautil.consumer(self.bootstrap, **{"check.crcs": True,
                                                  "fetch.max.bytes": 1024 * 1024,
                                                  "max.partition.fetch.bytes": 64 * 1024})
        try:
            c.assign([TopicPartition(self.topic, 0, self.start_at)])
            deadline = time.monotonic() + TIMEOUT_S
            while time.monotonic() < deadline:
                if self.done.is_set() and self.offsets and self.offsets[-1] == RECORDS - 1:
                    return
                for msg in c.consume(num_messages=500, timeout=0.2):
                    if msg.error():
                        if msg.error().code() == KafkaError._PARTITION_EOF:
                            continue
                        self.errors.append(str(msg.error()))
                        continue
                    self.check(msg)
            self.errors.append(f"timed out at {self.offsets[-1:] or 'nothing'}")
        finally:
            c.close()

    def check(self, msg) -> None:
        offset = msg.offset()
        if self.offsets and offset <= self.offsets[-1]:
            self.errors.append(f"offset {offset} after {self.offsets[-1]}")
        if self.offsets and offset != self.offsets[-1] + 1:
            self.resets += 1  # retention deleted what this reader had not read yet
        # One idempotent producer into one partition: record i is at offset i.
        if msg.key() != str(offset).encode() or msg.value() != value_of(offset):
            self.errors.append(f"record at offset {offset} differs from what was produced")
        self.offsets.append(offset)


def fetch_path_stats(broker) -> list[str]:
    """The broker's 'fetch path' lines (logged per core at stop)."""
    text = broker.log_paths[-1].read_text(errors="replace")
    return [line for line in text.splitlines() if "fetch path:" in line]


def counter(lines: list[str], name: str) -> int:
    return sum(int(m) for line in lines for m in re.findall(rf"\b{name}: (\d+)", line))


def pair(lines: list[str], name: str) -> int:
    return sum(int(m) for line in lines for m in re.findall(rf"\b{name}: \((\d+),", line))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["copy", "zero-copy", "auto"])
def test_consumers_at_the_tail_and_behind_under_retention_and_eviction(broker_factory,
                                                                      topic_name, mode):
    broker = broker_factory(cores=1, extra_args=[
        "--fetch-send", mode,
        "--fetch-cache-bytes", str(512 * 1024),
        "--log-retention-check-interval-ms", "100",
    ])
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 1, config={
        "segment.bytes": str(256 * 1024),
        "retention.bytes": str(4 * 1024 * 1024),
    })
    done = threading.Event()
    # The tail readers start at offset 0, the end of the empty log (not OFFSET_END: resolved
    # when the consumer first fetches, which on a busy machine can come after the first
    # records, and the reader would then miss them).
    tail = [Reader(bootstrap, topic_name, 0, done) for _ in range(TAIL_CONSUMERS)]
    for reader in tail:
        reader.start()
    time.sleep(2)  # the tail readers are waiting at the end of the log

    p = kafkautil.producer(bootstrap, acks="all", **{"enable.idempotence": True,
                                                      "linger.ms": 2})
    behind: list[Reader] = []
    for i in range(RECORDS):
        p.produce(topic_name, key=str(i).encode(), value=value_of(i))
        p.poll(0)
        if i in (RECORDS // 3, RECORDS // 2):
            # Readers from the start, far behind the producer, while it still appends.
            p.flush(30)
            reader = Reader(bootstrap, topic_name, OFFSET_BEGINNING, done)
            reader.start()
            behind.append(reader)
        if i % 200 == 0:
            time.sleep(0.01)  # let the consumers keep up on a busy machine
    assert p.flush(60) == 0
    done.set()
    for reader in tail + behind:
        reader.join(TIMEOUT_S)
        assert not reader.is_alive(), "a reader did not finish"

    for reader in tail:
        assert reader.errors == [], reader.errors[:5]
        assert reader.offsets == list(range(RECORDS)), "a tail reader missed records"
    for reader in behind:
        assert reader.errors == [], reader.errors[:5]
        assert reader.offsets and reader.offsets[-1] == RECORDS - 1

    low, high = kafkautil.watermarks(bootstrap, topic_name, 1)[0]
    assert high == RECORDS
    assert low > 0, "retention deleted segments during the run"

    assert broker.stop() == 0
    stats = fetch_path_stats(broker)
    assert stats, "the broker logs its fetch path counters at stop"
    assert pair(stats, "tail_cache") > 0, stats
    assert pair(stats, "read_ahead") > 0, stats  # the readers behind read sequentially
    assert counter(stats, "chunks_evicted") > 0, stats
    used = counter(stats, "used_bytes")
    assert used <= 512 * 1024, stats
    zero_copy_frames = counter(stats, "zero_copy_frames")
    if mode == "zero-copy":
        assert zero_copy_frames > 0, stats
        # Every zero-copy send's buffers were held until its notification came.
        assert counter(stats, "zero_copy_notifications") >= zero_copy_frames, stats
    else:
        # auto on loopback copies: zero copy costs more CPU there.
        assert zero_copy_frames == 0, stats
