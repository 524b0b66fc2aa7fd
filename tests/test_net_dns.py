"""The `.vm` DNS responder: pure answers, over UDP on loopback, and on a bridge."""

from __future__ import annotations

import asyncio
import socket

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

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


class BigUpstream:
    """An outside name with 60 addresses: about 1 KiB, more than a UDP reply holds."""

    async def resolve(self, query: DNSRecord) -> DNSRecord:
        reply = query.reply()
        for i in range(60):
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(f"10.0.{i}.1"), ttl=60))
        return reply


def _tcp_exchange(
    addr: tuple[str, int], packets: list[bytes], ns: str | None = None
) -> list[bytes]:
    """Send length-prefixed queries on one connection; the replies, in arrival order."""

    def make() -> socket.socket:
        return socket.create_connection(addr, timeout=5)

    sock = call_in_netns(ns, make)
    try:
        sock.sendall(b"".join(len(p).to_bytes(2, "big") + p for p in packets))
        replies = []
        f = sock.makefile("rb")
        for _ in packets:
            size = int.from_bytes(f.read(2), "big")
            replies.append(f.read(size))
        return replies
    finally:
        sock.close()


async def test_tcp_on_loopback_and_truncated_udp_answers_whole_over_tcp() -> None:
    server = DnsServer(
        NAMES, host="127.0.0.1", port=0, upstream=BigUpstream(), may_recurse=lambda c: True
    )
    async with server:
        assert server.address is not None
        port = server.address[1]
        big = DNSRecord.question("many.example")
        udp = DNSRecord.parse(await asyncio.to_thread(big.send, "127.0.0.1", port, timeout=5))
        assert udp.header.tc == 1 and len(udp.rr) < 60  # the resolver retries over TCP
        tcp = DNSRecord.parse(
            await asyncio.to_thread(big.send, "127.0.0.1", port, tcp=True, timeout=5)
        )
        assert tcp.header.tc == 0 and len(tcp.rr) == 60
        assert str(tcp.rr[59].rdata) == "10.0.59.1"
        # several queries on one connection (pipelined), each answered
        questions = [DNSRecord.question(n) for n in ("web.vm", "db.vm", "nope.vm")]
        raw = await asyncio.to_thread(
            _tcp_exchange, ("127.0.0.1", port), [bytes(q.pack()) for q in questions]
        )
        replies = {r.header.id: r for r in map(DNSRecord.parse, raw)}
        assert [str(replies[q.header.id].rr[0].rdata) for q in questions[:2]] == [
            "172.30.0.2",
            "172.30.0.3",
        ]
        assert replies[questions[2].header.id].header.rcode == RCODE.NXDOMAIN


@pytest.mark.netns
async def test_tcp_on_port_53_of_the_bridge_address(bridge_ns: str) -> None:
    async with DnsServer(NAMES, host="172.30.0.1", port=53, netns=bridge_ns):
        q = DNSRecord.question("web.vm")
        (raw,) = await asyncio.to_thread(
            _tcp_exchange, ("172.30.0.1", 53), [bytes(q.pack())], bridge_ns
        )
        assert str(DNSRecord.parse(raw).rr[0].rdata) == "172.30.0.2"
