#!/usr/bin/env bash
# ringlog-perf against `ringlog serve`, measured side by side with what the machine can do, in
# one run (the figures in docs/perf.md):
#
#  1. fio O_DIRECT sequential write on the data directory's disk, and iperf3 over loopback;
#  2. ringlog-perf producer -> ringlog serve --cores 1, then --cores $(nproc): 1 KiB records,
#     acks=1, unlimited rate, BYTES in all (3 GiB), fresh data directory each time: MB/s, and
#     its ratio to fio and to iperf3;
#  3. a fixed RATE (50,000 records/s) of 1 KiB records, acks=1: latency percentiles, against
#     serve --cores $(nproc) (pinned, the default) and serve --cores 1 --pin-cores false (the
#     better layout where the client shares a small VM with the broker; docs/perf.md);
#  4. ringlog-perf and librdkafka (examples/kafka_client_bench.rs) with the same settings
#     against the same broker, interleaved ROUNDS times: records/s ratio;
#  5. one consumer reading a BACKLOG (4 GiB) from the start: MB/s.
#
# Every figure is printed with the load average at the time (`/proc/loadavg`); the JSON of
# every run stays in OUT_DIR. Settings (environment): BYTES (3 GiB), RATE (50000),
# RATE_SECONDS (20), ROUNDS (2), COMPARE_RECORDS (1000000), BACKLOG (4 GiB), DATA_DIR
# (target/perf-vs: must be ext4/xfs, not tmpfs), OUT_DIR (target/perf-vs-results), PORT (47311; `ringlog serve` refuses a port in use).
set -euo pipefail
cd "$(dirname "$0")/../.."
BYTES=${BYTES:-3221225472}
RATE=${RATE:-50000}
RATE_SECONDS=${RATE_SECONDS:-20}
ROUNDS=${ROUNDS:-2}
COMPARE_RECORDS=${COMPARE_RECORDS:-1000000}
BACKLOG=${BACKLOG:-4294967296}
DATA_DIR=${DATA_DIR:-target/perf-vs}
OUT_DIR=${OUT_DIR:-target/perf-vs-results}
PORT=${PORT:-47311}
CORES_ALL=$(nproc)
RECORD_SIZE=1024
TARGET=${CARGO_TARGET_DIR:-target}

for tool in fio iperf3; do
    if ! command -v $tool >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq $tool >/dev/null
    fi
done
cargo build --release -p ringlog --bin ringlog --example kafka_client_bench >&2
cargo build --release -p ringlog-bench --bin ringlog-perf >&2
BROKER=$TARGET/release/ringlog
PERF=$TARGET/release/ringlog-perf
RDKAFKA=$TARGET/release/examples/kafka_client_bench
mkdir -p "$OUT_DIR"

# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
trap 'stop_broker; [ -n "${IPERF_PID:-}" ] && kill $IPERF_PID 2>/dev/null; true' EXIT

# The producer settings every throughput run uses (the librdkafka run gets the same ones).
PROPS=(acks=1 linger.ms=5 batch.size=1048576 max.in.flight.requests.per.connection=5)

echo "machine: $CORES_ALL cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), commit $(git rev-parse --short HEAD)"
echo "data directory: $DATA_DIR on $(df -T "$(dirname "$DATA_DIR")" | awk 'NR==2 {print $2, $1}')"

echo "== fio O_DIRECT sequential write, 1 MiB blocks, qd 32, 3 GiB (load $(load))"
mkdir -p "$DATA_DIR"
fio --name=w --rw=write --bs=1M --iodepth=32 --ioengine=io_uring --direct=1 --size=3G \
    --filename="$DATA_DIR/fio.bin" --output-format=json >"$OUT_DIR/fio.json"
rm -f "$DATA_DIR/fio.bin"
FIO_MBS=$(json "$OUT_DIR/fio.json" "round(d['jobs'][0]['write']['bw_bytes']/1048576, 1)")
echo "fio: $FIO_MBS MB/s"

IPERF_MBS=
if command -v iperf3 >/dev/null; then
    echo "== iperf3 over loopback, one stream, 5 s (load $(load))"
    iperf3 -s -1 -p $((PORT + 50)) >/dev/null 2>&1 &
    IPERF_PID=$!
    sleep 0.5
    iperf3 -c 127.0.0.1 -p $((PORT + 50)) -t 5 -J >"$OUT_DIR/iperf3.json"
    wait $IPERF_PID || true
    IPERF_PID=
    IPERF_MBS=$(json "$OUT_DIR/iperf3.json" "round(d['end']['sum_received']['bits_per_second']/8/1048576, 1)")
    echo "iperf3: $IPERF_MBS MB/s"
fi

