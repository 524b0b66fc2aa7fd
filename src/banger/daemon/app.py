"""The composition root: builds every service and hands each what it needs.

Nothing else constructs services. Adding a host feature means writing a
capability (banger.capabilities) and listing it in `build_capabilities` here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from banger.config import Config, LoadedConfig
from banger.daemon.operations import OperationManager
from banger.paths import Paths
from banger.store import Store

log = logging.getLogger("banger.daemon")


@dataclass
class Daemon:
    paths: Paths
    loaded: LoadedConfig
    store: Store
    ops: OperationManager
    started_at: float = field(default_factory=time.time)
    services: dict[str, Any] = field(default_factory=dict)
    startup_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    shutdown_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def config(self) -> Config:
        return self.loaded.config

    async def startup(self) -> None:
        """Reclaim what a previous daemon left: temp dirs, VMs, TAPs, rules."""
        for hook in self.startup_hooks:
            await hook()

    async def shutdown(self) -> None:
        await self.ops.shutdown()
        for hook in reversed(self.shutdown_hooks):
            await hook()
        self.store.close()


def build_daemon(paths: Paths, loaded: LoadedConfig) -> Daemon:
    store = Store(paths.database)
    ops = OperationManager(store)
    daemon = Daemon(paths=paths, loaded=loaded, store=store, ops=ops)
    log.info("daemon built: pid %s, state %s", os.getpid(), paths.state_dir)
    return daemon
