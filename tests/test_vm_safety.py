"""Crash safety and serialisation of the VM lifecycle, without root or a guest
(tests/vmservice_kit.py): operations on one VM never interleave, a delete or stop
of a VM being created rolls the create back first, a VM whose process dies is
noticed and stopped, and a restarted daemon reclaims whatever a killed one left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from banger.api.models import CreateVM
from banger.engines import process
from banger.engines.base import EngineHandle
from banger.errors import BangerError, Conflict
from banger.services.admission import Admission, default_boot_limit
from banger.services.readiness import BootWatch
from banger.vm import VMRecord, VMState
from tests.vmservice_kit import Kit, vm_kit


def _row(kit: Kit, name: str) -> VMRecord | None:
    row = kit.store.get("vms", "name", name)
    return VMRecord.from_row(row) if row else None


def _nothing_held(kit: Kit) -> None:
    assert kit.store.all("vms") == []
    assert all(not c.held for c in kit.caps), {c.name: c.held for c in kit.caps}
    assert kit.live_pids() == []
    assert not kit.paths.vms_dir.exists() or list(kit.paths.vms_dir.iterdir()) == []


async def _until(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("op", ["delete", "stop"])
async def test_delete_or_stop_during_disks_stage_rolls_the_create_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str
) -> None:
    """Reproduction 1: `vm delete --force` while the create is in its disks stage."""
    with vm_kit(tmp_path, monkeypatch) as kit:
        disks = kit.cap("disks")
        disks.gate = asyncio.Event()
        create = kit.create("r6")
        await asyncio.wait_for(disks.entered.wait(), 5)
        assert _row(kit, "r6") is not None and _row(kit, "r6").state == "creating"  # type: ignore[union-attr]

        if op == "delete":
            other = asyncio.create_task(kit.vms.delete("r6", kit.progress, force=True))
        else:
            other = asyncio.create_task(kit.vms.stop("r6", kit.progress, force=True))
        await asyncio.sleep(0.1)
        assert not other.done()  # waits for the disks step to finish, then its rollback
        disks.gate.set()
        await asyncio.wait_for(other, 5)
        with pytest.raises(asyncio.CancelledError):
            await create
        assert kit.engine.calls == []  # it never booted
        assert ("destroy", "r6") in disks.events
        _nothing_held(kit)


async def test_delete_while_booting_kills_the_engine_and_releases_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with vm_kit(tmp_path, monkeypatch) as kit:
        kit.ready.clear()  # the guest never answers on SSH
        create = kit.create("r7")
        await asyncio.wait_for(kit.engine.started.wait(), 5)
        pid = kit.engine.calls[0][1]
        vm = _row(kit, "r7")
        assert vm is not None and vm.handle is not None and vm.handle["pid"] == pid
        assert vm.tap == "tap-pool-9"  # recorded the moment it was leased

        assert await kit.vms.delete("r7", kit.progress, force=True) == "r7"
        assert create.done() and create.cancelled()
        assert not process.is_alive(pid, vm.handle["start_time"])
        _nothing_held(kit)


async def test_operations_on_one_vm_are_serialised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with vm_kit(tmp_path, monkeypatch) as kit:
        await kit.create("s1")
        order: list[str] = []
        real_halt = kit.vms._halt

        async def slow_halt(*a: object, **kw: object) -> None:
            order.append("halt-begin")
            await asyncio.sleep(0.2)
            await real_halt(*a, **kw)  # type: ignore[arg-type]
            order.append("halt-end")

        kit.vms._halt = slow_halt  # type: ignore[method-assign]
        stop = asyncio.create_task(kit.vms.stop("s1", kit.progress))
        await asyncio.sleep(0.05)
        start = asyncio.create_task(kit.vms.start("s1", kit.progress))
        delete = asyncio.create_task(kit.vms.delete("s1", kit.progress, force=True))
        await asyncio.wait_for(asyncio.gather(stop, start, delete), 10)
        assert order == ["halt-begin", "halt-end", "halt-begin", "halt-end"]
        # stop, then start booted it again, then delete stopped and removed it.
        assert [c for c, _ in kit.engine.calls].count("start") == 2
        _nothing_held(kit)


async def test_a_killed_engine_is_noticed_within_a_second_and_start_boots_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproduction 3: kill -9 of a running VM's hypervisor."""
    with vm_kit(tmp_path, monkeypatch) as kit:
        vm = await kit.create("w1")
        assert vm.state == "running" and vm.handle is not None
        os.kill(vm.handle["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        await _until(lambda: _row(kit, "w1").state == "stopped", 1.0)  # type: ignore[union-attr]
        assert time.monotonic() - t0 < 1.0
        after = _row(kit, "w1")
        assert after is not None and after.handle is None and after.tap is None
        assert after.last_error and "exited unexpectedly" in after.last_error
        assert all(not any(h.endswith(":runtime") for h in c.held) for c in kit.caps)

        again = await kit.vms.start("w1", kit.progress)
        assert again.state == "running" and again.last_error is None
        assert again.handle is not None and again.handle["pid"] != vm.handle["pid"]
        assert kit.engine.is_running(again.engine_handle)  # type: ignore[arg-type]
        await kit.vms.delete("w1", kit.progress, force=True)
        _nothing_held(kit)


async def test_a_guest_power_off_is_reported_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with vm_kit(tmp_path, monkeypatch) as kit:
        vm = await kit.create("p1")
        with kit.vms.console_log(vm).open("a") as f:
            f.write("[   12.0] reboot: Power down\n")
        os.kill(vm.handle["pid"], signal.SIGKILL)  # type: ignore[index]
        await _until(lambda: _row(kit, "p1").state == "stopped", 1.0)  # type: ignore[union-attr]
        assert _row(kit, "p1").last_error == "the guest powered off"  # type: ignore[union-attr]


def _spawn_for(kit: Kit, vm_id: str) -> process.Spawned:
    """A hypervisor-like process whose argv names the VM's directory, as QEMU's does."""
    run = kit.paths.vms_dir / vm_id / "run"
    run.mkdir(parents=True, exist_ok=True)
    return process.spawn(
        [sys.executable, "-c", "import time; time.sleep(600)", str(run)], log=run / "e.log"
    )


def _left_by_dead_daemon(kit: Kit, name: str, state: str, *, pid: bool, live: bool) -> VMRecord:
    vm = kit.vms.new_record(CreateVM(name=name))
    vm.state = VMState(state)
    vm.ip, vm.tap = "10.9.0.2", "tap-pool-9"
    (kit.paths.vms_dir / vm.id).mkdir(parents=True, exist_ok=True)
    for cap in kit.caps:
        cap.held |= {f"{vm.id}:persistent", f"{vm.id}:runtime"}
    if live:
        s = _spawn_for(kit, vm.id)
        if pid:
            vm.handle = EngineHandle("qemu", s.pid, s.start_time, "", {}).to_dict()
    elif pid:
        vm.handle = EngineHandle("qemu", 999_999, 1, "", {}).to_dict()
    kit.vms.repo.save(vm)
    return vm


async def test_the_next_daemon_reclaims_whatever_a_killed_one_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproduction 2 and its relatives: records a SIGKILLed daemon left mid-way."""
    with vm_kit(tmp_path, monkeypatch) as kit:
        _left_by_dead_daemon(kit, "c-pid", "creating", pid=True, live=True)
        _left_by_dead_daemon(kit, "c-nopid", "creating", pid=False, live=True)  # spawned, unsaved
        _left_by_dead_daemon(kit, "d-half", "deleting", pid=False, live=False)
        starting = _left_by_dead_daemon(kit, "s-half", "starting", pid=True, live=True)
        stopping = _left_by_dead_daemon(kit, "t-half", "stopping", pid=True, live=False)
        died = _left_by_dead_daemon(kit, "r-dead", "running", pid=True, live=False)
        alive = _left_by_dead_daemon(kit, "r-live", "running", pid=True, live=True)
        assert len(kit.live_pids()) == 4

        daemon = kit.rebuild()
        await daemon.reconcile()

        assert sorted(r["name"] for r in kit.store.all("vms")) == [
            "r-dead", "r-live", "s-half", "t-half"
        ]  # fmt: skip
        for vm in (starting, stopping, died):
            row = _row(kit, vm.name)
            assert row is not None and row.state == "stopped"
            assert row.handle is None and row.tap is None
        assert "during `vm start`" in (_row(kit, "s-half").last_error or "")  # type: ignore[union-attr]
        assert "exited unexpectedly" in (_row(kit, "r-dead").last_error or "")  # type: ignore[union-attr]
        live = _row(kit, "r-live")
        assert live is not None and live.state == "running" and live.tap == "tap-pool-9"
        assert kit.live_pids() == [live.handle["pid"]]  # type: ignore[index]
        gone = {vm_id for vm_id in (c.split(":")[0] for cap in kit.caps for c in cap.held)}
        assert gone == {alive.id, starting.id, stopping.id, died.id}  # only survivors own disks
        for cap in kit.caps:
            assert f"{alive.id}:runtime" in cap.held
            assert not {h for h in cap.held if h.endswith(":runtime")} - {f"{alive.id}:runtime"}

        # The re-adopted VM is watched like any other.
        os.kill(live.handle["pid"], signal.SIGKILL)  # type: ignore[index]
        await _until(lambda: _row(kit, "r-live").state == "stopped", 1.0)  # type: ignore[union-attr]
        await daemon.watcher.close()


async def test_boots_beyond_the_limit_wait_in_a_visible_queued_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with vm_kit(tmp_path, monkeypatch, boot_limit=1) as kit:
        kit.ready.clear()
        first = kit.create("q1")
        await asyncio.wait_for(kit.engine.started.wait(), 5)
        second = kit.create("q2")
        await _until(lambda: ("queued", "1 booting, 1 waiting; 1 boot(s) at a time") in kit.events)
        assert len(kit.engine.calls) == 1  # the second has not spawned
        assert _row(kit, "q2").state == "creating"  # type: ignore[union-attr]
        kit.ready.set()
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert len(kit.engine.calls) == 2
        assert second.result().timings["queued"] > 0


async def test_memory_beyond_the_overcommit_budget_is_refused_with_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with vm_kit(tmp_path, monkeypatch, host_mib=2048) as kit:
        await kit.create("m1", memory="1536M")
        with pytest.raises(Conflict) as err:
            await kit.create("m2", memory="1G")
        assert "needs 1024 MiB, VMs hold 1536 MiB, and the budget is 2048 MiB" in err.value.message
        assert "memory_overcommit" in (err.value.hint or "")
        await kit.vms.stop("m1", kit.progress)
        await kit.create("m2", memory="1G")  # a stopped VM holds no memory
        with pytest.raises(Conflict):
            await kit.vms.start("m1", kit.progress)


def test_default_boot_limit_follows_cores_and_memory() -> None:
    assert default_boot_limit(2, 24 * 1024) == 2
    assert default_boot_limit(16, 8 * 1024) == 4
    assert default_boot_limit(8, 1024) == 1
    adm = Admission(2, 1.5, 1000)
    adm.check_memory("x", 500, 1000)  # 1500 <= 1.5 x 1000
    with pytest.raises(Conflict):
        adm.check_memory("x", 501, 1000)


def test_boot_watch_fails_fast_on_panic_and_on_silence(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("booting\n")
    now = [0.0]
    watch = BootWatch(console, lambda: True, stall=10, clock=lambda: now[0])
    watch()
    now[0] = 9.0
    watch()  # quiet, but not for long
    with console.open("a") as f:
        f.write("still going\n")
    now[0] = 18.0
    watch()  # progress resets the clock
    now[0] = 28.5
    with pytest.raises(BangerError, match="no progress for 10s"):
        watch()

    with console.open("a") as f:
        f.write("[ 3.1] Kernel panic - not syncing: VFS: Unable to mount root fs\n")
    with pytest.raises(BangerError, match="Kernel panic - not syncing: VFS"):
        BootWatch(console, lambda: True, stall=10)()
    with pytest.raises(BangerError, match="exited while waiting for SSH"):
        BootWatch(console, lambda: False, stall=10)()


async def test_disks_recover_removes_unowned_vm_dirs_and_partial_pool_entries(
    tmp_path: Path,
) -> None:
    from banger.artifacts.diskpool import ROOTFS, WORK
    from banger.capabilities.workdisk import WorkDiskCapability

    vms_dir = tmp_path / "vms"
    cap = WorkDiskCapability(vms_dir, "ssh-ed25519 AAAA test", pool_size=2)
    (vms_dir / "owned").mkdir(parents=True)
    (vms_dir / "stray").mkdir()
    key = cap.pool.dir / "k"
    ready, building, half_taken = key / "a1", key / ".building-x", key / "b2"
    for entry in (ready, building, half_taken):
        entry.mkdir(parents=True)
        (entry / ROOTFS).write_bytes(b"r")
    (ready / WORK).write_bytes(b"w")
    (building / WORK).write_bytes(b"w")  # a daemon died before publishing it
    # half_taken: the rootfs was moved out, then the daemon died

    await cap.reclaim([_owned()])
    assert sorted(p.name for p in vms_dir.iterdir()) == ["owned"]
    assert sorted(p.name for p in key.iterdir()) == ["a1"]
    assert cap.pool._ready("k") == [ready]


def _owned() -> VMRecord:
    from tests.records import vm_record

    vm = vm_record("owned", None)
    vm.id = "owned"
    return vm


async def test_every_crash_point_an_operation_passes_is_a_documented_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from banger.daemon.testhooks import POINTS

    with vm_kit(tmp_path, monkeypatch) as kit:
        passed: list[str] = []
        kit.vms.point = passed.append
        await kit.create("p")
        await kit.vms.stop("p", kit.progress)
        await kit.vms.start("p", kit.progress)
        await kit.vms.suspend("p", kit.progress)
        await kit.vms.start("p", kit.progress)
        await kit.vms.delete("p", kit.progress, force=True)
        assert passed == [
            "create:recorded", "create:disks", "create:network", "create:attached",
            "create:spawned", "create:booted", "create:ready",
            "stop:recorded", "stop:halted",
            "start:recorded", "start:attached", "start:spawned", "start:booted",
            "suspend:recorded", "suspend:saved",
            "resume:recorded", "resume:attached", "resume:spawned", "resume:booted",
            "delete:halted", "delete:recorded", "delete:network", "delete:disks",
        ]  # fmt: skip
        assert set(passed) <= set(POINTS)
