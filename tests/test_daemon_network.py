"""The daemon's host network over its life: made on first use, kept for running VMs.

A daemon whose VMs are all stopped must leave the host's links as it found them, at
start and after a clean shutdown; one that adopts a running guest sets the network
up at start (the guest's DNS and the next create need it), and its clean shutdown
deletes the warm TAPs but leaves the bridge and the running VM's TAP. Each daemon
runs in a namespace of its own (tests/sandbox.py), so the host is never touched;
nothing boots (a running VM is a recorded one whose engine process is a `sleep`).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from banger.engines.base import EngineHandle
from banger.engines.process import pid_start_time
from banger.net.bridge import ensure_bridge
from banger.net.tap import create_tap
from banger.paths import Paths
from banger.store import Store
from banger.system.run import die_with_parent
from banger.vm import VMRecord, VMRepository
from tests import netns
from tests.sandbox import Sandbox, sandbox, terminate
from tests.sandbox import test_env as sandbox_env

pytestmark = [pytest.mark.netns, netns.skip_unless_netns()]

SUBNET = "172.30.0.0/24"  # the default config's


def links(box: Sandbox) -> list[str]:
    out = box.in_ns("ip", "-j", "link", "show")
    return sorted(link["ifname"] for link in json.loads(out))


def record(paths: Paths, vms: list[VMRecord]) -> None:
    """VM records as the daemon stores them, written before it starts."""
    store = Store(paths.database)
    repo = VMRepository(store)
    try:
        for vm in vms:
            repo.save(vm)
            assert vm.ip is not None
            repo.add_lease(vm.ip, vm.id)
    finally:
        store.close()


def vm(i: int, state: str, tap: str | None = None, handle: EngineHandle | None = None) -> VMRecord:
    return VMRecord(
        id=f"{i:012x}",
        name=f"vm-{i}",
        state=state,
        image="debian-bookworm",
        kernel="debian-6.1",
        engine="qemu",
        vcpus=1,
        memory_mib=256,
        disk_bytes=1 << 30,
        work_bytes=1 << 28,
        mac=f"02:00:00:00:00:{i:02x}",
        ip=f"172.30.0.{10 + i}",
        tap=tap,
        handle=handle.to_dict() if handle else None,
    )


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with sandbox(prefix="bgt-dnet-", env=sandbox_env()) as b:
        yield b


def test_a_daemon_with_only_stopped_vms_leaves_the_network_alone(box: Sandbox) -> None:
    # Stopped and suspended VMs, and one recorded running whose process is gone:
    # after reconcile no VM runs, so nothing needs the bridge.
    dead = EngineHandle("qemu", pid=2**22 + 1, start_time=1, control_socket="/nonexistent")
    record(
        box.paths,
        [
            vm(1, "stopped"),
            vm(2, "suspended"),
            vm(3, "running", tap="tap-pool-0", handle=dead),
        ],
    )
    before = links(box)
    assert before == ["lo"]
    box.start_daemon()
    states = {v["name"]: v["state"] for v in box.json("vm", "list")}
    assert states == {"vm-1": "stopped", "vm-2": "suspended", "vm-3": "stopped"}
    assert links(box) == before
    # A clean shutdown waits for whatever the daemon set going at start: had it
    # warmed the network, the bridge would be here now.
    box.stop_daemon()
    assert box.daemon_pid() is None  # its pid file goes last: the shutdown finished
    assert links(box) == before


def test_an_adopted_running_vm_gets_the_network_and_keeps_it_after_shutdown(
    box: Sandbox,
) -> None:
    assert box.ns is not None
    # What a daemon that died left: the bridge and the running VM's TAP on it.
    ensure_bridge("banger0", SUBNET, netns=box.ns)
    create_tap("tap-pool-0", "banger0", netns=box.ns)
    # Stands in for its engine process.
    guest = subprocess.Popen(["sleep", "600"], preexec_fn=die_with_parent())
    try:
        start = pid_start_time(guest.pid)
        assert start is not None
        handle = EngineHandle("qemu", guest.pid, start, control_socket="/nonexistent")
        record(box.paths, [vm(1, "running", tap="tap-pool-0", handle=handle)])
        box.start_daemon()
        assert box.json("vm", "show", "vm-1")["state"] == "running"
        # The warm pool (2 in the tests' config) fills at start, around the VM's TAP.
        want = ["banger0", "lo", "tap-pool-0", "tap-pool-1", "tap-pool-2"]
        deadline = time.monotonic() + 60
        while links(box) != want and time.monotonic() < deadline:
            time.sleep(0.2)
        assert links(box) == want
        box.stop_daemon()
        assert box.daemon_pid() is None
        # The warm TAPs went with the daemon; the bridge and the VM's TAP stay, and
        # so does the VM.
        assert links(box) == ["banger0", "lo", "tap-pool-0"]
        assert guest.poll() is None
    finally:
        terminate([guest.pid])
        guest.wait()
