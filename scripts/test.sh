#!/usr/bin/env bash
# Runs every check and test of ringlog on a fresh machine: installs what the tests need,
# then format, lints, the whole test suite and a compile of the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests need the Rust toolchain (cargo, rustfmt, clippy), kcat, make and a C compiler
# (these three installed below), python3 with venv (installed by scripts/python-tests.sh when
# root) and an O_DIRECT-capable filesystem under target/ (ext4 or xfs; tmpfs does not do
# O_DIRECT).
for tool in cargo rustfmt cargo-clippy; do
    command -v "$tool" >/dev/null || { echo "missing $tool: install the Rust toolchain with rustfmt and clippy" >&2; exit 1; }
done

# glommio registers I/O memory with io_uring: it needs locked memory (root has it; others
# need `ulimit -l` of at least 64 MiB).
if [ "$(id -u)" != 0 ] && [ "$(ulimit -l)" != unlimited ] && [ "$(ulimit -l)" -lt 65536 ]; then
    echo "RLIMIT_MEMLOCK is $(ulimit -l) KiB; raise it (ulimit -l 65536) or run as root" >&2
    exit 1
fi

# The end-to-end tests drive the broker with kcat (Debian's, librdkafka 2.0.2) and with the
# rdkafka crate, whose build compiles librdkafka 2.12 from source with its configure script
# and make (build-essential: C and C++ compilers, make, libc headers; zlib comes from the
# libz-sys crate if not installed).
missing=()
command -v kcat >/dev/null || missing+=(kcat)
if ! command -v make >/dev/null || ! command -v cc >/dev/null || ! command -v c++ >/dev/null; then
    missing+=(build-essential)
fi
if [ "${#missing[@]}" != 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq "${missing[@]}"
    else
        echo "missing ${missing[*]}: install (sudo apt-get install ${missing[*]}) and run again" >&2
        exit 1
    fi
fi

export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
# End-to-end tests with real Kafka clients (confluent-kafka, kafka-python, kcat) against the
# debug binaries (which it builds); installs python3-venv if missing and the pinned clients in
# target/pytest-venv.
scripts/python-tests.sh
# Criterion benches must keep compiling (they are run by hand, not here).
cargo bench --workspace --no-run
