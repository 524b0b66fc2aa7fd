"""`.vm` DNS: `DnsService` owns the daemon's DNS server and its records;
`DnsCapability` registers `<name>.vm` for each booted VM.

DNS is a convenience: a server that cannot bind (port 53 without root, port in
use, bridge not up yet) is logged and retried later, and never fails a VM.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from banger.capabilities.base import BootContributions, Capability
from banger.net.dns import DnsServer
from banger.vm import VMRecord

log = logging.getLogger("banger.dns")

RETRY_AFTER = 60.0  # seconds between bind attempts after a failure (each one logs)


class DnsService:
    """Name → address records for running VMs, served on the bridge address."""

    def __init__(
        self,
        host: str,
        port: int,
        running: Callable[[], Iterable[VMRecord]] = lambda: (),
        *,
        netns: str | None = None,
    ) -> None:
        self.running = running
        # The server reads this very dict on every query, so it must never be rebound.
        self._records: dict[str, str] = {}
        self.server = DnsServer(self._records, host, port, netns=netns)
        self.error: str | None = None  # why the server is not serving, for `doctor`
        self._retry_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def serving(self) -> bool:
        return self.server.address is not None

    def records(self) -> dict[str, str]:
        return dict(self._records)

    def register(self, name: str, ip: str) -> None:
        self._records[name.lower()] = ip

    def unregister(self, name: str, ip: str | None = None) -> None:
        # With `ip`, only that address is forgotten: a newer VM may own the name now.
        if ip is None or self._records.get(name.lower()) == ip:
            self._records.pop(name.lower(), None)

    def sync(self) -> None:
        """Rebuild the records from the running VMs: at daemon start, after re-adoption
        (not later: a VM mid-create is registered but not yet "running")."""
        fresh = {vm.name.lower(): vm.ip for vm in self.running() if vm.state == "running" and vm.ip}
        self._records.clear()
        self._records.update(fresh)

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
        self.service.register(vm.name, vm.ip)
        # Runs after the network capability, so the bridge address exists by now.
        await self.service.ensure_started()

    async def detach(self, vm: VMRecord) -> None:
        self.service.unregister(vm.name, vm.ip)

    async def destroy(self, vm: VMRecord) -> None:
        self.service.unregister(vm.name, vm.ip)
