"""Fixtures for the end-to-end tests with real Kafka clients.

Every test gets its own `ringlog serve` process (binary from $RINGLOG_BIN, default
target/debug/ringlog) on a free loopback port, with a fresh data directory and two cores. The
broker is always stopped when the test ends, failed or not: SIGTERM, then SIGKILL if it has not
exited after a few seconds. It is also started with PR_SET_PDEATHSIG, so a killed pytest does
not leave brokers behind.

Data directories live under target/pytest-data (override with $RINGLOG_TEST_DATA_ROOT): the
broker writes with O_DIRECT, which tmpfs (a common /tmp) does not support.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import kafkautil  # noqa: E402 (found through the path above)

START_TIMEOUT_S = 30
# A broker killed a moment ago can still accept on its port for a few milliseconds (its
# io_uring, and the listening socket with it, is torn down after the process is gone), and a
# connection it accepted is then reset. So a start is complete only when the new broker has
# answered ApiVersions on this many new connections in a row, not at the first accepted one.
START_ANSWERS_IN_A_ROW = 5
STOP_TIMEOUT_S = 15


def ringlog_bin() -> Path:
    path = Path(os.environ.get("RINGLOG_BIN", REPO_ROOT / "target" / "debug" / "ringlog"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def data_root() -> Path:
    root = Path(os.environ.get("RINGLOG_TEST_DATA_ROOT", REPO_ROOT / "target" / "pytest-data"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_run(count: int) -> int:
    """The first of `count` consecutive free ports: with more than one core the broker also
    listens on PORT+1+i for core i (a node per core)."""
    for _ in range(100):
        first = free_port()
        ok = True
        for offset in range(1, count):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", first + offset))
                except OSError:
                    ok = False
                    break
        if ok:
            return first
    raise RuntimeError(f"no run of {count} free ports")


def _die_with_parent() -> None:
    """preexec_fn: the broker gets SIGKILL if the pytest process dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


_serve_help_cache: str | None = None


def serve_help() -> str:
    """`ringlog serve --help`, to find out which settings this build has."""
    global _serve_help_cache
    if _serve_help_cache is None:
        _serve_help_cache = subprocess.run(
            [str(ringlog_bin()), "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    return _serve_help_cache


def serve_setting_env(flag: str) -> str | None:
    """The environment variable `serve --help` names for `--flag`, or None if no such flag."""
    # The flag's own help text: up to the next line that starts another flag.
    match = re.search(
        r"--" + re.escape(flag) + r"\b((?:(?!\n\s*-).)*)", serve_help(), re.S
    )
    if match is None:
        return None
    env = re.search(r"\[env: (RINGLOG_[A-Z0-9_]+)", match.group(1))
    return env.group(1) if env else None


class Broker:
    """One `ringlog serve` process; can be stopped, killed and started again on the same
    data directory and port."""

    def __init__(self, data_dir: Path, port: int, cores: int = 2, env: dict | None = None,
                 extra_args: list[str] | None = None):
        self.data_dir = data_dir
        self.port = port
        self.cores = cores
        self.env = dict(env or {})
        self.extra_args = list(extra_args or [])
        # What clients are told to connect to (a test proxy in front of the broker), if not the
        # listen address.
        self.advertised: str | None = None
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.log_paths: list[Path] = []

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Broker":
        assert self.process is None or self.process.poll() is not None, "already running"
        self.starts += 1
        log_path = self.data_dir.parent / f"{self.data_dir.name}-broker-{self.starts}.log"
        self.log_paths.append(log_path)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.update(self.env)
        command = [
            str(ringlog_bin()), "serve",
            "--listen", self.bootstrap,
            "--advertised-listener", self.advertised or self.bootstrap,
            "--data-dir", str(self.data_dir),
            "--cores", str(self.cores),
            *self.extra_args,
        ]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, preexec_fn=_die_with_parent,
            )
        self._wait_until_answering()
        return self

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        answered = 0
        while answered < START_ANSWERS_IN_A_ROW:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"broker exited with {code} while starting:\n{self.log_tail()}")
            try:
                if kafkautil.api_versions_ok(("127.0.0.1", self.port), timeout=1):
                    answered += 1
                    continue
            except OSError:
                pass
            answered = 0
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"broker did not answer on {self.bootstrap} within {START_TIMEOUT_S}s; "
                    f"its threads (name, state, wait channel):\n{self.threads()}\n"
                    f"{self.log_tail()}")
            time.sleep(0.05)

    def threads(self) -> str:
        """Each thread of the running broker: name, state and kernel wait channel."""
        lines = []
        for task in sorted(Path(f"/proc/{self.process.pid}/task").glob("*")):
            try:
                name = (task / "comm").read_text().strip()
                state = next(line for line in (task / "status").read_text().splitlines()
                             if line.startswith("State:"))
                wchan = (task / "wchan").read_text().strip()
            except (OSError, StopIteration):
                continue
            lines.append(f"  {task.name} {name}: {state.split(':', 1)[1].strip()} {wchan}")
        return "\n".join(lines)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code of a clean exit
        (SIGTERM honoured), or None when it had to be killed or was not running."""
        if not self.alive():
            return self.process.returncode if self.process is not None else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            return None

    def kill9(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(10)

    def restart(self, clean: bool = True) -> int | None:
        """Stops the broker (SIGTERM, or SIGKILL when `clean` is false) and starts it again on
        the same directory and port. Returns the exit code of the stop (see `stop`)."""
        if clean:
            code = self.stop()
        else:
            self.kill9()
            code = None
        self.start()
        return code

    def log_tail(self, lines: int = 60) -> str:
        out = []
        for path in self.log_paths[-2:]:
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            out.append(f"--- {path} (last {lines} lines) ---")
            out.extend(text[-lines:])
        return "\n".join(out)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
    # A failed test shows the end of each of its brokers' logs.
    if report.failed:
        for broker in getattr(item, "ringlog_brokers", []):
            report.sections.append((f"ringlog broker on port {broker.port}", broker.log_tail()))


@pytest.fixture
def broker_factory(request):
    """Makes brokers (each its own data directory and port); all are stopped at the end."""
    brokers: list[Broker] = []
    dirs: list[Path] = []
    request.node.ringlog_brokers = brokers

    def make(cores: int = 2, env: dict | None = None, extra_args: list[str] | None = None,
             start: bool = True) -> Broker:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:80]
        data_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=data_root()))
        dirs.append(data_dir)
        broker = Broker(data_dir, free_port_run(cores + 1), cores=cores, env=env, extra_args=extra_args)
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    yield make

    failed = any(
        getattr(request.node, f"rep_{when}", None) is not None
        and getattr(request.node, f"rep_{when}").failed
        for when in ("setup", "call")
    )
    for broker in brokers:
        broker.stop()
    if not failed and not os.environ.get("RINGLOG_TEST_KEEP_DATA"):
        for data_dir in dirs:
            shutil.rmtree(data_dir, ignore_errors=True)
            for log in data_dir.parent.glob(f"{data_dir.name}-broker-*.log"):
                log.unlink(missing_ok=True)


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A running broker with two cores, fresh data directory."""
    return broker_factory()


@pytest.fixture
def topic_name(request):
    """A topic name unique to the test."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:60]
    return f"{base}-{os.getpid()}-{int(time.time() * 1000) % 100000}"
