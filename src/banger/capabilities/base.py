"""The capability interface: host features that hook into a VM's lifecycle.

A capability is a plain object holding the services it needs. The VM service
calls every capability at each lifecycle point, in order, and undoes the ones
that ran (in reverse) when a later step fails:

- `prepare(vm, ctx)`   once, on create: make persistent resources (disks, lease)
- `attach(vm, boot)`   before every boot: make runtime resources (TAP, NAT rule,
                        DNS record) and contribute drives / NICs / cmdline
- `detach(vm)`         after every stop (and on rollback): undo `attach`
- `destroy(vm)`        on delete (and on rollback): undo `prepare`

Every hook must be idempotent: reconciliation after a crash may call `detach`
or `destroy` for resources that were never (or only partly) made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from banger.engines.base import Drive, NetIface
from banger.progress import Progress
from banger.services.records import VMRecord


@dataclass
class PrepareContext:
    vm_dir: Path
    image_rootfs: Path
    image_work_seed: Path | None
    progress: Progress


@dataclass
class BootContributions:
    drives: list[Drive] = field(default_factory=list)
    nics: list[NetIface] = field(default_factory=list)
    cmdline: list[str] = field(default_factory=list)
    ip: str | None = None
    gateway: str | None = None
    prefix: int | None = None
    dns: str | None = None


class Capability(Protocol):
    name: str

    async def prepare(self, vm: VMRecord, ctx: PrepareContext) -> None: ...

    async def attach(self, vm: VMRecord, boot: BootContributions) -> None: ...

    async def detach(self, vm: VMRecord) -> None: ...

    async def destroy(self, vm: VMRecord) -> None: ...
