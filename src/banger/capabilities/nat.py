"""NAT: per-VM masquerade rules in banger's nftables table (`banger.net.nat`).

Rules are runtime state: made on `attach` when `vm.nat`, removed on `detach`.
`apply` re-applies a running VM's `nat` flag (`vm set --nat/--no-nat`), and
`reclaim` squares the table with the running NAT VMs at daemon start, so a
crash never leaks a rule to an address that a later VM may be leased.
"""

from __future__ import annotations

import asyncio
import logging

from banger.capabilities.base import BootContributions, Capability
from banger.errors import NotFound
from banger.net import addresses, nat
from banger.system import find_tool
from banger.vm import VMRecord

log = logging.getLogger("banger.nat")


class NatCapability(Capability):
    name = "nat"
    stage = "network"

    def __init__(self, bridge: str, subnet: str, netns: str | None = None) -> None:
        self.bridge = bridge
        self.subnet = subnet
        self.netns = netns

    async def attach(self, vm: VMRecord, boot: BootContributions) -> None:
        await self.apply(vm)

    async def detach(self, vm: VMRecord) -> None:
        # Regardless of `vm.nat`: the flag may have changed since the rule was made.
        await self._remove_quietly(vm)

    async def destroy(self, vm: VMRecord) -> None:
        await self._remove_quietly(vm)

    async def apply(self, vm: VMRecord) -> None:
        """Make the rules match `vm.nat` now; for a running VM (or on attach)."""
        if vm.ip is None:
            return
        if vm.nat:
            await asyncio.to_thread(self._enable, vm.ip)
            log.info("vm %s: NAT on for %s", vm.name, vm.ip)
        elif await asyncio.to_thread(self._disable, vm.ip):
            log.info("vm %s: NAT off for %s", vm.name, vm.ip)

    async def reclaim(self, vms: list[VMRecord]) -> None:
        """At daemon start: keep rules only for the running VMs with NAT, restoring missing
        ones. Without VMs the host's table is left alone (the network is set up on use)."""
        if not vms:
            return
        ips = {vm.ip for vm in vms if vm.running and vm.nat and vm.ip}
        log.info("NAT reclaim: %s", await self.reclaim_ips(ips))

    async def reclaim_ips(self, running_ips: set[str]) -> dict[str, list[str]]:
        """Keep rules only for `running_ips` (the running VMs with NAT), restoring missing ones."""
        return await asyncio.to_thread(self._reclaim, running_ips)

    async def close(self, vms: list[VMRecord]) -> None:
        # NAT rules of VMs that outlive the daemon stay (re-adopted on next start).
        if vms and not any(vm.running for vm in vms):
            await self.cleanup_all()

    async def cleanup_all(self) -> None:
        """Delete the whole table (no VM keeps NAT)."""
        if find_tool("nft") is not None:
            await asyncio.to_thread(nat.flush, self.netns)

    def _enable(self, ip: str) -> None:
        try:
            nat.enable_nat(ip, netns=self.netns)
        except NotFound:
            # No table yet (first NAT VM) or someone deleted it: make it, then retry once.
            nat.ensure_table(self.bridge, self.subnet, netns=self.netns)
            nat.enable_nat(ip, netns=self.netns)

    def _disable(self, ip: str) -> bool:
        # Without nft no rule can exist; never fail a non-NAT VM for a missing tool.
        return find_tool("nft") is not None and nat.disable_nat(ip, netns=self.netns)

    async def _remove_quietly(self, vm: VMRecord) -> None:
        # Removal runs on stop and rollback, where raising would hide the real error;
        # a rule left behind is removed by `reclaim` at the next daemon start.
        if vm.ip is None:
            return
        try:
            if await asyncio.to_thread(self._disable, vm.ip):
                log.info("vm %s: NAT rules for %s removed", vm.name, vm.ip)
        except Exception as exc:
            log.warning("vm %s: could not remove NAT rules for %s: %s", vm.name, vm.ip, exc)

    def _reclaim(self, running_ips: set[str]) -> dict[str, list[str]]:
        report: dict[str, list[str]] = {"removed": [], "restored": []}
        if find_tool("nft") is None and not running_ips:
            return report
        running_ips = {str(addresses.parse_ip(ip)) for ip in running_ips}  # as nft prints them
        present = {e.ip for e in nat.list_nat(netns=self.netns)}
        for ip in sorted(present - running_ips):
            nat.disable_nat(ip, netns=self.netns)
            report["removed"].append(ip)
        # Running NAT VMs whose rules vanished (table flushed by hand) get them back.
        for ip in sorted(running_ips - present):
            self._enable(ip)
            report["restored"].append(ip)
        if report["removed"] or report["restored"]:
            log.info("NAT reclaim: %s", report)
        return report
