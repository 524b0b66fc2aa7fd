"""The daemon's DNS server on the bridge address: `.vm` names, and the outside world
for VMs with NAT.

Served over UDP and TCP (RFC 7766: two-byte length prefix, several queries per
connection, answers as they are ready) on the same port. Answers, per question (one
per packet; anything else is FORMERR):

- `<name>.vm` A: the VM's address (authoritative, short TTL). AAAA and other types of
  a known name: NOERROR without data. Unknown names in the zone: NXDOMAIN.
- PTR `d.c.b.a.in-addr.arpa` inside the bridge subnet: `<name>.vm.`, NXDOMAIN when no
  VM holds the address.
- Any other name, for a client the daemon says may recurse (a running VM with NAT):
  resolved *the way the host resolves it* by an `Upstream` (`banger.net.upstream`:
  `getaddrinfo` for A/AAAA so `/etc/hosts` and nsswitch apply, the host's
  `resolv.conf` nameservers for other types), cached for the answer's TTL. Every
  other client (VMs without NAT, anyone else) gets REFUSED: this is never an open
  resolver.

Robustness: garbage, responses and oversized packets are dropped without a reply;
the work per packet is one parse plus at most one cache lookup; outside lookups run
off the event loop with a bound on how many are in flight (the rest get SERVFAIL at
once), and replies that do not fit a UDP datagram are truncated (TC set), so the
client asks again over TCP, where they are whole. TCP connections are bounded in
number and closed after TCP_IDLE seconds without a query. The sockets are bound to the
bridge address only, never to a wildcard.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, cast

from dnslib import PTR, QTYPE, RCODE, RR, A, DNSError, DNSLabel, DNSRecord

from banger.errors import BangerError, Conflict, NotFound, PrivilegeError
from banger.net._ns import call_in_netns
from banger.net.upstream import HostResolver

log = logging.getLogger(__name__)

ZONE = "vm"
RETRY_AFTER = 60.0  # seconds between bind attempts after a failure (each one logs)

Lookup = Callable[[str], str | None] | Mapping[str, str]
MAX_PACKET = 4096  # larger datagrams are not DNS queries we answer
UDP_PAYLOAD = 512  # without EDNS, the most a UDP reply may carry
MAX_INFLIGHT = 64  # outside lookups running at once; beyond that, SERVFAIL at once
TCP_PAYLOAD = 65535  # the most a length-prefixed TCP message may carry
MAX_TCP = 64  # TCP connections at once; more are closed at once
TCP_IDLE = 10.0  # seconds a TCP connection may sit without a query


class Upstream(Protocol):
    """Resolves outside names; returns a full reply to `query`, or None to drop."""

    async def resolve(self, query: DNSRecord) -> DNSRecord: ...


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
        subnet: str | None = None,
        reverse: Callable[[str], str | None] | None = None,
        upstream: Upstream | None = None,
        may_recurse: Callable[[str], bool] = lambda client: False,
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        self._lookup: Callable[[str], str | None] = (
            lookup.get if isinstance(lookup, Mapping) else lookup
        )
        if reverse is None and isinstance(lookup, Mapping):
            mapping = lookup

            def reverse(ip: str) -> str | None:
                return next((n for n, a in list(mapping.items()) if a == ip), None)

        self._reverse = reverse or (lambda ip: None)
        self.host, self.port, self.zone, self.ttl, self.netns = host, port, zone.lower(), ttl, netns
        self.subnet = ipaddress.IPv4Network(subnet) if subnet else None
        self.upstream = upstream
        self.may_recurse = may_recurse
        self.max_inflight = max_inflight
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._transport: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self.address: tuple[str, int] | None = None  # once bound
        self.stats = {"queries": 0, "dropped": 0, "forwarded": 0, "overload": 0}

    async def start(self) -> tuple[str, int]:
        """Bind and serve; returns the bound (host, port), useful with port 0."""
        # A socket keeps its namespace. With port 0 the TCP socket takes the port the
        # UDP one got; should that be taken for TCP, both try again elsewhere.
        for attempt in range(20):
            sock = call_in_netns(self.netns, self._bind)
            port = int(sock.getsockname()[1])
            try:
                tcp = call_in_netns(self.netns, functools.partial(self._bind_tcp, port))
            except Conflict:
                sock.close()
                if self.port == 0 and attempt < 19:
                    continue
                raise
            except BaseException:
                sock.close()
                raise
            break
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        except BaseException:
            sock.close()
            tcp.close()
            raise
        self._transport = transport
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)
        except BaseException:
            tcp.close()
            self.close()
            raise
        host, port = sock.getsockname()[:2]
        self.address = (str(host), int(port))
        log.info("DNS for .%s listening on %s:%d (UDP and TCP)", self.zone, host, port)
        return self.address

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
        for writer in list(self._tcp_writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
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

    def _bind_tcp(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # a restarted daemon must not wait for its old connections' TIME_WAIT
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port))
            sock.listen(MAX_TCP)
        except OSError as exc:
            sock.close()
            raise _bind_error(exc, self.host, port, "TCP") from exc
        sock.setblocking(False)
        return sock

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One TCP client: length-prefixed queries, answered as they are ready."""
        if len(self._tcp_writers) >= MAX_TCP:
            writer.close()
            return
        self._tcp_writers.add(writer)
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else ""
        pending: set[asyncio.Task[None]] = set()

        def send(response: bytes) -> None:
            if not writer.is_closing():
                writer.write(len(response).to_bytes(2, "big") + response)

        try:
            while True:
                try:
                    async with asyncio.timeout(TCP_IDLE):
                        size = int.from_bytes(await reader.readexactly(2), "big")
                        packet = await reader.readexactly(size)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                task = self.handle(packet, client, send, tcp=True)
                if task is not None:
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                try:
                    async with asyncio.timeout(TCP_IDLE):
                        await writer.drain()
                except (TimeoutError, ConnectionError):
                    break
            if pending:  # a client that half-closed still gets what it asked
                await asyncio.wait(pending, timeout=TCP_IDLE)
                with contextlib.suppress(TimeoutError, ConnectionError):
                    async with asyncio.timeout(TCP_IDLE):
                        await writer.drain()
        finally:
            self._tcp_writers.discard(writer)
            writer.close()

    # -- answering -------------------------------------------------------------------

    def parse(self, packet: bytes) -> DNSRecord | None:
        """A query worth answering, or None (garbage, a response, oversized)."""
        if len(packet) > MAX_PACKET or len(packet) < 12:
            return None
        try:
            query = DNSRecord.parse(packet)
        except (DNSError, ValueError, IndexError, UnicodeError):
            return None
        if query.header.qr or query.header.opcode != 0:  # responses never get answers
            return None
        return query

    def answer(self, packet: bytes, client: str = "127.0.0.1") -> bytes | None:
        """The local response to one packet; None when it gets none (or is forwarded
        elsewhere: see `handle`)."""
        query = self.parse(packet)
        if query is None:
            return None
        reply = self.local_reply(query, client)
        return None if reply is None else self.pack(query, reply)

    def local_reply(self, query: DNSRecord, client: str) -> DNSRecord | None:
        """The reply when it can be made here; None when the upstream must answer."""
        reply = query.reply()
        reply.header.ra = int(self.upstream is not None and self.may_recurse(client))
        if len(query.questions) != 1:
            reply.header.rcode = RCODE.FORMERR
            return reply
        q = query.q
        labels = [label.decode(errors="replace").lower() for label in q.qname.label]
        if labels and labels[-1] == self.zone:
            if len(labels) == 1:
                pass  # the zone apex exists but holds no records we serve: NODATA
            elif len(labels) != 2:
                reply.header.rcode = RCODE.NXDOMAIN
            else:
                self._answer_name(reply, labels[0], q.qtype)
            return reply
        ptr_ip = self._ptr_address(labels)
        if ptr_ip is not None:
            self._answer_ptr(reply, ptr_ip, q.qtype)
            return reply
        if reply.header.ra:
            return None  # outside name, client may recurse: the upstream answers
        reply.header.aa = 0
        reply.header.rcode = RCODE.REFUSED
        return reply

    def _ptr_address(self, labels: list[str]) -> str | None:
        """The subnet address a reverse name asks about, else None."""
        if self.subnet is None or labels[-2:] != ["in-addr", "arpa"] or len(labels) != 6:
            return None
        try:
            ip = ipaddress.IPv4Address(".".join(reversed(labels[:4])))
        except ValueError:
            return None
        return str(ip) if ip in self.subnet else None

    def _answer_ptr(self, reply: Any, ip: str, qtype: int) -> None:
        try:
            name = self._reverse(ip)
        except Exception:
            log.exception("DNS reverse lookup for %s failed", ip)
            reply.header.rcode = RCODE.SERVFAIL
            return
        if name is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif qtype in (QTYPE.PTR, QTYPE.ANY):
            target = DNSLabel(f"{name}.{self.zone}.")
            reply.add_answer(RR(reply.q.qname, QTYPE.PTR, rdata=PTR(target), ttl=self.ttl))

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

    def pack(self, query: DNSRecord, reply: DNSRecord, *, tcp: bool = False) -> bytes:
        """Wire bytes, truncated (TC) when over what the client can take: over UDP
        512 bytes or its EDNS size, over TCP a whole message."""
        limit = TCP_PAYLOAD if tcp else UDP_PAYLOAD
        for rr in query.ar if not tcp else ():
            if rr.rtype == QTYPE.OPT:
                limit = max(UDP_PAYLOAD, min(int(rr.rclass), MAX_PACKET))
        data = bytes(reply.pack())
        if len(data) > limit:
            data = bytes(reply.truncate().pack())
        return data

    def handle(
        self, packet: bytes, client: str, send: Callable[[bytes], None], *, tcp: bool = False
    ) -> asyncio.Task[None] | None:
        """Answer one query: locally at once, or through the upstream off the loop (the
        task doing that is returned)."""
        self.stats["queries"] += 1
        query = self.parse(packet)
        if query is None:
            self.stats["dropped"] += 1
            return None
        try:
            reply = self.local_reply(query, client)
        except Exception:  # never let one odd packet stop the server
            log.exception("DNS: could not answer a query from %s", client)
            return None
        if reply is not None:
            send(self.pack(query, reply, tcp=tcp))
            return None
        if self._inflight >= self.max_inflight:
            self.stats["overload"] += 1
            fail = query.reply()
            fail.header.rcode = RCODE.SERVFAIL
            send(self.pack(query, fail, tcp=tcp))
            return None
        self.stats["forwarded"] += 1
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(self._forward(query, send, tcp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _forward(self, query: DNSRecord, send: Callable[[bytes], None], tcp: bool) -> None:
        try:
            assert self.upstream is not None
            try:
                reply = await self.upstream.resolve(query)
            except Exception as exc:
                log.debug("DNS: upstream failed for %s: %s", query.q.qname, exc)
                reply = query.reply()
                reply.header.rcode = RCODE.SERVFAIL
            reply.header.id = query.header.id
            reply.header.ra = 1
            reply.header.aa = 0
            send(self.pack(query, reply, tcp=tcp))
        finally:
            self._inflight -= 1


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Event loops hand over their own transport classes; trust the protocol type.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        def send(response: bytes) -> None:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.sendto(response, addr)

        self.server.handle(data, str(addr[0]), send)

    def error_received(self, exc: Exception) -> None:  # ICMP errors from earlier sends
        log.debug("DNS socket error: %s", exc)


def _bind_error(exc: OSError, host: str, port: int, proto: str = "UDP") -> BangerError:
    where = f"{host}:{port} ({proto})"
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


class DnsService:
    """Name → address records for running VMs, served on the bridge address by a
    `DnsServer`; outside names only for addresses with NAT. A server that cannot bind
    is logged and retried after RETRY_AFTER, never an error."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        netns: str | None = None,
        subnet: str | None = None,
        upstream: Upstream | None = None,
    ) -> None:
        # The server reads these very containers on every query: never rebind them.
        self._records: dict[str, str] = {}
        self._nat: set[str] = set()  # addresses of running VMs that may resolve outside names
        self.upstream = upstream if upstream is not None else HostResolver()
        self.server = DnsServer(
            self._records,
            host,
            port,
            zone=ZONE,
            netns=netns,
            subnet=subnet,
            reverse=self._reverse,
            upstream=self.upstream,
            may_recurse=self._nat.__contains__,
        )
        self.error: str | None = None  # why the server is not serving, for `doctor`
        self._retry_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def serving(self) -> bool:
        return self.server.address is not None

    @property
    def guest_resolver(self) -> str | None:
        """The address guests put in resolv.conf (None: not on port 53, unusable there)."""
        return self.server.host if self.server.port == 53 else None

    def records(self) -> dict[str, str]:
        return dict(self._records)

    def _reverse(self, ip: str) -> str | None:
        return next((n for n, a in list(self._records.items()) if a == ip), None)

    def register(self, name: str, ip: str, *, nat: bool = False) -> None:
        self._records[name.lower()] = ip
        self.set_nat(ip, nat)

    def set_nat(self, ip: str, nat: bool) -> None:
        if nat:
            self._nat.add(ip)
        else:
            self._nat.discard(ip)

    def unregister(self, name: str, ip: str | None = None) -> None:
        # With `ip`, only that address is forgotten: a newer VM may own the name now.
        if ip is None or self._records.get(name.lower()) == ip:
            old = self._records.pop(name.lower(), None)
            if old is not None:
                self._nat.discard(old)

    def sync(self, live: Iterable[tuple[str, str, bool]]) -> None:
        """Replace every record with `live`: (name, address, nat) of each running VM."""
        vms = list(live)
        self._records.clear()
        self._records.update({name.lower(): ip for name, ip, _ in vms})
        self._nat.clear()
        self._nat.update(ip for _, ip, nat in vms if nat)

    async def ensure_started(self) -> bool:
        """Serve if not serving yet; call once the bridge has its address. Never raises."""
        async with self._lock:
            if self.serving or time.monotonic() < self._retry_at:
                return self.serving
            try:
                await self.server.start()
            except Exception as exc:
                self.error = str(exc)
                self._retry_at = time.monotonic() + RETRY_AFTER
                hint = getattr(exc, "hint", "")
                log.warning("`.vm` DNS is off: %s%s", exc, f" ({hint})" if hint else "")
                return False
            self.error = None
            return True

    def close(self) -> None:
        self.server.close()
        close = getattr(self.upstream, "close", None)
        if close is not None:
            close()
