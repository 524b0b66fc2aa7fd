"""kill -9 of the daemon at named points of create, start, stop and delete, then a
restart: every VM must be usable or gone, and nothing may be left that no VM owns
(process, TAP beyond the warm pool, nftables rule, lease, DNS record, VM directory,
half-built pool disk).

The daemon SIGKILLs itself at the point (`POST /v1/debug/crash-at`), which is a
kill -9 at an exact instant; random-delay kills from outside cover the moments
between points. The default run is bounded (two guest boots, about three minutes
here); `BANGER_CRASH_SWEEP=full` runs every point, with more random delays.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.daemon.testhooks import POINTS
from banger.net.tap import held_taps
from tests import netns
from tests.vmkit import NsBanger, ensure_artifacts, private_home

pytestmark = [pytest.mark.boot, netns.skip_unless_netns()]

FULL = os.environ.get("BANGER_CRASH_SWEEP") == "full"
# Create points that need no finished boot (the daemon dies before SSH answers).
EARLY_CREATE = [p for p in POINTS if p.startswith("create:") and p != "create:ready"]
CREATE_POINTS = EARLY_CREATE if FULL else [
    "create:recorded", "create:disks", "create:attached", "create:spawned", "create:booted"
]  # fmt: skip
START_POINTS = [p for p in POINTS if p.startswith("start:")]
DELETE_POINTS = [p for p in POINTS if p.startswith("delete:")] if FULL else ["delete:recorded"]
RANDOM_KILLS = 8 if FULL else 1


@pytest.fixture(scope="module")
def b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsBanger]:
    ensure_artifacts(tmp_path_factory.mktemp("pull"))
    with private_home() as b:
        yield b


def _client(b: NsBanger) -> Any:
    return b.client()


def arm(b: NsBanger, point: str) -> int:
    """Start a daemon (if none) and make it SIGKILL itself at `point`; its pid."""
    b.run("daemon", "start")
    with _client(b) as c:
        c._request("POST", "/v1/debug/crash-at", params={"point": point})
    pid = b.daemon_pid()
    assert pid is not None
    return pid


def died(pid: int) -> None:
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists():
        status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() else ""
        if "zombie" in status:
            return
        assert time.monotonic() < deadline, "the daemon did not die at its crash point"
        time.sleep(0.05)


def crash(b: NsBanger, point: str, *args: str) -> subprocess.CompletedProcess[str]:
    pid = arm(b, point)
    res = b.run(*args, check=False, timeout=600)
    died(pid)
    assert res.returncode != 0, f"`{' '.join(args)}` succeeded though the daemon died at {point}"
    return res


def _db(b: NsBanger, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(b.home / "state" / "banger.db")
    try:
        return list(db.execute(sql))
    finally:
        db.close()


def dns_answers(b: NsBanger, name: str) -> bool:
    code = (
        "import sys, socket; from dnslib import DNSRecord;"
        "q = DNSRecord.question(sys.argv[1]).send('172.30.0.1', 53, timeout=2);"
        "print(len(DNSRecord.parse(q).rr))"
    )
    res = subprocess.run(
        ["ip", "netns", "exec", b.ns, sys.executable, "-c", code, f"{name}.vm"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return res.returncode == 0 and res.stdout.strip() not in ("", "0")


def assert_invariant(b: NsBanger, names: set[str]) -> dict[str, dict[str, Any]]:
    """After a restart: every VM usable or gone, nothing left that nothing owns.
    `names`: every VM name the test used so far."""
    vms = {v["name"]: v for v in b.json("vm", "list")}  # starts the next daemon
    time.sleep(0.3)  # killed processes are reaped by init
    assert {v["state"] for v in vms.values()} <= {"running", "stopped"}, vms
    running = {n: v for n, v in vms.items() if v["state"] == "running"}
    assert sorted(b.qemu_pids()) == sorted(v["pid"] for v in running.values())
    taps = b.taps()
    assert [t for t in taps if not t.startswith("tap-pool-")] == []
    assert sorted(t for t in (v["tap"] for v in vms.values()) if t) == sorted(
        v["tap"] for v in running.values()
    )
    assert set(held_taps(b.ns)) <= {v["tap"] for v in running.values()}
    assert sorted(r[0] for r in _db(b, "SELECT ip FROM leases")) == sorted(
        v["ip"] for v in vms.values()
    )
    nft = b.in_ns("sh", "-c", "nft list ruleset 2>/dev/null || true")
    for v in vms.values():
        if v["ip"] and not (v["state"] == "running" and v["nat"]):
            assert f"{v['ip']} " not in nft, f"NAT rule left for {v['name']}"
    ids = {v["id"] for v in vms.values()}
    vms_dir = b.home / "state" / "vms"
    assert {p.name for p in vms_dir.iterdir()} <= ids if vms_dir.exists() else True
    pool = b.home / "state" / "disk-pool"
    if pool.exists():
        assert not [p for p in pool.rglob(".building-*")]
    deadline = time.monotonic() + 10  # the DNS server starts just after the socket
    for name in sorted(names, key=lambda n: n not in running):
        while name in running and not dns_answers(b, name) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert dns_answers(b, name) == (name in running), f"DNS for {name}"
    return vms


def test_daemon_killed_anywhere_leaves_vms_usable_or_gone(b: NsBanger) -> None:
    used: set[str] = set()

    # Creates cut at every stage boundary: the VM goes, with all it made.
    for i, point in enumerate(CREATE_POINTS):
        name = f"c{i}"
        used.add(name)
        crash(b, point, "vm", "create", "--name", name, "--nat")
        assert name not in assert_invariant(b, used), point

    # Creates cut at random moments, from outside.
    rnd = random.Random(os.environ.get("BANGER_CRASH_SEED", "14"))
    for i in range(RANDOM_KILLS):
        name = f"r{i}"
        used.add(name)
        b.run("daemon", "start")
        pid = b.daemon_pid()
        assert pid is not None
        proc = subprocess.Popen(
            ["ip", "netns", "exec", b.ns, sys.executable, "-m", "banger.cli",
             "vm", "create", "--name", name, "--nat"],
            env=b.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(rnd.uniform(0.2, 4.0))
        os.kill(pid, signal.SIGKILL)
        proc.wait(60)
        vms = assert_invariant(b, used)
        if name in vms:  # it got far enough to be ready: it must work
            b.run("vm", "delete", "--force", name)

    # One real VM for start / stop / delete.
    used.add("a")
    b.run("vm", "create", "--name", "a", "--nat", "--memory", "512M")
    b.run("vm", "ssh", "a", "--", "echo kept > /root/f && sync")
    assert assert_invariant(b, used)["a"]["state"] == "running"

    crash(b, "stop:recorded", "vm", "stop", "a")
    assert assert_invariant(b, used)["a"]["state"] == "stopped"

    for point in START_POINTS:
        crash(b, point, "vm", "start", "a")
        vm = assert_invariant(b, used)["a"]
        assert vm["state"] == "stopped" and vm["last_error"], point

    b.run("vm", "start", "a")
    assert b.run("vm", "ssh", "a", "--", "cat /root/f").stdout.strip() == "kept"
    crash(b, "stop:halted", "vm", "stop", "a")
    assert assert_invariant(b, used)["a"]["state"] == "stopped"

    for i, point in enumerate(DELETE_POINTS):
        name = "a" if i == 0 else f"d{i}"
        if name not in assert_invariant(b, used):
            used.add(name)
            b.run("vm", "create", "--name", name, "--memory", "512M")
            b.run("vm", "stop", name)
        crash(b, point, "vm", "delete", name)
        assert name not in assert_invariant(b, used), point
    # The next create still works and gets a clean address.
    assert_invariant(b, used)
