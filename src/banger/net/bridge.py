"""The VM bridge: one Linux bridge whose first subnet address is the VMs' gateway."""

from __future__ import annotations

import errno
import socket
from dataclasses import asdict, dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from banger.errors import Conflict
from banger.net import addresses
from banger.net._ns import call_in_netns, check_ifname, get_link, link_kind, netlink
from banger.net.privileged import dispatch, register

DEFAULT_BRIDGE = "banger0"


@dataclass(frozen=True)
class BridgeInfo:
    name: str
    index: int
    address: str  # the gateway, e.g. "172.30.0.1"
    prefixlen: int
    cidr: str  # the normalised subnet, e.g. "172.30.0.0/24"
    mac: str
    up: bool


def ensure_bridge(
    name: str = DEFAULT_BRIDGE, cidr: str = addresses.DEFAULT_CIDR, netns: str | None = None
) -> BridgeInfo:
    """Create the bridge if missing, give it the gateway address and bring it up.

    Idempotent. A bridge that already carries a different IPv4 address is an error:
    silently adding a second one would hide a config change from the running VMs.
    """
    return BridgeInfo(**dispatch("ensure_bridge", name=name, cidr=cidr, netns=netns))


def get_bridge(name: str = DEFAULT_BRIDGE, netns: str | None = None) -> BridgeInfo | None:
    found = dispatch("get_bridge", name=name, netns=netns)
    return None if found is None else BridgeInfo(**found)


def delete_bridge(name: str = DEFAULT_BRIDGE, netns: str | None = None) -> bool:
    """Delete the bridge; False when it did not exist. Attached TAPs are detached."""
    return bool(dispatch("delete_bridge", name=name, netns=netns))


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


@register("get_bridge", read_only=True)
def _get_bridge(name: str, netns: str | None) -> dict[str, Any] | None:
    check_ifname(name, "bridge")

    def work() -> dict[str, Any] | None:
        with netlink(f"reading bridge {name}") as ipr:
            return _info(ipr, name)

    return call_in_netns(netns, work)


@register("ensure_bridge")
def _ensure_bridge(name: str, cidr: str, netns: str | None) -> dict[str, Any]:
    check_ifname(name, "bridge")
    net = addresses.parse_subnet(cidr)
    gw = addresses.gateway(cidr)

    def work() -> dict[str, Any]:
        with netlink(f"setting up bridge {name}") as ipr:
            if get_link(ipr, name) is None:
                try:
                    # A fixed MAC: otherwise the bridge takes its lowest port's MAC,
                    # which changes as TAPs come and go and confuses guests' ARP caches.
                    ipr.link(
                        "add", ifname=name, kind="bridge", address=addresses.generate_mac(name)
                    )
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


@register("delete_bridge")
def _delete_bridge(name: str, netns: str | None) -> bool:
    check_ifname(name, "bridge")

    def work() -> bool:
        with netlink(f"deleting bridge {name}") as ipr:
            info = _info(ipr, name)  # refuses to delete a non-bridge
            if info is None:
                return False
            ipr.link("del", index=info["index"])
            return True

    return call_in_netns(netns, work)
