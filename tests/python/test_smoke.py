"""The broker starts, answers ApiVersions and Metadata, and stops cleanly on SIGTERM."""

import subprocess

from confluent_kafka.admin import AdminClient

import kafkautil


def test_api_versions_raw(broker):
    assert kafkautil.api_versions_ok(("127.0.0.1", broker.port))


def test_metadata_confluent(broker):
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=15)
    assert list(md.brokers) == [0]
    node = md.brokers[0]
    assert (node.host, node.port) == ("127.0.0.1", broker.port)
    assert md.controller_id == 0
    assert md.cluster_id


def test_kcat_lists_broker(broker):
    out = subprocess.run(["kcat", "-b", broker.bootstrap, "-L", "-m", "15"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"broker 0 at 127.0.0.1:{broker.port}" in out.stdout


def test_sigterm_exits_cleanly(broker):
    assert broker.stop() == 0
