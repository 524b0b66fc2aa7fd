"""Saved machine states on both engines: what a state records and refuses, the
Firecracker snapshot requests against the API contract and the stand-in, and a
real save → kill → restore of a tiny guest on QEMU and through the stand-in.

The Debian guest's suspend/resume (tmux, clock, uptime) is in test_snapshots.py."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from banger.engines import process
from banger.engines.base import Drive, EngineHandle, GuestConfig
from banger.engines.firecracker import (
    ApiRequest,
    FirecrackerEngine,
    build_restore_requests,
    build_save_requests,
)
from banger.engines.guest_config import build_guest_config
from banger.engines.qemu import QemuEngine
from banger.engines.state import (
    STATE_META,
    StateUnusable,
    has_state,
    machine_fit,
    read_state,
    write_state,
)
from banger.errors import BangerError
from banger.system import find_tool
from tests.fc_validator import default_spec
from tests.guest_kit import MARKER, build_initramfs, find_test_kernel

REPO = Path(__file__).resolve().parents[1]
STANDIN = REPO / "tests" / "standin" / "firecracker"


def _config(tmp_path: Path, **kw: Any) -> GuestConfig:
    for name in ("vmlinux", "rootfs.ext4", "work.ext4"):
        if not (tmp_path / name).exists():
            (tmp_path / name).write_bytes(b"x")
    args: dict[str, Any] = dict(
        vm_id="vm-1",
        name="box",
        kernel=tmp_path / "vmlinux",
        initrd=None,
        rootfs=tmp_path / "rootfs.ext4",
        work_disk=tmp_path / "work.ext4",
        vcpus=2,
        memory_mib=512,
        run_dir=tmp_path / "run",
        ip="10.0.0.2",
        gateway="10.0.0.1",
        tap="tap-a",
        vsock_cid=42,
    )
    args.update(kw)
    return build_guest_config(**args)


def _fit(cfg: GuestConfig, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(engine="qemu", version="7.2.22", accel="tcg", agent="vsock")
    args.update(kw)
    return machine_fit(cfg, **args)


def _saved(tmp_path: Path, cfg: GuestConfig) -> Path:
    dest = tmp_path / "state"
    dest.mkdir()
    (dest / "vmstate").write_bytes(b"s" * 1000)
    write_state(dest, _fit(cfg), ["vmstate"], {d.drive_id: str(d.path) for d in cfg.drives})
    return dest


# -- the state record -----------------------------------------------------------------


def test_state_records_what_it_fits_and_refuses_each_mismatch(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    saved = read_state(_saved(tmp_path, cfg))
    assert saved.files == {"vmstate": 1000}
    assert saved.fit["devices"] == ["drive:rootfs", "drive:work", "nic:eth0", "agent:vsock"]
    assert saved.mismatch(_fit(cfg)) is None
    saved.check(_fit(cfg))
    # The TAP and MAC are the host side: a restore onto another TAP fits.
    assert saved.mismatch(_fit(_config(tmp_path, tap="tap-b"))) is None
    no_nic = _config(tmp_path, tap=None, ip=None, gateway=None)
    cases = [
        (_fit(cfg, engine="firecracker"), "engine is firecracker but the saved state needs qemu"),
        (_fit(cfg, version="8.2.0"), "engine version is 8.2.0 but the saved state needs 7.2.22"),
        (_fit(cfg, accel="kvm"), "accelerator is kvm but the saved state needs tcg"),
        (_fit(_config(tmp_path, vcpus=4)), "vCPUs is 4 but the saved state needs 2"),
        (_fit(_config(tmp_path, memory_mib=1024)), "memory is 1024 MiB but the saved state "
                                                   "needs 512 MiB"),
        (_fit(no_nic), "device set is drive:rootfs, drive:work, agent:vsock but"),
        (_fit(cfg, agent="virtio-serial"), "device set is"),
    ]  # fmt: skip
    for want, needle in cases:
        with pytest.raises(StateUnusable) as exc:
            saved.check(want)
        assert needle in exc.value.message
        assert exc.value.message.startswith(f"the saved state in {saved.dir} does not fit: ")
        assert "--cold" in exc.value.hint
    # A kernel rebuilt in place (other size) no longer fits.
    (tmp_path / "vmlinux").write_bytes(b"new kernel")
    with pytest.raises(StateUnusable, match=r"kernel is .*vmlinux \(10 bytes\) but the saved"):
        saved.check(_fit(cfg))


def test_truncated_missing_or_interrupted_state_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    dest = _saved(tmp_path, cfg)
    assert has_state(dest)
    os.truncate(dest / "vmstate", 400)
    with pytest.raises(StateUnusable, match=r"vmstate is truncated or altered: 400 bytes, saved"):
        read_state(dest)
    (dest / "vmstate").unlink()
    with pytest.raises(StateUnusable, match=r"file .*vmstate is missing"):
        read_state(dest)
    (dest / STATE_META).write_text("{not json")
    with pytest.raises(StateUnusable, match=r"state.json is unreadable"):
        read_state(dest)
    # A save cut short never wrote state.json: there is no state at all.
    (dest / STATE_META).unlink()
    assert not has_state(dest)
    with pytest.raises(StateUnusable, match=r"^no saved state in "):
        read_state(dest)


async def test_engines_refuse_a_misfit_before_launching_anything(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    saved = read_state(_saved(tmp_path, cfg))  # saved by "qemu 7.2.22"
    engine = QemuEngine(accel="tcg", vhost_vsock=True)
    engine.__dict__["version"] = "9.9.9"  # as if QEMU was upgraded since
    engine.__dict__["qemu_bin"] = "/bin/true"
    with pytest.raises(StateUnusable, match=r"engine version is 9\.9\.9 but the saved state"):
        await engine.start(cfg, restore=saved)
    assert not (cfg.run_dir / "qemu.log").exists()  # nothing was launched


# -- Firecracker: requests against the contract, and the stand-in ----------------------


def test_firecracker_snapshot_requests_conform(tmp_path: Path) -> None:
    spec = default_spec()
    cfg = _config(tmp_path)
    save = build_save_requests(tmp_path / "st")
    assert save == [
        ApiRequest("PATCH", "/vm", {"state": "Paused"}),
        ApiRequest(
            "PUT",
            "/snapshot/create",
            {
                "snapshot_type": "Full",
                "snapshot_path": str(tmp_path / "st" / "vmstate"),
                "mem_file_path": str(tmp_path / "st" / "memory"),
            },
        ),
    ]
    dest = tmp_path / "st"
    dest.mkdir()
    for name in ("vmstate", "memory"):
        (dest / name).write_bytes(b"x")
    drives = {d.drive_id: str(d.path) for d in cfg.drives}
    saved = write_state(dest, _fit(cfg), ["vmstate", "memory"], drives)
    # Same VM: one load that resumes, with this boot's TAP and vsock socket.
    same = build_restore_requests(cfg, saved, log_path=tmp_path / "fc.log")
    assert [(r.method, r.path) for r in same] == [("PUT", "/logger"), ("PUT", "/snapshot/load")]
    assert same[1].body == {
        "snapshot_path": str(dest / "vmstate"),
        "mem_backend": {"backend_type": "File", "backend_path": str(dest / "memory")},
        "resume_vm": True,
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap-a"}],
        "vsock_override": {"uds_path": str(cfg.run_dir / "vsock.sock")},
    }
    # Other disks (a fork): load paused, point the drives at them, then resume.
    other = tmp_path / "fork"
    other.mkdir()
    (other / "work.ext4").write_bytes(b"x")
    fork = _config(tmp_path, work_disk=other / "work.ext4", tap="tap-b", vsock_cid=None)
    moved = build_restore_requests(fork, saved)
    assert [(r.method, r.path) for r in moved] == [
        ("PUT", "/snapshot/load"),
        ("PATCH", "/drives/work"),
        ("PATCH", "/vm"),
    ]
    assert moved[0].body["resume_vm"] is False and "vsock_override" not in moved[0].body
    assert moved[1].body == {"drive_id": "work", "path_on_host": str(other / "work.ext4")}
    assert moved[2].body == {"state": "Resumed"}
    for req in [*save, *same, *moved]:
        spec.validate(req.method, req.path, req.body)


@pytest.fixture
def fake_fc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    record = tmp_path / "requests.jsonl"
    monkeypatch.setenv("PATH", f"{STANDIN.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_FC_RECORD", str(record))
    monkeypatch.setenv("FAKE_FC_GUEST", "none")
    return record


def _recorded(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


async def test_firecracker_save_and_restore_through_the_standin(
    fake_fc: Path, tmp_path: Path
) -> None:
    cfg = _config(tmp_path)
    engine = FirecrackerEngine()
    handle = await engine.start(cfg)
    handles = [handle]
    try:
        saved = await engine.save_state(handle, cfg, tmp_path / "state")
        assert set(saved.files) == {"vmstate", "memory"}
        assert saved.fit["engine"] == "firecracker" and saved.fit["accel"] == "stand-in"
        assert saved.fit["devices"][-1] == "agent:hybrid-vsock"
        await engine.kill(handle)
        fake_fc.unlink()

        # Restored as a fork would be: another TAP, another work disk.
        other = tmp_path / "other"
        other.mkdir()
        (other / "work.ext4").write_bytes(b"x")
        fork = _config(tmp_path, work_disk=other / "work.ext4", tap="tap-b")
        handle = await engine.start(fork, restore=read_state(tmp_path / "state"))
        handles.append(handle)
        seen = _recorded(fake_fc)
        assert [(r["method"], r["path"], r["status"]) for r in seen] == [
            ("PUT", "/logger", 204),
            ("PUT", "/snapshot/load", 204),
            ("PATCH", "/drives/work", 204),
            ("PATCH", "/vm", 204),
        ]
        assert handle.extra["agent"]["transport"] == "hybrid-vsock"
        import httpx

        async with httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=handle.control_socket), base_url="http://x"
        ) as api:
            info = (await api.get("/")).json()
            vm = (await api.get("/vm/config")).json()
        assert info["state"] == "Running"
        assert vm["network-interfaces"][0]["host_dev_name"] == "tap-b"
        work = next(d for d in vm["drives"] if d["drive_id"] == "work")
        assert work["path_on_host"] == str(other / "work.ext4")
        await engine.pause(handle)
        await engine.resume(handle)
        # A warm create resizes the work disk of the running guest: the same path
        # again, which Firecracker reopens (the stand-in: QMP block_resize).
        fake_fc.unlink()
        await engine.resize_drive(handle, "work", 4 << 20)
        (patch,) = _recorded(fake_fc)
        assert (patch["method"], patch["path"], patch["status"]) == ("PATCH", "/drives/work", 204)
        assert patch["body"] == {"drive_id": "work", "path_on_host": str(other / "work.ext4")}
        default_spec().validate("PATCH", "/drives/work", patch["body"])
    finally:
        for h in handles:
            process.kill(h.pid, h.start_time)


# -- real guests: save, kill, restore ------------------------------------------------

QEMU = find_tool("qemu-system-x86_64")
BOOT_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def tiny_guest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    try:
        kernel = find_test_kernel()
        initrd = build_initramfs(tmp_path_factory.mktemp("initrd") / "initrd.gz", kernel.modules)
    except BangerError as exc:
        pytest.skip(f"no test guest: {exc}")
    return kernel.kernel, initrd


@pytest.fixture
async def handles() -> AsyncIterator[list[EngineHandle]]:
    hs: list[EngineHandle] = []
    yield hs
    for h in hs:
        process.kill(h.pid, h.start_time)
        await process.wait_gone(h.pid, h.start_time, 5)


def _tick_config(tmp_path: Path, guest: tuple[Path, Path], console: Path) -> GuestConfig:
    kernel, initrd = guest
    disk = tmp_path / "rootfs.img"
    disk.write_bytes(b"")
    os.truncate(disk, 8 << 20)
    return GuestConfig(
        vm_id="tick",
        name="tick",
        kernel=kernel,
        initrd=initrd,
        cmdline="console=ttyS0 panic=-1 quiet banger.test.tick",
        vcpus=1,
        memory_mib=256,
        drives=(Drive("rootfs", disk, is_root=True),),
        nics=(),
        run_dir=tmp_path / "run",
        console_log=console,
    )


TICK = re.compile(r"TICK ([0-9.]+)")


async def _ticks(console: Path, after: int, timeout: float = BOOT_TIMEOUT) -> list[float]:
    """Uptimes the guest printed past byte `after` of its console (waits for one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = console.read_bytes()[after:].decode(errors="replace") if console.exists() else ""
        found = [float(m) for m in TICK.findall(text)]
        if found:
            return found
        await asyncio.sleep(0.1)
    pytest.fail(f"no TICK on the console within {timeout}s")


@pytest.mark.boot
@pytest.mark.parametrize("engine_name", ["qemu", "qemu-ram-file", "firecracker"])
async def test_a_saved_guest_carries_on_where_it_was(
    engine_name: str,
    tmp_path: Path,
    tiny_guest: tuple[Path, Path],
    handles: list[EngineHandle],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The guest prints its uptime every 0.2 s. After save → kill → restore it goes on
    counting from where it was (no second boot: the marker is printed once)."""
    monkeypatch.delenv("FAKE_FC_GUEST", raising=False)
    console = tmp_path / "console.log"
    cfg = _tick_config(tmp_path, tiny_guest, console)
    if engine_name == "qemu-ram-file":  # a golden boot: RAM in a file of its own
        ram = tmp_path / "ram"
        ram.write_bytes(b"")
        os.truncate(ram, cfg.memory_mib << 20)
        cfg = dataclasses.replace(cfg, memory_file=ram)
    engine: QemuEngine | FirecrackerEngine = (
        FirecrackerEngine(str(STANDIN)) if engine_name == "firecracker" else QemuEngine()
    )
    handle = await engine.start(cfg)
    handles.append(handle)
    await _ticks(console, 0)
    await asyncio.sleep(1)
    saved = await engine.save_state(handle, cfg, tmp_path / "state")
    await engine.kill(handle)
    assert not engine.is_running(handle)
    before = max(TICK.findall(console.read_text(errors="replace")), key=float)
    mark = console.stat().st_size

    ram_digest = None
    if cfg.memory_file is not None:
        # The RAM stayed out of the stream: it is the state's `ram`, mapped on restore.
        assert set(saved.files) == {"vmstate", "ram"} and not cfg.memory_file.exists()
        assert saved.files["vmstate"] < 4 << 20 < saved.files["ram"]
        ram_digest = hashlib.sha256(saved.path("ram").read_bytes()).hexdigest()

    handle = await engine.start(cfg, restore=read_state(saved.dir))
    handles.append(handle)
    after = await _ticks(console, mark)
    assert float(before) <= after[0] < float(before) + 5
    assert console.read_text(errors="replace").count(MARKER) == 1
    if ram_digest is not None:  # a restore never writes into the saved memory
        assert hashlib.sha256(saved.path("ram").read_bytes()).hexdigest() == ram_digest

    # Saving again and resuming in place (what a snapshot does) keeps it running.
    await engine.save_state(handle, cfg, tmp_path / "state2")
    await engine.resume(handle)
    mark = console.stat().st_size
    assert await _ticks(console, mark, timeout=30)
