"""The QEMU microvm engine: argv building, failure handling, and real boots.

The boot tests start real guests (TCG where KVM cannot run them) from a tiny
busybox initramfs, see `guest_kit`. Every started VM is killed by pid in the
fixture's teardown, so a failing assertion never leaves QEMU running.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from banger.engines import process
from banger.engines.base import EngineHandle, GuestConfig
from banger.engines.guest_config import build_guest_config
from banger.engines.qemu import QemuEngine, build_argv, host_tsc_khz
from banger.errors import BangerError, CommandFailed, ToolMissing
from banger.system import find_tool
from tests.guest_kit import MARKER, GuestKernel, build_initramfs, find_test_kernel

QEMU = find_tool("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")


def _config(tmp_path: Path, **kw: Any) -> GuestConfig:
    for name in ("vmlinux", "initrd", "root,fs.ext4", "work.ext4"):
        (tmp_path / name).write_bytes(b"x")
    args: dict[str, Any] = dict(
        vm_id="vm1",
        name="devbox",
        kernel=tmp_path / "vmlinux",
        initrd=tmp_path / "initrd",
        rootfs=tmp_path / "root,fs.ext4",
        work_disk=tmp_path / "work.ext4",
        vcpus=2,
        memory_mib=512,
        run_dir=tmp_path / "run",
        ip="172.30.0.9",
        gateway="172.30.0.1",
        tap="tap-pool-1",
        vsock_cid=7,
    )
    args.update(kw)
    return build_guest_config(**args)


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


# -- argv ---------------------------------------------------------------------------


def test_argv_tcg_with_virtio_serial_agent(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    argv = build_argv(cfg, qemu_bin="/q", accel="tcg", vhost_vsock=False, tsc_khz=2_600_000)
    run = cfg.run_dir
    assert argv[0] == "/q"
    assert _opt(argv, "-M") == ["microvm,acpi=on,isa-serial=on,rtc=on"]  # PIT stays on TCG
    assert (_opt(argv, "-accel"), _opt(argv, "-cpu")) == (["tcg"], ["max"])
    assert (_opt(argv, "-smp"), _opt(argv, "-m")) == (["2"], ["512M"])
    assert {"-nodefaults", "-no-user-config", "-nographic", "-no-reboot"} <= set(argv)
    assert _opt(argv, "-kernel") == [str(cfg.kernel)]
    assert _opt(argv, "-initrd") == [str(cfg.initrd)]
    assert _opt(argv, "-append") == [cfg.cmdline + " tsc_early_khz=2600000 tsc=reliable"]
    root = str(tmp_path / "root,,fs.ext4")  # QEMU's comma escape
    assert _opt(argv, "-drive") == [
        f"id=rootfs,file={root},format=raw,if=none,cache=writeback,discard=unmap",
        f"id=work,file={tmp_path}/work.ext4,format=raw,if=none,cache=writeback,discard=unmap",
    ]
    assert _opt(argv, "-netdev") == ["tap,id=eth0,ifname=tap-pool-1,script=no,downscript=no"]
    assert _opt(argv, "-device") == [
        "virtio-blk-device,drive=rootfs,serial=rootfs",  # first: the guest's vda
        "virtio-blk-device,drive=work,serial=work",
        f"virtio-net-device,netdev=eth0,mac={cfg.nics[0].mac}",
        "virtio-serial-device",
        "virtserialport,chardev=agent,name=banger.agent",
    ]
    assert _opt(argv, "-chardev") == [
        f"file,id=console,path={run}/console.log,append=on",
        f"socket,id=qmp,path={run}/qmp.sock,server=on,wait=off",
        f"socket,id=agent,path={run}/agent.sock,server=on,wait=off",
    ]
    assert _opt(argv, "-serial") == ["chardev:console"]
    assert _opt(argv, "-mon") == ["chardev=qmp,mode=control"]


def test_argv_kvm_with_vhost_vsock(tmp_path: Path) -> None:
    cfg = _config(tmp_path, initrd=None, ip=None, gateway=None, tap=None)
    argv = build_argv(cfg, qemu_bin="/q", accel="kvm", vhost_vsock=True, tsc_khz=2_600_000)
    assert _opt(argv, "-M") == ["microvm,acpi=on,isa-serial=on,rtc=on,pit=off,pic=off"]
    assert (_opt(argv, "-accel"), _opt(argv, "-cpu")) == (["kvm"], ["host"])
    assert _opt(argv, "-append") == [cfg.cmdline]  # kvmclock: no TSC hint needed
    assert "-initrd" not in argv and "-netdev" not in argv
    assert "vhost-vsock-device,guest-cid=7" in _opt(argv, "-device")
    assert "virtio-serial-device" not in argv


def test_argv_ram_in_a_file_shared_to_save_private_to_restore(tmp_path: Path) -> None:
    """A golden boot keeps RAM in its file (shared, so the save leaves it there); a
    restore maps a saved `ram` copy-on-write, under QEMU's own RAM block name."""
    cfg = _config(tmp_path)
    ram = tmp_path / "r,am"
    for shared, share in ((True, "on"), (False, "off")):
        argv = build_argv(
            cfg, qemu_bin="/q", accel="tcg", vhost_vsock=False, ram_file=ram, ram_shared=shared
        )
        assert _opt(argv, "-M") == [
            "microvm,acpi=on,isa-serial=on,rtc=on,memory-backend=microvm.ram"
        ]
        assert _opt(argv, "-object") == [
            f"memory-backend-file,id=microvm.ram,size=512M,mem-path={tmp_path}/r,,am,share={share}"
        ]
        assert _opt(argv, "-m") == ["512M"]
    assert "-object" not in build_argv(cfg, qemu_bin="/q", accel="tcg", vhost_vsock=False)


