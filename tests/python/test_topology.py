"""The same client traffic against both broker topologies with two cores: a node per core (the
default: each core is its own node, clients talk to the owner) and one node
(`--node-per-shard false`: one port, requests for the other core's partitions forwarded
through the mesh)."""

from __future__ import annotations

import pytest

import kafkautil

RECORDS = 20_000
PARTITIONS = 6


@pytest.mark.parametrize("node_per_shard", ["true", "false"])
def test_produce_consume_in_both_topologies(broker_factory, topic_name, node_per_shard):
    broker = broker_factory(cores=2, extra_args=["--node-per-shard", node_per_shard])
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, PARTITIONS)
    metadata = kafkautil.admin(bootstrap).list_topics(timeout=15)
    leaders = {p.leader for p in metadata.topics[topic_name].partitions.values()}
    expected_nodes = [0, 1] if node_per_shard == "true" else [0]
    assert sorted(metadata.brokers) == expected_nodes
    assert leaders == set(expected_nodes)

    acked: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(PARTITIONS)}

    def delivered(error, message):
        assert error is None, error
        acked[message.partition()].append((message.offset(), message.value()))

    producer = kafkautil.producer(bootstrap, acks="all", **{"compression.type": "lz4"})
    for i in range(RECORDS):
        producer.produce(topic_name, key=f"k{i % 997}".encode(), value=f"v{i}".encode(),
                         on_delivery=delivered)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0

    consumed = kafkautil.consume_all(bootstrap, topic_name, PARTITIONS)
    assert sum(len(records) for records in consumed.values()) == RECORDS
    for partition, records in consumed.items():
        assert [r.offset for r in records] == list(range(len(records)))
        assert [(r.offset, r.value) for r in records] == sorted(acked[partition])
    assert all(consumed[p] for p in range(PARTITIONS)), "every partition got records"
