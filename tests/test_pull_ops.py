"""Artifact pulls as daemon operations: shared by concurrent callers, cancellable, and
never leaving half-written artifacts, even when the daemon is killed mid-pull."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from banger.api.models import OperationEvent
from banger.client import Client
from tests.conftest import RunningDaemon, start_daemon


def leftovers(d: RunningDaemon) -> list[str]:
    tmp = d.paths.tmp_dir
    return (
        sorted(p.name for p in tmp.iterdir() if not p.name.endswith(".lock"))
        if tmp.exists()
        else []
    )


def wait_orphans_gone(d: RunningDaemon, timeout: float = 30) -> None:
    """Wait until no process works in, or names, the daemon's tmp dir: the children of
    a killed daemon's pull get SIGTERM with it and must not go on writing there."""
    tmp = str(d.paths.tmp_dir)

    def busy() -> bool:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if tmp in cmd or cwd.startswith(tmp):
                return True
        return False

    deadline = time.monotonic() + timeout
    while busy():
        assert time.monotonic() < deadline, "a killed daemon's pull left a process running"
        time.sleep(0.2)


def wait_for_stage(c: Client, op_id: str, stages: set[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    for item in c.stream(op_id):
        if isinstance(item, OperationEvent) and item.stage in stages:
            return item.stage
        if time.monotonic() > deadline or not isinstance(item, OperationEvent):
            break
    raise AssertionError(f"operation {op_id} never reached {stages}")


def test_concurrent_pulls_share_one_operation_and_cancel_cleans_up(
    daemon: RunningDaemon,
) -> None:
    with Client(daemon.paths) as c:
        first = c.pull_kernel("debian-6.1")
        second = c.pull_kernel("debian-6.1")
        assert first.id == second.id
        wait_for_stage(c, first.id, {"download", "unpack", "extract"})
        c.cancel(first.id)
        final = list(c.stream(first.id))[-1]
        assert final.state == "cancelled"  # type: ignore[union-attr]
        deadline = time.monotonic() + 30  # the worker thread stops at its next stage
        while leftovers(daemon) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert leftovers(daemon) == []
        assert not (daemon.paths.kernels_dir / "debian-6.1").exists()
        assert c.kernels() == []


def test_daemon_killed_mid_pull_leaves_nothing_after_restart(daemon: RunningDaemon) -> None:
    with Client(daemon.paths) as c:
        op = c.pull_kernel("debian-6.1")
        wait_for_stage(c, op.id, {"unpack", "extract", "initramfs"})
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait()
    assert leftovers(daemon) != []  # the kill really interrupted a pull
    wait_orphans_gone(daemon)  # its dpkg-deb child dies with it
    again = start_daemon(daemon.paths)
    try:
        assert leftovers(daemon) == []
        assert not (daemon.paths.kernels_dir / "debian-6.1").exists()
        with Client(daemon.paths) as c:
            assert c.kernels() == []
    finally:
        again.stop()
