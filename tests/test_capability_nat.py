"""The NAT capability in a throwaway namespace: rules follow the VM lifecycle."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from banger.capabilities.base import BootContributions
from banger.capabilities.nat import NatCapability
from banger.system import find_tool
from banger.vm import VMRecord
from tests import netns
from tests.records import vm_record

pytestmark = [
    pytest.mark.netns,
    netns.skip_unless_netns(),
    pytest.mark.skipif(find_tool("nft") is None, reason="needs nft (apt-get install nftables)"),
]


def vm(name: str, ip: str, nat: bool) -> VMRecord:
    return vm_record(name, ip, nat=nat)


@pytest.fixture
def ns() -> Iterator[str]:
    with netns.namespace() as name:
        yield name


@pytest.fixture
def cap(ns: str) -> NatCapability:
    return NatCapability("banger0", "172.30.0.0/24", netns=ns)


def _table(ns: str) -> str:
    res = netns.exec_in(ns, "nft", "list", "table", "ip", "banger", check=False)
    return res.out if res.returncode == 0 else ""


def _tags(ns: str) -> list[str]:
    return sorted(
        line.split('comment "')[1].rstrip('"')
        for line in _table(ns).splitlines()
        if 'comment "banger:1' in line
    )


async def test_attach_detach_follow_the_nat_flag(ns: str, cap: NatCapability) -> None:
    plain = vm("plain", "172.30.0.3", nat=False)
    await cap.attach(plain, BootContributions())
    assert _table(ns) == ""  # a VM without NAT leaves the host's nftables alone

    web = vm("web", "172.30.0.2", nat=True)
    await cap.attach(web, BootContributions())
    await cap.attach(web, BootContributions())  # a second attach never duplicates
    listing = _table(ns)
    assert 'ip saddr 172.30.0.2 masquerade comment "banger:172.30.0.2"' in listing
    assert _tags(ns) == ["banger:172.30.0.2"] * 2  # masquerade + forward accept
    assert netns.exec_in(ns, "cat", "/proc/sys/net/ipv4/ip_forward").out.strip() == "1"

    web.nat = False  # `vm set --no-nat` while stopped: detach still removes the rule
    await cap.detach(web)
    await cap.detach(web)  # idempotent
    assert _tags(ns) == []
    await cap.destroy(web)


async def test_apply_toggles_a_running_vm(ns: str, cap: NatCapability) -> None:
    web = vm("web", "172.30.0.2", nat=False)
    await cap.attach(web, BootContributions())
    web.nat = True
    await cap.apply(web)
    assert _tags(ns) == ["banger:172.30.0.2"] * 2
    web.nat = False
    await cap.apply(web)
    assert _tags(ns) == []


async def test_reclaim_removes_stale_keeps_and_restores_live(ns: str, cap: NatCapability) -> None:
    assert await cap.reclaim_ips(set()) == {"removed": [], "restored": []}  # no table: no-op
    assert _table(ns) == ""
    for i in (2, 3, 4):
        await cap.attach(vm(f"v{i}", f"172.30.0.{i}", nat=True), BootContributions())
    # The daemon died; v3 died with it, and v5's rules were flushed by hand.
    report = await cap.reclaim_ips({"172.30.0.2", "172.30.0.4", "172.30.0.5"})
    assert report == {"removed": ["172.30.0.3"], "restored": ["172.30.0.5"]}
    assert _tags(ns) == sorted(["banger:172.30.0.2", "banger:172.30.0.4", "banger:172.30.0.5"] * 2)

    await cap.cleanup_all()
    await cap.cleanup_all()  # idempotent
    assert _table(ns) == ""


async def test_removal_failures_never_raise(ns: str) -> None:
    gone = NatCapability("banger0", "172.30.0.0/24", netns="bgt-does-not-exist")
    web = vm("web", "172.30.0.2", nat=True)
    await gone.detach(web)  # logged, left for reclaim: a stop or rollback must go on
    await gone.destroy(web)
