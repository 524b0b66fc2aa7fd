"""Outside names, resolved the way the host resolves them (for VMs with NAT).

- A and AAAA go through the host's own `getaddrinfo` (on a small dedicated thread
  pool), so `/etc/hosts`, nsswitch and whatever DNS the host uses (its resolv.conf,
  systemd-resolved, a VPN's resolver) all apply, exactly as for a program on the
  host. `getaddrinfo` reports no TTL, so these answers carry and are cached for
  `ADDR_TTL` seconds (`NEG_TTL` for names that do not exist).
- The VM network is IPv4 only, so AAAA for an outside name that exists is answered
  NOERROR without data: guests then never try an address they cannot reach.
- Every other type (MX, TXT, SRV, CNAME, ...) is forwarded, with the guest's own
  question, to the nameservers in the host's resolv.conf (re-read when it changes)
  and cached for the smallest TTL in the answer (at most `MAX_TTL`).

Concurrent identical questions share one lookup; the cache is bounded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSRecord

log = logging.getLogger(__name__)

ADDR_TTL = 30
NEG_TTL = 10
FAIL_TTL = 2  # SERVFAIL (the host's resolver failed): retry soon
MAX_TTL = 300
MAX_ENTRIES = 4096
MAX_ADDRS = 16  # A records per answer: keeps replies well inside 512 bytes
FORWARD_TIMEOUT = 2.0
RESOLV_CONF = "/etc/resolv.conf"

GetAddrInfo = Callable[..., list[tuple[Any, ...]]]


@dataclass
class _Entry:
    expires: float
    rcode: int
    rrs: list[RR]
    own: bool = False  # records made here (from getaddrinfo), named after the question


class HostResolver:
    """`await resolve(query)` → a reply DNSRecord for one outside question."""

    def __init__(
        self,
        *,
        getaddrinfo: GetAddrInfo = socket.getaddrinfo,
        resolv_conf: str = RESOLV_CONF,
        nameservers: list[tuple[str, int]] | None = None,
        workers: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._getaddrinfo = getaddrinfo
        self._resolv_conf = resolv_conf
        self._fixed_ns = nameservers
        self._ns_cache: tuple[float, list[tuple[str, int]]] | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dns-upstream")
        self._clock = clock
        self._cache: dict[tuple[str, int], _Entry] = {}
        self._pending: dict[tuple[str, int], asyncio.Future[_Entry]] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def resolve(self, query: DNSRecord) -> DNSRecord:
        q = query.q
        name = str(q.qname).rstrip(".").lower()
        key = (name, int(q.qtype))
        entry = self._cached(key)
        if entry is None:
            pending = self._pending.get(key)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._pending[key] = pending
                try:
                    entry = await self._lookup(query, name, int(q.qtype))
                    self._store(key, entry)
                    pending.set_result(entry)
                except BaseException as exc:
                    pending.set_exception(exc)
                    pending.exception()  # retrieved: no "never retrieved" warning
                    raise
                finally:
                    self._pending.pop(key, None)
            else:
                entry = await asyncio.shield(pending)
        reply = query.reply()
        reply.header.rcode = entry.rcode
        ttl = max(0, int(entry.expires - self._clock()))
        for rr in entry.rrs:
            rname = q.qname if entry.own else rr.rname  # keep the guest's spelling
            reply.add_answer(RR(rname, rr.rtype, rr.rclass, ttl, rr.rdata))
        return reply

    # -- cache ---------------------------------------------------------------------

    def _cached(self, key: tuple[str, int]) -> _Entry | None:
        entry = self._cache.get(key)
        if entry is not None and entry.expires > self._clock():
            return entry
        return None

    def _store(self, key: tuple[str, int], entry: _Entry) -> None:
        if entry.expires <= self._clock():
            return
        if len(self._cache) >= MAX_ENTRIES:
            now = self._clock()
            for k in [k for k, e in self._cache.items() if e.expires <= now]:
                del self._cache[k]
            while len(self._cache) >= MAX_ENTRIES:  # oldest inserted first
                del self._cache[next(iter(self._cache))]
        self._cache[key] = entry

    # -- lookups -------------------------------------------------------------------

    async def _lookup(self, query: DNSRecord, name: str, qtype: int) -> _Entry:
        if qtype in (QTYPE.A, QTYPE.AAAA):
            entry = self._cached((name, QTYPE.A))
            if entry is None:
                entry = await self._addresses(name)
                self._store((name, QTYPE.A), entry)
            if qtype == QTYPE.AAAA:  # IPv4-only network: existence, no addresses
                return _Entry(entry.expires, entry.rcode, [], own=True)
            return entry
        return await self._forward(query)

    async def _addresses(self, name: str) -> _Entry:
        loop = asyncio.get_running_loop()
        now = self._clock()
        try:
            infos = await loop.run_in_executor(
                self._pool, self._getaddrinfo, name, None, socket.AF_INET, socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_NONAME:
                return _Entry(now + NEG_TTL, RCODE.NXDOMAIN, [])
            if exc.errno in (getattr(socket, "EAI_NODATA", -5), socket.EAI_ADDRFAMILY):
                return _Entry(now + NEG_TTL, RCODE.NOERROR, [])
            return _Entry(now + FAIL_TTL, RCODE.SERVFAIL, [])
        except (UnicodeError, ValueError):  # a name the host's resolver cannot even encode
            return _Entry(now + NEG_TTL, RCODE.NXDOMAIN, [])
        addrs: list[str] = []
        for info in infos:
            ip = str(info[4][0])
            if ip not in addrs:
                addrs.append(ip)
        rrs = [RR(name, QTYPE.A, rdata=A(ip), ttl=ADDR_TTL) for ip in addrs[:MAX_ADDRS]]
        return _Entry(now + ADDR_TTL, RCODE.NOERROR, rrs, own=True)

    def nameservers(self) -> list[tuple[str, int]]:
        """The host's resolv.conf nameservers (re-read when the file changes)."""
        if self._fixed_ns is not None:
            return self._fixed_ns
        try:
            mtime = os.stat(self._resolv_conf).st_mtime
        except OSError:
            return []
        if self._ns_cache is None or self._ns_cache[0] != mtime:
            found: list[tuple[str, int]] = []
            try:
                with open(self._resolv_conf) as f:
                    for line in f:
                        parts = line.split()
                        if len(parts) >= 2 and parts[0] == "nameserver":
                            try:
                                found.append((str(ipaddress.ip_address(parts[1])), 53))
                            except ValueError:
                                continue
            except OSError:
                return []
            self._ns_cache = (mtime, found[:3])  # as the libc resolver: at most three
        return self._ns_cache[1]

    async def _forward(self, query: DNSRecord) -> _Entry:
        now = self._clock()
        servers = self.nameservers()
        if not servers:
            return _Entry(now + FAIL_TTL, RCODE.SERVFAIL, [])
        question = DNSRecord(q=query.q)
        question.header.rd = 1
        loop = asyncio.get_running_loop()
        for host, port in servers:
            try:
                raw = await loop.run_in_executor(self._pool, _exchange, question, host, port)
                reply = DNSRecord.parse(raw)
            except (OSError, DNSError, ValueError, IndexError) as exc:
                log.debug("DNS: nameserver %s:%d failed: %s", host, port, exc)
                continue
            if reply.header.rcode == RCODE.SERVFAIL:
                continue
            ttls = [int(rr.ttl) for rr in reply.rr]
            ttl = min([MAX_TTL, *ttls]) if ttls else NEG_TTL
            return _Entry(now + ttl, int(reply.header.rcode), list(reply.rr))
        return _Entry(now + FAIL_TTL, RCODE.SERVFAIL, [])


def _exchange(question: DNSRecord, host: str, port: int) -> bytes:
    """One UDP question, falling back to TCP when the answer is truncated."""
    raw = question.send(host, port, timeout=FORWARD_TIMEOUT, ipv6=":" in host)
    if DNSRecord.parse(raw).header.tc:
        raw = question.send(host, port, tcp=True, timeout=FORWARD_TIMEOUT, ipv6=":" in host)
    return bytes(raw)
