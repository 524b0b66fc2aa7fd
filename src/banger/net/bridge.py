"""The VM bridge: one Linux bridge whose first subnet address is the VMs' gateway.

The netlink work itself is in `ops` and runs through `privileged.dispatch`."""

from __future__ import annotations

from banger.net import addresses
from banger.net.ops import BridgeInfo
from banger.net.privileged import dispatch

DEFAULT_BRIDGE = "banger0"

__all__ = [
    "DEFAULT_BRIDGE",
    "BridgeInfo",
    "delete_bridge",
    "ensure_bridge",
    "forget_neighbor",
    "get_bridge",
]


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


def forget_neighbor(ip: str, name: str = DEFAULT_BRIDGE, netns: str | None = None) -> bool:
    """Drop the host's ARP entry for a VM address on the bridge (`ops.forget_neighbor`)."""
    return bool(dispatch("forget_neighbor", bridge=name, ip=ip, netns=netns))
