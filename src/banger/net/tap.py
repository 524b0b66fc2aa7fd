"""Persistent TAP devices attached to the VM bridge.

A TAP is created persistent (it outlives the creating file descriptor), single-queue
and owned by the user who will run the hypervisor, so an unprivileged QEMU or
Firecracker can attach to it with TUNSETIFF. The hypervisor's open must match the
multi-queue flag, which is why it is always off here; the other flags (vnet_hdr,
no_pi) are set by whoever opens the device.
"""

from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from banger.errors import Conflict, NotFound
from banger.net._ns import call_in_netns, check_ifname, get_link, link_index, link_kind, netlink
from banger.net.privileged import dispatch, register
from banger.system import is_root

_TUN_TYPE_TAP = 2


@dataclass(frozen=True)
class TapInfo:
    name: str
    index: int
    master: str | None  # the bridge it is attached to
    owner: int | None  # uid allowed to open it; None: only CAP_NET_ADMIN holders
    up: bool
    multi_queue: bool


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


def _tun_data(link: Any) -> Any | None:
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "tun":
        return None
    data = info.get_attr("IFLA_INFO_DATA")
    if data is None or data.get_attr("IFLA_TUN_TYPE") != _TUN_TYPE_TAP:
        return None
    return data


def _tap_info(ipr: Any, link: Any, names: dict[int, str] | None = None) -> dict[str, Any] | None:
    """A `TapInfo` dict for `link`, None when it is not a TAP. `names`: index -> name."""
    data = _tun_data(link)
    if data is None:
        return None
    master_idx = link.get_attr("IFLA_MASTER")
    master = None
    if master_idx and names is not None:
        master = names.get(int(master_idx))
    elif master_idx:
        found = ipr.link("get", index=master_idx)
        master = found[0].get_attr("IFLA_IFNAME") if found else None
    owner = data.get_attr("IFLA_TUN_OWNER")
    return asdict(
        TapInfo(
            name=link.get_attr("IFLA_IFNAME"),
            index=int(link["index"]),
            master=master,
            # The kernel reports "no owner" as (uid_t)-1.
            owner=None if owner is None or owner == 0xFFFFFFFF else int(owner),
            up=bool(link["flags"] & 1),
            multi_queue=bool(data.get_attr("IFLA_TUN_MULTI_QUEUE")),
        )
    )


def _bridge_index(ipr: Any, bridge: str) -> int:
    link = get_link(ipr, bridge)
    if link is None or link_kind(link) != "bridge":
        raise NotFound(
            f"bridge `{bridge}` does not exist",
            hint="the daemon creates it at start; restart bangerd or run `banger doctor`",
        )
    return int(link["index"])


def _attach(ipr: Any, name: str, bridge: str) -> dict[str, Any]:
    br = _bridge_index(ipr, bridge)
    link = get_link(ipr, name)
    if link is None or _tun_data(link) is None:
        raise NotFound(f"TAP device `{name}` does not exist", hint="check `ip -d link`")
    ipr.link("set", index=int(link["index"]), master=br, state="up")
    info = _tap_info(ipr, ipr.link("get", index=int(link["index"]))[0])
    assert info is not None
    return info


@register("create_tap")
def _create_tap(name: str, bridge: str, owner_uid: int | None, netns: str | None) -> dict[str, Any]:
    check_ifname(name, "TAP")
    check_ifname(bridge, "bridge")

    def work() -> dict[str, Any]:
        with netlink(f"creating TAP {name}") as ipr:
            br = _bridge_index(ipr, bridge)
            if link_index(ipr, name) is not None:
                raise Conflict(
                    f"network device `{name}` already exists",
                    hint=f"delete it (`ip link del {name}`) or choose another name",
                )
            spec: dict[str, Any] = {"ifr": {"no_pi": 1, "multi_queue": 0}}
            if owner_uid is not None:
                spec["uid"] = owner_uid
            try:
                # pyroute2 turns this into the TUNSETIFF/TUNSETOWNER/TUNSETPERSIST ioctls.
                ipr.link("add", ifname=name, kind="tuntap", mode="tap", **spec)
            except NetlinkError as exc:
                if exc.code == errno.EBUSY:  # TUNSETIFF on a name that appeared meanwhile
                    raise Conflict(f"network device `{name}` already exists") from exc
                raise
            try:
                idx = link_index(ipr, name)
                assert idx is not None
                ipr.link("set", index=idx, master=br, state="up")
                info = _tap_info(ipr, ipr.link("get", index=idx)[0])
                assert info is not None
                return info
            except BaseException:
                # Never leave a persistent, unattached TAP behind.
                idx = link_index(ipr, name)
                if idx is not None:
                    ipr.link("del", index=idx)
                raise

    return call_in_netns(netns, work)


@register("attach_tap")
def _attach_tap(name: str, bridge: str, netns: str | None) -> dict[str, Any]:
    check_ifname(name, "TAP")
    check_ifname(bridge, "bridge")

    def work() -> dict[str, Any]:
        with netlink(f"attaching TAP {name} to {bridge}") as ipr:
            return _attach(ipr, name, bridge)

    return call_in_netns(netns, work)


@register("delete_tap")
def _delete_tap(name: str, netns: str | None) -> bool:
    check_ifname(name, "TAP")

    def work() -> bool:
        with netlink(f"deleting TAP {name}") as ipr:
            link = get_link(ipr, name)
            if link is None:
                return False
            if _tun_data(link) is None:
                raise Conflict(
                    f"`{name}` is not a TAP device; refusing to delete it",
                    hint="check the name; banger only deletes TAPs it manages",
                )
            try:
                ipr.link("del", index=int(link["index"]))
            except NetlinkError as exc:
                if exc.code == errno.ENODEV:  # gone meanwhile: same outcome
                    return False
                raise
            return True

    return call_in_netns(netns, work)


@register("list_taps", read_only=True)
def _list_taps(prefix: str, netns: str | None) -> list[dict[str, Any]]:
    def work() -> list[dict[str, Any]]:
        with netlink("listing TAP devices") as ipr:
            links = list(ipr.get_links())
            names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in links}
            found = []
            for link in links:
                if not str(link.get_attr("IFLA_IFNAME")).startswith(prefix):
                    continue
                info = _tap_info(ipr, link, names)
                if info is not None:
                    found.append(info)
            return sorted(found, key=lambda t: str(t["name"]))

    return call_in_netns(netns, work)


@register("tap_exists", read_only=True)
def _tap_exists(name: str, netns: str | None) -> bool:
    check_ifname(name, "TAP")

    def work() -> bool:
        with netlink(f"looking up TAP {name}") as ipr:
            link = get_link(ipr, name)
            return link is not None and _tun_data(link) is not None

    return call_in_netns(netns, work)
