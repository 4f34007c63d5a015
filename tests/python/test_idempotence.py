"""The idempotent producer: InitProducerId, deduplication of retried batches (raw requests, also
across a clean restart and a kill -9), sequence and epoch errors, and real clients with
idempotence on, one of them behind a proxy that drops produce responses after the broker stored
the batch."""

from __future__ import annotations

import socket
import struct
import threading

from kafka import KafkaProducer

import kafkautil

NONE = 0
INVALID_REQUEST = 42
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53


def init_producer_id(address, transactional_id=None) -> tuple[int, int, int]:
    body = kafkautil.roundtrip(address, kafkautil.init_producer_id_v0(transactional_id))
    return kafkautil.parse_init_producer_id_v0(body)


def produce(address, topic, values, producer_id, epoch, sequence) -> tuple[int, int]:
    """(error_code, base_offset) of one idempotent batch."""
    batch = kafkautil.record_batch(values, producer_id=producer_id, producer_epoch=epoch,
                                   base_sequence=sequence)
    body = kafkautil.roundtrip(address, kafkautil.produce_v3_7(topic, 0, batch, acks=-1))
    [(_, _, error_code, base_offset)] = kafkautil.parse_produce_v3_7(body)
    return error_code, base_offset


def log_values(bootstrap, topic) -> list[bytes]:
    return [r.value for r in kafkautil.consume_all(bootstrap, topic, 1)[0]]


def test_producer_ids_are_unique_across_restarts_and_transactions_are_refused(broker):
    address = ("127.0.0.1", broker.port)
    first = init_producer_id(address)
    second = init_producer_id(address)
    assert first[0] == NONE and second[0] == NONE
    assert first[2] == 0 and second[2] == 0
    assert first[1] != second[1]
    assert init_producer_id(address, "tx")[0] == TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    assert init_producer_id(address, "")[0] == INVALID_REQUEST
    broker.restart(clean=False)
    after_crash = init_producer_id(address)
    assert after_crash[0] == NONE and after_crash[1] > second[1]
    broker.restart(clean=True)
    after_restart = init_producer_id(address)
    assert after_restart[0] == NONE and after_restart[1] > after_crash[1]


def test_retried_batches_are_stored_once_also_after_restart_and_kill9(broker, topic_name):
    address = ("127.0.0.1", broker.port)
    kafkautil.create_topic(broker.bootstrap, topic_name, 1)
    _, pid, epoch = init_producer_id(address)

    assert produce(address, topic_name, [b"a", b"b", b"c"], pid, epoch, 0) == (NONE, 0)
    # The same batch again: the original offset, not stored twice.
    assert produce(address, topic_name, [b"a", b"b", b"c"], pid, epoch, 0) == (NONE, 0)
    assert produce(address, topic_name, [b"d"], pid, epoch, 3) == (NONE, 3)
    assert produce(address, topic_name, [b"a", b"b", b"c"], pid, epoch, 0) == (NONE, 0)
    # A gap, and a batch overlapping a stored one without being equal to it.
    assert produce(address, topic_name, [b"x"], pid, epoch, 9)[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    assert produce(address, topic_name, [b"x", b"y"], pid, epoch, 2)[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    # Another producer is independent.
    _, other, _ = init_producer_id(address)
    assert produce(address, topic_name, [b"o"], other, 0, 0) == (NONE, 4)
    assert kafkautil.watermarks(broker.bootstrap, topic_name, 1)[0] == (0, 5)

    broker.restart(clean=True)
    assert produce(address, topic_name, [b"d"], pid, epoch, 3) == (NONE, 3)
    assert produce(address, topic_name, [b"e"], pid, epoch, 4) == (NONE, 5)

    broker.restart(clean=False)
    assert produce(address, topic_name, [b"e"], pid, epoch, 4) == (NONE, 5)
    assert produce(address, topic_name, [b"a", b"b", b"c"], pid, epoch, 0) == (NONE, 0)
    assert produce(address, topic_name, [b"o"], other, 0, 0) == (NONE, 4)
    # A new epoch starts again at 0 and fences the old one.
    assert produce(address, topic_name, [b"f"], pid, epoch + 1, 1)[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    assert produce(address, topic_name, [b"f"], pid, epoch + 1, 0) == (NONE, 6)
    assert produce(address, topic_name, [b"g"], pid, epoch, 5)[0] == INVALID_PRODUCER_EPOCH

    broker.restart(clean=False)
    assert produce(address, topic_name, [b"f"], pid, epoch + 1, 0) == (NONE, 6)
    assert produce(address, topic_name, [b"g"], pid, epoch, 5)[0] == INVALID_PRODUCER_EPOCH
    assert log_values(broker.bootstrap, topic_name) == [b"a", b"b", b"c", b"d", b"o", b"e", b"f"]


def test_sequences_wrap_after_int32_max(broker, topic_name):
    address = ("127.0.0.1", broker.port)
    kafkautil.create_topic(broker.bootstrap, topic_name, 1)
    _, pid, epoch = init_producer_id(address)
    top = 2**31 - 1
    # An unknown producer may start anywhere (Kafka since KIP-360).
    assert produce(address, topic_name, [b"1", b"2"], pid, epoch, top - 1) == (NONE, 0)
    assert produce(address, topic_name, [b"3"], pid, epoch, 0) == (NONE, 2)
    assert produce(address, topic_name, [b"1", b"2"], pid, epoch, top - 1) == (NONE, 0)
    assert produce(address, topic_name, [b"4"], pid, epoch, 1) == (NONE, 3)


N_RECORDS = 5000


def test_kafka_python_default_producer_is_idempotent(broker, topic_name):
    kafkautil.create_topic(broker.bootstrap, topic_name, 3)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5,
                             request_timeout_ms=30000, max_block_ms=30000)
    try:
        futures = [producer.send(topic_name, value=f"kp-{i}".encode()) for i in range(N_RECORDS)]
        producer.flush(timeout=60)
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close(timeout=10)
    records = kafkautil.consume_all(broker.bootstrap, topic_name, 3)
    values = sorted(r.value for part in records.values() for r in part)
    assert values == sorted(f"kp-{i}".encode() for i in range(N_RECORDS))


def test_confluent_idempotent_producer(broker, topic_name):
    kafkautil.create_topic(broker.bootstrap, topic_name, 3)
    producer = kafkautil.producer(broker.bootstrap, **{"enable.idempotence": True})
    errors = []
    for i in range(N_RECORDS):
        producer.produce(topic_name, value=f"ck-{i}".encode(),
                         on_delivery=lambda err, _msg: err and errors.append(err))
        producer.poll(0)
    assert producer.flush(60) == 0
    assert errors == []
    records = kafkautil.consume_all(broker.bootstrap, topic_name, 3)
    values = sorted(r.value for part in records.values() for r in part)
    assert values == sorted(f"ck-{i}".encode() for i in range(N_RECORDS))


class DroppingProxy:
    """A TCP proxy in front of the broker that, for the first `drops` Produce requests, lets the
    broker answer and then cuts the client's connection instead of passing the answer on: the
    batch is stored but the producer never hears so, and retries it."""

    def __init__(self, target_port: int, drops: int):
        self.target_port = target_port
        self.drops = drops
        self.dropped = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            produce_ids: set[int] = set()
            threading.Thread(target=self._requests, args=(client, upstream, produce_ids),
                             daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client, produce_ids),
                             daemon=True).start()

    @staticmethod
    def _frame(sock) -> bytes:
        (size,) = struct.unpack(">i", kafkautil.recv_exact(sock, 4))
        return struct.pack(">i", size) + kafkautil.recv_exact(sock, size)

    def _requests(self, client, upstream, produce_ids):
        try:
            while True:
                frame = self._frame(client)
                api_key, _version, correlation_id = struct.unpack_from(">hhi", frame, 4)
                if api_key == 0:
                    produce_ids.add(correlation_id)
                upstream.sendall(frame)
        except OSError:
            pass
        finally:
            self._close(client, upstream)

    def _responses(self, upstream, client, produce_ids):
        try:
            while True:
                frame = self._frame(upstream)
                (correlation_id,) = struct.unpack_from(">i", frame, 4)
                if correlation_id in produce_ids:
                    with self.lock:
                        drop = self.dropped < self.drops
                        self.dropped += drop
                    if drop:
                        return
                client.sendall(frame)
        except OSError:
            pass
        finally:
            self._close(client, upstream)

    @staticmethod
    def _close(*socks):
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self):
        self.listener.close()


