#!/usr/bin/env bash
# The fixed-rate latency run of perf-vs.sh (RATE records/s of 1 KiB, acks=1, linger.ms=0,
# open-loop latency from each record's intended send time), in several broker/client layouts
# taken in turn, round by round, and with STALLS=1 a view of where its tail comes from.
#
#   bench/scripts/latency.sh                      # the layouts below, 2 rounds
#   LAYOUTS="2:: 1:1:0" STALLS=1 bench/scripts/latency.sh
#
# A layout is CORES:BROKER_CPUS:CLIENT_CPUS: `ringlog serve --cores CORES` under
# `taskset -c BROKER_CPUS` (its shards take the allowed CPUs in order), ringlog-perf with
# `--cpus CLIENT_CPUS`; an empty list leaves placement to the kernel (the broker still pins
# shard i to CPU i), and BROKER_CPUS `float` runs the broker with `--pin-cores false`, its
# shards free to move between the CPUs (`1:float:` is the best layout measured on the VMs
# here, where a kernel thread holds a vCPU for milliseconds; docs/perf.md). The default layouts are
# both cores shared by broker and client (`2::`) and one broker core with the client on the
# other (`1:1:0`; on the VMs measured here the disk's interrupt goes to CPU 1, and the kernel
# worker that completes each direct write runs there).
#
# With STALLS=1 each run is also recorded with `perf sched record` (Debian's linux-perf),
# and bench/scripts/sched_stalls.py says which tasks held a CPU while the broker's shards,
# the client's shards or the write-completion workers waited 0.5 ms or more to run: a
# produce answer cannot be faster than the slowest of those waits.
#
# Settings (environment): RATE (50000), RATE_SECONDS (20), ROUNDS (2), PARTITIONS (2),
# LAYOUTS ("2:: 1:1:0"), STALLS (0), DATA_DIR (target/latency: ext4/xfs), OUT_DIR
# (target/latency-results), PORT (47421), BIN (directory with ringlog and ringlog-perf;
# default: a release build of this checkout).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=bench/scripts/lib.sh
. bench/scripts/lib.sh
RATE=${RATE:-50000}
RATE_SECONDS=${RATE_SECONDS:-20}
ROUNDS=${ROUNDS:-2}
PARTITIONS=${PARTITIONS:-2}
LAYOUTS=${LAYOUTS:-"2:: 1:1:0"}
STALLS=${STALLS:-0}
DATA_DIR=${DATA_DIR:-target/latency}
OUT_DIR=${OUT_DIR:-target/latency-results}
PORT=${PORT:-47421}
if [ -z "${BIN:-}" ]; then
    cargo build --release -p ringlog --bin ringlog -p ringlog-bench --bin ringlog-perf >&2
    BIN=${CARGO_TARGET_DIR:-target}/release
fi
if [ "$STALLS" = 1 ] && ! command -v perf >/dev/null; then
    [ "$(id -u)" = 0 ] && apt-get install -y -qq linux-perf >/dev/null
fi
mkdir -p "$OUT_DIR"
trap 'stop_broker; true' EXIT

echo "machine: $(nproc) cores, $(uname -r), commit $(git rev-parse --short HEAD); $RATE records/s x 1 KiB for $RATE_SECONDS s, acks=1, linger.ms=0, $PARTITIONS partitions"
for round in $(seq "$ROUNDS"); do
    for layout in $LAYOUTS; do
        IFS=: read -r cores broker_cpus client_cpus <<<"$layout"
        prefix=()
        case $broker_cpus in
        '') placement="shard i pinned to CPU i" ;;
        float) prefix=(env RINGLOG_PIN_CORES=false) placement="unpinned" ;;
        *) prefix=(taskset -c "$broker_cpus") placement="CPUs $broker_cpus, one pinned shard each" ;;
        esac
        client_pin=()
        [ -n "$client_cpus" ] && client_pin=(--cpus "$client_cpus")
        start_broker "$BIN/ringlog" "$cores" "${prefix[@]}"
        out="$OUT_DIR/latency-$cores-${broker_cpus:-any}-${client_cpus:-any}-$round.json"
        before=$(load)
        /usr/bin/time -f "%U %S" -o "$OUT_DIR/client-time" "$BIN/ringlog-perf" producer \
            --bootstrap-server 127.0.0.1:"$PORT" --topic rate --partitions "$PARTITIONS" \
            --num-records $((RATE * RATE_SECONDS)) --warmup-records "$RATE" --record-size 1024 \
            --throughput "$RATE" --producer-props acks=1 linger.ms=0 --cores 1 \
            "${client_pin[@]}" --output-json "$out" >/dev/null &
        client=$!
        if [ "$STALLS" = 1 ]; then
            sleep 2 # past the warm-up
            perf sched record -o "$OUT_DIR/sched.data" -- sleep $((RATE_SECONDS - 2)) >/dev/null 2>&1
        fi
        wait $client
        broker_s=$(broker_cpu_s)
        stop_broker
        echo "RESULT round $round layout $layout (serve --cores $cores, broker $placement, client CPUs ${client_cpus:-any}):" \
            "$(json "$out" "' '.join(f'{k} {d[\"latency\"][k]}' for k in ('p50', 'p95', 'p99', 'p999', 'max'))") us;" \
            "CPU s broker $(python3 -c "print(round($broker_s, 1))"), client $(awk '{print $1 + $2}' "$OUT_DIR/client-time") (load $before)"
        if [ "$STALLS" = 1 ]; then
            perf script -i "$OUT_DIR/sched.data" -F comm,tid,cpu,time,event,trace 2>/dev/null |
                python3 bench/scripts/sched_stalls.py 0.5
            rm -f "$OUT_DIR/sched.data"
        fi
    done
done
rm -rf "$DATA_DIR"
