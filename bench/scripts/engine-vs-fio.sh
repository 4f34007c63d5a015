#!/usr/bin/env bash
# engine-vs-fio.sh: ringlog's storage engine (`ringlog-bench append`, engine only, no network)
# side by side with fio on the same disk, so engine figures read as a fraction of what the
# device gives to a plain O_DIRECT writer.
#
#   1. sequential writes, REPEATS times interleaved:
#        fio bs=1M iodepth=4  vs  ringlog 1 MiB batches;  fio bs=16k iodepth=64  vs  ringlog
#        16 KiB batches (64 appenders, the same number of requests outstanding as fio's 64)
#   2. ringlog 16 KiB batches with SWEEP appender counts, and 1 MiB batches with SWEEP_1M
#   3. group commit: ringlog --fsync group, 4 KiB batches, 64 appenders, 512 MiB  vs
#        fio 4k writes with an fdatasync after each (iodepth 1, sync engine)
#   4. recovery: ringlog 4 GiB append --no-close, then `recover` (unclean), `recover` (clean)
#   5. fio with the engine's file pattern: --fallocate=keep (preallocated with KEEP_SIZE, so
#        every write extends i_size, as the engine's segments do), to compare with section 1
#
# Needs fio and jq; downloads nothing. Build first: cargo build --release -p ringlog-bench.
# Every data file is deleted after its run; results (JSON per run, summary.txt, machine.txt)
# go to RESULTS, outside the repository: they are not to be committed.
#
# Settings (environment): BIN, DATA_DIR, FIO_FILE, SIZE_GIB, REPEATS, SWEEP, SWEEP_1M,
# GROUP_MIB, SYNC_RUNTIME (cap on the fio fdatasync run, seconds), MIN_FREE_GIB, RESULTS.

set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/../.." && pwd)
BIN=${BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/ringlog-bench}
DATA_DIR=${DATA_DIR:-/work/bench-data}
FIO_FILE=${FIO_FILE:-/work/bench-fio.dat}
SIZE_GIB=${SIZE_GIB:-4}
REPEATS=${REPEATS:-2}
SWEEP=${SWEEP:-16 64 256}
SWEEP_1M=${SWEEP_1M:-4}
GROUP_MIB=${GROUP_MIB:-512}
SYNC_RUNTIME=${SYNC_RUNTIME:-120}
MIN_FREE_GIB=${MIN_FREE_GIB:-20}
RESULTS=${RESULTS:-/work/bench-results/$(date +%Y%m%d-%H%M%S)}

for tool in fio jq; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y $tool)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p ringlog-bench (or set BIN)" >&2; exit 1; }
mkdir -p "$RESULTS" "$DATA_DIR"
summary=$RESULTS/summary.txt

# Removes whatever a run left behind, also when the script is interrupted.
cleanup() { rm -f "$FIO_FILE"; rm -rf "$DATA_DIR/partition-0"; }
trap cleanup EXIT

# Refuses to start a run that would leave less than MIN_FREE_GIB free on the data disk.
need_space() {
    local bytes=$1 avail
    avail=$(df --output=avail -B1 "$DATA_DIR" | tail -1)
    if (( avail - bytes < MIN_FREE_GIB * 1024 * 1024 * 1024 )); then
        echo "not enough space: $avail bytes free, run needs $bytes and $MIN_FREE_GIB GiB must stay free" >&2
        exit 1
    fi
}

log() { echo "$*" | tee -a "$summary"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

machine_state() {
    {
        echo "date: $(date -Is)"
        echo "uptime: $(uptime)"
        echo "kernel: $(uname -r)"
        echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
        echo "memory: $(free -g | awk '/Mem:/ {print $2 " GiB total, " $7 " GiB available"}')"
        echo "fio: $(fio --version)"
        echo "ringlog git: $(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
        echo "data fs: $(df -h "$DATA_DIR" | tail -1)"
        echo "mount: $(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$DATA_DIR" 2>/dev/null || echo unknown)"
        local dev
        dev=$(basename "$(findmnt -no SOURCE -T "$DATA_DIR" 2>/dev/null || echo none)")
        if [ -d "/sys/block/$dev/queue" ]; then
            echo "device $dev: scheduler $(cat /sys/block/$dev/queue/scheduler)," \
                "rotational $(cat /sys/block/$dev/queue/rotational)," \
                "write_cache $(cat /sys/block/$dev/queue/write_cache)"
        fi
        # Anything else busy on the machine makes the figures noisy: show who it is.
        echo "busiest processes:"
        ps -eo pcpu,etime,comm --sort=-pcpu | head -6
    } | tee "$RESULTS/machine.txt"
}

# fio NAME ARGS...: one fio job on FIO_FILE, JSON kept, file deleted, one summary line.
fio_run() {
    local name=$1; shift
    need_space $(( SIZE_GIB * 1024 * 1024 * 1024 ))
    sync
    local before; before=$(load)
    fio --name=w --filename="$FIO_FILE" --output-format=json --output="$RESULTS/$name.json" "$@"
    rm -f "$FIO_FILE"
    jq -r --arg name "$name" --arg load "$before" '.jobs[0] as $j | $j.write as $w |
        ($w.clat_ns.percentile) as $p |
        "\($name): fio \($w.bw_bytes / 1e6 | floor) MB/s, \($w.iops | floor) IOPS," +
        " clat us p50 \($p["50.000000"] / 1e3 | floor) p99 \($p["99.000000"] / 1e3 | floor)" +
        " p99.9 \($p["99.900000"] / 1e3 | floor) max \($w.clat_ns.max / 1e3 | floor)" +
        (if $j.sync.lat_ns.percentile then
            " | fdatasync us p50 \($j.sync.lat_ns.percentile["50.000000"] / 1e3 | floor)" +
            " p99 \($j.sync.lat_ns.percentile["99.000000"] / 1e3 | floor)" +
            " p99.9 \($j.sync.lat_ns.percentile["99.900000"] / 1e3 | floor)"
         else "" end) + " (load before: \($load))"' "$RESULTS/$name.json" | tee -a "$summary"
}

