"""The bodies of the privileged network operations: bridge, TAP and sysctl work.

Everything here needs CAP_NET_ADMIN (or root) and asks for none: it runs as root,
either in the daemon (when it is root) or in the `sudo -n python -m
banger.net.privileged` child. `privileged.OPERATIONS` names these functions and is
the whole list of what that child runs; `bridge`, `tap` and `nat` are the callers'
side. Arguments and results are JSON-able (they cross the sudo boundary), and every
function validates the names it gets.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import asdict, dataclass
from typing import Any

from banger.errors import Conflict, NotFound
from banger.net import addresses
from banger.net._ns import call_in_netns, check_ifname, get_link, link_index, link_kind, netlink

_TUN_TYPE_TAP = 2
FORWARD_SYSCTL = "/proc/sys/net/ipv4/ip_forward"


@dataclass(frozen=True)
class BridgeInfo:
    name: str
    index: int
    address: str  # the gateway, e.g. "172.30.0.1"
    prefixlen: int
    cidr: str  # the normalised subnet, e.g. "172.30.0.0/24"
    mac: str
    up: bool


@dataclass(frozen=True)
class TapInfo:
    name: str
    index: int
    master: str | None  # the bridge it is attached to
    owner: int | None  # uid allowed to open it; None: only CAP_NET_ADMIN holders
    up: bool
    multi_queue: bool


# -- bridge -----------------------------------------------------------------------------


def _ipv4(ipr: Any, index: int) -> list[tuple[str, int]]:
    return [
        (a.get_attr("IFA_ADDRESS"), int(a["prefixlen"]))
        for a in ipr.get_addr(index=index, family=socket.AF_INET)
    ]


def _info(ipr: Any, name: str) -> dict[str, Any] | None:
    link = get_link(ipr, name)
    if link is None:
        return None
    if link_kind(link) != "bridge":
        raise Conflict(
            f"`{name}` exists but is not a bridge (kind {link_kind(link) or 'unknown'})",
            hint=f"delete it (`ip link del {name}`) or configure another `bridge_name`",
        )
    idx = int(link["index"])
    v4 = _ipv4(ipr, idx)
    address, plen = v4[0] if v4 else ("", 0)
    cidr = str(addresses.parse_subnet(f"{address}/{plen}")) if v4 and plen <= 30 else ""
    return asdict(
        BridgeInfo(
            name=name,
            index=idx,
            address=address,
            prefixlen=plen,
            cidr=cidr,
            mac=link.get_attr("IFLA_ADDRESS"),
            up=bool(link["flags"] & 1),
        )
    )


def get_bridge(name: str, netns: str | None) -> dict[str, Any] | None:
    check_ifname(name, "bridge")

    def work() -> dict[str, Any] | None:
        with netlink(f"reading bridge {name}") as ipr:
            return _info(ipr, name)

    return call_in_netns(netns, work)


def ensure_bridge(name: str, cidr: str, netns: str | None) -> dict[str, Any]:
    check_ifname(name, "bridge")
    net = addresses.parse_subnet(cidr)
    gw = addresses.gateway(cidr)

    def work() -> dict[str, Any]:
        from pyroute2.netlink.exceptions import NetlinkError  # with netlink()

        with netlink(f"setting up bridge {name}") as ipr:
            if get_link(ipr, name) is None:
                try:
                    # A fixed MAC: otherwise the bridge takes its lowest port's MAC,
                    # which changes as TAPs come and go and confuses guests' ARP caches.
                    ipr.link("add", ifname=name, kind="bridge", address=addresses.mac_for(name))
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:  # a concurrent ensure won the race
                        raise
            info = _info(ipr, name)
            assert info is not None
            idx = info["index"]
            v4 = _ipv4(ipr, idx)
            others = [f"{a}/{p}" for a, p in v4 if (a, p) != (gw, net.prefixlen)]
            if others:
                raise Conflict(
                    f"bridge `{name}` has {', '.join(others)}, not {gw}/{net.prefixlen}",
                    hint=f"set `bridge_cidr` to match, or delete the bridge (`ip link del "
                    f"{name}`) while no VM runs so banger recreates it",
                )
            if not v4:
                ipr.addr("add", index=idx, address=gw, prefixlen=net.prefixlen)
            ipr.link("set", index=idx, state="up")
            done = _info(ipr, name)
            assert done is not None
            return done

    return call_in_netns(netns, work)


def delete_bridge(name: str, netns: str | None) -> bool:
    check_ifname(name, "bridge")

    def work() -> bool:
        with netlink(f"deleting bridge {name}") as ipr:
            info = _info(ipr, name)  # refuses to delete a non-bridge
            if info is None:
                return False
            ipr.link("del", index=info["index"])
            return True

    return call_in_netns(netns, work)


# -- TAP devices -----------------------------------------------------------------------


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


def _join_bridge(ipr: Any, index: int, bridge_index: int) -> None:
    """Enslave the link to the bridge, up, in hairpin mode: a VM reaching its own
    published port through a host address is DNATed back to itself, and with
    br_netfilter loaded (Docker loads it) that frame is bridged out of the port it
    came in on, which a bridge only does for a hairpin port."""
    ipr.link("set", index=index, master=bridge_index, state="up")
    ipr.link("set", index=index, kind="bridge_slave", mode=1)  # IFLA_BRPORT_MODE


def _attach(ipr: Any, name: str, bridge: str) -> dict[str, Any]:
    br = _bridge_index(ipr, bridge)
    link = get_link(ipr, name)
    if link is None or _tun_data(link) is None:
        raise NotFound(f"TAP device `{name}` does not exist", hint="check `ip -d link`")
    _join_bridge(ipr, int(link["index"]), br)
    info = _tap_info(ipr, ipr.link("get", index=int(link["index"]))[0])
    assert info is not None
    return info


def create_tap(name: str, bridge: str, owner_uid: int | None, netns: str | None) -> dict[str, Any]:
    check_ifname(name, "TAP")
    check_ifname(bridge, "bridge")

    def work() -> dict[str, Any]:
        from pyroute2.netlink.exceptions import NetlinkError  # with netlink()

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
                _join_bridge(ipr, idx, br)
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


def attach_tap(name: str, bridge: str, netns: str | None) -> dict[str, Any]:
    check_ifname(name, "TAP")
    check_ifname(bridge, "bridge")

    def work() -> dict[str, Any]:
        with netlink(f"attaching TAP {name} to {bridge}") as ipr:
            return _attach(ipr, name, bridge)

    return call_in_netns(netns, work)


def set_tap_up(name: str, up: bool, netns: str | None) -> dict[str, Any]:
    """Take a TAP's link down (its bridge port stops forwarding: nothing the VM sends
    reaches anyone) or bring it back up. Refuses a device that is not a TAP."""
    check_ifname(name, "TAP")

    def work() -> dict[str, Any]:
        with netlink(f"setting TAP {name} {'up' if up else 'down'}") as ipr:
            link = get_link(ipr, name)
            if link is None or _tun_data(link) is None:
                raise NotFound(f"TAP device `{name}` does not exist", hint="check `ip -d link`")
            ipr.link("set", index=int(link["index"]), state="up" if up else "down")
            info = _tap_info(ipr, ipr.link("get", index=int(link["index"]))[0])
            assert info is not None
            return info

    return call_in_netns(netns, work)


def delete_tap(name: str, netns: str | None) -> bool:
    check_ifname(name, "TAP")

    def work() -> bool:
        from pyroute2.netlink.exceptions import NetlinkError  # with netlink()

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


def list_taps(prefix: str, netns: str | None) -> list[dict[str, Any]]:
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


def tap_exists(name: str, netns: str | None) -> bool:
    check_ifname(name, "TAP")

    def work() -> bool:
        with netlink(f"looking up TAP {name}") as ipr:
            link = get_link(ipr, name)
            return link is not None and _tun_data(link) is not None

    return call_in_netns(netns, work)


def forget_neighbor(bridge: str, ip: str, netns: str | None) -> bool:
    """Drop the host's ARP entry for `ip` on `bridge`; False when there was none.

    A VM's address outlives its MAC: the next VM leased the address (or a fork that
    takes it from its snapshot's machine) has another. An entry still "reachable"
    for the old MAC sends everything to nobody until the kernel checks it again
    (up to ~45 s), so a new VM would wait that long for its first SSH answer."""
    check_ifname(bridge, "bridge")
    addr = str(addresses.parse_ip(ip))

    def work() -> bool:
        from pyroute2.netlink.exceptions import NetlinkError  # with netlink()

        with netlink(f"forgetting the neighbor {addr} on {bridge}") as ipr:
            index = link_index(ipr, bridge)
            if index is None:
                return False
            try:
                ipr.neigh("del", dst=addr, ifindex=index, family=socket.AF_INET)
            except NetlinkError as exc:
                if exc.code == errno.ENOENT:
                    return False
                raise
            return True

    return call_in_netns(netns, work)


# -- sysctls --------------------------------------------------------------------------


def route_localnet(bridge: str, netns: str | None) -> bool:
    """Let 127.0.0.0/8 sources be routed out of the bridge (DNAT from localhost)."""
    path = f"/proc/sys/net/ipv4/conf/{check_ifname(bridge, 'bridge')}/route_localnet"

    def work() -> bool:
        try:
            with open(path) as f:
                if f.read().strip() == "1":
                    return False
        except FileNotFoundError:  # no bridge yet: set again when a VM publishes on it
            return False
        with open(path, "w") as f:
            f.write("1\n")
        return True

    return call_in_netns(netns, work)


def ip_forward(netns: str | None) -> bool:
    def work() -> bool:
        # /proc/sys/net resolves against the calling thread's namespace.
        with open(FORWARD_SYSCTL) as f:
            if f.read().strip() == "1":
                return False
        with open(FORWARD_SYSCTL, "w") as f:
            f.write("1\n")
        return True

    return call_in_netns(netns, work)
