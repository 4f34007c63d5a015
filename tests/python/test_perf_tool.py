"""ringlog-perf against the broker, checked with confluent-kafka: what ringlog-perf produces is
read back intact (values, keys, count, per-partition order), what confluent-kafka produced is
what ringlog-perf consumes, and its --output-json follows the contract ringlog-bench reads.

The binary is $RINGLOG_PERF_BIN, by default ringlog-perf beside $RINGLOG_BIN.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ringlog_bin
from confluent_kafka import TopicPartition

from kafkautil import admin, consume_all, consumer, crc32c, create_topic, producer

PERF_TIMEOUT_S = 120
STAMP_BYTES = 16


def perf_bin() -> Path:
    return Path(os.environ.get("RINGLOG_PERF_BIN", ringlog_bin().parent / "ringlog-perf"))


def run_perf(*args: str, timeout: float = PERF_TIMEOUT_S) -> subprocess.CompletedProcess:
    result = subprocess.run([str(perf_bin()), *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"ringlog-perf {args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def murmur2(data: bytes) -> int:
    """Kafka's murmur2, as its default partitioner uses it (unsigned 32-bit result)."""
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    whole = len(data) // 4 * 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = data[whole:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def filler(record_size: int) -> bytes:
    return bytes(ord("A") + i % 26 for i in range(STAMP_BYTES, record_size))


def check_contract(doc: dict, mode: str, latency_from: str | None) -> None:
    """The fields ringlog-bench relies on, with their types."""
    assert doc["tool"] == "ringlog-perf" and doc["mode"] == mode
    assert isinstance(doc["version"], str) and isinstance(doc["settings"], dict)
    assert isinstance(doc["started_at_unix_ms"], int) and doc["started_at_unix_ms"] > 1_600_000_000_000
    assert isinstance(doc["elapsed_s"], float) and doc["elapsed_s"] > 0
    for name in ("records", "bytes", "errors"):
        assert isinstance(doc[name], int), name
    for name in ("records_per_sec", "mb_per_sec"):
        assert isinstance(doc[name], float), name
    assert abs(doc["mb_per_sec"] - doc["bytes"] / 1048576 / doc["elapsed_s"]) < 1e-6 * max(1, doc["mb_per_sec"])
    assert isinstance(doc["timeline"], list)
    for point in doc["timeline"]:
        assert set(point) >= {"t_s", "records", "bytes", "p50_us", "p99_us", "max_us"}
        assert isinstance(point["t_s"], float) and isinstance(point["records"], int)
    if latency_from is None:
        assert doc["latency"] is None
        return
    latency = doc["latency"]
    assert latency["measured_from"] == latency_from and latency["unit"] == "us"
    assert isinstance(latency["mean"], float)
    for name in ("count", "p50", "p95", "p99", "p999", "p9999", "max"):
        assert isinstance(latency[name], int), name
    assert latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["p999"] <= latency["p9999"] <= latency["max"]
    points = latency["distribution"]
    assert 2 <= len(points) <= 301
    assert all(isinstance(p, float) and isinstance(v, int) for p, v in points)
    assert [v for _, v in points] == sorted(v for _, v in points)


