"""Superseded commits in __consumer_offsets are cleaned: once a partition of it has rolled
segments, its live offsets are rewritten and the older segments deleted; the committed offsets
read back the same, also after a restart."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

import kafkautil
from test_groups import committed_offsets

OFFSETS = "__consumer_offsets"


def offsets_segments(data_dir) -> int:
    return sum(len(list(d.glob("*.log"))) for d in data_dir.glob(f"{OFFSETS}-*"))


def test_superseded_commits_are_cleaned(broker_factory, topic_name):
    broker = broker_factory(cores=2, extra_args=["--log-retention-check-interval-ms", "300"])
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 2)
    admin = kafkautil.admin(bootstrap)
    resource = ConfigResource(ResourceType.TOPIC, OFFSETS, incremental_configs=[
        ConfigEntry("segment.bytes", "16384", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)

    # Simple commits (assign, no group membership): 3000 of them, each superseding the last.
    group = f"{topic_name}-g"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    for i in range(3000):
        consumer.commit(offsets=[TopicPartition(topic_name, 0, i), TopicPartition(topic_name, 1, 2 * i)],
                        asynchronous=False)
    consumer.close()
    assert committed_offsets(bootstrap, group, topic_name, 2) == {0: 2999, 1: 5998}

    deadline = time.monotonic() + 30
    while offsets_segments(broker.data_dir) > 4 and time.monotonic() < deadline:
        time.sleep(0.3)
    # 8 partitions, each with at least its active segment; the busy one is down to a couple.
    assert offsets_segments(broker.data_dir) <= 10, "superseded segments were not deleted"
    assert committed_offsets(bootstrap, group, topic_name, 2) == {0: 2999, 1: 5998}

    assert broker.restart() == 0
    assert committed_offsets(bootstrap, group, topic_name, 2) == {0: 2999, 1: 5998}
