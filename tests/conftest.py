"""Shared fixtures: an isolated BANGER_HOME and a real daemon on a real socket, and the
guard that keeps every test off the host's network devices."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.paths import Paths, default_paths

REPO = Path(__file__).resolve().parent.parent

# -- the host's network is not the tests' -------------------------------------------------
#
# Tests that touch network devices do it in namespaces of their own (tests/netns.py,
# tests/sandbox.py). A daemon started in the test process's namespace (the host's) with
# VMs recorded once set up its bridge and warm TAPs there and left them after every
# run; this guard makes any such leak fail the test during which it appeared, and the
# session if it appeared between tests (a module fixture's teardown).

HOST_LINK_PREFIXES = ("banger", "tap-")  # the bridge, warm-pool and VM TAP names
_links_at_start: set[str] = set()


def banger_links() -> set[str]:
    """Devices with banger's names in this process's (the host's) network namespace."""
    return {name for _, name in socket.if_nameindex() if name.startswith(HOST_LINK_PREFIXES)}


def _leak_message(new: set[str], during: str) -> str:
    names = " ".join(sorted(new))
    return (
        f"{during} made network devices in the host namespace: {names}. Tests run daemons "
        f"and make devices in a namespace of their own (tests/sandbox.py, tests/netns.py); "
        f"remove these with `ip link del NAME`"
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    _links_at_start.update(banger_links())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if new := banger_links() - _links_at_start:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"error: {_leak_message(new, 'the test session')}", red=True)


@pytest.fixture(autouse=True)
def _host_network_untouched() -> Iterator[None]:
    before = banger_links()
    yield
    if new := banger_links() - before:
        pytest.fail(_leak_message(new, "this test"), pytrace=False)


@pytest.fixture
def banger_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    home = tmp_path / "bh"
    monkeypatch.setenv("BANGER_HOME", str(home))
    for key in list(os.environ):
        if key.startswith("BANGER_") and key not in ("BANGER_HOME", "BANGER_TEST_CACHE"):
            monkeypatch.delenv(key)
    return default_paths()


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


def start_daemon(paths: Paths, extra_env: dict[str, str] | None = None) -> RunningDaemon:
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BANGER_TEST_HOOKS": "1", **(extra_env or {})}
    log = open(paths.log_dir / "test-daemon.out", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "banger.daemon", "--foreground"],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
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
