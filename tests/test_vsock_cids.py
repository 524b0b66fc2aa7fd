"""vsock CIDs are unique host-wide, not per store: a CID a running hypervisor holds
(any one: another daemon's, another tool's), or another daemon is handing out at this
moment, is never given to a VM; a stopped VM whose CID was taken meanwhile boots with
a new one. Real stores, real processes, a registry directory of the test's own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.capabilities.base import BootContributions
from banger.capabilities.vsock import VsockCapability
from banger.engines.cids import HostCids, cids_in_command_lines
from banger.store import Store
from banger.system.run import die_with_parent
from banger.vm import VMRepository
from tests.records import vm_record

# CIDs far from what anything else on a shared test machine uses
FIRST = 1_000_000 + (os.getpid() % 10_000) * 100


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return tmp_path / "registry"


def _daemon(tmp_path: Path, name: str, registry: Path) -> tuple[VsockCapability, VMRepository]:
    store = Store(tmp_path / f"{name}.db")
    repo = VMRepository(store)
    return VsockCapability(repo, FIRST, HostCids(str(store.path), registry)), repo


def _hypervisor(device: str) -> subprocess.Popen[bytes]:
    """A running process whose command line gives a guest CID, as QEMU's does; returned
    once it runs (it says so), so its command line is in /proc."""
    code = "print('up', flush=True); import time; time.sleep(600)"
    argv = [sys.executable, "-c", code, "-device", device]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, preexec_fn=die_with_parent())
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    return proc


@pytest.fixture
def hypervisor() -> Iterator[subprocess.Popen[bytes]]:
    proc = _hypervisor(f"vhost-vsock-device,guest-cid={FIRST}")
    yield proc
    proc.kill()
    proc.wait()


def test_a_cid_a_running_hypervisor_holds_is_never_given(
    tmp_path: Path, registry: Path, hypervisor: subprocess.Popen[bytes]
) -> None:
    assert FIRST in cids_in_command_lines()
    cap, repo = _daemon(tmp_path, "a", registry)
    vm = vm_record("a", None)
    repo.save(vm)
    assert cap.allocate(vm) == FIRST + 1


def test_two_daemons_choosing_at_once_never_share(tmp_path: Path, registry: Path) -> None:
    one, one_repo = _daemon(tmp_path, "one", registry)
    two, two_repo = _daemon(tmp_path, "two", registry)
    a, b = vm_record("a", None), vm_record("b", None)
    one_repo.save(a)
    two_repo.save(b)
    # neither hypervisor runs yet: the first daemon's reservation keeps the second off
    assert (one.allocate(a), two.allocate(b)) == (FIRST, FIRST + 1)
    # within one store the store decides: a deleted VM's CID is free again at once
    c = vm_record("c", None)
    one_repo.save(c)
    assert one.allocate(c) == FIRST + 2
    one_repo.release_vsock_cid(a.id)
    d = vm_record("d", None)
    one_repo.save(d)
    assert one.allocate(d) == FIRST


def test_a_reservation_of_a_daemon_that_is_gone_counts_for_nothing(
    tmp_path: Path, registry: Path
) -> None:
    cap, repo = _daemon(tmp_path, "a", registry)
    registry.mkdir(mode=0o700)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    (registry / str(FIRST)).write_text(f"{dead.stdout.strip()} 1 /elsewhere/banger.db")
    vm = vm_record("a", None)
    repo.save(vm)
    assert cap.allocate(vm) == FIRST
    assert (registry / str(FIRST)).read_text().endswith(str(tmp_path / "a.db"))


async def test_a_stopped_vms_cid_taken_meanwhile_moves_on_its_next_boot(
    tmp_path: Path, registry: Path
) -> None:
    cap, repo = _daemon(tmp_path, "a", registry)
    vm = vm_record("a", None, state="stopped")
    repo.save(vm)
    assert cap.allocate(vm) == FIRST
    boot = BootContributions()
    await cap.attach(vm, boot)
    assert boot.vsock_cid == FIRST  # nothing else has it: kept
    other = _hypervisor(f"vhost-vsock-pci,guest-cid={FIRST}")
    try:
        boot = BootContributions()
        await cap.attach(vm, boot)
        assert boot.vsock_cid == vm.vsock_cid == FIRST + 1
        assert repo.get("a").vsock_cid == FIRST + 1  # recorded
    finally:
        other.kill()
        other.wait()
