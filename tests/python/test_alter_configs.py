"""AlterConfigs (API key 33, the non-incremental one) with real clients: confluent-kafka's
deprecated `AdminClient.alter_configs` (librdkafka's AlterConfigs) and kafka-python's
`alter_configs(incremental=False)` / `reset_configs(incremental=False)`.

As in Kafka, the configs a request names for a topic replace the topic's whole set of
overrides: a config set before and not named again goes back to its default."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,
                                   ResourceType)

import kafkautil
from kafkautil import ADMIN_TIMEOUT_S

# The API these tests exercise is deprecated in confluent-kafka, not in Kafka.
pytestmark = pytest.mark.filterwarnings(
    "ignore:alter_configs has been deprecated:DeprecationWarning")

DEFAULT_RETENTION_MS = "604800000"  # Kafka's (and ringlog's) default: 7 days
DEFAULT_MAX_MESSAGE_BYTES = "1048588"


def describe(client, topic: str) -> dict[str, str]:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    result = client.describe_configs([resource], request_timeout=ADMIN_TIMEOUT_S)
    entries = list(result.values())[0].result(timeout=ADMIN_TIMEOUT_S)
    return {name: entry.value for name, entry in entries.items()}


def alter(client, resource: ConfigResource, **kwargs) -> None:
    """AlterConfigs for one resource; raises the KafkaException of a refusal."""
    futures = client.alter_configs([resource], request_timeout=ADMIN_TIMEOUT_S, **kwargs)
    [future] = futures.values()
    future.result(timeout=ADMIN_TIMEOUT_S)


def refusal(client, resource: ConfigResource, **kwargs) -> KafkaError:
    with pytest.raises(KafkaException) as error:
        alter(client, resource, **kwargs)
    return error.value.args[0]


def test_alter_configs_replaces_topic_overrides(broker, topic_name):
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 2,
                           config={"retention.ms": "3600000", "max.message.bytes": "2000000"})
    client = kafkautil.admin(bootstrap)
    before = describe(client, topic_name)
    assert before["retention.ms"] == "3600000" and before["max.message.bytes"] == "2000000"
    default_segment_ms, default_preallocate = before["segment.ms"], before["preallocate"]

    # Naming segment.ms only: it is set, and both overrides not named go back to default.
    alter(client, ConfigResource(ResourceType.TOPIC, topic_name,
                                 set_config={"segment.ms": "600000"}))
    after = describe(client, topic_name)
    assert after["segment.ms"] == "600000", after
    assert after["retention.ms"] == DEFAULT_RETENTION_MS, after
    assert after["max.message.bytes"] == DEFAULT_MAX_MESSAGE_BYTES, after

    # Two configs at once, then none: an empty set resets every override.
    flipped = "false" if default_preallocate == "true" else "true"
    alter(client, ConfigResource(ResourceType.TOPIC, topic_name,
                                 set_config={"retention.ms": "1000", "preallocate": flipped}))
    after = describe(client, topic_name)
    assert (after["retention.ms"], after["preallocate"], after["segment.ms"]) == \
        ("1000", flipped, default_segment_ms), after
    alter(client, ConfigResource(ResourceType.TOPIC, topic_name, set_config={}))
    after = describe(client, topic_name)
    assert (after["retention.ms"], after["preallocate"]) == \
        (DEFAULT_RETENTION_MS, default_preallocate), after


def test_alter_configs_refusals_and_validate_only(broker, topic_name):
    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 1, config={"retention.ms": "3600000"})
    client = kafkautil.admin(bootstrap)
    unchanged = describe(client, topic_name)

    unknown = refusal(client, ConfigResource(ResourceType.TOPIC, topic_name,
                                             set_config={"no.such.config": "1"}))
    assert unknown.code() == KafkaError.INVALID_CONFIG, unknown
    assert "no.such.config" in unknown.str(), unknown
    bad = refusal(client, ConfigResource(ResourceType.TOPIC, topic_name,
                                         set_config={"retention.ms": "soon"}))
    assert bad.code() == KafkaError.INVALID_CONFIG, bad
    # A refused request changes nothing, even where it also named a valid config.
    bad = refusal(client, ConfigResource(ResourceType.TOPIC, topic_name,
                                         set_config={"segment.ms": "600000",
                                                     "retention.ms": "-5"}))
    assert bad.code() == KafkaError.INVALID_CONFIG, bad
    assert describe(client, topic_name) == unchanged

    missing = refusal(client, ConfigResource(ResourceType.TOPIC, f"{topic_name}-missing",
                                             set_config={"retention.ms": "1000"}))
    assert missing.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, missing

    # validate_only: a valid request succeeds and changes nothing; an invalid one is refused.
    alter(client, ConfigResource(ResourceType.TOPIC, topic_name,
                                 set_config={"segment.ms": "600000"}), validate_only=True)
    assert describe(client, topic_name) == unchanged
    bad = refusal(client, ConfigResource(ResourceType.TOPIC, topic_name,
                                         set_config={"retention.ms": "soon"}),
                  validate_only=True)
    assert bad.code() == KafkaError.INVALID_CONFIG, bad
    assert describe(client, topic_name) == unchanged


def test_alter_configs_broker_resource_refused_as_incremental(broker):
    """Broker settings are static: AlterConfigs refuses a broker resource exactly as
    IncrementalAlterConfigs does."""
    client = kafkautil.admin(broker.bootstrap)
    legacy = refusal(client, ConfigResource(ResourceType.BROKER, "0",
                                            set_config={"num.partitions": "3"}))
    futures = client.incremental_alter_configs(
        [ConfigResource(ResourceType.BROKER, "0", incremental_configs=[
            ConfigEntry("num.partitions", "3", incremental_operation=AlterConfigOpType.SET)])],
        request_timeout=ADMIN_TIMEOUT_S)
    with pytest.raises(KafkaException) as error:
        list(futures.values())[0].result(timeout=ADMIN_TIMEOUT_S)
    incremental = error.value.args[0]
    assert legacy.code() == KafkaError.INVALID_REQUEST, legacy
    assert (legacy.code(), legacy.str()) == (incremental.code(), incremental.str())
    assert "static" in legacy.str(), legacy


def test_kafka_python_alter_configs_non_incremental(broker, topic_name):
    """kafka-python forced onto AlterConfigs (`incremental=False`): set, full and partial
    reset (it sends the overrides to keep, so what is not sent is reset), refusals."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource as KpResource, ConfigResourceType

    bootstrap = broker.bootstrap
    kafkautil.create_topic(bootstrap, topic_name, 1, config={"retention.ms": "3600000"})
    client = kafkautil.admin(bootstrap)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    try:
        def resource(configs=None):
            return KpResource(ConfigResourceType.TOPIC, topic_name, configs=configs)

        # kafka-python adds the overrides not named (it knows AlterConfigs replaces them).
        result = admin.alter_configs([resource({"segment.ms": "600000"})], incremental=False,
                                     raise_on_unknown=False)
        assert result == {"topic": {topic_name: "OK"}}, result
        configs = describe(client, topic_name)
        assert (configs["segment.ms"], configs["retention.ms"]) == ("600000", "3600000"), configs

        # Partial reset: only segment.ms's override goes.
        result = admin.reset_configs([resource({"segment.ms": None})], incremental=False,
                                     raise_on_unknown=False)
        assert result == {"topic": {topic_name: "OK"}}, result
        configs = describe(client, topic_name)
        assert configs["retention.ms"] == "3600000", configs
        assert configs["segment.ms"] != "600000", configs

        result = admin.alter_configs([resource({"no.such.config": "1"})], incremental=False,
                                     raise_on_unknown=False)
        assert "InvalidConfigurationError" in result["topic"][topic_name], result
        result = admin.alter_configs([resource({"retention.ms": "soon"})], incremental=False,
                                     raise_on_unknown=False, validate_only=True)
        assert "InvalidConfigurationError" in result["topic"][topic_name], result
        result = admin.alter_configs([resource({"retention.ms": "1000"})], incremental=False,
                                     raise_on_unknown=False, validate_only=True)
        assert result == {"topic": {topic_name: "OK"}}, result
        assert describe(client, topic_name)["retention.ms"] == "3600000"

        # Full reset: an empty set of configs, every override goes.
        result = admin.reset_configs([resource()], incremental=False, raise_on_unknown=False)
        assert result == {"topic": {topic_name: "OK"}}, result
        assert describe(client, topic_name)["retention.ms"] == DEFAULT_RETENTION_MS

        result = admin.alter_configs(
            [KpResource(ConfigResourceType.BROKER, "0", configs={"num.partitions": "3"})],
            incremental=False, raise_on_unknown=False)
        assert "InvalidRequestError" in result["broker"]["0"], result
    finally:
        admin.close()
