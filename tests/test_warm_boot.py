"""Warm create end to end: a cold create builds the golden snapshot of its shape in the
background; the next creates restore it and take their own identity.

Boots: the cold seed, its golden boot, then restores (cheap) for a, b and the fork.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.test_crash_points import assert_invariant, crash
from tests.vmkit import NsBanger, ensure_artifacts, private_home

pytestmark = [pytest.mark.boot, netns.skip_unless_netns()]
GOLDEN_WAIT = 900.0
WORK = 3 * 1024**3  # a and b ask for another work size than the seed's


@dataclass
class Warm:
    b: NsBanger
    vms: dict[str, dict[str, Any]]
    clocks: dict[str, tuple[float, float, float]]  # host before, guest, host after

    def sh(self, vm: str, script: str, check: bool = True) -> str:
        return self.b.run("vm", "ssh", vm, "--", script, check=check, timeout=120).stdout


def _golden(home: Path) -> list[Path]:
    return sorted((home / "state" / "golden").glob("*/golden.json"))


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warm]:
    ensure_artifacts(tmp_path_factory.mktemp("pull"))
    with private_home() as b:
        b.env["BANGER_WARM_CREATE"] = "1"
        seed = b.json("vm", "create", "--name", "seed")
        assert "restore" not in seed["timings"] and "boot" in seed["timings"]
        deadline = time.monotonic() + GOLDEN_WAIT
        while not _golden(b.home):
            assert time.monotonic() < deadline, "no golden snapshot was made"
            time.sleep(2)
        b.run("vm", "delete", "--force", "seed")
        vms, clocks = {}, {}
        for n in ("a", "b"):
            vms[n] = b.json("vm", "create", "--name", n, "--work-size", "3G")
            # The clock as the create left it (the guest's own clock drifts later).
            before = time.time()
            guest = float(b.run("vm", "ssh", n, "--", "date +%s.%N").stdout)
            clocks[n] = (before, guest, time.time())
        yield Warm(b, vms, clocks)


def test_warm_creates_restore_and_report_their_stages(warm: Warm) -> None:
    for vm in warm.vms.values():
        assert {"restore", "identity", "ssh"} <= set(vm["timings"]), vm["timings"]
        assert "boot" not in vm["timings"]
        assert vm["state"] == "running"


def test_two_restores_share_no_identity(warm: Warm) -> None:
    seen: dict[str, set[str]] = {}
    for name, vm in warm.vms.items():
        facts = warm.sh(
            name,
            "hostname; cat /sys/class/net/eth0/address; cat /etc/machine-id;"
            " cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub;"
            " ip -4 -o addr show dev eth0 | awk '{print $4}'",
        ).split()
        assert facts[0] == name
        assert facts[1] == vm["mac"]
        assert facts[4].split("/")[0] == vm["ip"]
        for key, value in zip(("host", "mac", "machine-id", "hostkey", "ip"), facts, strict=True):
            seen.setdefault(key, set()).add(value)
        # banger's known_hosts holds this VM's own key (strict checking let ssh in).
        known = (warm.b.home / "state" / "known_hosts").read_text()
        assert facts[3] in known
    assert all(len(v) == 2 for v in seen.values()), seen


def test_clock_root_disk_and_network(warm: Warm) -> None:
    for before, guest, after in warm.clocks.values():
        assert before - 1 <= guest <= after + 1
    for name in warm.vms:
        src, size = warm.sh(
            name, "findmnt -n -o SOURCE /root; blockdev --getsize64 /dev/vdb"
        ).split()
        assert src == "/dev/vdb" and int(size) == WORK
        total = int(warm.sh(name, "df -B1 --output=size /root | tail -1"))
        assert total > WORK * 0.9  # the filesystem was grown, not only the device
    warm.sh("a", "echo only-a > /root/mine")
    assert warm.sh("b", "test -e /root/mine && echo yes || echo no").strip() == "no"
    warm.sh("a", f"ping -c 1 -W 5 {warm.vms['b']['ip']}")
    warm.sh("b", f"ping -c 1 -W 5 {warm.vms['a']['ip']}")
    warm.sh("a", "ping -c 1 -W 5 b.vm")  # DNS was re-applied too


def test_daemon_killed_during_a_restore_leaves_nothing(warm: Warm) -> None:
    # kill -9 while the restored machine runs but has no identity yet, and right after
    # it got one: the next daemon removes the VM and all it made; a and b are fine.
    for i, point in enumerate(("create:spawned", "create:booted")):
        crash(warm.b, point, "vm", "create", "--name", f"k{i}")
        vms = assert_invariant(warm.b, {"a", "b", f"k{i}"})
        assert f"k{i}" not in vms and vms["a"]["state"] == vms["b"]["state"] == "running", point
    assert warm.sh("a", "hostname").strip() == "a"


def test_a_warm_created_vm_suspends_and_resumes_as_itself(warm: Warm) -> None:
    # b was restored from the golden snapshot and took its identity through the agent:
    # its suspend saves that machine, its resume brings back b (not the golden guest).
    b = warm.b
    warm.sh("b", "tmux new -d -s s 'sleep 1000'")
    sleep_pid = warm.sh("b", "pgrep -f 'sleep 1000'").split()[0]
    facts = (
        "hostname; ip -4 -o addr show dev eth0 | awk '{print $4}'; cat /etc/machine-id;"
        " cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub"
    )
    before = warm.sh("b", facts).split()
    up_before = float(warm.sh("b", "cut -d' ' -f1 /proc/uptime"))
    assert "b suspended" in b.run("vm", "suspend", "b", timeout=300).stdout
    assert b.json("vm", "show", "b")["state"] == "suspended"
    assert "b resumed" in b.run("vm", "start", "b", timeout=300).stdout
    vm = b.json("vm", "show", "b")
    assert vm["state"] == "running" and vm["ip"] == warm.vms["b"]["ip"]
    # `vm ssh` checks the host key strictly against banger's known_hosts: it still fits.
    after = warm.sh("b", facts).split()
    assert after == before and after[0] == "b" and after[1].split("/")[0] == vm["ip"]
    assert after[3] in (b.home / "state" / "known_hosts").read_text()
    assert warm.sh("b", "tmux has-session -t s && echo yes").strip() == "yes"
    assert warm.sh("b", "pgrep -f 'sleep 1000'").split()[0] == sleep_pid
    assert float(warm.sh("b", "cut -d' ' -f1 /proc/uptime")) > up_before
    assert b.json("vm", "health", "b")["info"]["hostname"] == "b"
    warm.sh("a", f"ping -c 1 -W 5 {vm['ip']}")  # back on the network at its address


def test_a_warm_created_vm_forks(warm: Warm) -> None:
    # The same save path as suspend, into a named snapshot: a fork of a restored VM.
    b = warm.b
    warm.sh("b", "echo as-of-sb > /root/sb; sync")
    assert "snapshot sb of b" in b.run("vm", "snapshot", "b", "--as", "sb", timeout=600).stdout
    warm.sh("b", "echo later > /root/sb; sync")
    c = b.json("vm", "create", "--from", "sb", "--name", "c")
    try:
        assert {"restore", "identity"} <= set(c["timings"]) and "boot" not in c["timings"]
        assert warm.sh("c", "hostname; cat /root/sb").split() == ["c", "as-of-sb"]
        assert warm.sh("c", "tmux has-session -t s && echo yes").strip() == "yes"
        assert warm.sh("b", "cat /root/sb").strip() == "later"
        warm.sh("c", f"ping -c 1 -W 5 {warm.vms['b']['ip']}")
    finally:
        b.run("vm", "delete", "--force", "c", timeout=300)
    assert "sb removed" in b.run("snapshot", "rm", "sb").stdout
