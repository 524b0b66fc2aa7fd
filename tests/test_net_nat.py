"""nftables NAT in throwaway namespaces: rule bookkeeping and real masquerading."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from banger.errors import InvalidInput, NotFound
from banger.net import nat
from banger.net._ns import call_in_netns
from banger.net.bridge import ensure_bridge
from banger.system import find_tool
from tests import netns

pytestmark = [
    pytest.mark.netns,
    netns.skip_unless_netns(),
    pytest.mark.skipif(find_tool("nft") is None, reason="needs nft (apt-get install nftables)"),
]


@pytest.fixture
def ns() -> Iterator[str]:
    with netns.namespace() as name:
        yield name


def _table(ns: str) -> str:
    return netns.exec_in(ns, "nft", "list", "table", "ip", "banger").out


def _forwarding(ns: str) -> str:
    return netns.exec_in(ns, "cat", "/proc/sys/net/ipv4/ip_forward").out.strip()


def test_rules_added_listed_replaced_and_removed(ns: str) -> None:
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        host_forwarding = f.read()
    nat.ensure_table("banger0", "172.30.0.0/24", netns=ns)
    nat.ensure_table("banger0", "172.30.0.0/24", netns=ns)  # idempotent
    assert _table(ns).count('comment "banger:base"') == 9
    assert _forwarding(ns) == "0"

    nat.enable_nat("172.30.0.2", netns=ns)
    nat.enable_nat("172.30.0.3", uplink="eth0", netns=ns)
    nat.enable_nat("172.30.0.3", uplink="eth0", netns=ns)  # replaces, never duplicates
    listing = _table(ns)
    assert 'ip saddr 172.30.0.2 masquerade comment "banger:172.30.0.2"' in listing
    assert 'ip saddr 172.30.0.3 oifname "eth0" masquerade comment "banger:172.30.0.3"' in listing
    assert listing.count('comment "banger:172.30.0.3"') == 2  # nat + forward
    assert nat.list_nat(netns=ns) == [
        nat.NatEntry("172.30.0.2", None),
        nat.NatEntry("172.30.0.3", "eth0"),
    ]
    assert _forwarding(ns) == "1"
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read() == host_forwarding  # the host's namespace was not touched

    assert nat.disable_nat("172.30.0.2", netns=ns) is True
    assert nat.disable_nat("172.30.0.2", netns=ns) is False
    assert "banger:172.30.0.2" not in _table(ns)
    assert [e.ip for e in nat.list_nat(netns=ns)] == ["172.30.0.3"]

    nat.ensure_table("banger0", "172.30.0.0/24", netns=ns)  # a daemon restart keeps VM rules
    assert [e.ip for e in nat.list_nat(netns=ns)] == ["172.30.0.3"]

    nat.flush(netns=ns)
    nat.flush(netns=ns)  # idempotent
    assert "banger" not in netns.exec_in(ns, "nft", "list", "tables").out
    assert nat.list_nat(netns=ns) == []
    assert nat.disable_nat("172.30.0.3", netns=ns) is False


def test_enable_without_table_and_bad_input(ns: str) -> None:
    with pytest.raises(NotFound) as err:
        nat.enable_nat("172.30.0.2", netns=ns)
    assert "ensure_table" in err.value.hint
    nat.ensure_table(netns=ns)
    with pytest.raises(InvalidInput):
        nat.enable_nat("172.30.0.2; flush ruleset", netns=ns)
    with pytest.raises(InvalidInput):
        nat.enable_nat("172.30.0.2", uplink='eth0" accept', netns=ns)
    with pytest.raises(InvalidInput):
        nat.ensure_table("br0", "not-a-subnet", netns=ns)
    assert nat.list_nat(netns=ns) == []


def _udp(ns: str, bind: tuple[str, int], timeout: float) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(bind)
        s.settimeout(timeout)
        return s

    return call_in_netns(ns, make)


@pytest.fixture
def topology() -> Iterator[tuple[str, str, str]]:
    """host (bridge + uplink), vm (behind the bridge), net (beyond the uplink)."""
    with ExitStack() as stack:
        host, vm, net = (stack.enter_context(netns.namespace()) for _ in range(3))
        ensure_bridge("banger0", "172.30.0.0/24", netns=host)
        netns.ip(host, "link", "add", "vm0", "type", "veth", "peer", "name", "eth0", "netns", vm)
        netns.ip(host, "link", "set", "vm0", "master", "banger0", "up")
        # a hairpin port, as banger makes every TAP (test_net_tap checks that)
        netns.ip(host, "link", "set", "vm0", "type", "bridge_slave", "hairpin", "on")
        netns.ip(vm, "addr", "add", "172.30.0.2/24", "dev", "eth0")
        netns.ip(vm, "link", "set", "eth0", "up")
        netns.ip(vm, "route", "add", "default", "via", "172.30.0.1")
        netns.ip(host, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", net)
        netns.ip(host, "addr", "add", "10.99.0.1/24", "dev", "up0")
        netns.ip(host, "link", "set", "up0", "up")
        netns.ip(net, "addr", "add", "10.99.0.2/24", "dev", "eth0")
        netns.ip(net, "link", "set", "eth0", "up")
        yield host, vm, net


def _send(vm: str, net: str, timeout: float = 1.0) -> str | None:
    """Source address the far side sees for a datagram from the VM, None if it never came."""
    server = _udp(net, ("10.99.0.2", 9999), timeout)
    client = _udp(vm, ("0.0.0.0", 0), timeout)
    try:
        for _ in range(3):  # the first packet may wait for ARP
            client.sendto(b"ping", ("10.99.0.2", 9999))
            try:
                return str(server.recvfrom(16)[1][0])
            except TimeoutError:
                continue
        return None
    finally:
        server.close()
        client.close()


def test_masquerade_end_to_end(topology: tuple[str, str, str]) -> None:
    host, vm, net = topology
    nat.ensure_table("banger0", "172.30.0.0/24", netns=host)
    nat.enable_nat("172.30.0.2", uplink="up0", netns=host)
    assert _send(vm, net) == "10.99.0.1"  # masqueraded behind the uplink address

    nat.disable_nat("172.30.0.2", netns=host)
    # Forwarding stays on, but a VM without NAT is kept off the uplink.
    assert _forwarding(host) == "1"
    assert _send(vm, net, timeout=0.3) is None


def _tcp_server(ns: str, bind: tuple[str, int], reply: bytes) -> socket.socket:
    """A one-shot-per-connection TCP server in `ns` (a thread answers `reply`)."""
    import threading

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(bind)
        s.listen(8)
        return s

    srv = call_in_netns(ns, make)

    def serve() -> None:
        while True:
            try:
                conn, peer = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(reply + f" to {peer[0]}".encode())

    threading.Thread(target=serve, daemon=True).start()
    return srv


def _fetch(ns: str, addr: tuple[str, int]) -> str | None:
    def go() -> str | None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            try:
                s.connect(addr)
                return s.recv(64).decode()
            except OSError:
                return None

    return call_in_netns(ns, go)


def test_published_port_end_to_end(topology: tuple[str, str, str]) -> None:
    """DNAT from outside, from the host's own addresses and from 127.0.0.1, for a VM
    without NAT; gone once unpublished."""
    host, vm, net = topology
    srv = _tcp_server(vm, ("172.30.0.2", 80), b"hello from vm")
    try:
        rules = [
            nat.PortRule("tcp", "0.0.0.0", 8080, 80),
            nat.PortRule("tcp", "127.0.0.1", 9090, 80),
        ]
        nat.set_published("172.30.0.2", rules, netns=host)  # makes the table itself
        assert nat.list_published(netns=host) == [nat.PublishEntry("172.30.0.2", r) for r in rules]
        # From outside (the far side of the uplink): the VM sees the real client.
        assert _fetch(net, ("10.99.0.1", 8080)) == "hello from vm to 10.99.0.2"
        # On the host, through loopback (route_localnet + masquerade) and its own address.
        assert (_fetch(host, ("127.0.0.1", 8080)) or "").startswith("hello from vm")
        assert (_fetch(host, ("127.0.0.1", 9090)) or "").startswith("hello from vm")
        assert (_fetch(host, ("10.99.0.1", 8080)) or "").startswith("hello from vm")
        # A port bound to 127.0.0.1 is not reachable from outside.
        assert _fetch(net, ("10.99.0.1", 9090)) is None

        nat.set_published("172.30.0.2", rules[:1], netns=host)
        assert _fetch(host, ("127.0.0.1", 9090)) is None
        nat.set_published("172.30.0.2", [], netns=host)
        assert nat.list_published(netns=host) == []
        assert _fetch(net, ("10.99.0.1", 8080)) is None
        assert "banger:pub:" not in _table(host)
    finally:
        srv.close()


def test_a_vm_reaches_its_own_published_port_through_host_addresses(
    topology: tuple[str, str, str],
) -> None:
    """Hairpin: the VM connects to a host address and lands on itself (masqueraded, so
    its reply goes back through the host and the connection completes)."""
    host, vm, _ = topology
    srv = _tcp_server(vm, ("172.30.0.2", 80), b"hello from vm")
    try:
        nat.set_published("172.30.0.2", [nat.PortRule("tcp", "0.0.0.0", 8080, 80)], netns=host)
        for addr in ("10.99.0.1", "172.30.0.1"):  # the uplink's and the bridge's address
            assert _fetch(vm, (addr, 8080)) == "hello from vm to 172.30.0.1", addr
    finally:
        srv.close()
