#!/usr/bin/env bash
# The fetch path measured with librdkafka (examples/kafka_client_bench.rs): broker CPU seconds
# per GB fetched and fetch MB/s for a consumer served from the tail cache and for one far
# behind (O_DIRECT reads with read-ahead), with each --fetch-send mode, against the main
# branch's binary (MAIN_BIN, optional: the copy path that copies records into the frame);
# disk reads while a consumer follows the tail of a live producer; the cache's behaviour with
# a budget too small for the tail. Every set-up runs in this one invocation, one after the
# other, so compare them within a run (the load average is printed with each figure).
#
#   bench/scripts/fetch-path.sh            # MAIN_BIN=path/to/main/ringlog to include main
#
# Settings (environment): TAIL_RECORDS (40000 x 1 KiB: fits the default 64 MiB cache, read
# TAIL_PASSES=10 times), BACKLOG_RECORDS (400000 x 1 KiB, read BACKLOG_PASSES=3 times), RATE (20000 records/s for the live tail run),
# RATE_RECORDS (200000), SMALL_CACHE_BYTES (4 MiB), DATA_DIR (target/bench-fetch-path, must be
# ext4/xfs), PORT (29192).
set -euo pipefail
cd "$(dirname "$0")/../.."
TAIL_RECORDS=${TAIL_RECORDS:-40000}
BACKLOG_RECORDS=${BACKLOG_RECORDS:-400000}
RATE=${RATE:-20000}
RATE_RECORDS=${RATE_RECORDS:-200000}
SMALL_CACHE_BYTES=${SMALL_CACHE_BYTES:-4194304}
DATA_DIR=${DATA_DIR:-target/bench-fetch-path}
PORT=${PORT:-29192}
TAIL_PASSES=${TAIL_PASSES:-10}
BACKLOG_PASSES=${BACKLOG_PASSES:-3}
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release -p ringlog --bin ringlog --example kafka_client_bench >&2
BROKER=$TARGET/release/ringlog
CLIENT=$TARGET/release/examples/kafka_client_bench
TICKS=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
read_bytes() { awk '/^read_bytes/ {print $2}' "/proc/$1/io"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# Runs the client PASSES times with the rest of the arguments and prints one figure line:
# MB/s (bytes over the client-measured consume time), broker CPU s per GB fetched (utime +
# stime from /proc/PID/stat, 10 ms ticks: hence several passes), bytes the broker read from
# the disk meanwhile (/proc/PID/io read_bytes).
measure() { # label pid passes client-args...
    local label=$1 pid=$2 passes=$3; shift 3
    local cpu0 io0 out bytes=0 secs=0 cpu1 io1
    cpu0=$(cpu_ticks "$pid"); io0=$(read_bytes "$pid")
    for _ in $(seq "$passes"); do
        out=$("$CLIENT" --bootstrap 127.0.0.1:$PORT "$@")
        bytes=$((bytes + $(sed -n 's/^consumed [0-9]* records, \([0-9]*\) B in.*/\1/p' <<<"$out")))
        secs=$(awk -v a="$secs" -v b="$(sed -n 's/^consumed .* B in \([0-9.]*\) s.*/\1/p' <<<"$out")" \
            'BEGIN {print a + b}')
    done
    cpu1=$(cpu_ticks "$pid"); io1=$(read_bytes "$pid")
    awk -v l="$label" -v b="$bytes" -v s="$secs" -v c=$((cpu1 - cpu0)) -v t="$TICKS" \
        -v r=$((io1 - io0)) -v load="$(load)" 'BEGIN {
        printf "%-34s %8.1f MB/s %7.3f CPU s/GB  disk reads %d B  (%.2f GB fetched, load %s)\n",
            l, b / s / 1e6, (c / t) / (b / 1e9), r, b / 1e9, load }'
}

start_broker() { # extra serve args...
    rm -rf "$DATA_DIR"; mkdir -p "$DATA_DIR"
    "$BROKER_BIN" serve --listen 127.0.0.1:$PORT --data-dir "$DATA_DIR/data" --cores 1 "$@" \
        2>"$DATA_DIR/broker.log" &
    PID=$!
    trap 'kill $PID 2>/dev/null || true' EXIT
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
}

stop_broker() {
    kill -TERM "$PID"; wait "$PID" || true
    trap - EXIT
    grep -o 'reads=.*' "$DATA_DIR/broker.log" | sed 's/^/    /' || true
}

produce() { # topic records
    "$CLIENT" --bootstrap 127.0.0.1:$PORT --topic "$1" --records "$2" --record-size 1024 \
        --acks 1 | grep '^produced' | sed 's/^/    /'
}

run_setup() { # label binary extra-serve-args...
    local label=$1; BROKER_BIN=$2; shift 2
    echo "== $label"
    start_broker "$@"
    produce tail "$TAIL_RECORDS"
    measure "$label: tail (cached)" "$PID" "$TAIL_PASSES" --topic tail --consume
    produce backlog "$BACKLOG_RECORDS"
    measure "$label: backlog" "$PID" "$BACKLOG_PASSES" --topic backlog --consume
    stop_broker
}

echo "machine: $(nproc) cores, $(uname -r), load $(load), commit $(git rev-parse --short HEAD)"
echo "records of 1 KiB; tail: $TAIL_RECORDS produced then consumed; backlog: $BACKLOG_RECORDS"
if [ -n "${MAIN_BIN:-}" ]; then
    run_setup "main (copy into frame)" "$MAIN_BIN"
fi
run_setup "copy" "$BROKER" --fetch-send copy
run_setup "zero-copy" "$BROKER" --fetch-send zero-copy
run_setup "auto" "$BROKER" --fetch-send auto

echo "== live tail: a consumer at the end while producing $RATE_RECORDS at $RATE/s (zero-copy)"
BROKER_BIN=$BROKER
start_broker --fetch-send zero-copy
io0=$(read_bytes "$PID")
"$CLIENT" --bootstrap 127.0.0.1:$PORT --topic live --records "$RATE_RECORDS" --record-size 1024 \
    --acks 1 --rate "$RATE" --linger-ms 1 --end-to-end | sed 's/^/    /'
echo "    broker disk reads during the run: $(( $(read_bytes "$PID") - io0 )) B (load $(load))"
stop_broker

echo "== cache budget $SMALL_CACHE_BYTES B, smaller than the tail: hit rate and what happens"
start_broker --fetch-send copy --fetch-cache-bytes "$SMALL_CACHE_BYTES"
produce tail "$TAIL_RECORDS"
measure "small cache: tail" "$PID" "$TAIL_PASSES" --topic tail --consume
stop_broker
rm -rf "$DATA_DIR"
