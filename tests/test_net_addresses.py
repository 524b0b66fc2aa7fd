"""Pure address arithmetic: no namespaces needed."""

from __future__ import annotations

import pytest

from banger.errors import Conflict, InvalidInput
from banger.net import addresses as a


def test_parse_subnet_normalises_host_bits() -> None:
    assert str(a.parse_subnet("172.30.0.9/24")) == "172.30.0.0/24"


@pytest.mark.parametrize("bad", ["nope", "172.30.0.0/33", "fd00::/64", "10.0.0.0/31", ""])
def test_parse_subnet_rejects(bad: str) -> None:
    with pytest.raises(InvalidInput) as err:
        a.parse_subnet(bad)
    assert err.value.hint or "IPv4" in err.value.message or "small" in err.value.message


def test_gateway_and_formatting() -> None:
    cidr = "172.30.0.0/24"
    assert a.gateway(cidr) == "172.30.0.1"
    assert a.prefixlen("10.1.0.0/16") == 16
    assert a.reserved(cidr) == {"172.30.0.0", "172.30.0.1", "172.30.0.255"}


def test_allocate_lowest_free() -> None:
    cidr = "172.30.0.0/24"
    assert a.allocate(set(), cidr) == "172.30.0.2"
    assert a.allocate({"172.30.0.2", "172.30.0.3"}, cidr) == "172.30.0.4"
    assert a.allocate({"172.30.0.3"}, cidr) == "172.30.0.2"  # fills holes first
    # Leases outside the subnet (an old config) do not confuse it.
    assert a.allocate({"10.0.0.2"}, cidr) == "172.30.0.2"


def test_allocate_never_hands_out_reserved_and_reports_full() -> None:
    cidr = "10.9.0.0/29"  # .0 network, .1 gateway, .7 broadcast: .2-.6 usable
    used: set[str] = set()
    for _ in range(5):
        used.add(a.allocate(used, cidr))
    assert used == {f"10.9.0.{i}" for i in range(2, 7)}
    with pytest.raises(Conflict) as err:
        a.allocate(used, cidr)
    assert "bridge_cidr" in err.value.hint


def test_allocate_rejects_garbage_lease() -> None:
    with pytest.raises(InvalidInput):
        a.allocate({"not-an-ip"}, "172.30.0.0/24")


def test_mac_for() -> None:
    for mac in [a.mac_for("vm-1"), a.mac_for("banger0")]:
        first = int(mac.split(":")[0], 16)
        assert len(mac.split(":")) == 6
        assert first & 0x02, "locally administered"
        assert not first & 0x01, "unicast"
    assert a.mac_for("vm-1") == a.mac_for("vm-1")
    assert a.mac_for("vm-1") != a.mac_for("vm-2")


def test_kernel_ip_param() -> None:
    assert (
        a.kernel_ip_param("172.30.0.5", 24, "172.30.0.1", "web")
        == "ip=172.30.0.5::172.30.0.1:255.255.255.0:web:eth0:off"
    )
    with_dns = a.kernel_ip_param("172.30.0.5", 24, "172.30.0.1", "web", dns="172.30.0.1")
    assert with_dns.endswith(":off:172.30.0.1")
    with pytest.raises(InvalidInput, match="outside the guest network"):
        a.kernel_ip_param("10.0.0.5", 24, "172.30.0.1", "web")
    with pytest.raises(InvalidInput, match="cannot be a guest address"):
        a.kernel_ip_param("172.30.0.1", 24, "172.30.0.1", "web")