# ringlog NAME ARGS...: one `ringlog-bench append`, JSON kept, data deleted, one summary line.
ringlog_run() {
    local name=$1; shift
    need_space $(( SIZE_GIB * 1024 * 1024 * 1024 ))
    sync
    local before; before=$(load)
    "$BIN" append --dir "$DATA_DIR" --output-json "$RESULTS/$name.json" "$@" >"$RESULTS/$name.txt"
    jq -r --arg name "$name" --arg load "$before" '"\($name): ringlog \(.mb_per_sec | floor) MB/s," +
        " \(.appends_per_sec | floor) appends/s, latency us p50 \(.latency_us_p50)" +
        " p99 \(.latency_us_p99) p99.9 \(.latency_us_p999) max \(.latency_us_max)" +
        " (\(.appenders) appenders, \(.batch_bytes) B batches, fsync \(.fsync); load before: \($load))"' \
        "$RESULTS/$name.json" | tee -a "$summary"
}

# ratio NAME_RINGLOG NAME_FIO: ringlog MB/s over fio MB/s.
ratio() {
    local ours theirs
    ours=$(jq '.mb_per_sec' "$RESULTS/$1.json")
    theirs=$(jq '.jobs[0].write.bw_bytes / 1e6' "$RESULTS/$2.json")
    log "  ratio $1 / $2: $(jq -n "$ours / $theirs * 1000 | round / 1000")"
}

machine_state
log "== 1. sequential writes, ${SIZE_GIB} GiB, repeated $REPEATS times"
for rep in $(seq 1 "$REPEATS"); do
    fio_run "fio-1m-r$rep" --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=4 --size="${SIZE_GIB}G"
    ringlog_run "ringlog-1m-r$rep" --total-bytes "${SIZE_GIB}GiB" --batch-bytes 1MiB
    ratio "ringlog-1m-r$rep" "fio-1m-r$rep"
    fio_run "fio-16k-r$rep" --ioengine=io_uring --direct=1 --rw=write --bs=16k --iodepth=64 --size="${SIZE_GIB}G"
    ringlog_run "ringlog-16k-r$rep" --total-bytes "${SIZE_GIB}GiB" --batch-bytes 16KiB
    ratio "ringlog-16k-r$rep" "fio-16k-r$rep"
    # The engine issue's target for 16 KiB batches is a fraction of fio's 1 MiB figure.
    ratio "ringlog-16k-r$rep" "fio-1m-r$rep"
    ringlog_run "ringlog-16k-256a-r$rep" --total-bytes "${SIZE_GIB}GiB" --batch-bytes 16KiB --appenders 256
    ratio "ringlog-16k-256a-r$rep" "fio-1m-r$rep"
done

log "== 2. appender sweep, ${SIZE_GIB} GiB"
for n in $SWEEP; do
    ringlog_run "ringlog-16k-a$n" --total-bytes "${SIZE_GIB}GiB" --batch-bytes 16KiB --appenders "$n"
done
for n in $SWEEP_1M; do
    ringlog_run "ringlog-1m-a$n" --total-bytes "${SIZE_GIB}GiB" --batch-bytes 1MiB --appenders "$n"
done

log "== 3. group commit, ${GROUP_MIB} MiB of 4 KiB"
ringlog_run ringlog-group-4k --fsync group --batch-bytes 4KiB --appenders 64 --total-bytes "${GROUP_MIB}MiB"
fio_run fio-fdatasync-4k --rw=write --bs=4k --fdatasync=1 --iodepth=1 --ioengine=sync --direct=1 \
    --size="${GROUP_MIB}M" --runtime="$SYNC_RUNTIME"

log "== 4. recovery of ${SIZE_GIB} GiB (1 MiB batches, 3 GiB segments: the active one holds"
log "   what was written since its roll, the last checkpoint; $((SIZE_GIB - 3)) GiB at SIZE_GIB=$SIZE_GIB)"
ringlog_run ringlog-noclose --total-bytes "${SIZE_GIB}GiB" --batch-bytes 1MiB --segment-bytes 3GiB --no-close
for kind in unclean clean; do
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    "$BIN" recover --dir "$DATA_DIR" --output-json "$RESULTS/recover-$kind.json" >"$RESULTS/recover-$kind.txt"
    jq -r --arg kind "$kind" '"recover after \($kind) stop: \(.recover_ms | floor) ms," +
        " clean_shutdown \(.clean_shutdown), scanned \(.scanned_bytes) B in \(.segments) segments" +
        " (\(.scan_mb_per_sec | floor) MB/s), corruption \(.corruption)"' \
        "$RESULTS/recover-$kind.json" | tee -a "$summary"
done
rm -rf "$DATA_DIR/partition-0"

log "== 5. fio writing like the engine: fallocate=keep, every write extends the file"
fio_run fio-1m-keep --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=4 --size="${SIZE_GIB}G" --fallocate=keep
fio_run fio-16k-keep --ioengine=io_uring --direct=1 --rw=write --bs=16k --iodepth=64 --size="${SIZE_GIB}G" --fallocate=keep

log "== done $(date -Is), load $(load); results in $RESULTS"
