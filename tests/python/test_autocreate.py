"""Produce to a topic that does not exist."""

from __future__ import annotations

from confluent_kafka import KafkaError

import kafkautil
from conftest import serve_setting_env

AUTO_CREATE_FLAG = "auto-create-topics-enable"


def raw_produce(broker, topic: str, partition: int = 0):
    answer = kafkautil.parse_produce_v3_7(kafkautil.roundtrip(
        ("127.0.0.1", broker.port),
        kafkautil.produce_v3_7(topic, partition, kafkautil.record_batch([b"x"]))))
    assert len(answer) == 1 and answer[0][:2] == (topic, partition), answer
    return answer[0][2]


def test_produce_to_unknown_topic_with_auto_create_off(broker_factory, topic_name):
    env_name = serve_setting_env(AUTO_CREATE_FLAG)
    assert env_name, f"`ringlog serve --help` lists no --{AUTO_CREATE_FLAG}"
    broker = broker_factory(env={env_name: "false"})
    missing = f"{topic_name}-missing"

    # Raw Produce v7: the partition's error is UNKNOWN_TOPIC_OR_PARTITION (3).
    assert raw_produce(broker, missing) == KafkaError.UNKNOWN_TOPIC_OR_PART

    # A real producer: its record fails (librdkafka learns from Metadata that the topic does
    # not exist and fails the record without sending it, or sends it and gets error 3).
    p = kafkautil.producer(broker.bootstrap, **{"message.timeout.ms": 5000,
                                                 "topic.metadata.propagation.max.ms": 1000})
    errors = []
    p.produce(missing, value=b"x", on_delivery=lambda err, msg: errors.append(err))
    p.flush(20)
    assert len(errors) == 1 and errors[0] is not None
    assert errors[0].code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC), errors

    md = kafkautil.admin(broker.bootstrap).list_topics(timeout=15)
    assert missing not in md.topics, "topic was created although auto-creation is off"


def test_produce_to_unknown_topic_default(broker, topic_name):
    """Whatever the default, a Produce to an unknown topic is either refused with
    UNKNOWN_TOPIC_OR_PARTITION (and creates nothing) or creates the topic (and appends)."""
    missing = f"{topic_name}-missing"
    error = raw_produce(broker, missing)
    assert error in (0, KafkaError.UNKNOWN_TOPIC_OR_PART), error
    md = kafkautil.admin(broker.bootstrap).list_topics(timeout=15)
    if error == 0:
        assert missing in md.topics
        assert kafkautil.watermarks(broker.bootstrap, missing, 1)[0] == (0, 1)
    else:
        assert missing not in md.topics
    assert broker.alive()


def test_produce_to_unknown_topic_with_auto_create_on(broker_factory, topic_name):
    auto_env = serve_setting_env(AUTO_CREATE_FLAG)
    partitions_env = serve_setting_env("num-partitions")
    assert auto_env and partitions_env, \
        "`ringlog serve --help` lists no --auto-create-topics-enable/--num-partitions"
    broker = broker_factory(env={auto_env: "true", partitions_env: "3"})
    fresh = f"{topic_name}-auto"
    p = kafkautil.producer(broker.bootstrap, acks="all")
    results = []
    for i in range(30):
        p.produce(fresh, value=b"v%d" % i, key=b"k%d" % i,
                  on_delivery=lambda err, msg: results.append((err, msg.partition(), msg.offset())))
    assert p.flush(30) == 0
    assert [err for err, _, _ in results] == [None] * 30
    kafkautil.wait_for_topic(broker.bootstrap, fresh, 3)
    log = kafkautil.consume_all(broker.bootstrap, fresh, 3)
    assert sorted(r.value for records in log.values() for r in records) == \
        sorted(b"v%d" % i for i in range(30))
