"""Produce requests pipelined on one connection (the broker queues the next one while the
records of the last are written): answers in request order, records in request order, and a
request of another kind in between sees exactly the records produced before it."""

import socket
import struct

import pytest

import kafkautil

REQUESTS = 60
RECORDS_PER_BATCH = 3
FETCH_AFTER = 25


def read_answer(sock: socket.socket) -> tuple[int, bytes]:
    (size,) = struct.unpack(">i", kafkautil.recv_exact(sock, 4))
    payload = kafkautil.recv_exact(sock, size)
    return struct.unpack(">i", payload[:4])[0], payload[4:]


@pytest.mark.parametrize("cores", [1, 2])
def test_pipelined_produce_keeps_request_order(broker_factory, topic_name, cores):
    """60 produce requests sent without waiting, alternating between two partitions (with two
    cores, over the shared port, one of them is owned by the other core and forwarded), and a
    Fetch after the 25th: every answer comes back in order, each partition's batches get
    consecutive offsets in request order, and the Fetch's high watermark counts exactly the
    records produced to its partition before it."""
    broker = broker_factory(cores=cores)
    kafkautil.create_topic(broker.bootstrap, topic_name, 2)
    requests = []
    for i in range(REQUESTS):
        partition = i % 2
        values = [f"{partition}-{i}-{k}".encode() for k in range(RECORDS_PER_BATCH)]
        requests.append(kafkautil.produce_v3_7(topic_name, partition, kafkautil.record_batch(values),
                                               correlation_id=1000 + i))
    before_fetch = sum(1 for i in range(FETCH_AFTER) if i % 2 == 0) * RECORDS_PER_BATCH
    fetch = kafkautil.fetch_v4(topic_name, 0, 0, 1 << 20, correlation_id=7)
    stream = b"".join(requests[:FETCH_AFTER]) + fetch + b"".join(requests[FETCH_AFTER:])
    with socket.create_connection(("127.0.0.1", broker.port), timeout=20) as sock:
        sock.settimeout(20)
        sock.sendall(stream)
        answers = [read_answer(sock) for _ in range(REQUESTS + 1)]
    expected_ids = [1000 + i for i in range(FETCH_AFTER)] + [7] + [1000 + i for i in range(FETCH_AFTER, REQUESTS)]
    assert [correlation_id for correlation_id, _ in answers] == expected_ids
    assert kafkautil.fetch_v4_high_watermark(answers[FETCH_AFTER][1]) == (0, before_fetch)
    next_offset = {0: 0, 1: 0}
    for correlation_id, body in answers[:FETCH_AFTER] + answers[FETCH_AFTER + 1:]:
        [(name, partition, error_code, base_offset)] = kafkautil.parse_produce_v3_7(body)
        assert (name, error_code) == (topic_name, 0)
        assert partition == (correlation_id - 1000) % 2
        assert base_offset == next_offset[partition], (correlation_id, partition)
        next_offset[partition] += RECORDS_PER_BATCH
    log = kafkautil.consume_all(broker.bootstrap, topic_name, 2)
    for partition in (0, 1):
        expected = [f"{partition}-{i}-{k}".encode()
                    for i in range(partition, REQUESTS, 2) for k in range(RECORDS_PER_BATCH)]
        assert [r.value for r in log[partition]] == expected
    assert broker.alive()