def test_dropped_produce_responses_are_retried_and_stored_once(broker_factory, topic_name):
    # The broker logs each retry it answers from its producer state at debug level.
    broker = broker_factory(cores=1, extra_args=["--node-per-shard", "false"], start=False,
                            env={"RUST_LOG": "info,ringlog::broker::produce=debug"})
    proxy = DroppingProxy(broker.port, drops=3)
    try:
        broker.advertised = f"127.0.0.1:{proxy.port}"
        broker.start()
        bootstrap = f"127.0.0.1:{proxy.port}"
        kafkautil.create_topic(broker.bootstrap, topic_name, 1)
        producer = kafkautil.producer(bootstrap, **{"enable.idempotence": True, "linger.ms": 20})
        errors = []
        count = 2000
        for i in range(count):
            producer.produce(topic_name, value=f"px-{i}".encode(),
                             on_delivery=lambda err, _msg: err and errors.append(err))
            producer.poll(0)
        assert producer.flush(90) == 0
        assert errors == []
        assert proxy.dropped == 3
        values = log_values(broker.bootstrap, topic_name)
        assert sorted(values) == sorted(f"px-{i}".encode() for i in range(count))
        assert kafkautil.watermarks(broker.bootstrap, topic_name, 1)[0] == (0, count)
        # The retries did reach the broker and were answered without storing them again.
        assert "a retried batch is already stored" in broker.log_paths[-1].read_text()
    finally:
        proxy.close()


def test_transactional_producers_fail_at_once_with_the_reason(broker):
    """Transactions do not exist yet: a transactional producer must fail at once with a clear,
    non-retriable error, not retry FindCoordinator until its timeout (issue 18, bug 7)."""
    import time

    from confluent_kafka import KafkaException, Producer

    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "tx-ck"})
    started = time.monotonic()
    try:
        producer.init_transactions(30)
        raise AssertionError("init_transactions succeeded without transactions")
    except KafkaException as failure:
        error = failure.args[0]
        waited = time.monotonic() - started
        assert error.code() == TRANSACTIONAL_ID_AUTHORIZATION_FAILED, error
        assert not error.retriable(), error
        assert waited < 5, f"failed only after {waited:.1f} s: {error}"

    from kafka.errors import KafkaError

    started = time.monotonic()
    try:
        python_producer = KafkaProducer(bootstrap_servers=broker.bootstrap,
                                        transactional_id="tx-kp", max_block_ms=30000)
        python_producer.init_transactions()
        raise AssertionError("kafka-python's init_transactions succeeded")
    except KafkaError as error:
        waited = time.monotonic() - started
        assert "TransactionalIdAuthorizationFailed" in type(error).__name__ or \
            "TransactionalIdAuthorizationFailed" in str(error), repr(error)
        assert waited < 5, f"failed only after {waited:.1f} s: {error!r}"