RECORDS=$((BYTES / RECORD_SIZE))
for cores in 1 "$CORES_ALL"; do
    start_broker "$BROKER" "$cores"
    out="$OUT_DIR/producer-cores$cores.json"
    echo "== ringlog-perf producer -> ringlog serve --cores $cores: $RECORDS x $RECORD_SIZE B, ${PROPS[*]}, unlimited, $((2 * cores)) partitions, $cores client shards (load $(load))"
    "$PERF" producer --bootstrap-server 127.0.0.1:$PORT --topic tput --partitions $((2 * cores)) \
        --num-records "$RECORDS" --record-size $RECORD_SIZE --throughput -1 \
        --producer-props "${PROPS[@]}" --cores "$cores" --output-json "$out" | tail -1
    MBS=$(json "$out" "round(d['mb_per_sec'], 1)")
    echo "RESULT producer cores=$cores: $MBS MB/s; / fio $(python3 -c "print(round($MBS/$FIO_MBS, 2))")${IPERF_MBS:+; / iperf3 $(python3 -c "print(round($MBS/$IPERF_MBS, 2))")} (load after $(load))"
    stop_broker
done

for layout in "$CORES_ALL true" "1 false"; do
    read -r cores pin <<<"$layout"
    start_broker "$BROKER" "$cores" env RINGLOG_PIN_CORES="$pin"
    out="$OUT_DIR/latency-$cores-$pin.json"
    echo "== fixed rate: $RATE records/s x $RECORD_SIZE B for $RATE_SECONDS s, acks=1, linger.ms=0, $CORES_ALL partitions, serve --cores $cores --pin-cores $pin (load $(load))"
    "$PERF" producer --bootstrap-server 127.0.0.1:$PORT --topic rate --partitions "$CORES_ALL" \
        --num-records $((RATE * RATE_SECONDS)) --warmup-records "$RATE" --record-size $RECORD_SIZE \
        --throughput "$RATE" --producer-props acks=1 linger.ms=0 --cores 1 --output-json "$out" | tail -1
    echo "RESULT latency at $RATE/s, serve --cores $cores --pin-cores $pin: p50 $(json "$out" "d['latency']['p50']") us, p99 $(json "$out" "d['latency']['p99']") us, p99.9 $(json "$out" "d['latency']['p999']") us (load after $(load))"
    stop_broker
done

start_broker "$BROKER" "$CORES_ALL"
echo "== ringlog-perf vs librdkafka: $COMPARE_RECORDS x $RECORD_SIZE B, acks=1, linger 5 ms, batch 1 MB, $CORES_ALL partitions, one client thread/shard, interleaved"
for round in $(seq "$ROUNDS"); do
    out="$OUT_DIR/compare-perf-$round.json"
    "$PERF" producer --bootstrap-server 127.0.0.1:$PORT --topic cmp-perf-$round --partitions "$CORES_ALL" \
        --num-records "$COMPARE_RECORDS" --record-size $RECORD_SIZE --throughput -1 \
        --producer-props acks=1 linger.ms=5 batch.size=1000000 --cores 1 --output-json "$out" >/dev/null
    PERF_RPS=$(json "$out" "round(d['records_per_sec'])")
    "$RDKAFKA" --bootstrap 127.0.0.1:$PORT --topic cmp-rdk-$round --partitions "$CORES_ALL" \
        --records "$COMPARE_RECORDS" --record-size $RECORD_SIZE --acks 1 --linger-ms 5 \
        --batch-size 1000000 >"$OUT_DIR/compare-rdkafka-$round.txt"
    RDK_LINE=$(grep 'records/s' "$OUT_DIR/compare-rdkafka-$round.txt" | head -1)
    RDK_RPS=$(echo "$RDK_LINE" | grep -o '[0-9.]* records/s' | head -1 | cut -d' ' -f1)
    echo "RESULT round $round: ringlog-perf $PERF_RPS records/s, librdkafka $RDK_RPS records/s, ratio $(python3 -c "print(round($PERF_RPS/$RDK_RPS, 2))") (load $(load))"
done
stop_broker

start_broker "$BROKER" "$CORES_ALL"
BACKLOG_RECORDS=$((BACKLOG / RECORD_SIZE))
echo "== consumer: write a $BACKLOG_RECORDS x $RECORD_SIZE B backlog, then read it from the start (load $(load))"
"$PERF" producer --bootstrap-server 127.0.0.1:$PORT --topic backlog --partitions "$CORES_ALL" \
    --num-records "$BACKLOG_RECORDS" --record-size $RECORD_SIZE --throughput -1 \
    --producer-props "${PROPS[@]}" --cores "$CORES_ALL" >/dev/null
for fetch_size in 1048576 8388608; do
    out="$OUT_DIR/consumer-fetch$fetch_size.json"
    "$PERF" consumer --bootstrap-server 127.0.0.1:$PORT --topic backlog --messages "$BACKLOG_RECORDS" \
        --fetch-size "$fetch_size" --cores "$CORES_ALL" --timeout 30000 --output-json "$out"
    echo "RESULT consumer fetch-size $fetch_size: $(json "$out" "round(d['mb_per_sec'], 1)") MB/s over $(json "$out" "d['records']") records (load $(load))"
done
stop_broker
rm -rf "$DATA_DIR"
