"""Persistent TAP devices attached to the VM bridge.

A TAP is created persistent (it outlives the creating file descriptor), single-queue
and owned by the user who will run the hypervisor, so an unprivileged QEMU or
Firecracker can attach to it with TUNSETIFF. The hypervisor's open must match the
multi-queue flag, which is why it is always off here; the other flags (vnet_hdr,
no_pi) are set by whoever opens the device. The netlink work itself is in `ops` and
runs through `privileged.dispatch`.
"""

from __future__ import annotations

import os
from pathlib import Path

from banger.net.ops import TapInfo
from banger.net.privileged import dispatch
from banger.system import is_root

__all__ = [
    "TapInfo",
    "attach_tap",
    "create_tap",
    "default_owner",
    "delete_tap",
    "held_taps",
    "list_taps",
    "set_tap_up",
    "tap_exists",
]


def default_owner(owner_uid: int | None) -> int | None:
    """None means "whoever runs banger": root needs no owner, a user needs to be one."""
    if owner_uid is not None:
        return owner_uid
    return None if is_root() else os.getuid()


def create_tap(
    name: str, bridge: str, owner_uid: int | None = None, netns: str | None = None
) -> TapInfo:
    """Create a persistent TAP, attach it to `bridge` and bring it up.

    `owner_uid=None` makes the calling user the owner (no owner when root), resolved
    here, before any sudo hop would turn the caller into root. An existing device of
    that name is a `Conflict`; a half-made device is removed again.
    """
    owner = default_owner(owner_uid)
    return TapInfo(**dispatch("create_tap", name=name, bridge=bridge, owner_uid=owner, netns=netns))


def attach_tap(name: str, bridge: str, netns: str | None = None) -> TapInfo:
    """Make sure an existing TAP is attached to `bridge` and up (idempotent)."""
    return TapInfo(**dispatch("attach_tap", name=name, bridge=bridge, netns=netns))


def set_tap_up(name: str, up: bool, netns: str | None = None) -> TapInfo:
    """Bring an existing TAP's link up or down (down: its bridge port forwards nothing)."""
    return TapInfo(**dispatch("set_tap_up", name=name, up=up, netns=netns))


def delete_tap(name: str, netns: str | None = None) -> bool:
    """Delete a TAP; False when it did not exist. Refuses to delete a non-TAP device."""
    return bool(dispatch("delete_tap", name=name, netns=netns))


def list_taps(prefix: str = "", netns: str | None = None) -> list[TapInfo]:
    """TAP devices whose name starts with `prefix`, sorted by name."""
    return [TapInfo(**t) for t in dispatch("list_taps", prefix=prefix, netns=netns)]


def held_taps(netns: str | None = None) -> dict[str, int]:
    """TAP names some process holds open (name -> a holder's pid), in `netns`.

    A hypervisor attaches with TUNSETIFF on a `/dev/net/tun` descriptor, whose
    /proc/<pid>/fdinfo shows `iff:\t<name>`. A TAP held that way must never go
    back into the warm pool: attaching a second VM to it fails with EBUSY.
    Processes in other network namespaces are skipped (their names are theirs).
    """
    want = _netns_inode(netns)
    held: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if want is not None and os.stat(proc / "ns" / "net").st_ino != want:
                continue
            fds = [fd for fd in (proc / "fd").iterdir() if os.readlink(fd) == "/dev/net/tun"]
            for fd in fds:
                for line in (proc / "fdinfo" / fd.name).read_text().splitlines():
                    if line.startswith("iff:"):
                        held.setdefault(line.split(":", 1)[1].strip(), int(proc.name))
        except OSError:
            continue  # gone meanwhile, or not ours to look at
    return held


def _netns_inode(netns: str | None) -> int | None:
    try:
        return os.stat(f"/run/netns/{netns}" if netns else "/proc/self/ns/net").st_ino
    except OSError:
        return None


def tap_exists(name: str, netns: str | None = None) -> bool:
    return bool(dispatch("tap_exists", name=name, netns=netns))
