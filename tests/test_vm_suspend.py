"""Suspend and resume in the real VMService, on the recording fake engine: what is
saved, released and restored, the refusals, and what a new daemon does with a
suspend or resume a kill -9 cut short. (A real guest: test_snapshots.py.)"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.api.models import SetVM
from banger.engines.state import StateUnusable
from banger.errors import BangerError, Conflict, NotFound
from banger.vm import VMRecord, VMState, WrongState
from tests.fakes import Harness, Injected, progress_log

CAPS = ["disks", "vsock", "network", "nat", "dns"]


@pytest.fixture
def h(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    harness = Harness(monkeypatch)
    yield harness
    harness.close()


def _disks(h: Harness, vm: VMRecord) -> dict[str, bytes]:
    d = h.paths.vm_dir(vm.id)
    return {n: (d / n).read_bytes() for n in ("rootfs.ext4", "work.ext4")}


async def test_suspend_saves_state_ends_the_process_and_releases_runtime(h: Harness) -> None:
    vm = await h.create("devbox")
    pid = vm.engine_handle.pid  # type: ignore[union-attr]
    h.events.clear()
    out = await h.suspend("devbox")
    assert out.state is VMState.SUSPENDED and out.handle is None and out.tap is None
    assert set(out.timings) == {"save", "total"}
    assert h.events[:2] == ["engine.save:devbox", "engine.kill:devbox"]
    assert h.events[2:] == [f"{c}.detach:devbox" for c in reversed(CAPS)]
    state = h.vms.state_dir(vm)
    assert (state / "state.json").is_file() and (state / "vmstate").is_file()
    assert not state.with_name("state.partial").exists()
    assert pid not in h.engine().alive
    row = VMRecord.from_row(h.row(vm.id))  # type: ignore[arg-type]
    assert row.state is VMState.SUSPENDED and row.vsock_cid == vm.vsock_cid and row.ip == vm.ip
    assert row.to_api("d").state == "suspended"
    assert (await h.suspend("devbox")).state is VMState.SUSPENDED  # again: nothing to do


async def test_start_restores_with_the_same_machine_and_sets_the_clock(h: Harness) -> None:
    vm = await h.create("devbox")
    booted = h.engine().last
    await h.suspend("devbox")
    h.events.clear()
    out = await h.start("devbox")
    assert out.state is VMState.RUNNING
    assert "engine.restore:devbox" in h.events and "engine.start:devbox" not in h.events
    assert h.events.index("engine.restore:devbox") < h.events.index("clock:hybrid-vsock")
    assert h.events.index("clock:hybrid-vsock") < h.events.index("ssh:devbox")
    config, saved = h.engine().restores[-1]
    assert config.drives == booted.drives and config.vcpus == booted.vcpus
    assert config.vsock_cid == booted.vsock_cid and config.nics[0].mac == booted.nics[0].mac
    assert saved.dir == h.vms.state_dir(vm)
    # The guest runs on its disks now: the saved state is gone.
    assert not h.vms.state_dir(vm).exists()
    assert {"restore", "clock", "ssh", "total"} <= set(out.timings)
    assert "boot" not in out.timings
    # It is an ordinary running VM again: it suspends and stops.
    await h.suspend("devbox")
    await h.start("devbox")
    assert (await h.stop("devbox")).state is VMState.STOPPED


async def test_cold_start_stop_and_delete_discard_the_state(h: Harness) -> None:
    vm = await h.create("devbox")
    await h.suspend("devbox")
    h.events.clear()
    out = await h.start("devbox", cold=True)
    assert out.state is VMState.RUNNING and "engine.start:devbox" in h.events
    assert "engine.restore:devbox" not in h.events and not h.vms.state_dir(vm).exists()

    await h.suspend("devbox")
    h.events.clear()
    assert (await h.stop("devbox")).state is VMState.STOPPED
    assert not h.vms.state_dir(vm).exists() and h.events == []  # no process to stop
    assert _disks(h, vm) == {"rootfs.ext4": b"root", "work.ext4": b"work"}
    h.events.clear()
    await h.start("devbox")
    assert "engine.start:devbox" in h.events  # a stopped VM boots

    await h.suspend("devbox")
    await h.delete("devbox")  # no --force needed: nothing runs
    assert not h.paths.vm_dir(vm.id).exists() and h.row(vm.id) is None


async def test_refusals_name_the_state(h: Harness) -> None:
    await h.create("devbox")
    await h.stop("devbox")
    with pytest.raises(WrongState, match=r"VM `devbox` is stopped; suspend needs it running"):
        await h.suspend("devbox")
    await h.start("devbox")
    await h.suspend("devbox")
    with pytest.raises(WrongState, match=r"is suspended; changing vcpus or memory needs it"):
        await h.vms.update("devbox", SetVM(vcpus=2))
    with pytest.raises(WrongState) as exc:
        await h.vms.update("devbox", SetVM(memory="1G"))
    assert "discards its saved state" in exc.value.hint


@pytest.mark.parametrize("damage", ["truncate", "engine-upgrade", "gone"])
async def test_unusable_state_is_refused_and_loses_nothing(h: Harness, damage: str) -> None:
    vm = await h.create("devbox")
    await h.suspend("devbox")
    state = h.vms.state_dir(vm)
    if damage == "truncate":
        os.truncate(state / "vmstate", 10)
        needle = r"vmstate is truncated or altered: 10 bytes, saved with 1216"
    elif damage == "engine-upgrade":
        h.engine().version = "2.0"
        needle = r"does not fit: engine version is 2\.0 but the saved state needs 1\.0"
    else:
        (state / "state.json").unlink()
        needle = r"no saved state in"
    h.events.clear()
    with pytest.raises(StateUnusable, match=needle) as exc:
        await h.start("devbox")
    assert "banger vm start --cold" in exc.value.hint
    got = h.vms.get("devbox")
    assert got.state is VMState.SUSPENDED and got.handle is None and got.tap is None
    assert h.engine().alive == {}
    assert _disks(h, vm) == {"rootfs.ext4": b"root", "work.ext4": b"work"}
    if damage != "gone":
        assert (state / "state.json").is_file()  # kept: the user decides (--cold)
    # --cold boots it, with its disks.
    assert (await h.start("devbox", cold=True)).state is VMState.RUNNING


async def test_a_failed_save_lets_the_guest_run_on(h: Harness) -> None:
    vm = await h.create("devbox")
    h.engine().fail_save = Injected("disk full")
    with pytest.raises(Injected):
        await h.suspend("devbox")
    got = h.vms.get("devbox")
    assert got.state is VMState.RUNNING and got.handle == vm.handle
    assert "engine.resume:devbox" in h.events
    assert not h.vms.state_dir(vm).exists()
    assert not h.vms.state_dir(vm).with_name("state.partial").exists()


async def test_a_failed_restore_keeps_the_state_while_the_guest_never_ran(h: Harness) -> None:
    vm = await h.create("devbox")
    await h.suspend("devbox")
    h.engine().fail_start = BangerError("load of migration failed")
    with pytest.raises(BangerError, match="load of migration failed"):
        await h.start("devbox")
    got = h.vms.get("devbox")
    assert got.state is VMState.SUSPENDED and got.last_error == "load of migration failed"
    assert got.tap is None and h.vms.state_dir(vm).is_dir()
    h.engine().fail_start = None
    # Once the guest ran (it failed later, at SSH), its state is stale: stopped.
    h.guest.ssh_error = Injected("no ssh")
    with pytest.raises(Injected):
        await h.start("devbox")
    got = h.vms.get("devbox")
    assert got.state is VMState.STOPPED and not h.vms.state_dir(vm).exists()
    assert h.engine().alive == {}


# -- a daemon killed mid-suspend or mid-resume ---------------------------------------------


async def test_reconcile_finishes_a_suspend_whose_state_is_complete(h: Harness) -> None:
    vm = await h.create("devbox")
    await h.suspend("devbox")
    h.store.update("vms", "id", vm.id, {"state": "suspending", "handle": vm.to_row()["handle"]})
    h.engine().alive[vm.engine_handle.pid] = h.engine().last  # type: ignore[union-attr]
    await h.restart()
    got = h.vms.get("devbox")
    assert got.state is VMState.SUSPENDED and got.handle is None
    assert "engine.kill:devbox" in h.events and h.engine().alive == {}
    assert (await h.start("devbox")).state is VMState.RUNNING


async def test_reconcile_undoes_a_suspend_cut_mid_save(h: Harness) -> None:
    vm = await h.create("devbox")
    partial = h.vms.state_dir(vm).with_name("state.partial")
    partial.mkdir()
    (partial / "vmstate").write_bytes(b"half")
    h.store.update("vms", "id", vm.id, {"state": "suspending"})
    await h.restart()
    got = h.vms.get("devbox")
    assert got.state is VMState.RUNNING and got.handle == vm.handle
    assert "engine.resume:devbox" in h.events and not partial.exists()


@pytest.mark.parametrize("spawned", [False, True])
async def test_reconcile_of_a_resume_cut_short(h: Harness, spawned: bool) -> None:
    vm = await h.create("devbox")
    handle = vm.to_row()["handle"]
    await h.suspend("devbox")
    update: dict[str, object] = {"state": "resuming"}
    if spawned:  # the restored process existed (and may have run the guest)
        update["handle"] = handle
        h.engine().alive[vm.engine_handle.pid] = h.engine().last  # type: ignore[union-attr]
    h.store.update("vms", "id", vm.id, update)
    await h.restart()
    got = h.vms.get("devbox")
    assert h.engine().alive == {} and got.handle is None and got.tap is None
    if spawned:
        assert got.state is VMState.STOPPED and not h.vms.state_dir(vm).exists()
        assert "saved state was discarded" in (got.last_error or "")
    else:
        assert got.state is VMState.SUSPENDED and h.vms.state_dir(vm).is_dir()
    assert _disks(h, vm) == {"rootfs.ext4": b"root", "work.ext4": b"work"}


# -- named snapshots -----------------------------------------------------------------------


async def test_snapshot_of_a_running_vm_copies_state_and_disks_then_it_runs_on(
    h: Harness,
) -> None:
    vm = await h.create("devbox")
    h.events.clear()
    snap = await h.vms.snapshot("devbox", "s1", progress_log(h.progress))
    assert h.events == ["engine.save:devbox", "engine.resume:devbox"]
    assert h.vms.get("devbox").state is VMState.RUNNING
    d = Path(snap.dir)
    assert (d / "state" / "state.json").is_file()
    assert (d / "rootfs.ext4").read_bytes() == b"root" and (d / "work.ext4").read_bytes() == b"work"
    api = snap.to_api()
    assert (api.name, api.vm, api.vm_state, api.state) == ("s1", "devbox", "running", "ready")
    assert (api.vcpus, api.memory_mib, api.engine) == (vm.vcpus, vm.memory_mib, vm.engine)
    assert api.info["source_drives"]["work"].endswith("work.ext4") and api.info["mac"] == vm.mac
    assert [s.name for s in h.vms.snapshots.all()] == ["s1"]
    with pytest.raises(Conflict, match="a snapshot named `s1` already exists"):
        await h.vms.snapshot("devbox", "s1", progress_log(h.progress))
    auto = await h.vms.snapshot("devbox", None, progress_log(h.progress))
    assert auto.name.startswith("devbox-")
    # Independent of the VM: deleting the VM keeps it; rm removes its files.
    await h.delete("devbox", force=True)
    assert h.vms.snapshots.get("s1").dir == snap.dir
    assert h.vms.delete_snapshot("s1") == "s1" and not d.exists()
    with pytest.raises(NotFound):
        h.vms.snapshots.get("s1")


async def test_snapshot_of_a_suspended_vm_keeps_it_suspended(h: Harness) -> None:
    vm = await h.create("devbox")
    await h.suspend("devbox")
    h.events.clear()
    snap = await h.vms.snapshot("devbox", "s2", progress_log(h.progress))
    assert h.events == [] and h.vms.get("devbox").state is VMState.SUSPENDED
    assert (Path(snap.dir) / "state" / "vmstate").read_bytes() == (
        h.vms.state_dir(vm) / "vmstate"
    ).read_bytes()
    assert snap.vm_state == "suspended"
    assert (await h.start("devbox")).state is VMState.RUNNING  # its own state still resumes


async def test_snapshot_refusals_and_failures_leave_nothing(h: Harness) -> None:
    await h.create("devbox")
    h.engine().fail_save = Injected("disk full")
    with pytest.raises(Injected):
        await h.vms.snapshot("devbox", "s3", progress_log(h.progress))
    assert h.vms.snapshots.all() == [] and "engine.resume:devbox" in h.events
    assert not h.paths.snapshots_dir.exists() or not any(h.paths.snapshots_dir.iterdir())
    h.engine().fail_save = None
    await h.stop("devbox")
    with pytest.raises(WrongState, match="is stopped; snapshot needs it running or suspended"):
        await h.vms.snapshot("devbox", "s3", progress_log(h.progress))


async def test_reconcile_removes_unfinished_snapshots(h: Harness) -> None:
    await h.create("devbox")
    good = await h.vms.snapshot("devbox", "good", progress_log(h.progress))
    half = await h.vms.snapshot("devbox", "half", progress_log(h.progress))
    h.store.update("snapshots", "id", half.id, {"state": "creating"})
    stray = h.paths.snapshots_dir / "stray"
    stray.mkdir()
    await h.restart()
    assert [s.name for s in h.vms.snapshots.all()] == ["good"]
    assert Path(good.dir).is_dir() and not Path(half.dir).exists() and not stray.exists()
