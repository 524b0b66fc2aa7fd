"""Shared fixtures: an isolated BANGER_HOME and a real daemon on a real socket, and the
guard that keeps every test off the host's network devices."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.paths import Paths, default_paths
from banger.system.run import die_with_parent

REPO = Path(__file__).resolve().parent.parent

# -- the host's network is not the tests' -------------------------------------------------
#
# Tests that touch network devices do it in namespaces of their own (tests/netns.py,
# tests/sandbox.py). A daemon started in the test process's namespace (the host's) with
# VMs recorded once set up its bridge and warm TAPs there and left them after every
# run; this guard makes any such leak fail the test during which it appeared, and the
# session if it appeared between tests (a module fixture's teardown).
#
# The host is shared: another test session or a banger run by hand may make the same
# devices meanwhile. Every process this session starts inherits SESSION_VAR; when a
# banger or pytest process without it is alive as devices appear, the leak cannot be
# pinned on this session and is reported as a warning instead.

HOST_LINK_PREFIXES = ("banger", "tap-")  # the bridge, warm-pool and VM TAP names
SESSION_VAR = "BGT_SESSION"  # not BANGER_*: fixtures drop those from the environment
_links_at_start: set[str] = set()


def banger_links() -> set[str]:
    """Devices with banger's names in this process's (the host's) network namespace."""
    return {name for _, name in socket.if_nameindex() if name.startswith(HOST_LINK_PREFIXES)}


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def _foreign_processes() -> list[str]:
    """Banger and pytest processes of other sessions (or users' runs) alive now."""
    mark = f"{SESSION_VAR}={os.environ.get(SESSION_VAR, '')}".encode()
    ours = _ancestors()  # whatever started this session (make, uv) and pytest itself
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ours:
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"banger" not in cmd and b"pytest" not in cmd:
                continue
            if mark in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue  # gone meanwhile, or not ours to read
        argv = cmd.replace(b"\0", b" ").decode(errors="replace")
        found.append(f"{entry} ({argv[:60]})")
    return found


def _leak(new: set[str], during: str) -> tuple[bool, str]:
    """(ours, message) for devices that appeared in the host namespace."""
    names = " ".join(sorted(new))
    if others := _foreign_processes():
        return False, (
            f"network devices appeared in the host namespace {during}: {names}, while "
            f"other banger or pytest processes ran ({'; '.join(others[:3])}); not counted "
            f"against this session"
        )
    return True, (
        f"network devices appeared in the host namespace {during}: {names}. Tests run "
        f"daemons and make devices in a namespace of their own (tests/sandbox.py, "
        f"tests/netns.py); remove these with `ip link del NAME`"
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ.setdefault(SESSION_VAR, f"{os.getpid()}-{time.time_ns()}")
    _links_at_start.update(banger_links())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if new := banger_links() - _links_at_start:
        ours, message = _leak(new, "during the test session")
        if ours:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"{'error' if ours else 'warning'}: {message}", red=ours)


@pytest.fixture(autouse=True)
def _host_network_untouched() -> Iterator[None]:
    before = banger_links()
    yield
    if new := banger_links() - before:
        ours, message = _leak(new, "during this test")
        if ours:
            pytest.fail(message, pytrace=False)
        warnings.warn(message, stacklevel=1)


@pytest.fixture
def banger_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Paths]:
    """A private BANGER_HOME. A daemon a CLI call started under it (on purpose, or
    by a test that fails because it should not have) is stopped afterwards."""
    home = tmp_path / "bh"
    monkeypatch.setenv("BANGER_HOME", str(home))
    for key in list(os.environ):
        if key.startswith("BANGER_") and key not in ("BANGER_HOME", "BANGER_TEST_CACHE"):
            monkeypatch.delenv(key)
    paths = default_paths()
    yield paths
    _stop_daemon_of(paths, home)


def _stop_daemon_of(paths: Paths, home: Path) -> None:
    """SIGTERM, then SIGKILL, the daemon whose pid file is under `paths`, if that
    process is still this home's daemon (its BANGER_HOME says so)."""
    try:
        pid = int(paths.pid_file.read_text().strip())
        with open(f"/proc/{pid}/environ", "rb") as f:
            mine = f"BANGER_HOME={home}".encode() in f.read().split(b"\0")
    except (OSError, ValueError):
        return
    if not mine:
        return
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real `banger` CLI as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "banger.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


@dataclass
class RunningDaemon:
    paths: Paths
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_socket(path: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(path))
            return
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    raise TimeoutError(f"daemon socket {path} never answered")


def start_daemon(
    paths: Paths, extra_env: dict[str, str] | None = None, netns: str | None = None
) -> RunningDaemon:
    """A daemon for `paths`; in network namespace `netns` when given (`ip netns exec`
    execs the daemon, so the process is the daemon's either way)."""
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BANGER_TEST_HOOKS": "1", **(extra_env or {})}
    log = open(paths.log_dir / "test-daemon.out", "ab")  # noqa: SIM115
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "banger.daemon", "--foreground"],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
        preexec_fn=die_with_parent(),  # stops with a killed test run
    )
    log.close()
    try:
        wait_socket(paths.socket)
    except TimeoutError:
        proc.kill()
        raise
    return RunningDaemon(paths, proc)


@pytest.fixture
def daemon(banger_home: Paths) -> Iterator[RunningDaemon]:
    d = start_daemon(banger_home)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def bridge_ns() -> Iterator[str]:
    """A fresh network namespace holding the banger0 bridge on 172.30.0.0/24."""
    from banger.net.bridge import ensure_bridge
    from tests import netns

    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with netns.namespace() as name:
        ensure_bridge("banger0", "172.30.0.0/24", netns=name)
        yield name
