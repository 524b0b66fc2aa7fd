"""The sandbox's own promises, without booting anything: it finds exactly its own
processes, teardown kills them by PID, deletes its namespace, is idempotent and says
so when something survives."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import netns
from tests.sandbox import Sandbox, alive, sandbox


def _sleep(box: Sandbox, *argv: str, marked_env: bool = False) -> subprocess.Popen[bytes]:
    env = box.env if marked_env else None
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", *argv], env=env)


def _wait_seen(box: Sandbox, pid: int) -> None:
    deadline = time.monotonic() + 5
    while pid not in box.processes():
        assert time.monotonic() < deadline, f"sandbox did not find its process {pid}"
        time.sleep(0.05)


def test_teardown_kills_exactly_the_sandboxs_processes(tmp_path: Path) -> None:
    box = Sandbox.create(tmp_path / "home", own_netns=False)
    by_env = _sleep(box, marked_env=True)  # like the daemon: BANGER_HOME in its environment
    by_path = _sleep(box, str(box.home / "state" / "vms" / "x" / "disk"))  # like a VM
    stranger = _sleep(box, str(tmp_path / "home-other" / "disk"))  # a name that only looks alike
    try:
        _wait_seen(box, by_env.pid)
        _wait_seen(box, by_path.pid)
        assert stranger.pid not in box.processes()
        box.teardown()
        for p in (by_env, by_path):
            assert p.wait(5) is not None
        assert stranger.poll() is None, "teardown killed a process that is not the sandbox's"
        box.teardown()  # idempotent: nothing left to do, nothing raised
    finally:
        for p in (by_env, by_path, stranger):
            p.kill()
            p.wait()


@pytest.mark.netns
@netns.skip_unless_netns()
def test_teardown_deletes_the_namespace_and_what_runs_in_it(tmp_path: Path) -> None:
    box = Sandbox.create(tmp_path / "home", prefix="bgt-sbx-")
    assert box.ns in netns.names()
    inside = subprocess.Popen([*box.prefix, "sleep", "30"])  # unmarked, but in the namespace
    try:
        _wait_seen(box, inside.pid)
        box.teardown()
        assert inside.wait(5) is not None
        assert box.ns not in netns.names()
    finally:
        inside.kill()
        inside.wait()


def test_teardown_reports_a_survivor(tmp_path: Path) -> None:
    box = Sandbox.create(tmp_path / "home", own_netns=False)
    proc = subprocess.Popen(["sleep", "30"], env=box.env)
    try:
        _wait_seen(box, proc.pid)
        box.processes = lambda: []  # type: ignore[method-assign]  # the kill step misses it
        with pytest.raises(AssertionError, match="survived the teardown"):
            box.teardown()
        assert alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.netns
@netns.skip_unless_netns()
def test_leftovers_names_what_a_deleted_vm_left_behind(tmp_path: Path) -> None:
    """What verify.sh fails on: each kind of leftover is found, the warm pool's TAPs
    and the base rule are not leftovers."""
    with sandbox(tmp_path / "home", prefix="bgt-sbx-") as box:
        assert box.leftovers() == []
        for tap in ("tap-pool-0", "tap-lost"):
            box.in_ns("ip", "tuntap", "add", "dev", tap, "mode", "tap")
        rules = (
            "add table ip banger; add chain ip banger post; "
            'add rule ip banger post counter comment "banger:base"; '
            'add rule ip banger post ip saddr 172.30.0.9 counter comment "banger:172.30.0.9"'
        )
        box.in_ns("nft", rules)
        box.paths.vms_dir.mkdir(parents=True)
        (box.paths.vms_dir / "abc123").mkdir()
        box.paths.database.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(box.paths.database)
        db.execute("CREATE TABLE leases (ip TEXT, vm TEXT)")
        db.execute("INSERT INTO leases VALUES ('172.30.0.9', 'abc123')")
        db.commit()
        db.close()
        found = box.leftovers()
        assert found == [
            "TAP tap-lost",
            "leases row ('172.30.0.9', 'abc123')",
            "nftables rule banger:172.30.0.9",
            f"VM directory {box.paths.vms_dir / 'abc123'}",
        ]
