"""The composition root: builds every service and hands each what it needs.

Nothing else constructs services. Adding a host feature means writing a
capability (banger.capabilities) and listing it in `build_capabilities` here;
the create path never changes for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field

from banger.capabilities.base import Capability
from banger.capabilities.dns import DnsCapability, HostDns
from banger.capabilities.nat import NatCapability
from banger.capabilities.network import NetworkCapability
from banger.capabilities.publish import PublishCapability
from banger.capabilities.vsock import VsockCapability
from banger.capabilities.workdisk import WorkDiskCapability
from banger.config import Config, LoadedConfig
from banger.daemon import testhooks
from banger.engines.registry import EngineRegistry
from banger.net import addresses
from banger.net.dns import DnsService
from banger.net.pool import TapPool
from banger.paths import Paths
from banger.services.admission import Admission, default_boot_limit, host_memory_mib
from banger.services.artifacts import ArtifactService
from banger.services.golden import GoldenSnapshots
from banger.services.imagebuild import ImageBuilder
from banger.services.launch import Identity
from banger.services.operations import OperationManager
from banger.services.ssh import ensure_key, public_key
from banger.services.vms import VMService
from banger.store import Store
from banger.vm import VMRepository

log = logging.getLogger("banger.daemon")


@dataclass
class Daemon:
    paths: Paths
    loaded: LoadedConfig
    store: Store
    ops: OperationManager
    artifacts: ArtifactService
    engines: EngineRegistry
    pool: TapPool
    publish: PublishCapability
    dns: DnsService
    host_dns: HostDns
    vms: VMService
    builds: ImageBuilder
    started_at: float = field(default_factory=time.time)
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def config(self) -> Config:
        return self.loaded.config

    @property
    def capabilities(self) -> list[Capability]:
        return self.vms.capabilities

    async def startup(self) -> None:
        """Reclaim what a previous daemon left: temp dirs, VMs, then each capability's
        host state (TAPs, NAT rules, DNS records)."""
        await asyncio.to_thread(self.artifacts.sweep)
        await self.vms.reconcile()
        vms = self.vms.all()
        for cap in self.capabilities:
            try:
                await cap.reclaim(vms)
            except Exception as exc:
                log.warning("%s reclaim failed: %s", cap.name, exc)
        # Host resources (bridge, warm TAPs, DNS) are made on first use (the first
        # create or start), not on every daemon start: a daemon with no VM running
        # leaves the host's network as it found it. An adopted running guest needs its
        # DNS answered and its TAP's pool now.
        if any(vm.running for vm in vms):
            self.warm()

    def warm(self) -> None:
        async def warm() -> None:
            try:
                for cap in self.capabilities:
                    await cap.warm()
            except Exception as exc:
                log.warning("could not warm the network: %s", exc)

        task = asyncio.create_task(warm())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def shutdown(self) -> None:
        await self.vms.watcher.close()
        if self.vms.golden is not None:
            await self.vms.golden.close()
        await self.ops.shutdown()
        for task in list(self._background):
            task.cancel()
        from banger.agent.client import close_sessions

        await close_sessions()  # the guests kill what these sessions started
        vms = self.vms.all()
        for cap in self.capabilities:
            try:
                await cap.close(vms)
            except Exception as exc:
                log.warning("%s cleanup failed: %s", cap.name, exc)
        self.store.close()


def build_capabilities(
    paths: Paths,
    config: Config,
    network: NetworkCapability,
    nat: NatCapability,
    publish: PublishCapability,
    dns: DnsService,
    authorized_key: str,
    store: Store,
) -> list[Capability]:
    """The lifecycle plug-ins, in the order they prepare and attach."""
    return [
        WorkDiskCapability(paths.vms_dir, authorized_key, config.disk_pool_size),
        VsockCapability(VMRepository(store)),  # the guest agent's channel
        network,
        nat,  # needs vm.ip from network.prepare
        publish,  # DNAT to vm.ip, in NAT's table
        DnsCapability(dns),  # after network.attach: the bridge address exists
    ]


def build_daemon(paths: Paths, loaded: LoadedConfig) -> Daemon:
    config = loaded.config
    store = Store(paths.database)
    ops = OperationManager(store)
    artifacts = ArtifactService(paths, config, store, ops)
    engines = EngineRegistry(config, cache_dir=paths.state_dir)
    pool = TapPool(config.bridge_name, size=config.tap_pool_size)
    network = NetworkCapability(VMRepository(store), pool, config.bridge_name, config.subnet)
    nat = NatCapability(config.bridge_name, config.subnet)
    publish = PublishCapability(store, config.bridge_name, config.subnet)
    dns = DnsService(addresses.gateway(config.subnet), config.dns_port, subnet=config.subnet)
    key = ensure_key(paths, config.ssh_key_path)
    admission = Admission(
        config.max_concurrent_boots or default_boot_limit(),
        config.memory_overcommit,
        host_memory_mib(),
    )
    golden = GoldenSnapshots(
        paths.state_dir / "golden",
        engines.get,
        network,
        admission,
        Identity(paths.known_hosts, public_key(key), mount_work=True),
        enabled=config.warm_create,
    )
    vms = VMService(
        store=store,
        paths=paths,
        config=config,
        artifacts=artifacts,
        engine_for=engines.get,
        resolve_engine=engines.resolve,
        capabilities=build_capabilities(
            paths, config, network, nat, publish, dns, public_key(key), store
        ),
        ssh_key=key,
        admission=admission,
        golden=golden,
        fault=testhooks.maybe_fail,
        point=testhooks.crash_point,
    )
    host_dns = HostDns(
        paths.state_dir / "host-dns.json",
        config.bridge_name,
        dns,
        network.ensure_ready,
        running=vms.all,
    )
    network.on_ready.append(host_dns.reapply)
    log.info("daemon built: pid %s, state %s", os.getpid(), paths.state_dir)
    return Daemon(
        paths=paths,
        loaded=loaded,
        store=store,
        ops=ops,
        artifacts=artifacts,
        engines=engines,
        pool=pool,
        publish=publish,
        dns=dns,
        host_dns=host_dns,
        vms=vms,
        builds=ImageBuilder(vms=vms, artifacts=artifacts, ops=ops, paths=paths, config=config),
    )
