"""The `.vm` DNS responder: pure answers, over UDP on loopback, and on a bridge."""

from __future__ import annotations

import asyncio
import socket

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from banger.errors import Conflict
from banger.net._ns import call_in_netns
from banger.net.dns import DnsServer

NAMES = {"web": "172.30.0.2", "db": "172.30.0.3"}


def _ask(server: DnsServer, name: str, qtype: str = "A") -> DNSRecord:
    packet = server.answer(bytes(DNSRecord.question(name, qtype).pack()))
    assert packet is not None
    return DNSRecord.parse(packet)


def test_answers() -> None:
    server = DnsServer(NAMES)
    reply = _ask(server, "web.vm")
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
    assert [(str(r.rname), str(r.rdata)) for r in reply.rr] == [("web.vm.", "172.30.0.2")]
    assert str(_ask(server, "DB.VM").rr[0].rdata) == "172.30.0.3"  # case-insensitive
    assert _ask(server, "nope.vm").header.rcode == RCODE.NXDOMAIN
    assert _ask(server, "a.web.vm").header.rcode == RCODE.NXDOMAIN
    nodata = _ask(server, "web.vm", "AAAA")
    assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr
    refused = _ask(server, "example.com")
    assert refused.header.rcode == RCODE.REFUSED and refused.header.aa == 0
    assert server.answer(b"\x00garbage") is None
    response = DNSRecord.question("web.vm").reply()
    assert server.answer(bytes(response.pack())) is None  # never answer a response


def test_callable_lookup_is_live_and_failures_are_servfail() -> None:
    names: dict[str, str] = {}
    server = DnsServer(names)
    assert _ask(server, "late.vm").header.rcode == RCODE.NXDOMAIN
    names["late"] = "172.30.0.9"
    assert str(_ask(server, "late.vm").rr[0].rdata) == "172.30.0.9"

    def broken(name: str) -> str | None:
        raise RuntimeError("store is gone")

    assert _ask(DnsServer(broken), "web.vm").header.rcode == RCODE.SERVFAIL


async def test_udp_on_loopback() -> None:
    async with DnsServer(NAMES.get, host="127.0.0.1", port=0) as server:
        assert server.address is not None
        port = server.address[1]

        def ask(name: str) -> DNSRecord:
            return DNSRecord.parse(DNSRecord.question(name).send("127.0.0.1", port, timeout=2))

        assert str((await asyncio.to_thread(ask, "web.vm")).rr[0].rdata) == "172.30.0.2"
        assert (await asyncio.to_thread(ask, "x.vm")).header.rcode == RCODE.NXDOMAIN
        with pytest.raises(Conflict):
            await DnsServer(NAMES, host="127.0.0.1", port=port).start()


@pytest.mark.netns
async def test_serves_port_53_on_the_bridge_address(bridge_ns: str) -> None:
    async with DnsServer(NAMES, host="172.30.0.1", port=53, netns=bridge_ns):

        def query() -> DNSRecord:
            # The client must be in the namespace too: the bridge address lives there.
            def make() -> socket.socket:
                return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

            sock = call_in_netns(bridge_ns, make)
            try:
                sock.settimeout(2)
                sock.sendto(bytes(DNSRecord.question("db.vm").pack()), ("172.30.0.1", 53))
                return DNSRecord.parse(sock.recv(512))
            finally:
                sock.close()

        reply = await asyncio.to_thread(query)
        assert reply.q.qtype == QTYPE.A and str(reply.rr[0].rdata) == "172.30.0.3"
