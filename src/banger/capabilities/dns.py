"""`.vm` DNS: `DnsCapability` plugs `net.dns.DnsService` (the daemon's DNS server and
its records) into the VM lifecycle: it registers `<name>.vm` for each booted VM and
makes the server the guest's resolver (the `ip=` DNS field plus
`banger.dns_search=<zone>`, which the guest's banger-net turns into /etc/resolv.conf).

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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from banger.capabilities.base import BootContributions, Capability
from banger.errors import BangerError
from banger.net import resolved
from banger.net.dns import ZONE, DnsService
from banger.vm import VMRecord

log = logging.getLogger("banger.dns")

SEARCH_PARAM = "banger.dns_search"  # kernel command-line key read by the guest's banger-net


def resolver_cmdline(zone: str = ZONE) -> str:
    """The kernel command-line fragment that gives the guest its search domain."""
    return f"{SEARCH_PARAM}={zone}"


class DnsCapability(Capability):
    name = "dns"
    stage = "network"

    def __init__(self, service: DnsService) -> None:
        self.service = service

    async def reclaim(self, vms: list[VMRecord]) -> None:
        # After re-adoption: answer for the VMs that run (not later: a VM mid-create
        # is registered when it attaches, before it is "running").
        self.service.sync((vm.name, vm.ip, vm.nat) for vm in vms if vm.running and vm.ip)

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
