# Helpers shared by the measurement scripts in bench/scripts (sourced, not run).
# The caller sets PORT, DATA_DIR and OUT_DIR before calling start_broker.

load() { cut -d' ' -f1-3 /proc/loadavg; }
# json FILE EXPR: prints a Python expression over the document `d`.
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }
ratio() { python3 -c "print(round($1 / $2, 2))"; }

BROKER_PID=
# start_broker BINARY CORES [PREFIX...]: a fresh data directory, `ringlog serve` on PORT,
# returns once it accepts connections. PREFIX (e.g. `taskset -c 1`) runs before the binary.
start_broker() {
    local binary=$1 cores=$2
    shift 2
    rm -rf "$DATA_DIR/log"
    mkdir -p "$DATA_DIR"
    "$@" "$binary" serve --listen 127.0.0.1:"$PORT" --data-dir "$DATA_DIR/log" --cores "$cores" \
        2>"$OUT_DIR/broker.log" &
    BROKER_PID=$!
    for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && return; sleep 0.05; done
    echo "broker did not start" >&2
    exit 1
}
# CPU seconds (user + system) the broker has used so far, all threads.
broker_cpu_s() {
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$BROKER_PID/stat"
}
stop_broker() {
    [ -n "$BROKER_PID" ] && { kill -TERM "$BROKER_PID"; wait "$BROKER_PID" || true; }
    BROKER_PID=
}
