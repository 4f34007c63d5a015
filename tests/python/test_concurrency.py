"""Several clients at once: producers on separate connections (spread over the broker's cores by
SO_REUSEPORT) writing the same partitions, and a long-polling consumer woken by a producer on
another connection."""

from __future__ import annotations

import threading
import time

from confluent_kafka import TopicPartition

import kafkautil

PARTITIONS = 6
PRODUCERS = 4
EACH = 5000


def test_concurrent_producers_same_partitions(broker, topic_name):
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, PARTITIONS)
    acked: dict[int, list[tuple[int, int, int]]] = {n: [] for n in range(PRODUCERS)}
    errors: list[str] = []

    def run(n):
        p = kafkautil.producer(bootstrap, acks="all", retries=0, **{
            "linger.ms": 1, "batch.num.messages": 50,
            "compression.type": ["none", "lz4", "zstd", "snappy"][n % 4]})

        def report(err, msg):
            if err is not None:
                errors.append(f"producer {n}: {err}")
            else:
                acked[n].append((msg.partition(), msg.offset(), int(msg.value().split(b"/")[1])))

        for i in range(EACH):
            while True:
                try:
                    p.produce(topic_name, value=f"{n}/{i}".encode(), partition=i % PARTITIONS,
                              on_delivery=report)
                    break
                except BufferError:
                    p.poll(0.01)
            p.poll(0)
        if p.flush(60) != 0:
            errors.append(f"producer {n}: not flushed")

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(PRODUCERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a producer did not finish in 120 s"
    assert not errors, errors[:5]

    positions = {}
    for n, records in acked.items():
        assert len(records) == EACH
        for p, o, i in records:
            assert (p, o) not in positions, f"offset {p}/{o} acknowledged twice: {positions[(p, o)]}, {(n, i)}"
            positions[(p, o)] = (n, i)
    log = kafkautil.consume_all(bootstrap, topic_name, PARTITIONS)
    for p, records in log.items():
        assert [r.offset for r in records] == list(range(len(records)))
        assert len(records) == sum(1 for (q, _) in positions if q == p)
        last = {}
        for r in records:
            n, i = (int(x) for x in r.value.split(b"/"))
            assert positions[(p, r.offset)] == (n, i)
            assert i > last.get(n, -1), f"partition {p}: producer {n}'s records out of order"
            last[n] = i


def test_long_poll_wakes_on_produce(broker, topic_name):
    """A consumer waiting in Fetch (fetch.wait.max.ms=5000, at the end of the log) gets a new
    record about as soon as it is produced, not when its wait runs out."""
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 2)
    c = kafkautil.consumer(bootstrap, **{"fetch.wait.max.ms": 5000, "fetch.min.bytes": 1,
                                         "socket.timeout.ms": 20000})
    p = kafkautil.producer(bootstrap, acks="1", **{"linger.ms": 0})
    try:
        c.assign([TopicPartition(topic_name, 0, 0), TopicPartition(topic_name, 1, 0)])
        assert c.poll(1.0) is None  # now parked in a long poll at the end
        latencies = []
        for i in range(6):
            time.sleep(0.3)
            sent = time.monotonic()
            p.produce(topic_name, value=b"ping-%d" % i, partition=i % 2)
            p.flush(10)
            while True:
                msg = c.poll(0.05)
                if msg is not None and not msg.error():
                    break
                assert time.monotonic() - sent < 10, f"record {i} not consumed in 10 s"
            assert msg.value() == b"ping-%d" % i
            latencies.append(time.monotonic() - sent)
        # Waiting out fetch.wait.max.ms would take ~5 s; a woken long poll well under one.
        assert max(latencies) < 1.5, f"produce-to-consume latencies {latencies}"
    finally:
        c.close()
