"""`.vm` DNS: `DnsService` owns the daemon's DNS server and its records;
`DnsCapability` registers `<name>.vm` for each booted VM and makes the server the
guest's resolver (the `ip=` DNS field plus `banger.dns_search=<zone>`, which the
guest's banger-net turns into /etc/resolv.conf).

Outside names are resolved for VMs with NAT only (`HostResolver`: the host's own
resolution); everyone else gets REFUSED for them. DNS is a convenience: a server
that cannot bind (port 53 without root, port in use, bridge not up yet) is logged
and retried later, and never fails a VM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from banger.capabilities.base import BootContributions, Capability
from banger.errors import BangerError
from banger.net import resolved
from banger.net.dns import DnsServer, Upstream
from banger.net.upstream import HostResolver
from banger.vm import VMRecord

log = logging.getLogger("banger.dns")

RETRY_AFTER = 60.0  # seconds between bind attempts after a failure (each one logs)
ZONE = "vm"
SEARCH_PARAM = "banger.dns_search"  # kernel command-line key read by the guest's banger-net


class DnsService:
    """Name → address records for running VMs, served on the bridge address."""

    def __init__(
        self,
        host: str,
        port: int,
        running: Callable[[], Iterable[VMRecord]] = lambda: (),
        *,
        netns: str | None = None,
        subnet: str | None = None,
        upstream: Upstream | None = None,
    ) -> None:
        self.running = running
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

    def sync(self) -> None:
        """Rebuild the records from the running VMs: at daemon start, after re-adoption
        (not later: a VM mid-create is registered but not yet "running")."""
        live = [vm for vm in self.running() if vm.running and vm.ip]
        self._records.clear()
        self._records.update({vm.name.lower(): vm.ip for vm in live if vm.ip})
        self._nat.clear()
        self._nat.update(vm.ip for vm in live if vm.ip and vm.nat)

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


def resolver_cmdline(zone: str = ZONE) -> str:
    """The kernel command-line fragment that gives the guest its search domain."""
    return f"{SEARCH_PARAM}={zone}"


class DnsCapability(Capability):
    name = "dns"
    stage = "network"

    def __init__(self, service: DnsService) -> None:
        self.service = service

    async def reclaim(self, vms: list[VMRecord]) -> None:
        self.service.sync()

    async def warm(self) -> None:
        await self.service.ensure_started()

    async def close(self, vms: list[VMRecord]) -> None:
        self.service.close()

    async def attach(self, vm: VMRecord, boot: BootContributions) -> None:
        if vm.ip is None:
            return
        self.service.register(vm.name, vm.ip, nat=vm.nat)
        resolver = self.service.guest_resolver
        if resolver is not None:
            boot.dns = resolver
            boot.cmdline.append(resolver_cmdline())
        # Runs after the network capability, so the bridge address exists by now.
        await self.service.ensure_started()

    async def apply(self, vm: VMRecord) -> None:
        """Live change of a running VM (`vm set --nat/--no-nat`): outside names follow."""
        if vm.ip is not None:
            self.service.set_nat(vm.ip, vm.nat)

    async def detach(self, vm: VMRecord) -> None:
        self.service.unregister(vm.name, vm.ip)

    async def destroy(self, vm: VMRecord) -> None:
        self.service.unregister(vm.name, vm.ip)


class HostDns:
    """`banger dns setup|status|teardown`: the host resolver sends `*.vm` to the daemon.

    Setup is remembered in `state_file`, so the daemon re-applies it (`reapply`)
    every time it sets the bridge up: resolved forgets per-link settings when the
    link goes away or resolved restarts.
    """

    def __init__(
        self,
        state_file: Path,
        bridge: str,
        dns: DnsService,
        network_ready: Callable[[], None],
        running: Callable[[], Iterable[VMRecord]] = lambda: (),
    ) -> None:
        self.state_file = state_file
        self.bridge = bridge
        self.dns = dns
        self.network_ready = network_ready
        self.running = running

    @property
    def configured(self) -> bool:
        return self.state_file.exists()

    @property
    def server(self) -> str:
        host, port = self.dns.server.host, self.dns.server.port
        return host if port == 53 else f"{host}:{port}"

    async def setup(self) -> dict[str, Any]:
        await asyncio.to_thread(self.network_ready)  # the bridge must exist for its link
        if not await self.dns.ensure_started():
            raise BangerError(
                f"the daemon's DNS server is not serving: {self.dns.error}",
                hint="see `banger doctor`; fix that first, then `banger dns setup` again",
            )
        await asyncio.to_thread(resolved.apply, self.bridge, self.server, ZONE)
        self.state_file.write_text(json.dumps({"bridge": self.bridge, "server": self.server}))
        log.info("host DNS: %s sends ~%s to %s", self.bridge, ZONE, self.server)
        return await self.status()

    async def teardown(self) -> dict[str, Any]:
        reverted = await asyncio.to_thread(resolved.revert, self.bridge)
        self.state_file.unlink(missing_ok=True)
        log.info("host DNS: %s reverted (%s)", self.bridge, reverted)
        return await self.status()

    def reapply(self) -> None:
        """After the bridge is (re)made: apply the remembered setup again. Never raises."""
        if not self.configured:
            return
        try:
            resolved.apply(self.bridge, self.server, ZONE)
            log.info("host DNS: re-applied ~%s on %s", ZONE, self.bridge)
        except Exception as exc:
            log.warning("host DNS: could not re-apply on %s: %s", self.bridge, exc)

    async def status(self) -> dict[str, Any]:
        why = resolved.unavailable()
        link = await asyncio.to_thread(resolved.link, self.bridge)
        probe: dict[str, Any] = {}
        vm = next((v for v in self.running() if v.running and v.ip), None)
        if vm is not None:
            name = f"{vm.name}.{ZONE}"
            probe = {"name": name, "expected": vm.ip}
            try:
                probe["got"] = await asyncio.wait_for(asyncio.to_thread(_host_lookup, name), 5)
            except (OSError, TimeoutError) as exc:
                probe["error"] = str(exc) or "timed out"
        active = self.server in link.servers and f"~{ZONE}" in link.domains
        return {
            "configured": self.configured,
            "active": active,
            "bridge": self.bridge,
            "server": self.server,
            "serving": self.dns.serving,
            "resolved": why or "running",
            "link": {"servers": link.servers, "domains": link.domains},
            "probe": probe,
            "fix": "" if why is None else resolved.fix_hint(self.dns.server.host),
        }


def _host_lookup(name: str) -> str:
    """How the host resolves `name` (nsswitch, resolved, ...): its first IPv4 address."""
    return str(socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
