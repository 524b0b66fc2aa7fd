"""Suspend and resume of one real Debian guest (QEMU, TCG) through the real daemon
and CLI in a test-made network namespace: processes and tmux sessions carry on,
uptime keeps counting, the clock is the host's; a truncated state is refused and
loses nothing; a daemon killed during a resume leaves nothing behind; a named
snapshot forks into a VM with the snapshot's files and its own identity. One boot
for the module: every step resumes (or restores) the same guest."""

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
from tests.vmkit import NsBanger, ensure_artifacts, private_home

pytestmark = [pytest.mark.boot, netns.skip_unless_netns()]


@pytest.fixture(scope="module")
def b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsBanger]:
    ensure_artifacts(tmp_path_factory.mktemp("pull"))
    with private_home() as nb:
        nb.run("vm", "create", "--name", "a", "--memory", "512M", timeout=900)
        yield nb


def _vm(b: NsBanger) -> dict[str, Any]:
    return dict(json.loads(b.run("vm", "show", "a", "--json").stdout))


def _sh(b: NsBanger, script: str, vm: str = "a") -> str:
    return b.run("vm", "exec", vm, "--", "sh", "-c", script, timeout=120).stdout


def _assert_clock(b: NsBanger, vm: str) -> None:
    """The guest's clock is the host's within 1 s: read between two host readings
    (however long the exec round trip takes on a loaded host)."""
    before = time.time()
    guest = float(_sh(b, "date +%s.%N", vm))
    after = time.time()
    assert before - 1.0 <= guest <= after + 1.0, (before, guest, after)


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
    _assert_clock(b, "a")
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
    from tests.test_crash_points import crash

    # kill -9 before the restoring process exists, and once it exists and loads.
    for point in ("resume:recorded", "resume:spawned"):
        _suspend(b)
        crash(b, point, "vm", "start", "a")
        # The next daemon finds the resume cut before the guest ran: still
        # suspended, nothing running, its state intact.
        vm = _vm(b)
        assert vm["state"] == "suspended" and not b.qemu_pids(), point
        assert (_state_dir(b) / "state.json").is_file(), point
        assert "a resumed" in b.run("vm", "start", "a", timeout=300).stdout
        assert _sh(b, "tmux has-session -t s && echo yes").strip() == "yes"


def test_named_snapshot_of_a_running_vm_list_and_show(b: NsBanger) -> None:
    _sh(b, "echo as-of-s1 > /root/snapfile && sync")
    r = b.run("vm", "snapshot", "a", "--as", "s1", timeout=600)
    assert "snapshot s1 of a" in r.stdout
    assert _vm(b)["state"] == "running"  # it carried on
    assert _sh(b, "tmux has-session -t s && echo yes").strip() == "yes"
    _sh(b, "echo later > /root/snapfile && sync")
    listed = json.loads(b.run("snapshot", "list", "--json").stdout)
    assert [s["name"] for s in listed] == ["s1"]
    snap = json.loads(b.run("snapshot", "show", "s1", "--json").stdout)
    assert (snap["vm"], snap["vm_state"], snap["memory_mib"]) == ("a", "running", 512)
    assert (Path(snap["dir"]) / "state" / "state.json").is_file()
    assert str(b.home) in snap["dir"]  # the daemon's own directory


FACTS = (
    "hostname; cat /sys/class/net/eth0/address; cat /etc/machine-id;"
    " cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub;"
    " ip -4 -o addr show dev eth0 | awk '{print $4}'"
)


def test_fork_has_the_files_of_its_snapshot_and_its_own_identity(b: NsBanger) -> None:
    r = b.run("vm", "create", "--from", "s1", "--name", "c", "--json", timeout=900)
    c = json.loads(r.stdout)
    try:
        assert c["state"] == "running" and c["memory_mib"] == 512
        assert {"restore", "identity", "ssh"} <= set(c["timings"]) and "boot" not in c["timings"]
        # a's files as of s1, not the later write; a's processes carried over too.
        assert _sh(b, "cat /root/snapfile", "c").strip() == "as-of-s1"
        assert _sh(b, "cat /root/snapfile").strip() == "later"
        assert _sh(b, "tmux has-session -t s && echo yes", "c").strip() == "yes"
        # Its own identity, from the guest's point of view.
        a = _vm(b)
        fa, fc = _sh(b, FACTS).split(), _sh(b, FACTS, "c").split()
        assert fc[0] == "c" and fc[1] == c["mac"] and fc[4].split("/")[0] == c["ip"]
        assert fa[0] == "a" and fa[1] == a["mac"] and fa[4].split("/")[0] == a["ip"]
        for i, what in enumerate(("hostname", "MAC", "machine-id", "host key", "address")):
            assert fa[i] != fc[i], what
        known = (b.home / "state" / "known_hosts").read_text()
        assert fa[3] in known and fc[3] in known
        assert c["vsock_cid"] != a["vsock_cid"] or c["vsock_cid"] is None
        _assert_clock(b, "c")
        # Both on the network, each at its own address.
        _sh(b, f"ping -c 1 -W 5 {c['ip']}")
        _sh(b, f"ping -c 1 -W 5 {a['ip']}", "c")
        assert b.run("vm", "ssh", "c", "--", "hostname", timeout=120).stdout.strip() == "c"
    finally:
        b.run("vm", "delete", "--force", "c", timeout=300)


def test_snapshot_rm_removes_its_files(b: NsBanger) -> None:
    snap = json.loads(b.run("snapshot", "show", "s1", "--json").stdout)
    assert "s1 removed" in b.run("snapshot", "rm", "s1").stdout
    assert not Path(snap["dir"]).exists()
    r = b.run("snapshot", "show", "s1", check=False)
    assert r.returncode != 0 and "no snapshot named `s1`" in r.stderr
