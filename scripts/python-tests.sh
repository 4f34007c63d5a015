#!/usr/bin/env bash
# End-to-end tests with unmodified Kafka clients (confluent-kafka, kafka-python, kcat) against
# the ringlog binary: creates a Python venv at target/pytest-venv, installs the pinned client
# versions, runs pytest on tests/python.
#
#   scripts/python-tests.sh [pytest args...]     e.g. -k restart, -x, -v
#
# RINGLOG_BIN selects the binary (default: the debug build under $CARGO_TARGET_DIR or target/,
# brought up to date here; a given one is built only if missing). Broker data and logs go to
# target/pytest-data (must not be tmpfs: O_DIRECT); a failed test keeps its data directory and
# prints its broker's log.
set -euo pipefail
cd "$(dirname "$0")/.."

# Versions these tests were verified with.
PINNED=(
    confluent-kafka==2.16.1
    kafka-python==3.0.12
    pytest==9.2.0
    pytest-timeout==2.4.0
)
VENV=target/pytest-venv

as_root() { [ "$(id -u)" = 0 ]; }

if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    if as_root && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq python3 python3-venv
    else
        echo "missing python3 with venv: install python3 and python3-venv and run again" >&2
        exit 1
    fi
fi
if ! command -v kcat >/dev/null; then
    if as_root && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq kcat
    else
        echo "missing kcat: install it (sudo apt-get install kcat) and run again" >&2
        exit 1
    fi
fi

# As root: iproute2 (`ip netns`: the replication fault tests run their hosts in network
# namespaces to cut a leader off the network) and e2fsprogs (`mkfs.ext4`: the follower
# full-disk test gives each replica a small loop-mounted filesystem).
if as_root && command -v apt-get >/dev/null; then
    wanted=()
    command -v ip >/dev/null || wanted+=(iproute2)
    command -v mkfs.ext4 >/dev/null || wanted+=(e2fsprogs)
    command -v fallocate >/dev/null || wanted+=(util-linux)
    if [ ${#wanted[@]} -gt 0 ]; then
        apt-get update -qq && apt-get install -y -qq "${wanted[@]}"
    fi
fi

stamp="$VENV/.pinned"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${PINNED[*]}" ]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PINNED[@]}"
    echo "${PINNED[*]}" > "$stamp"
fi

# Without RINGLOG_BIN the debug build of this tree is tested, so it is brought up to date first
# (a stale binary would pass tests the source no longer does); cargo does nothing when it is.
# ringlog-perf (tests/python/test_perf_tool.py) sits beside the broker binary.
if [ -z "${RINGLOG_BIN:-}" ]; then
    cargo build -p ringlog -p ringlog-bench --bin ringlog --bin ringlog-perf
fi
export RINGLOG_BIN="${RINGLOG_BIN:-$(realpath -m "${CARGO_TARGET_DIR:-target}")/debug/ringlog}"
export RINGLOG_PERF_BIN="${RINGLOG_PERF_BIN:-$(dirname "$RINGLOG_BIN")/ringlog-perf}"
if [ ! -x "$RINGLOG_BIN" ]; then
    cargo build -p ringlog
fi
if [ ! -x "$RINGLOG_PERF_BIN" ]; then
    cargo build -p ringlog-bench --bin ringlog-perf
fi

# Keep only this run's data: a failed test leaves its data directory and broker log here.
rm -rf target/pytest-data
# As root, the tests run in a network namespace of their own (only loopback and what they make
# there): their brokers' ports cannot collide with anything else on the machine, and a client a
# test leaves behind can never reach past the machine (the replication test's hosts live on a
# private bridge it creates and removes).
if as_root && command -v unshare >/dev/null && unshare --net true 2>/dev/null; then
    exec unshare --net sh -c 'ip link set lo up && exec "$0" -m pytest tests/python "$@"' \
        "$VENV/bin/python" "$@"
fi
exec "$VENV/bin/python" -m pytest tests/python "$@"
