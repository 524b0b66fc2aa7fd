"""Network: an address lease (persistent, per VM) and a TAP (per boot, from the pool)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from banger.capabilities.base import BootContributions, Capability, PrepareContext
from banger.engines.base import NetIface
from banger.errors import Conflict
from banger.net import addresses
from banger.net.bridge import ensure_bridge, forget_neighbor
from banger.net.pool import TapPool
from banger.vm import VMRecord, VMRepository

log = logging.getLogger("banger.network")


class NetworkCapability(Capability):
    name = "network"
    stage = "network"

    def __init__(self, repo: VMRepository, pool: TapPool, bridge: str, subnet: str) -> None:
        # Called (in a thread) each time the bridge is set up, e.g. host DNS re-apply.
        self.on_ready: list[Callable[[], None]] = []
        self.repo = repo
        self.pool = pool
        self.bridge = bridge
        self.subnet = subnet
        self._ready = False
        self._ready_lock = threading.Lock()
        self._lease_lock = threading.Lock()
        self._refill: asyncio.Task[None] | None = None

    def ensure_ready(self) -> None:
        """Once per daemon life, on first use: the bridge, and the TAP pool adopting the
        `tap-pool-N` devices an earlier daemon left warm (extras are deleted)."""
        with self._ready_lock:
            if self._ready:
                return
            ensure_bridge(self.bridge, self.subnet)
            # Any TAP a record names is that VM's, whatever its state (reconcile has
            # released those of VMs that are gone); the pool also skips held TAPs.
            in_use = {vm.tap for vm in self.repo.all() if vm.tap}
            report = self.pool.reclaim(in_use)
            if report.adopted or report.deleted:
                log.info("TAP pool: adopted %s, deleted %s", report.adopted, report.deleted)
            for hook in self.on_ready:
                hook()
            self._ready = True

    async def warm(self) -> None:
        await asyncio.to_thread(self.ensure_ready)
        await self.pool.arefill()

    async def close(self, vms: list[VMRecord]) -> None:
        """At shutdown: the warm TAPs go with the daemon that made them (running VMs keep
        theirs, and the bridge stays: it is the host's side of those VMs' network)."""
        deleted = await asyncio.to_thread(self.pool.close)
        if deleted:
            log.info("TAP pool: deleted %d idle TAP(s) at shutdown", len(deleted))

    async def prepare(self, vm: VMRecord, ctx: PrepareContext) -> None:
        with self._lease_lock:
            used = self.repo.leased_ips()
            try:
                ip = addresses.allocate(used, self.subnet)
            except Exception as exc:
                raise Conflict(
                    f"no free address left in {self.subnet}",
                    hint="delete unused VMs or set a larger `subnet` in config.toml",
                ) from exc
            self.repo.add_lease(ip, vm.id)
        vm.ip = ip
        ctx.progress("network", f"address {ip}")

    async def attach(self, vm: VMRecord, boot: BootContributions) -> None:
        await asyncio.to_thread(self.ensure_ready)
        lease = await asyncio.to_thread(self.pool.lease)
        vm.tap = lease.name
        self._refill_later()
        log.info("vm %s tap %s (%s)", vm.name, lease.name, "cold" if lease.cold else "warm")
        boot.nics.append(NetIface("eth0", lease.name, vm.mac))
        assert vm.ip is not None
        boot.ip = vm.ip
        boot.gateway = addresses.gateway(self.subnet)
        boot.prefix = addresses.prefixlen(self.subnet)

    def _refill_later(self) -> None:
        """Top the warm pool back up off the create path."""
        if self._refill is None or self._refill.done():
            self._refill = asyncio.create_task(self._refill_quietly())

    async def _refill_quietly(self) -> None:
        try:
            await self.pool.arefill()
        except Exception as exc:
            log.warning("TAP pool refill failed: %s", exc)

    async def hold(self, vm: VMRecord, held: bool) -> None:
        """Its TAP down (the bridge port forwards nothing either way) while held;
        detach and reclaim bring a pooled TAP back up, so a failed or cut-short
        create leaves none down."""
        if vm.tap:
            await asyncio.to_thread(self.pool.set_up, vm.tap, not held)

    async def detach(self, vm: VMRecord) -> None:
        if vm.tap:
            await asyncio.to_thread(self.pool.release, vm.tap)
            vm.tap = None
        if vm.ip:
            # The next guest with this address (a new VM, or this one restored as a
            # fork elsewhere) has another MAC: the host must ask again, at once.
            try:
                await asyncio.to_thread(forget_neighbor, vm.ip, self.bridge, self.pool.netns)
            except Exception as exc:  # an entry left goes stale in under a minute
                log.warning("vm %s: could not forget the ARP entry of %s: %s", vm.name, vm.ip, exc)

    async def destroy(self, vm: VMRecord) -> None:
        self.repo.release_leases(vm.id)
        vm.ip = None
