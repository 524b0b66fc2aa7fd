"""A tiny bootable guest for engine boot tests: a kernel plus a busybox initramfs.

The kernel comes from $BANGER_TEST_KERNEL, the host's /boot/vmlinuz-*, or Debian's
cloud kernel package fetched with the host's apt configuration (`apt-get download`,
verified by apt) into a per-user cache, not through banger's kernel pull, which
these engine tests do not depend on. QEMU boots the bzImage directly.

The initramfs is a cpio "newc" archive written with banger's own writer (no cpio
tool needed): static busybox, an /init script, and the few virtio/ACPI modules the
Debian kernel builds as modules, so the guest can show which disks and ports it sees.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from banger.artifacts.kernels.cpio import CpioWriter
from banger.artifacts.kernels.initrd import host_busybox
from banger.errors import BangerError
from banger.system import find_tool, is_root, run

# Load order matters: each module's dependencies come first.
MODULES = (
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/char/virtio_console.ko",
    "drivers/input/evdev.ko",
    "drivers/acpi/button.ko",
)

MARKER = "BANGER-GUEST-MARKER-7f3a"

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo {marker}
for m in {modules}; do [ -f /mods/$m.ko ] && insmod /mods/$m.ko; done
sleep 0.5
for b in /sys/block/vd*; do
  [ -e $b ] && echo "DISK $(basename $b) $(cat $b/serial) $(cat $b/size)"
done
for p in /sys/class/virtio-ports/*; do [ -e $p ] && echo "PORT $(cat $p/name)"; done
if grep -q banger.test.acpi /proc/cmdline; then
  acpid -d -a /etc/acpid.conf &
fi
if grep -q banger.test.tick /proc/cmdline; then
  while true; do echo "TICK $(cut -d' ' -f1 /proc/uptime)"; sleep 0.2; done
fi
if grep -q banger.test.stay /proc/cmdline; then
  echo GUEST-STAYING
  while true; do sleep 60; done
fi
echo GUEST-POWEROFF
poweroff -f
"""


@dataclass(frozen=True)
class GuestKernel:
    kernel: Path
    modules: Path | None  # the kernel's /lib/modules/<release>/kernel, if found


def _cache_dir() -> Path:
    shared = os.environ.get("BANGER_TEST_CACHE")
    if shared:
        return Path(shared) / "engine-test-kernel"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "banger-tests" / "kernel"


def _cloud_kernel_package() -> str | None:
    """The versioned package the linux-image-cloud-amd64 metapackage points at."""
    res = run(["apt-cache", "depends", "linux-image-cloud-amd64"], check=False, timeout=60)
    for line in res.out.splitlines():
        if line.strip().startswith("Depends:") and "linux-image-" in line:
            return line.split(":", 1)[1].strip()
    return None


def _fetch_debian_cloud_kernel(dest: Path) -> GuestKernel:
    """apt-get download the cloud kernel; keep only vmlinuz and the modules we load."""
    if not (find_tool("apt-get") and find_tool("apt-cache") and find_tool("dpkg-deb")):
        raise BangerError("apt-get/dpkg-deb not available to fetch a test kernel")
    pkg = _cloud_kernel_package()
    if pkg is None and is_root():
        run(["apt-get", "update"], check=False, timeout=600)  # fresh machines have no lists
        pkg = _cloud_kernel_package()
    if pkg is None:
        raise BangerError("apt knows no linux-image-cloud-amd64 (run apt-get update)")
    with tempfile.TemporaryDirectory() as tmp:
        run(["apt-get", "download", pkg], cwd=tmp, timeout=300)
        deb = next(Path(tmp).glob("*.deb"))
        root = Path(tmp) / "x"
        run(["dpkg-deb", "-x", str(deb), str(root)], timeout=300)
        vmlinuz = next((root / "boot").glob("vmlinuz-*"))
        mods = next((root / "lib/modules").iterdir()) / "kernel"
        staging = dest.with_name(dest.name + ".part")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "modules").mkdir(parents=True)
        shutil.copy2(vmlinuz, staging / "vmlinuz")
        for rel in MODULES:
            if (mods / rel).exists():
                (staging / "modules" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(mods / rel, staging / "modules" / rel)
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    return GuestKernel(dest / "vmlinuz", dest / "modules")


def find_test_kernel() -> GuestKernel:
    """A bootable x86-64 kernel, or BangerError saying why there is none."""
    env = os.environ.get("BANGER_TEST_KERNEL")
    if env:
        env_mods = os.environ.get("BANGER_TEST_KERNEL_MODULES")
        return GuestKernel(Path(env), Path(env_mods) if env_mods else None)
    for vmlinuz in sorted(Path("/boot").glob("vmlinuz-*"), reverse=True):
        if os.access(vmlinuz, os.R_OK):
            mods = Path("/lib/modules") / vmlinuz.name.removeprefix("vmlinuz-") / "kernel"
            return GuestKernel(vmlinuz, mods if mods.is_dir() else None)
    cached = _cache_dir() / "debian-cloud"
    if (cached / "vmlinuz").exists():
        return GuestKernel(cached / "vmlinuz", cached / "modules")
    return _fetch_debian_cloud_kernel(cached)


def build_initramfs(dest: Path, modules: Path | None) -> Path:
    """Write a gzip'd initramfs with busybox, /init and whatever modules exist."""
    with gzip.GzipFile(dest, "wb", compresslevel=1, mtime=0) as gz:
        cpio = CpioWriter(gz)
        for d in ("bin", "dev", "proc", "sys", "mods", "etc", "etc/acpi"):
            cpio.dir(d)
        cpio.chardev("dev/console", 5, 1)
        # host_busybox refuses a dynamically linked one: it would not run in the initramfs.
        cpio.file("bin/busybox", host_busybox()[0].read_bytes(), 0o755)
        names = []
        for rel in MODULES:
            if modules is not None and (modules / rel).exists():
                name = Path(rel).stem
                cpio.file(f"mods/{name}.ko", (modules / rel).read_bytes())
                names.append(name)
        init = INIT.format(marker=MARKER, modules=" ".join(names))
        cpio.file("init", init.encode(), 0o755)
        # busybox acpid runs an action as a file relative to its config dir (/etc/acpi).
        cpio.file("etc/acpid.conf", b"PWRF power\n")
        cpio.file("etc/acpi/power", b"#!/bin/sh\necho GUEST-ACPI-POWEROFF\npoweroff -f\n", 0o755)
        cpio.close()
    return dest
