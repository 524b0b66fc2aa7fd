"""Bridge setup with real netlink, inside a throwaway namespace."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from banger.errors import Conflict, InvalidInput, NotFound
from banger.net.bridge import delete_bridge, ensure_bridge, forget_neighbor, get_bridge
from tests import netns

pytestmark = [pytest.mark.netns, netns.skip_unless_netns()]


@pytest.fixture
def ns() -> Iterator[str]:
    with netns.namespace() as name:
        yield name


def _link(ns: str, name: str) -> dict[str, Any]:
    link: dict[str, Any] = json.loads(netns.ip(ns, "-j", "-d", "addr", "show", "dev", name).out)[0]
    return link


def test_ensure_bridge_creates_addresses_and_is_idempotent(ns: str) -> None:
    info = ensure_bridge("banger0", "172.30.0.0/24", netns=ns)
    assert (info.address, info.prefixlen, info.cidr) == ("172.30.0.1", 24, "172.30.0.0/24")
    assert info.up
    link = _link(ns, "banger0")
    assert link["linkinfo"]["info_kind"] == "bridge"
    assert "UP" in link["flags"]
    v4 = [(x["local"], x["prefixlen"]) for x in link["addr_info"] if x["family"] == "inet"]
    assert v4 == [("172.30.0.1", 24)]
    assert link["address"] == info.mac

    again = ensure_bridge("banger0", "172.30.0.0/24", netns=ns)
    assert again == info
    assert get_bridge("banger0", netns=ns) == info


def test_forget_neighbor_drops_the_old_mac_of_an_address(ns: str) -> None:
    """A VM's address comes back with another MAC (the next VM, a fork): the entry the
    host learned for the old one must not outlive it."""
    ensure_bridge("banger0", "172.30.0.0/24", netns=ns)
    netns.ip(ns, "neigh", "replace", "172.30.0.7", "lladdr", "02:00:00:00:00:07",
             "dev", "banger0", "nud", "reachable")  # fmt: skip
    netns.ip(ns, "neigh", "replace", "172.30.0.8", "lladdr", "02:00:00:00:00:08",
             "dev", "banger0", "nud", "reachable")  # fmt: skip

    def entries() -> set[str]:
        shown = json.loads(netns.ip(ns, "-j", "neigh", "show", "dev", "banger0").out)
        return {e["dst"] for e in shown if e.get("lladdr")}

    assert forget_neighbor("172.30.0.7", "banger0", netns=ns) is True
    assert entries() == {"172.30.0.8"}  # only that address's
    assert forget_neighbor("172.30.0.7", "banger0", netns=ns) is False
    assert forget_neighbor("172.30.0.7", "nosuchbr", netns=ns) is False


def test_ensure_bridge_restores_missing_address_and_state(ns: str) -> None:
    ensure_bridge("br-x", "10.20.0.0/24", netns=ns)
    netns.ip(ns, "addr", "flush", "dev", "br-x")
    netns.ip(ns, "link", "set", "br-x", "down")
    info = ensure_bridge("br-x", "10.20.0.0/24", netns=ns)
    assert info.up and info.address == "10.20.0.1"


def test_different_address_is_a_conflict_with_a_hint(ns: str) -> None:
    ensure_bridge("banger0", "10.50.0.0/24", netns=ns)
    with pytest.raises(Conflict) as err:
        ensure_bridge("banger0", "172.30.0.0/24", netns=ns)
    assert "10.50.0.1/24" in err.value.message
    assert "bridge_cidr" in err.value.hint


def test_non_bridge_with_the_name_is_refused(ns: str) -> None:
    netns.ip(ns, "link", "add", "banger0", "type", "veth", "peer", "name", "peer0")
    with pytest.raises(Conflict):
        ensure_bridge(netns=ns)
    with pytest.raises(Conflict):
        delete_bridge(netns=ns)
    assert _link(ns, "banger0")["linkinfo"]["info_kind"] == "veth"


def test_delete_bridge(ns: str) -> None:
    ensure_bridge(netns=ns)
    assert delete_bridge(netns=ns) is True
    assert delete_bridge(netns=ns) is False
    assert get_bridge(netns=ns) is None


def test_bad_input_and_missing_namespace() -> None:
    with pytest.raises(InvalidInput):
        ensure_bridge("bad name; rm", netns="bgt-unused")
    with pytest.raises(InvalidInput):
        ensure_bridge("a-very-long-bridge-name")
    with pytest.raises(NotFound) as err:
        ensure_bridge(netns="bgt-does-not-exist")
    assert "ip netns add" in err.value.hint
