#!/usr/bin/env bash
# Two builds of ringlog side by side, interleaved, in one run (a change's before and after on a
# noisy machine): the producer rows of perf-vs.sh for each, plus the CPU each process spent.
#
#   BASE=dir-with-ringlog-and-ringlog-perf NEW=other-dir bench/scripts/perf-ab.sh
#
# e.g. BASE=/tmp/main-bin (copied from a release build of main) NEW=target/release. Each round
# runs, for BASE then NEW: ringlog-perf producer -> ringlog serve --cores 1 and --cores $(nproc)
# (1 KiB records, acks=1, unlimited, BYTES in all, fresh data directory), then the fixed-rate
# latency run (RATE records/s for RATE_SECONDS). Every line carries the load average; the
# throughput lines add the broker's and the client's CPU seconds per GB (user + system, from
# /proc and time(1)), which bound what two cores can reach: 2 / (broker + client) GB/s.
# fio and iperf3 run once at the start, as in perf-vs.sh. Settings (environment): BYTES
# (3 GiB), RATE (50000), RATE_SECONDS (20), ROUNDS (2), DATA_DIR (target/perf-ab: ext4/xfs),
# OUT_DIR (target/perf-ab-results), PORT (47411).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${BASE:?BASE=directory with the baseline ringlog and ringlog-perf}"
: "${NEW:?NEW=directory with the new ringlog and ringlog-perf}"
BYTES=${BYTES:-3221225472}
RATE=${RATE:-50000}
RATE_SECONDS=${RATE_SECONDS:-20}
ROUNDS=${ROUNDS:-2}
DATA_DIR=${DATA_DIR:-target/perf-ab}
OUT_DIR=${OUT_DIR:-target/perf-ab-results}
PORT=${PORT:-47411}
CORES_ALL=$(nproc)
RECORD_SIZE=1024
mkdir -p "$OUT_DIR" "$DATA_DIR"

# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
trap 'stop_broker; true' EXIT

echo "machine: $CORES_ALL cores, $(uname -r), commit $(git rev-parse --short HEAD); BASE=$BASE NEW=$NEW"
echo "== fio O_DIRECT sequential write, 1 MiB blocks, qd 32, 3 GiB (load $(load))"
fio --name=w --rw=write --bs=1M --iodepth=32 --ioengine=io_uring --direct=1 --size=3G \
    --filename="$DATA_DIR/fio.bin" --output-format=json >"$OUT_DIR/fio.json"
rm -f "$DATA_DIR/fio.bin"
echo "fio: $(json "$OUT_DIR/fio.json" "round(d['jobs'][0]['write']['bw_bytes']/1048576, 1)") MB/s"
if command -v iperf3 >/dev/null; then
    echo "== iperf3 over loopback, one stream, 5 s (load $(load))"
    iperf3 -s -1 -p $((PORT + 50)) >/dev/null 2>&1 &
    sleep 0.5
    iperf3 -c 127.0.0.1 -p $((PORT + 50)) -t 5 -J >"$OUT_DIR/iperf3.json"
    wait
    echo "iperf3: $(json "$OUT_DIR/iperf3.json" "round(d['end']['sum_received']['bits_per_second']/8/1048576, 1)") MB/s"
fi

RECORDS=$((BYTES / RECORD_SIZE))
GB=$(python3 -c "print($BYTES / 1e9)")
for round in $(seq "$ROUNDS"); do
    for cores in 1 "$CORES_ALL"; do
        for side in BASE NEW; do
            dir=${!side}
            start_broker "$dir/ringlog" "$cores"
            out="$OUT_DIR/producer-$side-cores$cores-$round.json"
            before=$(load)
            /usr/bin/time -f "%U %S" -o "$OUT_DIR/client-time" "$dir/ringlog-perf" producer \
                --bootstrap-server 127.0.0.1:$PORT --topic tput --partitions $((2 * cores)) \
                --num-records "$RECORDS" --record-size $RECORD_SIZE --throughput -1 \
                --producer-props acks=1 linger.ms=5 batch.size=1048576 \
                max.in.flight.requests.per.connection=5 \
                --cores "$cores" --output-json "$out" >/dev/null
            broker_s=$(broker_cpu_s)
            client_s=$(awk '{print $1 + $2}' "$OUT_DIR/client-time")
            stop_broker
            echo "RESULT round $round $side producer cores=$cores: $(json "$out" "round(d['mb_per_sec'], 1)") MB/s;" \
                "CPU s/GB broker $(ratio "$broker_s" "$GB"), client $(ratio "$client_s" "$GB") (load $before)"
        done
    done
    for side in BASE NEW; do
        dir=${!side}
        start_broker "$dir/ringlog" "$CORES_ALL"
        out="$OUT_DIR/latency-$side-$round.json"
        before=$(load)
        "$dir/ringlog-perf" producer --bootstrap-server 127.0.0.1:$PORT --topic rate \
            --partitions "$CORES_ALL" --num-records $((RATE * RATE_SECONDS)) --warmup-records "$RATE" \
            --record-size $RECORD_SIZE --throughput "$RATE" --producer-props acks=1 linger.ms=0 \
            --cores 1 --output-json "$out" >/dev/null
        broker_s=$(broker_cpu_s)
        stop_broker
        echo "RESULT round $round $side latency at $RATE/s: p50 $(json "$out" "d['latency']['p50']") us," \
            "p99 $(json "$out" "d['latency']['p99']") us, p99.9 $(json "$out" "d['latency']['p999']") us;" \
            "broker CPU $(python3 -c "print(round($broker_s, 1))") s (load $before)"
    done
done
rm -rf "$DATA_DIR"
