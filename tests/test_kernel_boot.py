"""Boot the pulled kernel + initramfs under QEMU microvm and watch the serial console.

This proves the parts work together: virtio-mmio devices found through ACPI
(`-M microvm,acpi=on`; Debian's kernel lacks VIRTIO_MMIO_CMDLINE_DEVICES), the
module order, root= parsing, the wait for /dev/vda and switch_root.

QEMU runs with `-daemonize -pidfile` so it can be started through banger's
`run` (no subprocess here) and killed by PID in `finally`; -nographic cannot be
combined with -daemonize, so `-display none -serial file:...` stands in for it.
TCG is used so the test also runs where KVM is missing or nested KVM is broken
(on the development host, KVM aborts with "failed to set MSR 0x10a").
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from banger.artifacts.kernels import KernelInfo, pull_kernel
from banger.engines import process
from banger.engines.qemu import host_tsc_khz
from banger.system import find_tool, run
from tests.test_kernel_pull import NAME, apt_knows_the_kernel

pytestmark = pytest.mark.boot

MARKER = "BANGER-BOOT-MARKER-7f3a"
BOOT_TIMEOUT = 180.0  # TCG on a loaded 2-core machine; a normal boot takes ~5 s

GUEST_INIT = f"""#!/bin/sh
/bin/busybox mount -t proc proc /proc 2>/dev/null
echo "{MARKER} root: $(/bin/busybox grep ' / ' /proc/mounts | /bin/busybox tail -n 1)"
echo "{MARKER} modules: $(/bin/busybox cut -d' ' -f1 /proc/modules | /bin/busybox tr '\\n' ' ')"
/bin/busybox poweroff -f
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> KernelInfo:
    for tool in ("qemu-system-x86_64", "mkfs.ext4"):
        if find_tool(tool) is None:
            pytest.skip(f"{tool} is not installed")
    reason = apt_knows_the_kernel()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("boot-kernels")
    return pull_kernel(NAME, base / "kernels", base / "tmp")


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory, kernel: KernelInfo) -> Path:
    base = tmp_path_factory.mktemp("rootfs")
    tree = base / "tree"
    for d in ("bin", "sbin", "proc", "sys", "dev"):
        (tree / d).mkdir(parents=True)
    busybox = find_tool("busybox")
    assert busybox is not None  # the pull needed it
    (tree / "bin" / "busybox").write_bytes(Path(busybox).read_bytes())
    (tree / "bin" / "busybox").chmod(0o755)
    (tree / "bin" / "sh").symlink_to("busybox")
    (tree / "sbin" / "init").write_text(GUEST_INIT)
    (tree / "sbin" / "init").chmod(0o755)
    image = base / "root.ext4"
    run(["mkfs.ext4", "-q", "-F", "-L", "bangerroot", "-d", str(tree), str(image), "16M"])
    return image


def run_guest(kernel: KernelInfo, rootfs: Path, cmdline: str, work: Path) -> str:
    """Boot QEMU, wait for the guest to power off (or panic), return the console."""
    console, pidfile = work / "console.log", work / "qemu.pid"
    # Same TSC hint the QEMU engine gives TCG guests: without it, calibration against
    # the PIT fails on a busy host and the boot hangs after "Marking TSC unstable".
    tsc = host_tsc_khz()
    append = f"console=ttyS0 panic=-1 {cmdline}" + (f" tsc_early_khz={tsc}" if tsc else "")
    pid = 0
    try:
        run(
            [
                "qemu-system-x86_64",
                "-M", "microvm,acpi=on",
                "-accel", "tcg",
                # The default qemu64 CPU under TCG fails Linux's PIT-based TSC
                # calibration on microvm and the boot hangs after "tsc: Marking
                # TSC unstable"; `max` calibrates fine (KVM has kvmclock instead).
                "-cpu", "max",
                "-m", "256",
                "-smp", "1",
                "-display", "none",
                "-monitor", "none",
                "-serial", f"file:{console}",
                "-no-reboot",
                "-daemonize",
                "-pidfile", str(pidfile),
                "-kernel", str(kernel.vmlinux),
                "-initrd", str(kernel.initrd),
                "-append", append,
                "-drive", f"id=root,file={rootfs},format=raw,if=none,snapshot=on",
                "-device", "virtio-blk-device,drive=root",
            ],
            timeout=30,
        )  # fmt: skip
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if process.pid_start_time(pid) is None:  # gone (zombies too)
                return console.read_text(errors="replace")
            time.sleep(0.2)
        raise AssertionError(
            f"guest did not stop within {BOOT_TIMEOUT}s:\n{console.read_text()[-3000:]}"
        )
    finally:
        if not pid and pidfile.exists():  # run() failed after QEMU daemonized
            pid = int(pidfile.read_text() or 0)
        process.kill(pid)  # SIGKILL, if it still runs


def test_boots_through_initramfs_to_the_root_init(
    kernel: KernelInfo, rootfs: Path, tmp_path: Path
) -> None:
    start = time.monotonic()
    out = run_guest(kernel, rootfs, "root=LABEL=bangerroot rootfstype=ext4 ro", tmp_path)
    took = time.monotonic() - start
    lines = [line for line in out.splitlines() if line.startswith(MARKER)]
    assert lines, f"no marker on the console after {took:.1f}s:\n{out[-4000:]}"
    root = next(line for line in lines if " root: " in line)
    assert root.split()[2:5] == ["/dev/vda", "/", "ext4"], root
    assert " ro," in root
    modules = next(line for line in lines if " modules: " in line).split()[2:]
    for mod in ("virtio_mmio", "virtio_blk", "virtio_net", "vmw_vsock_virtio_transport"):
        assert mod in modules
    assert f"banger-initramfs: loaded {len(kernel.modules)} modules" in out
    assert "reboot: Power down" in out


def test_missing_root_device_fails_fast_with_a_clear_message(
    kernel: KernelInfo, rootfs: Path, tmp_path: Path
) -> None:
    out = run_guest(kernel, rootfs, "root=/dev/vdz rootwait=2", tmp_path)
    assert "banger-initramfs: ERROR: root device /dev/vdz did not appear within 2s" in out
    assert "(block devices: vda" in out
    assert "Attempted to kill init" in out  # -> panic=-1 -> reboot -> QEMU exits
    assert MARKER not in out
