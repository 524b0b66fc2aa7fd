"""Suspend and resume in the real VMService, on the recording fake engine: what is
saved, released and restored, the refusals, and what a new daemon does with a
suspend or resume a kill -9 cut short. (A real guest: test_snapshots.py.)"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import banger.services.launch as launch_mod
import banger.services.vms as vms_mod
from banger.api.models import SetVM
from banger.engines.state import StateUnusable
from banger.errors import BangerError, Conflict, NotFound
from banger.vm import VMRecord, VMState, WrongState
from tests.fakes import Harness, Injected, progress_log

CAPS = ["disks", "vsock", "network", "nat", "dns"]


@pytest.fixture
def h(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    harness = Harness(monkeypatch)
    monkeypatch.setattr(launch_mod, "apply_identity", harness.guest.identity)
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
    # Its sshd took a login before: its answer is enough (no new first login); the
    # clock is set meanwhile, and both are done before the start is.
    assert "ssh:devbox:banner" in h.events and "ssh:devbox" not in h.events
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


async def test_resume_sets_the_clock_while_sshd_answers_and_waits_for_both(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await h.create("devbox")
    await h.suspend("devbox")
    clock: list[str] = []

    async def slow_clock(agent: dict[str, Any] | None) -> dict[str, Any]:
        clock.append("started")
        await asyncio.sleep(0.3)  # longer than the fake SSH wait
        clock.append("set")
        return {"was_off_s": 1.0}

    monkeypatch.setattr(launch_mod, "set_guest_clock", slow_clock)
    out = await h.start("devbox")
    assert out.state is VMState.RUNNING and clock == ["started", "set"]
    assert out.timings["clock"] >= 0.3 and "ssh" in out.timings
    # sshd never answers: the resume fails and the clock request does not outlive it.
    await h.suspend("devbox")
    clock.clear()
    h.guest.ssh_error = Injected("no ssh")
    with pytest.raises(Injected):
        await h.start("devbox")
    await asyncio.sleep(0.4)
    assert "set" not in clock  # cancelled (before or while it ran)


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


@pytest.mark.parametrize("ran", ["no process", False, None, True])
async def test_reconcile_of_a_resume_cut_short(h: Harness, ran: bool | str | None) -> None:
    vm = await h.create("devbox")
    handle = vm.to_row()["handle"]
    await h.suspend("devbox")
    update: dict[str, object] = {"state": "resuming"}
    if ran != "no process":  # the restoring process exists; the guest ran, or not, or ?
        update["handle"] = handle
        h.engine().alive[vm.engine_handle.pid] = h.engine().last  # type: ignore[union-attr]
        h.engine().ran = None if ran is None else bool(ran)
    h.store.update("vms", "id", vm.id, update)
    await h.restart()
    got = h.vms.get("devbox")
    if ran is True:  # adopted: it runs on, its stale state gone, its clock set
        assert got.state is VMState.RUNNING and got.handle == handle and got.last_error is None
        assert h.engine().alive and not h.vms.state_dir(vm).exists()
        await asyncio.sleep(0)
        assert "clock:hybrid-vsock" in h.events
        return
    assert h.engine().alive == {} and got.handle is None and got.tap is None
    if ran is None:  # the engine cannot tell: the state may be stale, so it goes
        assert got.state is VMState.STOPPED and not h.vms.state_dir(vm).exists()
        assert "saved state was discarded" in (got.last_error or "")
    else:  # the guest never ran: still suspended, its state intact
        assert got.state is VMState.SUSPENDED and h.vms.state_dir(vm).is_dir()
        assert (await h.start("devbox")).state is VMState.RUNNING
        return
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
    # The running VM the cut snapshot paused carries on.
    assert "engine.resume:devbox" in h.events and h.vms.get("devbox").state is VMState.RUNNING


# -- forks: vm create --from SNAP ----------------------------------------------------------


async def test_a_fork_restores_the_snapshot_on_its_own_disks_with_its_own_identity(
    h: Harness,
) -> None:
    src = await h.create("devbox", nat=True)
    snap = await h.vms.snapshot("devbox", "s1", progress_log(h.progress))
    (h.paths.vm_dir(src.id) / "work.ext4").write_bytes(b"written after s1")
    h.events.clear()
    forks = [await h.create(n, from_snapshot="s1") for n in ("c", "d")]
    for vm in forks:
        assert vm.state is VMState.RUNNING and vm.nat
        assert (vm.image, vm.kernel, vm.engine) == (src.image, src.kernel, src.engine)
        assert (vm.vcpus, vm.memory_mib, vm.work_bytes) == (
            src.vcpus,
            src.memory_mib,
            src.work_bytes,
        )
        assert {"restore", "identity", "ssh"} <= set(vm.timings) and "boot" not in vm.timings
        # Its own copies of the disks as of s1 (not the later write, not shared).
        assert _disks(h, vm) == {"rootfs.ext4": b"root", "work.ext4": b"work"}
    assert "engine.restore:c" in h.events and "engine.start:c" not in h.events
    # Off the network from the restore until it has its own identity: held on the
    # host (its TAP down, whatever the engine) and its links cut where the engine can.
    ev = h.events
    assert ev.index("network.attach:c") < ev.index("network.hold:c:on")
    assert ev.index("network.hold:c:on") < ev.index("engine.restore:c")
    assert ev.index("engine.links:c:down") < ev.index("identity:c")
    # sshd listens once /identity answered: the login starts without a banner probe.
    assert ev.index("identity:c") < ev.index("engine.links:c:eth0:up") < ev.index("ssh:c:now")
    assert ev.index("identity:c") < ev.index("network.hold:c:off") < ev.index("ssh:c:now")
    assert all(
        s is not None and s.dir == Path(snap.dir) / "state" for s in h.engine().restored[-2:]
    )
    configs = h.engine().configs[-2:]
    for vm, cfg in zip(forks, configs, strict=True):
        assert all(str(h.paths.vm_dir(vm.id)) in str(d.path) for d in cfg.drives)
        assert cfg.nics[0].mac == vm.mac and cfg.vsock_cid == vm.vsock_cid
    bodies = h.guest.identities[-2:]
    assert [b["hostname"] for b in bodies] == ["c", "d"]
    assert [b["mac"] for b in bodies] == [f.mac for f in forks]
    assert [b["ip"] for b in bodies] == [f.ip for f in forks]
    assert all(b["work_device"] is None for b in bodies)  # /root is mounted already
    # Nothing shared between the source and the two forks.
    for key in ("mac", "ip", "vsock_cid"):
        assert len({getattr(v, key) for v in (src, *forks)}) == 3, key
    for key in ("machine_id", "host_key", "host_key_pub"):
        assert len({b[key] for b in bodies}) == 2, key
    known = h.paths.known_hosts.read_text()
    assert all(b["host_key_pub"].split()[1] in known for b in bodies)
    # The snapshot outlives its forks' source, and the forks outlive the snapshot.
    await h.delete("devbox", force=True)
    h.vms.delete_snapshot("s1")
    assert (await h.suspend("c")).state is VMState.SUSPENDED
    assert (await h.start("c")).state is VMState.RUNNING


async def test_a_fork_refuses_what_would_change_the_snapshots_machine(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await h.create("devbox")
    await h.vms.snapshot("devbox", "s1", progress_log(h.progress))
    with pytest.raises(BangerError, match=r"has the snapshot's machine; --memory, --cold cannot"):
        await h.create("c", from_snapshot="s1", memory="2G", cold=True)
    with pytest.raises(NotFound, match="no snapshot named `nope`"):
        await h.create("c", from_snapshot="nope")
    # An engine whose restored guest would keep its source's vsock CID (Firecracker,
    # QEMU with vhost-vsock) makes no forks.
    monkeypatch.setattr(vms_mod, "can_restore", lambda engine: False)
    with pytest.raises(Conflict, match="would keep its source's vsock CID"):
        await h.create("c", from_snapshot="s1")
    assert [v.name for v in h.vms.all()] == ["devbox"]


async def test_a_failed_fork_rolls_back_and_keeps_the_snapshot(h: Harness) -> None:
    await h.create("devbox")
    snap = await h.vms.snapshot("devbox", "s1", progress_log(h.progress))
    h.guest.ssh_error = Injected("no ssh")
    with pytest.raises(Injected):
        await h.create("c", from_snapshot="s1")
    assert [v.name for v in h.vms.all()] == ["devbox"]
    assert len(h.engine().alive) == 1
    assert (Path(snap.dir) / "state" / "state.json").is_file()
    h.guest.ssh_error = None
    assert (await h.create("c", from_snapshot="s1")).state is VMState.RUNNING
