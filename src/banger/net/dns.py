"""A tiny authoritative DNS responder for `<name>.vm`, on the bridge address.

It answers A queries for `<name>.vm` from a lookup the daemon provides (a callable
or a live mapping, read on every query), NXDOMAIN for unknown names in the zone,
and REFUSED for every other zone: it is not a recursive resolver, so the host
resolver must send it only `~vm` (systemd-resolved: `resolvectl dns banger0
172.30.0.1; resolvectl domain banger0 ~vm`), which `doctor` explains.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any, cast

from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSRecord

from banger.errors import BangerError, Conflict, NotFound, PrivilegeError
from banger.net._ns import call_in_netns

log = logging.getLogger(__name__)

Lookup = Callable[[str], str | None] | Mapping[str, str]


class DnsServer:
    """`async with DnsServer(lookup, host, port):` serves until the block exits."""

    def __init__(
        self,
        lookup: Lookup,
        host: str = "172.30.0.1",
        port: int = 53,
        *,
        zone: str = "vm",
        ttl: int = 5,  # short: VMs come and go, and a stale answer costs an SSH timeout
        netns: str | None = None,
    ) -> None:
        self._lookup: Callable[[str], str | None] = (
            lookup.get if isinstance(lookup, Mapping) else lookup
        )
        self.host, self.port, self.zone, self.ttl, self.netns = host, port, zone.lower(), ttl, netns
        self._transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] | None = None  # once bound

    async def start(self) -> tuple[str, int]:
        """Bind and serve; returns the bound (host, port), useful with port 0."""
        sock = call_in_netns(self.netns, self._bind)  # a socket keeps its namespace
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._transport = transport
        host, port = sock.getsockname()[:2]
        self.address = (str(host), int(port))
        log.info("DNS for .%s listening on %s:%d", self.zone, host, port)
        return self.address

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.address = None  # not serving: a later start() binds again

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise _bind_error(exc, self.host, self.port) from exc
        sock.setblocking(False)
        return sock

    def answer(self, packet: bytes) -> bytes | None:
        """The response to one query packet; None for garbage or stray responses."""
        try:
            query = DNSRecord.parse(packet)
        except (DNSError, ValueError, IndexError):
            return None
        if query.header.qr:  # a response, not a query: never answer (no loops)
            return None
        reply = query.reply()
        reply.header.ra = 0  # not recursive
        if not query.questions:
            reply.header.rcode = RCODE.FORMERR
            return bytes(reply.pack())
        q = query.q
        labels = [label.decode(errors="replace").lower() for label in q.qname.label]
        if not labels or labels[-1] != self.zone:
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
        elif len(labels) == 1:
            pass  # the zone apex exists but holds no records we serve: NODATA
        elif len(labels) != 2:
            reply.header.rcode = RCODE.NXDOMAIN
        else:
            self._answer_name(reply, labels[0], q.qtype)
        return bytes(reply.pack())

    def _answer_name(self, reply: Any, name: str, qtype: int) -> None:
        try:
            ip = self._lookup(name)
        except Exception:
            log.exception("DNS lookup for %s.%s failed", name, self.zone)
            reply.header.rcode = RCODE.SERVFAIL
            return
        if ip is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(reply.q.qname, QTYPE.A, rdata=A(ip), ttl=self.ttl))
        # Other types (AAAA, MX, ...) of a known name: NOERROR without answers.


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Event loops hand over their own transport classes; trust the protocol type.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        response = self.server.answer(data)
        if response is not None and self.transport is not None:
            self.transport.sendto(response, addr)


def _bind_error(exc: OSError, host: str, port: int) -> BangerError:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return Conflict(
            f"cannot serve DNS on {where}: the port is in use",
            hint="stop the other DNS server on the bridge address or set `dns_port`",
        )
    if exc.errno == errno.EACCES:
        return PrivilegeError(
            f"cannot serve DNS on {where}: ports below 1024 need privilege",
            hint="set `dns_port` to 1024 or above, or run bangerd as root",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return NotFound(
            f"cannot serve DNS on {where}: no interface has {host}",
            hint="the bridge must be up with its address first (see `banger doctor`)",
        )
    return BangerError(f"cannot serve DNS on {where}: {exc.strerror}")