@pytest.mark.timeout(240)
def test_unkeyed_records_read_back_intact_in_order(broker, topic_name, tmp_path):
    partitions, records, size = 4, 20_000, 200
    out = tmp_path / "producer.json"
    hist = tmp_path / "latency.hlog"
    result = run_perf(
        "producer", "--bootstrap-server", broker.bootstrap, "--topic", topic_name,
        "--partitions", str(partitions), "--num-records", str(records), "--record-size", str(size),
        "--producer-props", "acks=1", "linger.ms=1", "batch.size=8192", "unknown.prop=1",
        "--cores", "2", "--connections", "2", "--output-json", str(out), "--histogram-out", str(hist),
    )
    assert "unknown.prop" in result.stderr, "unknown properties are warned about"
    final = result.stdout.strip().splitlines()[-1]
    assert final.startswith(f"{records} records sent, ") and "ms 99.99th." in final, final

    got = consume_all(broker.bootstrap, topic_name, partitions)
    assert sum(len(v) for v in got.values()) == records
    tail = filler(size)
    for partition, recs in got.items():
        assert len(recs) in (records // partitions, records // partitions + 1)
        for sequence, rec in enumerate(recs):
            assert rec.key is None
            assert len(rec.value) == size
            assert struct.unpack(">Q", rec.value[:8])[0] == sequence, (partition, rec.offset)
            assert rec.value[STAMP_BYTES:] == tail

    doc = json.loads(out.read_text())
    check_contract(doc, "producer", "send-time")
    assert doc["records"] == records and doc["bytes"] == records * size and doc["errors"] == 0
    assert doc["latency"]["count"] == records
    assert doc["settings"]["producer_props"]["acks"] == "1"
    assert hist.read_text().startswith("#")


@pytest.mark.timeout(240)
def test_keyed_idempotent_records_land_where_kafka_would_put_them(broker, topic_name, tmp_path):
    partitions, records, keys = 3, 6_000, 40
    out = tmp_path / "producer.json"
    run_perf(
        "producer", "--bootstrap-server", broker.bootstrap, "--topic", topic_name,
        "--partitions", str(partitions), "--num-records", str(records), "--record-size", "64",
        "--key-size", "6", "--keys", str(keys), "--throughput", "6000", "--warmup-records", "500",
        "--producer-props", "acks=all", "enable.idempotence=true", "linger.ms=2",
        "compression.type=lz4", "--cores", "2", "--output-json", str(out),
    )
    got = consume_all(broker.bootstrap, topic_name, partitions)
    assert sum(len(v) for v in got.values()) == records
    seen_keys = set()
    for partition, recs in got.items():
        sequences = [struct.unpack(">Q", rec.value[:8])[0] for rec in recs]
        assert sequences == list(range(len(recs))), f"partition {partition} out of order"
        for rec in recs:
            assert len(rec.key) == 6 and rec.key.isdigit()
            assert (murmur2(rec.key) & 0x7FFFFFFF) % partitions == partition, rec.key
            seen_keys.add(rec.key)
    assert len(seen_keys) == keys
    doc = json.loads(out.read_text())
    check_contract(doc, "producer", "intended-send-time")
    # The warm-up is sent but neither counted nor timed.
    assert doc["records"] == records - 500 and doc["latency"]["count"] == records - 500


@pytest.mark.timeout(120)
def test_payload_file_values_are_sent_in_turn(broker, topic_name, tmp_path):
    payloads = tmp_path / "payloads.txt"
    payloads.write_text("alpha|beta|gamma")
    run_perf(
        "producer", "--producer-props", f"bootstrap.servers={broker.bootstrap}", "acks=1",
        "--topic", topic_name, "--partitions", "1", "--num-records", "7",
        "--payload-file", str(payloads), "--payload-delimiter", "|",
    )
    got = consume_all(broker.bootstrap, topic_name, 1)
    assert [r.value for r in got[0]] == [b"alpha", b"beta", b"gamma", b"alpha", b"beta", b"gamma", b"alpha"]


def test_bad_arguments_fail_cleanly(broker, topic_name):
    result = subprocess.run(
        [str(perf_bin()), "producer", "--bootstrap-server", broker.bootstrap, "--topic", topic_name,
         "--num-records", "1", "--record-size", "1", "--producer-props", "acks=2"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "acks=2" in result.stderr


def record_checksum(key: bytes | None, value: bytes | None) -> int:
    """ringlog-perf consumer --checksum's per-record term."""
    key_length = -1 if key is None else len(key)
    return crc32c(struct.pack(">i", key_length) + (key or b"") + (value or b""))


@pytest.mark.timeout(240)
def test_consumer_reads_exactly_what_confluent_produced(broker, topic_name, tmp_path):
    partitions, count = 3, 6_000
    create_topic(broker.bootstrap, topic_name, partitions)
    p = producer(broker.bootstrap, **{"compression.type": "lz4"})
    expected_sum, expected_bytes = 0, 0
    for i in range(count):
        key = None if i % 3 == 0 else f"key-{i % 97}".encode()
        value = os.urandom(20 + i % 200)
        p.produce(topic_name, value=value, key=key, partition=i % partitions)
        expected_sum += record_checksum(key, value)
        expected_bytes += len(value) + (len(key) if key else 0)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0

    out = tmp_path / "consumer.json"
    result = run_perf("consumer", "--bootstrap-server", broker.bootstrap, "--topic", topic_name,
                      "--messages", str(count), "--checksum", "--cores", "2",
                      "--timeout", "20000", "--output-json", str(out))
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("start.time, end.time, data.consumed.in.MB, MB.sec")
    assert f"checksum: {expected_sum % 2**64}" in lines
    doc = json.loads(out.read_text())
    check_contract(doc, "consumer", None)
    assert doc["records"] == count and doc["bytes"] == expected_bytes
    assert doc["checksum"] == expected_sum % 2**64
    for name in ("rebalance_time_ms", "fetch_time_ms"):
        assert isinstance(doc[name], int)
    for name in ("fetch_mb_per_sec", "fetch_records_per_sec"):
        assert isinstance(doc[name], float)


@pytest.mark.timeout(240)
def test_consumer_group_commits_where_it_stopped(broker, topic_name, tmp_path):
    partitions, count = 4, 4_000
    create_topic(broker.bootstrap, topic_name, partitions)
    run_perf("producer", "--bootstrap-server", broker.bootstrap, "--topic", topic_name,
             "--num-records", str(count), "--record-size", "50", "--producer-props", "acks=1")
    group = f"{topic_name}-group"
    out = tmp_path / "consumer.json"
    run_perf("consumer", "--bootstrap-server", broker.bootstrap, "--topic", topic_name,
             "--messages", str(count), "--group", group, "--timeout", "20000",
             "--output-json", str(out))
    assert json.loads(out.read_text())["records"] == count
    assert committed_offsets(broker.bootstrap, group, topic_name, partitions) == \
        [count // partitions] * partitions
    # A second member of the same group starts at the committed offsets: nothing left.
    result = run_perf("consumer", "--bootstrap-server", broker.bootstrap, "--topic", topic_name,
                      "--messages", "1", "--group", group, "--timeout", "1500",
                      "--show-detailed-stats", "--output-json", str(out))
    assert "WARNING: Exiting before consuming the expected number of messages" in result.stdout
    assert result.stdout.startswith("time, threadId, data.consumed.in.MB")
    doc = json.loads(out.read_text())
    assert doc["records"] == 0 and doc["timed_out"] is True


@pytest.mark.timeout(180)
def test_end_to_end_times_every_record_it_produced(broker, topic_name, tmp_path):
    out = tmp_path / "e2e.json"
    records, warmup = 3_000, 300
    result = run_perf("end-to-end", "--bootstrap-server", broker.bootstrap, "--topic", topic_name,
                      "--partitions", "2", "--num-records", str(records), "--record-size", "100",
                      "--throughput", "3000", "--warmup-records", str(warmup),
                      "--producer-props", "acks=1", "linger.ms=0", "--output-json", str(out))
    assert "produce-to-consume" in result.stdout
    doc = json.loads(out.read_text())
    check_contract(doc, "end-to-end", "produce-to-consume")
    assert doc["produced_records"] == records
    assert doc["records"] == records - warmup and doc["latency"]["count"] == records - warmup
    assert doc["latency"]["p50"] > 0 and doc["timed_out"] is False
    # A rate is what end-to-end latency is measured against.
    bad = subprocess.run([str(perf_bin()), "end-to-end", "--bootstrap-server", broker.bootstrap,
                          "--topic", topic_name, "--num-records", "10", "--record-size", "100"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "--throughput" in bad.stderr


def spawn_perf(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(perf_bin()), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = PERF_TIMEOUT_S) -> str:
    """Waits for a spawned ringlog-perf; its stdout + stderr. Kills it on timeout."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"ringlog-perf {process.args} did not finish:\n{out}\n{err}")
    assert process.returncode == 0, f"ringlog-perf {process.args} failed:\n{out}\n{err}"
    return out + err


@pytest.mark.timeout(240)
def test_two_group_members_split_the_partitions_and_read_each_record_once(
        broker, topic_name, tmp_path):
    """A second member joining (and later leaving) makes the first give up half its partitions:
    between them every record is read exactly once, each partition's reads contiguous."""
    partitions, count, rate = 4, 24_000, 2_000
    create_topic(broker.bootstrap, topic_name, partitions)
    group = f"{topic_name}-group"
    produce = spawn_perf("producer", "--bootstrap-server", broker.bootstrap, "--topic", topic_name,
                         "--num-records", str(count), "--record-size", "100",
                         "--throughput", str(rate), "--producer-props", "acks=1", "linger.ms=5")
    outputs = [tmp_path / "a.json", tmp_path / "b.json"]
    consumers = []
    for out in outputs:
        consumers.append(spawn_perf(
            "consumer", "--bootstrap-server", broker.bootstrap, "--topic", topic_name,
            "--messages", str(10 * count), "--group", group, "--timeout", "5000",
            "--show-detailed-stats", "--reporting-interval", "1000", "--output-json", str(out)))
        # The second joins once the first reads (after the broker's 3-s initial rebalance
        # delay of a new group): the group must rebalance under it.
        time.sleep(4.5)
    finish(produce)
    logs = [finish(c) for c in consumers]
    docs = [json.loads(out.read_text()) for out in outputs]

    assert sum(doc["records"] for doc in docs) == count, logs
    for doc in docs:
        check_contract(doc, "consumer", None)
        assert doc["records"] > 0, "both members must have read after the rebalance"
    # The first member read under at least two assignments (alone, then beside the second).
    assert len(docs[0]["assignments"]) >= 2, docs[0]["assignments"]
    assert "rebalancing" in logs[0]
    # Each partition: the members' reads, in order of offset, follow on from each other, cover
    # 0 .. end and never overlap (the revoked positions were committed before the rejoin).
    ranges: dict[int, list[tuple[int, int]]] = {p: [] for p in range(partitions)}
    for doc in docs:
        for assignment in doc["assignments"]:
            for part in assignment["partitions"]:
                if part["to_offset"] > part["from_offset"]:
                    ranges[part["partition"]].append((part["from_offset"], part["to_offset"]))
    for partition, reads in ranges.items():
        reads.sort()
        assert reads and reads[0][0] == 0, (partition, reads)
        for (_, end), (start, _) in zip(reads, reads[1:]):
            assert start == end, f"partition {partition} read twice or with a gap: {reads}"
        assert reads[-1][1] == count // partitions, (partition, reads)
    # While both were members, each owned two partitions.
    shared = [a for a in docs[1]["assignments"] if len(a["partitions"]) == 2]
    assert shared, docs[1]["assignments"]
    # Rebalance time shows in the detailed stats (column 7) and in the JSON.
    detailed = [line.split(", ") for line in logs[1].splitlines() if line.count(", ") == 9
                and not line.startswith("time")]
    assert any(int(fields[6]) > 0 for fields in detailed), logs[1]
    assert docs[1]["rebalance_time_ms"] > 0


@pytest.mark.timeout(240)
@pytest.mark.parametrize("idempotent", [True, False])
def test_producer_rides_out_a_broker_restart(broker, topic_name, tmp_path, idempotent):
    """SIGTERM and restart the broker (same data and ports) halfway through a rate-limited run:
    the producer looks the leaders up again, reconnects and finishes; every acknowledged record
    is in the log (with idempotence, exactly once, in order)."""
    partitions, count, rate, size = 4, 40_000, 5_000, 100
    create_topic(broker.bootstrap, topic_name, partitions)
    out = tmp_path / "producer.json"
    props = ["acks=all", "enable.idempotence=true"] if idempotent else \
        ["acks=1", "enable.idempotence=false"]
    produce = spawn_perf("producer", "--bootstrap-server", broker.bootstrap, "--topic", topic_name,
                         "--num-records", str(count), "--record-size", str(size),
                         "--throughput", str(rate), "--producer-props", "linger.ms=5", *props,
                         "--output-json", str(out))
    time.sleep(3)
    assert produce.poll() is None, "the producer finished before the restart"
    assert broker.restart() == 0, "the broker did not stop cleanly"
    log = finish(produce)
    assert "looking up the leader again" in log, log
    doc = json.loads(out.read_text())
    acknowledged = doc["records"]

    got = consume_all(broker.bootstrap, topic_name, partitions)
    stored = sum(len(v) for v in got.values())
    assert stored >= acknowledged, (stored, acknowledged, log)
    for partition, recs in got.items():
        sequences = [struct.unpack(">Q", rec.value[:8])[0] for rec in recs]
        # Nothing acknowledged is missing: every sequence up to the partition's last is there.
        assert set(sequences) == set(range(max(sequences) + 1)), partition
        if idempotent:
            assert sequences == list(range(len(sequences))), f"partition {partition}: duplicates"
    if idempotent:
        assert acknowledged == count and stored == count and doc["errors"] == 0, (doc, log)


@pytest.mark.timeout(120)
def test_a_missing_topic_is_an_error_not_auto_created(broker, topic_name):
    for mode in (["producer", "--num-records", "10", "--record-size", "10"],
                 ["consumer", "--messages", "10", "--timeout", "2000"]):
        result = subprocess.run([str(perf_bin()), *mode[:1], "--bootstrap-server", broker.bootstrap,
                                 "--topic", topic_name, *mode[1:]],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0, result.stdout
        assert "does not exist" in result.stderr, result.stderr
    metadata = admin(broker.bootstrap).list_topics(timeout=10)
    assert topic_name not in metadata.topics


def produce_numbered(bootstrap: str, topic: str, partitions: int, first: int, count: int) -> None:
    """Records `first` .. `first + count - 1`, record i to partition i mod `partitions`."""
    p = producer(bootstrap)
    for i in range(first, first + count):
        p.produce(topic, value=f"record-{i}".encode(), partition=i % partitions)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


@pytest.mark.timeout(240)
@pytest.mark.parametrize("clean", [True, False], ids=["sigterm", "kill9"])
def test_group_consumer_rides_out_a_broker_restart(broker, topic_name, tmp_path, clean):
    """The broker (the group's coordinator and every partition's leader) restarts under a
    `--group` consumer that has read the first half of the records: the member finds the
    coordinator again, joins afresh (the restarted broker has forgotten it), commits what it
    had read and goes on from there; the second half, produced after the restart, is read too.
    Every record is read at least once, and the group's committed offsets end at the end."""
    partitions, half = 3, 3_000
    create_topic(broker.bootstrap, topic_name, partitions)
    produce_numbered(broker.bootstrap, topic_name, partitions, 0, half)
    group = f"{topic_name}-group"
    out = tmp_path / "consumer.json"
    consume = spawn_perf("consumer", "--bootstrap-server", broker.bootstrap, "--topic", topic_name,
                         "--messages", str(2 * half), "--group", group, "--timeout", "60000",
                         "--checksum", "--output-json", str(out))
    # The first join waits out the broker's 3-s initial rebalance delay; then the first half
    # is read in well under a second.
    time.sleep(6)
    assert consume.poll() is None, "the consumer finished without the second half"
    code = broker.restart(clean=clean)
    if clean:
        assert code == 0, "the broker did not stop cleanly"
    # The readers reconnect by themselves; the member learns of the restart at its next
    # heartbeat (every 3 s). Holding the second half back until then makes it rejoin mid-run
    # (instead of only at its final commit).
    time.sleep(4)
    produce_numbered(broker.bootstrap, topic_name, partitions, half, half)
    log = finish(consume)
    assert "lost the coordinator" in log, log

    doc = json.loads(out.read_text())
    check_contract(doc, "consumer", None)
    assert doc["records"] >= 2 * half and doc["timed_out"] is False, (doc, log)
    # Before the restart the member read (part of) the first half, after it the rest.
    assert len(doc["assignments"]) >= 2, doc["assignments"]
    first = doc["assignments"][0]["partitions"]
    assert sum(p["to_offset"] - p["from_offset"] for p in first) > 0, first
    end = 2 * half // partitions
    for partition in range(partitions):
        read = set()
        for assignment in doc["assignments"]:
            for part in assignment["partitions"]:
                if part["partition"] == partition:
                    read.update(range(part["from_offset"], part["to_offset"]))
        missing = sorted(set(range(end)) - read)
        assert not missing, f"partition {partition}: offsets never read: {missing[:10]}..."
    assert committed_offsets(broker.bootstrap, group, topic_name, partitions) == [end] * partitions


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    c = consumer(bootstrap, **{"group.id": group})
    try:
        committed = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return [tp.offset for tp in committed]
    finally:
        c.close()


@pytest.mark.timeout(240)
def test_consumer_config_file_is_read_and_flags_override_it(broker, topic_name, tmp_path):
    """--consumer.config, as Kafka's tool reads it: the file alone names the broker and the
    group; a flag given beside it wins; a key ringlog-perf does not use is warned about once."""
    partitions, count = 2, 1_000
    create_topic(broker.bootstrap, topic_name, partitions)
    produce_numbered(broker.bootstrap, topic_name, partitions, 0, count)
    file_group, flag_group = f"{topic_name}-file", f"{topic_name}-flag"
    config = tmp_path / "consumer.properties"
    config.write_text(f"# written like a Java client's file\n"
                      f"bootstrap.servers = {broker.bootstrap}\n"
                      f"group.id={file_group}\n"
                      f"! comments either way\n"
                      f"fetch.max.wait.ms: 100\n"
                      f"enable.auto.commit=false\n"
                      f"key.deserializer=org.apache.kafka.common.serialization.ByteArrayDeserializer\n")
    out = tmp_path / "consumer.json"
    result = run_perf("consumer", "--consumer.config", str(config), "--topic", topic_name,
                      "--messages", str(count), "--timeout", "20000", "--output-json", str(out))
    assert result.stderr.count("enable.auto.commit") == 1, result.stderr
    assert "deserializer" not in result.stderr, result.stderr
    doc = json.loads(out.read_text())
    assert doc["records"] == count
    assert doc["settings"]["group"] == file_group and doc["settings"]["fetch_max_wait_ms"] == 100
    assert committed_offsets(broker.bootstrap, file_group, topic_name, partitions) == \
        [count // partitions] * partitions

    # The --group flag wins over group.id: a group with no commits reads everything again.
    run_perf("consumer", "--consumer.config", str(config), "--group", flag_group,
             "--topic", topic_name, "--messages", str(count), "--timeout", "20000",
             "--output-json", str(out))
    doc = json.loads(out.read_text())
    assert doc["records"] == count and doc["settings"]["group"] == flag_group
    assert committed_offsets(broker.bootstrap, flag_group, topic_name, partitions) == \
        [count // partitions] * partitions


@pytest.mark.timeout(240)
def test_group_consumer_commits_after_a_restart_it_meets_at_its_end(broker, topic_name, tmp_path):
    """With a heartbeat interval longer than the run (set through --consumer.config), the member
    meets the broker's restart only at its final commit: it finds the coordinator again, which
    has forgotten it, commits as no member (the group is empty) and ends successfully."""
    partitions, half = 2, 1_000
    create_topic(broker.bootstrap, topic_name, partitions)
    produce_numbered(broker.bootstrap, topic_name, partitions, 0, half)
    group = f"{topic_name}-group"
    config = tmp_path / "consumer.properties"
    config.write_text("heartbeat.interval.ms=60000\nsession.timeout.ms=90000\n")
    out = tmp_path / "consumer.json"
    consume = spawn_perf("consumer", "--consumer.config", str(config),
                         "--bootstrap-server", broker.bootstrap, "--topic", topic_name,
                         "--messages", str(2 * half), "--group", group, "--timeout", "60000",
                         "--output-json", str(out))
    time.sleep(6)
    assert consume.poll() is None, "the consumer finished without the second half"
    assert broker.restart() == 0, "the broker did not stop cleanly"
    produce_numbered(broker.bootstrap, topic_name, partitions, half, half)
    log = finish(consume)
    assert "before the final commit" in log, log
    doc = json.loads(out.read_text())
    assert doc["records"] == 2 * half and len(doc["assignments"]) == 1, (doc, log)
    assert committed_offsets(broker.bootstrap, group, topic_name, partitions) == \
        [2 * half // partitions] * partitions
