"""Suspend and resume of one real Debian guest (QEMU, TCG) through the real daemon
and CLI in a test-made network namespace: processes and tmux sessions carry on,
uptime keeps counting, the clock is the host's; a truncated state is refused and
loses nothing; a daemon killed during a resume leaves nothing behind. One boot for
the module: every step resumes the same guest."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.vmkit import NsBanger, banger_in_netns, ensure_artifacts

pytestmark = [pytest.mark.boot, netns.skip_unless_netns()]


@pytest.fixture(scope="module")
def b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsBanger]:
    ensure_artifacts(tmp_path_factory.mktemp("pull"))
    home = Path(f"/tmp/bgs-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    home.mkdir()
    try:
        with banger_in_netns(home) as nb:
            nb.run("vm", "create", "--name", "a", "--memory", "512M", timeout=900)
            yield nb
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _vm(b: NsBanger) -> dict[str, Any]:
    return dict(json.loads(b.run("vm", "show", "a", "--json").stdout))


def _sh(b: NsBanger, script: str) -> str:
    return b.run("vm", "exec", "a", "--", "sh", "-c", script, timeout=120).stdout


def _state_dir(b: NsBanger) -> Path:
    return Path(_vm(b)["dir"]) / "state"


def _suspend(b: NsBanger) -> None:
    r = b.run("vm", "suspend", "a", timeout=300)
    assert "a suspended" in r.stdout
    assert _vm(b)["state"] == "suspended"
    assert not b.qemu_pids()


def test_resume_carries_on_processes_uptime_and_clock(b: NsBanger) -> None:
    _sh(b, "tmux new -d -s s 'sleep 1000'; echo kept > /root/before")
    up_before = float(_sh(b, "cut -d' ' -f1 /proc/uptime"))
    sleep_pid = _sh(b, "pgrep -f 'sleep 1000'").split()[0]
    _suspend(b)
    listed = b.run("vm", "list").stdout
    assert "suspended" in listed
    assert (_state_dir(b) / "state.json").is_file()
    time.sleep(3)  # the guest's clock stands still meanwhile; the agent sets it

    r = b.run("vm", "start", "a", timeout=300)
    assert "a resumed" in r.stdout
    vm = _vm(b)
    assert vm["state"] == "running"
    assert {"restore", "clock", "ssh"} <= set(vm["timings"]) and "boot" not in vm["timings"]
    assert not _state_dir(b).exists()  # the guest ran on: the state is stale and gone
    assert _sh(b, "tmux has-session -t s && echo yes").strip() == "yes"
    assert _sh(b, "pgrep -f 'sleep 1000'").split()[0] == sleep_pid
    assert _sh(b, "cat /root/before").strip() == "kept"
    assert float(_sh(b, "cut -d' ' -f1 /proc/uptime")) > up_before
    guest_now = float(_sh(b, "date +%s.%N"))
    assert abs(guest_now - time.time()) < 1.0 + 0.5  # +0.5: the exec round trip here
    # SSH answers with the VM's own host key (banger's known_hosts still holds it).
    assert b.run("vm", "ssh", "a", "--", "echo", "ssh-ok", timeout=120).stdout.strip() == "ssh-ok"


def test_truncated_state_is_refused_and_loses_no_disk(b: NsBanger) -> None:
    _suspend(b)
    state = _state_dir(b) / "vmstate"
    good = state.with_name("vmstate.good")
    shutil.copyfile(state, good)
    disks = {p.name: p.stat().st_size for p in Path(_vm(b)["dir"]).glob("*.ext4")}
    os.truncate(state, state.stat().st_size // 2)
    r = b.run("vm", "start", "a", check=False, timeout=300)
    assert r.returncode != 0
    assert "vmstate is truncated or altered" in r.stderr and "--cold" in r.stderr
    vm = _vm(b)
    assert vm["state"] == "suspended" and not b.qemu_pids()
    assert {p.name: p.stat().st_size for p in Path(vm["dir"]).glob("*.ext4")} == disks
    os.replace(good, state)  # the saved state put back: it resumes
    assert "a resumed" in b.run("vm", "start", "a", timeout=300).stdout


def test_daemon_killed_during_resume_leaves_nothing_behind(b: NsBanger) -> None:
    from banger.client import Client
    from banger.paths import Paths

    _suspend(b)
    b.run("daemon", "start")
    h = b.home
    with Client(Paths(h / "config", h / "state", h / "data", h / "run")) as c:
        c._request("POST", "/v1/debug/crash-at", params={"point": "resume:recorded"})
    pid = b.daemon_pid()
    r = b.run("vm", "start", "a", check=False, timeout=300)
    assert r.returncode != 0
    deadline = time.monotonic() + 10
    while pid is not None and Path(f"/proc/{pid}").exists():
        if "zombie" in Path(f"/proc/{pid}/status").read_text(errors="replace"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The next daemon finds the resume cut before anything ran: still suspended,
    # nothing running, its state intact.
    vm = _vm(b)
    assert vm["state"] == "suspended" and not b.qemu_pids()
    assert (_state_dir(b) / "state.json").is_file()
    assert "a resumed" in b.run("vm", "start", "a", timeout=300).stdout
    assert _sh(b, "tmux has-session -t s && echo yes").strip() == "yes"


def test_named_snapshot_of_a_running_vm_then_list_show_rm(b: NsBanger) -> None:
    _sh(b, "echo as-of-s1 > /root/snapfile && sync")
    r = b.run("vm", "snapshot", "a", "--as", "s1", timeout=600)
    assert "snapshot s1 of a" in r.stdout
    assert _vm(b)["state"] == "running"  # it carried on
    assert _sh(b, "tmux has-session -t s && echo yes").strip() == "yes"
    _sh(b, "echo later > /root/snapfile")
    listed = json.loads(b.run("snapshot", "list", "--json").stdout)
    assert [s["name"] for s in listed] == ["s1"]
    snap = json.loads(b.run("snapshot", "show", "s1", "--json").stdout)
    assert (snap["vm"], snap["vm_state"], snap["memory_mib"]) == ("a", "running", 512)
    d = Path(snap["dir"])
    assert (d / "state" / "state.json").is_file()
    # The work disk copy holds the file as of the snapshot, not the later write.
    import subprocess

    out = subprocess.run(
        ["debugfs", "-R", "cat /snapfile", snap["work"]], capture_output=True, text=True
    ).stdout
    assert out.strip() == "as-of-s1"
    assert "s1 removed" in b.run("snapshot", "rm", "s1").stdout
    assert not d.exists()
    r = b.run("snapshot", "show", "s1", check=False)
    assert r.returncode != 0 and "no snapshot named `s1`" in r.stderr
