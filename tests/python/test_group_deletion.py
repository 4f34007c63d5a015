"""DeleteGroups and OffsetDelete, raw protocol, against what Kafka answers (its
GroupCoordinatorShard.deleteGroups, OffsetMetadataManager.deleteOffsets, ClassicGroup /
ConsumerGroup.validateOffsetDelete and KafkaApis.handleOffsetDeleteRequest): unknown groups,
groups with live members (classic and KIP-848), members that do not speak the consumer
protocol, empty groups, unknown topics and partitions, and a deleted group staying deleted
across a restart."""

from __future__ import annotations

import pytest

import kafkautil
from kafkautil import (delete_groups_v1, offset_commit_v2, offset_delete_v0, offset_fetch_v1,
                       parse_delete_groups_v1, parse_offset_commit_v2, parse_offset_delete_v0,
                       parse_offset_fetch_v1, roundtrip)
from test_groups import (FAST_GROUPS, KIP848_GROUPS, group_consumer, join_group_v3,
                         parse_join_group_v3, wait_assigned, wait_until)

UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_GROUP_ID = 24
NON_EMPTY_GROUP = 68
GROUP_ID_NOT_FOUND = 69
GROUP_SUBSCRIBED_TO_TOPIC = 86


class Raw:
    """Raw group admin requests to one broker."""

    def __init__(self, broker):
        self.broker = broker

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.broker.port)

    def commit(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        answer = parse_offset_commit_v2(roundtrip(self.address, offset_commit_v2(group, topic, offsets)))
        assert answer == {(topic, p): 0 for p in offsets}, answer

    def fetch(self, group: str, topics: dict[str, list[int]]) -> dict[tuple[str, int], int]:
        answer = parse_offset_fetch_v1(roundtrip(self.address, offset_fetch_v1(group, topics)))
        assert all(error == 0 for _, error in answer.values()), answer
        return {key: offset for key, (offset, _) in answer.items()}

    def delete_groups(self, *groups: str) -> dict[str, int]:
        return parse_delete_groups_v1(roundtrip(self.address, delete_groups_v1(list(groups))))

    def offset_delete(self, group: str, topics: dict[str, list[int]]):
        return parse_offset_delete_v0(roundtrip(self.address, offset_delete_v0(group, topics)))


def two_topics(broker, topic_name: str) -> tuple[str, str]:
    subscribed, other = f"{topic_name}-a", f"{topic_name}-b"
    kafkautil.create_topic(broker.bootstrap, subscribed, 2)
    kafkautil.create_topic(broker.bootstrap, other, 2)
    return subscribed, other


def test_unknown_group_and_invalid_group_id(broker):
    raw = Raw(broker)
    assert raw.delete_groups("no-such-group") == {"no-such-group": GROUP_ID_NOT_FOUND}
    # An unknown group is refused whole: no per-partition answers, not even for a topic that
    # does not exist either.
    assert raw.offset_delete("no-such-group", {"no-such-topic": [0]}) == (GROUP_ID_NOT_FOUND, {})
    assert raw.offset_delete("", {"no-such-topic": [0]}) == (INVALID_GROUP_ID, {})


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_delete_while_members_live_then_empty(broker_factory, topic_name, protocol):
    extra = KIP848_GROUPS if protocol == "consumer" else FAST_GROUPS
    broker = broker_factory(extra_args=extra)
    raw = Raw(broker)
    subscribed, other = two_topics(broker, topic_name)
    group = f"del-{protocol}-{topic_name}"
    # Offsets of both topics, committed before any member joins.
    raw.commit(group, subscribed, {0: 5, 1: 6})
    raw.commit(group, other, {0: 7, 1: 8})
    everything = {subscribed: [0, 1], other: [0, 1]}

    member = group_consumer(broker.bootstrap, group, **{"group.protocol": protocol})
    try:
        member.subscribe([subscribed])
        wait_assigned(member, 2)
        assert raw.delete_groups(group) == {group: NON_EMPTY_GROUP}
        # Per partition: what the member subscribes to stays, the other topic's offset goes,
        # and unknown topics and partitions are named as such.
        error, partitions = raw.offset_delete(
            group, {subscribed: [0, 1], other: [0], "no-such-topic": [0]})
        assert error == 0
        assert partitions == {(subscribed, 0): GROUP_SUBSCRIBED_TO_TOPIC,
                              (subscribed, 1): GROUP_SUBSCRIBED_TO_TOPIC,
                              (other, 0): 0,
                              ("no-such-topic", 0): UNKNOWN_TOPIC_OR_PARTITION}
        assert raw.offset_delete(group, {other: [2]}) == \
            (0, {(other, 2): UNKNOWN_TOPIC_OR_PARTITION})
        assert raw.fetch(group, everything) == {(subscribed, 0): 5, (subscribed, 1): 6,
                                                (other, 0): -1, (other, 1): 8}
    finally:
        member.close()

    # Once the member has left, the group is empty and its offsets can go.
    wait_until(lambda: raw.offset_delete(group, {subscribed: [0]}) == (0, {(subscribed, 0): 0}),
               30, "OffsetDelete accepted once the group is empty", step=0.2)
    assert raw.fetch(group, everything) == {(subscribed, 0): -1, (subscribed, 1): 6,
                                            (other, 0): -1, (other, 1): 8}
    assert raw.delete_groups(group, "no-such-group") == \
        {group: 0, "no-such-group": GROUP_ID_NOT_FOUND}
    gone = {(t, p): -1 for t, ps in everything.items() for p in ps}
    assert raw.fetch(group, everything) == gone
    assert raw.delete_groups(group) == {group: GROUP_ID_NOT_FOUND}
    assert raw.offset_delete(group, {other: [1]}) == (GROUP_ID_NOT_FOUND, {})

    # Deleted stays deleted: replaying the offsets topic does not bring the group back.
    assert broker.restart(clean=True) == 0
    assert raw.fetch(group, everything) == gone
    assert raw.delete_groups(group) == {group: GROUP_ID_NOT_FOUND}


def test_offsets_only_group_is_empty(broker_factory, topic_name):
    """A group known only by its committed offsets (a consumer with assigned partitions) is
    an empty group: listed and described Empty, OffsetDelete and DeleteGroups succeed, also
    after a restart."""
    broker = broker_factory(extra_args=FAST_GROUPS)
    raw = Raw(broker)
    subscribed, other = two_topics(broker, topic_name)
    group = f"simple-{topic_name}"
    raw.commit(group, subscribed, {0: 1, 1: 2})
    raw.commit(group, other, {0: 3})
    assert listed_state(broker, group) == "EMPTY"
    assert broker.restart(clean=False) is None  # kill -9: the offsets come back from the log
    assert listed_state(broker, group) == "EMPTY"
    assert raw.offset_delete(group, {subscribed: [0, 1]}) == \
        (0, {(subscribed, 0): 0, (subscribed, 1): 0})
    assert raw.fetch(group, {subscribed: [0, 1], other: [0]}) == \
        {(subscribed, 0): -1, (subscribed, 1): -1, (other, 0): 3}
    assert raw.delete_groups(group) == {group: 0}
    assert raw.fetch(group, {other: [0]}) == {(other, 0): -1}
    assert listed_state(broker, group) is None


def listed_state(broker, group: str) -> str | None:
    """The group's state as confluent-kafka's admin client lists it, checked against what it
    describes; None when it is not listed."""
    client = kafkautil.admin(broker.bootstrap)
    listed = client.list_consumer_groups(request_timeout=30).result(timeout=30)
    assert not listed.errors, listed.errors
    states = {g.group_id: str(g.state).rsplit(".", 1)[-1] for g in listed.valid}
    if group not in states:
        return None
    described = client.describe_consumer_groups([group], request_timeout=30)[group].result(30)
    assert str(described.state).rsplit(".", 1)[-1] == states[group], described
    assert not described.members
    return states[group]


def test_members_without_the_consumer_protocol(broker_factory, topic_name):
    """Kafka cannot tell what a group of another protocol type (Connect, say) consumes: with
    members, OffsetDelete refuses the group whole."""
    broker = broker_factory(extra_args=FAST_GROUPS)
    raw = Raw(broker)
    kafkautil.create_topic(broker.bootstrap, topic_name, 1)
    group = f"connect-{topic_name}"
    raw.commit(group, topic_name, {0: 4})
    error, generation, _, _ = parse_join_group_v3(roundtrip(
        raw.address, join_group_v3(group, "", protocol_type="connect"), timeout=30))
    assert error == 0 and generation >= 1
    assert raw.offset_delete(group, {topic_name: [0]}) == (NON_EMPTY_GROUP, {})
    assert raw.delete_groups(group) == {group: NON_EMPTY_GROUP}
    assert raw.fetch(group, {topic_name: [0]}) == {(topic_name, 0): 4}
