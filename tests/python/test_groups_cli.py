"""`ringlog groups` (like kafka-consumer-groups) against a live broker: list, describe with lag,
reset-offsets (dry run, refused while members are active, executed once the group is empty),
delete."""

from __future__ import annotations

import subprocess
import time

from confluent_kafka import Consumer

import kafkautil
from conftest import ringlog_bin


def groups(bootstrap: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ringlog_bin()), "groups", "--bootstrap-server", bootstrap, *args],
                          capture_output=True, text=True, timeout=60)


def describe_rows(bootstrap: str, group: str) -> dict[int, tuple[str, int, str]]:
    """partition -> (current offset, log end offset, lag) from `describe`."""
    out = groups(bootstrap, "describe", group)
    assert out.returncode == 0, out.stderr
    rows = {}
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[1].isdigit():
            rows[int(fields[1])] = (fields[2], int(fields[3]), fields[4])
    return rows


def test_list_describe_reset_delete(broker_factory, topic_name):
    broker = broker_factory(cores=2, extra_args=["--group-initial-rebalance-delay-ms", "0"])
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 3)
    producer = kafkautil.producer(bootstrap)
    for i in range(300):
        producer.produce(topic_name, key=str(i).encode(), value=b"v", partition=i % 3)
    assert producer.flush(30) == 0

    group = f"{topic_name}-group"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000})
    consumer.subscribe([topic_name])
    seen = 0
    deadline = time.monotonic() + 60
    while seen < 150 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            seen += 1
    consumer.commit(asynchronous=False)
    committed = {tp.partition: tp.offset for tp in consumer.position(consumer.assignment())}

    listing = groups(bootstrap, "list")
    assert listing.returncode == 0, listing.stderr
    assert any(line.split()[:2] == [group, "Stable"] for line in listing.stdout.splitlines())
    rows = describe_rows(bootstrap, group)
    for partition, (current, end, lag) in rows.items():
        assert end == 100
        if partition in committed and committed[partition] >= 0:
            assert int(current) == committed[partition]
            assert int(lag) == 100 - committed[partition]

    # Not while a member is active: the commit is refused and nothing changes.
    refused = groups(bootstrap, "reset-offsets", "--group", group, "--topic", topic_name,
                     "--to-earliest", "--execute")
    assert refused.returncode == 1 and "UnknownMemberId" in refused.stderr
    consumer.close()

    dry = groups(bootstrap, "reset-offsets", "--group", group, "--topic", topic_name, "--to-earliest")
    assert dry.returncode == 0 and "dry run" in dry.stdout
    committed_rows = {p: r for p, r in rows.items() if r[0] != "-"}
    assert describe_rows(bootstrap, group) == committed_rows
    done = groups(bootstrap, "reset-offsets", "--group", group, "--topic", topic_name,
                  "--to-offset", "40", "--execute")
    assert done.returncode == 0, done.stderr
    assert {p: r[0] for p, r in describe_rows(bootstrap, group).items()} == {0: "40", 1: "40", 2: "40"}

    # A new member of the group resumes from the reset offsets.
    resumed = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                        "enable.auto.commit": False, "session.timeout.ms": 6000})
    resumed.subscribe([topic_name])
    first: dict[int, int] = {}
    deadline = time.monotonic() + 60
    while len(first) < 3 and time.monotonic() < deadline:
        message = resumed.poll(0.5)
        if message is not None and not message.error():
            first.setdefault(message.partition(), message.offset())
    resumed.close()
    assert first == {0: 40, 1: 40, 2: 40}

    deleted = groups(bootstrap, "delete", group)
    assert deleted.returncode == 0, deleted.stderr
    assert group not in groups(bootstrap, "list").stdout
