#!/usr/bin/env bash
# The broker measured with a real client (librdkafka, through examples/kafka_client_bench.rs):
# produce throughput, consume throughput, produce latency and produce-to-consume latency at a
# fixed rate, against
# `ringlog serve` with 1 core, with all cores as one node (cross-core forwarding) and with all
# cores as a node per core. The three set-ups run interleaved, REPEATS times, so a noisy
# machine affects them alike; compare them within a round.
#
# Settings (environment): REPEATS (2), RECORDS (1000000), RECORD_SIZE (1024), PARTITIONS (6),
# RATE (20000 records/s for the latency run), RATE_RECORDS (200000), DATA_DIR (target/bench-broker).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPEATS=${REPEATS:-2}
RECORDS=${RECORDS:-1000000}
RECORD_SIZE=${RECORD_SIZE:-1024}
PARTITIONS=${PARTITIONS:-6}
RATE=${RATE:-20000}
RATE_RECORDS=${RATE_RECORDS:-200000}
DATA_DIR=${DATA_DIR:-target/bench-broker}
PORT=${PORT:-29092}
CORES_ALL=$(nproc)
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release -p ringlog --bin ringlog --example kafka_client_bench >&2
BROKER=$TARGET/release/ringlog
CLIENT=$TARGET/release/examples/kafka_client_bench

run_setup() { # name cores node_per_shard
    local name=$1 cores=$2 nps=$3
    rm -rf "$DATA_DIR"; mkdir -p "$DATA_DIR"
    "$BROKER" serve --listen 127.0.0.1:$PORT --data-dir "$DATA_DIR" --cores "$cores" \
        --node-per-shard "$nps" 2>"$DATA_DIR/broker.log" &
    local pid=$!
    trap 'kill $pid 2>/dev/null || true' EXIT
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
    echo "== $name: produce $RECORDS x $RECORD_SIZE B, acks=1, unlimited, $PARTITIONS partitions"
    "$CLIENT" --bootstrap 127.0.0.1:$PORT --topic tput --partitions "$PARTITIONS" \
        --records "$RECORDS" --record-size "$RECORD_SIZE" --acks 1
    echo "== $name: consume the topic from the beginning"
    "$CLIENT" --bootstrap 127.0.0.1:$PORT --topic tput --consume
    echo "== $name: produce at $RATE records/s ($RATE_RECORDS x $RECORD_SIZE B), acks=1, linger 1 ms"
    "$CLIENT" --bootstrap 127.0.0.1:$PORT --topic rate --partitions "$PARTITIONS" \
        --records "$RATE_RECORDS" --record-size "$RECORD_SIZE" --acks 1 --rate "$RATE" --linger-ms 1
    echo "== $name: produce-to-consume at $RATE records/s ($RATE_RECORDS x $RECORD_SIZE B), acks=1, linger 1 ms"
    "$CLIENT" --bootstrap 127.0.0.1:$PORT --topic e2e --partitions "$PARTITIONS" \
        --records "$RATE_RECORDS" --record-size "$RECORD_SIZE" --acks 1 --rate "$RATE" --linger-ms 1 \
        --end-to-end
    kill -TERM $pid; wait $pid || true
    trap - EXIT
}

echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
for round in $(seq "$REPEATS"); do
    echo "##### round $round"
    run_setup "1 core" 1 false
    run_setup "$CORES_ALL cores, one node" "$CORES_ALL" false
    run_setup "$CORES_ALL cores, node per core" "$CORES_ALL" true
done
rm -rf "$DATA_DIR"
