"""Host tools banger shells out to, and the Debian package that provides each."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from banger.errors import ToolMissing


@dataclass(frozen=True)
class Tool:
    name: str
    package: str
    purpose: str
    required_for: tuple[str, ...]


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool("qemu-system-x86_64", "qemu-system-x86", "QEMU microvm engine", ("vm",)),
        Tool("firecracker", "(upstream release)", "Firecracker engine", ()),
        Tool("ip", "iproute2", "bridge, TAP and namespace setup", ("vm",)),
        Tool("nft", "nftables", "per-VM NAT rules", ("nat",)),
        Tool("resolvectl", "systemd-resolved", "`NAME.vm` on the host (banger dns setup)", ()),
        Tool("mkfs.ext4", "e2fsprogs", "building ext4 images", ("image", "vm")),
        Tool("resize2fs", "e2fsprogs", "growing work disks", ("vm",)),
        Tool("e2fsck", "e2fsprogs", "checking ext4 images before resize", ("vm",)),
        Tool("debugfs", "e2fsprogs", "reading files out of ext4 images", ("image",)),
        Tool("mmdebstrap", "mmdebstrap", "building the Debian rootfs", ("image",)),
        Tool("dpkg-query", "dpkg", "listing the packages of a built image", ("image",)),
        Tool("umount", "mount", "cleaning up after an interrupted image build", ("image",)),
        Tool("skopeo", "skopeo", "fetching OCI images (image pull REF)", ()),
        Tool("umoci", "umoci", "unpacking OCI image layers", ()),
        Tool("patchelf", "patchelf", "the private Python in pulled OCI images", ()),
        Tool("ldd", "libc-bin", "finding the libraries of that Python", ()),
        Tool("apt-get", "apt", "fetching Debian kernel packages", ("kernel",)),
        Tool("apt-cache", "apt", "resolving Debian kernel packages", ("kernel",)),
        Tool("dpkg-deb", "dpkg", "unpacking kernel packages", ("kernel",)),
        Tool("make", "make", "banger kernel build", ()),
        Tool("gcc", "gcc", "banger kernel build", ()),
        Tool("bc", "bc", "banger kernel build (kernel time constants)", ()),
        Tool("flex", "flex", "banger kernel build (Kconfig)", ()),
        Tool("bison", "bison", "banger kernel build (Kconfig)", ()),
        Tool("tar", "tar", "unpacking kernel sources", ()),
        Tool("xz", "xz-utils", "unpacking kernel sources", ()),
        Tool("busybox", "busybox-static", "the initramfs userland", ("kernel",)),
        Tool("ssh", "openssh-client", "vm ssh", ("vm",)),
        Tool("ssh-keygen", "openssh-client", "the managed SSH key", ("vm",)),
        Tool("sudo", "sudo", "privileged host operations when not root", ()),
        Tool("npm", "npm", "finding the npm registry for image tools (optional)", ()),
    )
}

# Directories that hold admin tools but are often missing from a user's PATH.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN:
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        tool = TOOLS.get(name)
        pkg = tool.package if tool else name
        raise ToolMissing(
            f"`{name}` is not installed",
            hint=f"install the Debian package `{pkg}` (sudo apt-get install {pkg}) "
            "or run scripts/setup.sh",
        )
    return path
