"""Admission: how many guests boot at once, and how much memory VMs may hold.

Boots beyond the limit wait in a visible `queued` stage instead of starving each
other of CPU (under TCG, ten simultaneous boots on two cores all miss their
deadlines; two at a time all finish). A VM whose memory would push the VMs'
total past `ratio` times the host's RAM is refused, with the numbers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from banger.errors import Conflict
from banger.progress import Progress


def host_memory_mib(meminfo: Path = Path("/proc/meminfo")) -> int:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def default_boot_limit(cores: int | None = None, memory_mib: int | None = None) -> int:
    """One boot per core, and no more than one per 2 GiB of host RAM (at least one)."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    memory_mib = memory_mib if memory_mib is not None else host_memory_mib()
    by_memory = memory_mib // 2048 if memory_mib else cores
    return max(1, min(cores, by_memory))


class Admission:
    def __init__(self, boot_limit: int, overcommit: float, host_mib: int) -> None:
        self.boot_limit = boot_limit
        self.overcommit = overcommit
        self.host_mib = host_mib
        self._slots = asyncio.Semaphore(boot_limit)
        self._booting = 0
        self._queued = 0

    @property
    def full(self) -> bool:
        """Whether a boot asking now would have to wait."""
        return self._slots.locked()

    def check_memory(self, name: str, want_mib: int, held_mib: int) -> None:
        if self.host_mib <= 0 or self.overcommit <= 0:
            return
        budget = int(self.host_mib * self.overcommit)
        if held_mib + want_mib > budget:
            raise Conflict(
                f"not enough host memory for `{name}`: it needs {want_mib} MiB, VMs hold "
                f"{held_mib} MiB, and the budget is {budget} MiB "
                f"({self.overcommit:g} x {self.host_mib} MiB of host RAM)",
                hint="stop or delete a VM, ask for less --memory, or raise "
                "`memory_overcommit` in config.toml",
            )

    @asynccontextmanager
    async def boot_slot(self, progress: Progress) -> AsyncIterator[None]:
        """Hold one of the boot slots; report `queued` while waiting for one."""
        if self.full:
            self._queued += 1
            progress(
                "queued",
                f"{self._booting} booting, {self._queued} waiting; "
                f"{self.boot_limit} boot(s) at a time",
            )
            try:
                await self._slots.acquire()
            finally:
                self._queued -= 1
        else:
            await self._slots.acquire()
        self._booting += 1
        try:
            yield
        finally:
            self._booting -= 1
            self._slots.release()
