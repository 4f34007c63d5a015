"""The broker starts, answers ApiVersions and Metadata, and stops cleanly on SIGTERM."""

import subprocess

from confluent_kafka.admin import AdminClient

import kafkautil


def test_api_versions_raw(broker):
    assert kafkautil.api_versions_ok(("127.0.0.1", broker.port))


def test_metadata_confluent(broker):
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=15)
    # A node per core (the default with more than one core): core i is node i on PORT+1+i.
    assert sorted(md.brokers) == list(range(broker.cores))
    for node_id, node in md.brokers.items():
        assert (node.host, node.port) == ("127.0.0.1", broker.port + 1 + node_id)
    assert md.controller_id == 0
    assert md.cluster_id


def test_kcat_lists_broker(broker):
    out = subprocess.run(["kcat", "-b", broker.bootstrap, "-L", "-m", "15"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for core in range(broker.cores):
        assert f"broker {core} at 127.0.0.1:{broker.port + 1 + core}" in out.stdout


def test_sigterm_exits_cleanly(broker):
    assert broker.stop() == 0