def test_argv_read_only_drive(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    ro = GuestConfig(
        **{**cfg.__dict__, "drives": (cfg.drives[0].__class__("seed", cfg.kernel, True),)}
    )
    drive = _opt(build_argv(ro, qemu_bin="/q", accel="tcg", vhost_vsock=False), "-drive")[0]
    assert drive.endswith(",readonly=on")


def test_host_tsc_khz() -> None:
    info = "cpu MHz\t\t: 2596.138\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n"
    assert host_tsc_khz(info) == 2596138
    assert host_tsc_khz(info.replace("constant_tsc ", "")) is None
    assert host_tsc_khz("flags : constant_tsc\n") is None


async def test_missing_qemu_is_a_clear_error(tmp_path: Path) -> None:
    engine = QemuEngine(str(tmp_path / "nope"), kvm_cache=tmp_path / "kvm.json")
    avail = engine.availability()
    assert not avail.ok and "not installed" in avail.detail
    with pytest.raises(ToolMissing):
        await engine.start(_config(tmp_path))


@needs_qemu
def test_availability_names_version_accel_and_reason(tmp_path: Path) -> None:
    avail = QemuEngine(kvm_cache=tmp_path / "kvm.json").availability()
    assert avail.ok
    assert avail.detail.startswith("qemu ") and "accel=" in avail.detail
    if "accel=tcg" in avail.detail:
        assert "(kvm: " in avail.detail  # doctor shows why KVM is not used
    forced = QemuEngine(accel="tcg", kvm_cache=tmp_path / "kvm.json")
    assert forced.accel() == "tcg" and forced.availability().ok
    kvm = QemuEngine(accel="kvm", kvm_cache=tmp_path / "kvm.json")
    if "accel=tcg" in avail.detail:  # KVM cannot run guests here: forcing it is refused
        assert not kvm.availability().ok
        assert "accel=kvm requested but" in kvm.availability().detail


@needs_qemu
async def test_failed_start_reports_qemu_error_and_leaves_nothing(tmp_path: Path) -> None:
    cfg = _config(tmp_path, ip=None, gateway=None, tap=None)  # garbage "kernel"
    engine = QemuEngine(accel="tcg")
    with pytest.raises(CommandFailed, match=r"exited (during start|immediately)") as exc:
        await engine.start(cfg)
    assert "kernel" in exc.value.message.lower() or "linux" in exc.value.message.lower()
    assert not _running_qemu_with(cfg.run_dir)


def _running_qemu_with(run_dir: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(run_dir).encode() in cmd and process.pid_start_time(int(proc.name)):
                found.append(int(proc.name))
    return found


# -- real boots -----------------------------------------------------------------------

BOOT_TIMEOUT = 120.0  # TCG on a busy 2-core machine; an idle one boots this in ~3 s


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> tuple[GuestKernel, Path]:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    try:
        kernel = find_test_kernel()
        initrd = build_initramfs(tmp_path_factory.mktemp("initrd") / "initrd.gz", kernel.modules)
    except BangerError as exc:
        pytest.skip(f"no test guest: {exc}")
    return kernel, initrd


@pytest.fixture
async def booted() -> AsyncIterator[list[EngineHandle]]:
    handles: list[EngineHandle] = []
    yield handles
    for h in handles:
        process.kill(h.pid, h.start_time)
        await process.wait_gone(h.pid, h.start_time, 5)


def _boot_config(tmp_path: Path, guest: tuple[GuestKernel, Path], *extra: str) -> GuestConfig:
    kernel, initrd = guest
    (tmp_path / "rootfs.img").write_bytes(b"")
    os.truncate(tmp_path / "rootfs.img", 8 << 20)
    (tmp_path / "work.img").write_bytes(b"")
    os.truncate(tmp_path / "work.img", 16 << 20)
    return build_guest_config(
        vm_id="boot-test",
        name="boottest",
        kernel=kernel.kernel,
        initrd=initrd,
        rootfs=tmp_path / "rootfs.img",
        work_disk=tmp_path / "work.img",
        vcpus=1,
        memory_mib=256,
        run_dir=tmp_path / "run",
        extra_cmdline=extra,
    )


async def _wait_console(cfg: GuestConfig, text: str, timeout: float = BOOT_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        console = cfg.console_log.read_text(errors="replace") if cfg.console_log.exists() else ""
        if text in console:
            return console
        await asyncio.sleep(0.1)
    pytest.fail(f"{text!r} not on the console within {timeout}s; tail: {console[-2000:]}")


@pytest.mark.boot
async def test_boot_marker_devices_and_self_poweroff(
    tmp_path: Path, guest: tuple[GuestKernel, Path], booted: list[EngineHandle]
) -> None:
    cfg = _boot_config(tmp_path, guest)
    engine = QemuEngine()
    handle = await engine.start(cfg)
    booted.append(handle)
    assert engine.is_running(handle)
    assert handle.control_socket == str(cfg.run_dir / "qmp.sock")
    assert (cfg.run_dir / "agent.sock").exists()
    assert handle.extra["agent"]["transport"] == "virtio-serial"
    console = await _wait_console(cfg, "GUEST-POWEROFF")
    assert MARKER in console
    if guest[0].modules is not None:
        # Drive order: rootfs (8 MiB = 16384 sectors) is vda, work is vdb.
        assert "DISK vda rootfs 16384" in console
        assert "DISK vdb work 32768" in console
        assert "PORT banger.agent" in console
    # The guest powered itself off: QEMU exits and the handle reports it.
    assert await process.wait_gone(handle.pid, handle.start_time, 30)
    assert not engine.is_running(handle)
    await engine.stop(handle, timeout=1)  # stopping a stopped VM is a no-op


@pytest.mark.boot
async def test_stop_is_graceful_through_acpi(
    tmp_path: Path, guest: tuple[GuestKernel, Path], booted: list[EngineHandle]
) -> None:
    if guest[0].modules is None:
        pytest.skip("the test kernel's ACPI button module was not found")
    cfg = _boot_config(tmp_path, guest, "banger.test.stay", "banger.test.acpi")
    engine = QemuEngine()
    handle = await engine.start(cfg)
    booted.append(handle)
    await _wait_console(cfg, "GUEST-STAYING")
    await asyncio.sleep(1)  # let acpid open the power-button input device
    start = time.monotonic()
    await engine.stop(handle, timeout=60)
    assert not engine.is_running(handle)
    assert "GUEST-ACPI-POWEROFF" in cfg.console_log.read_text()
    assert time.monotonic() - start < 60  # shut down by the guest, not killed at the timeout


@pytest.mark.boot
async def test_stop_kills_a_guest_that_ignores_acpi_and_pid_reuse_is_safe(
    tmp_path: Path, guest: tuple[GuestKernel, Path], booted: list[EngineHandle]
) -> None:
    cfg = _boot_config(tmp_path, guest, "banger.test.stay")
    engine = QemuEngine()
    handle = await engine.start(cfg)
    booted.append(handle)
    await _wait_console(cfg, "GUEST-STAYING")

    # A handle whose start time does not match (the pid was recycled) is not ours:
    # it is not running, and stop/kill through it leave the real process alone.
    stale = EngineHandle.from_dict({**handle.to_dict(), "start_time": handle.start_time - 1})
    assert not engine.is_running(stale)
    await engine.stop(stale, timeout=0.1)
    await engine.kill(stale)
    assert engine.is_running(handle)

    start = time.monotonic()
    await engine.stop(handle, timeout=1.0)
    assert not engine.is_running(handle)
    assert time.monotonic() - start < 1.0 + 2.0 + 5.0  # timeout, SIGTERM grace, SIGKILL
    assert "GUEST-ACPI-POWEROFF" not in cfg.console_log.read_text()
