"""The capability interface: host features that hook into a VM's lifecycle.

A capability is a plain object holding the services it needs. The VM service
calls every capability at each lifecycle point, in order, and undoes the ones
that ran (in reverse) when a later step fails:

- `validate(options)`  before create makes anything: refuse bad options early
- `prepare(vm, ctx)`   once, on create: make persistent resources (disks, lease)
- `attach(vm, boot)`   before every boot: make runtime resources (TAP, NAT rule,
                        DNS record) and contribute drives / NICs / cmdline
- `detach(vm)`         after every stop (and on rollback): undo `attach`
- `destroy(vm)`        on delete (and on rollback): undo `prepare`
- `apply(vm)`          a live setting of a running VM changed (`vm set --nat`)
- `anticipate(vm, ctx)` a create like this is coming: warm up for it (disk pool)

and at each point of the daemon's life, in list order:

- `reclaim(vms)`       at start, after re-adoption: square host state with the records
- `warm()`             in the background at start when a VM runs (bridge, pools, DNS)
- `close(vms)`         at shutdown

Every hook defaults to doing nothing, so a capability overrides only what it
needs and declares the `stage` its `prepare` is reported and timed under.
Every hook must be idempotent: reconciliation after a crash may call `detach`
or `destroy` for resources that were never (or only partly) made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from banger.engines.base import Drive, NetIface
from banger.progress import Progress
from banger.vm import VMRecord


@dataclass
class PrepareContext:
    vm_dir: Path
    image_rootfs: Path
    image_work_seed: Path | None
    progress: Progress
    # The create request's fields (e.g. "publish"): each capability reads its own.
    options: dict[str, Any] = field(default_factory=dict)
    launch: str = "boot"  # "restore": image_rootfs is the disk saved with a machine state


@dataclass
class BootContributions:
    drives: list[Drive] = field(default_factory=list)
    nics: list[NetIface] = field(default_factory=list)
    cmdline: list[str] = field(default_factory=list)
    ip: str | None = None
    gateway: str | None = None
    prefix: int | None = None
    dns: str | None = None
    vsock_cid: int | None = None  # the guest's vsock CID (the agent's channel)


class Capability:
    """Base of every capability: no-op hooks, a name and the create stage it runs in."""

    name: str = "capability"
    stage: str = "capability"  # progress/timing stage of `prepare` (and fault-injection point)

    # -- VM lifecycle ----------------------------------------------------------------

    def validate(self, options: dict[str, Any]) -> None:
        """Check a create request's own options (e.g. `publish`) before anything is made;
        raise InvalidInput/Conflict to refuse it."""
        return None

    async def prepare(self, vm: VMRecord, ctx: PrepareContext) -> None:
        return None

    async def attach(self, vm: VMRecord, boot: BootContributions) -> None:
        return None

    async def detach(self, vm: VMRecord) -> None:
        return None

    async def destroy(self, vm: VMRecord) -> None:
        return None

    async def hold(self, vm: VMRecord, held: bool) -> None:
        """Keep a VM that is not yet itself (a fork restored with its source's MAC and
        address) from reaching anything through this capability, or let it again
        (`held=False`). Called around the engine's start and the guest's `/identity`;
        `detach` must undo a hold a failed create leaves."""
        return None

    async def apply(self, vm: VMRecord) -> None:
        """Make a running VM's live settings take effect now."""
        return None

    def anticipate(self, vm: VMRecord, ctx: PrepareContext) -> None:
        """A create like `vm` with `ctx` is expected (e.g. once a golden snapshot is
        ready): start making, in the background, what its `prepare` will need."""
        return None

    # -- daemon lifecycle ------------------------------------------------------------

    async def reclaim(self, vms: list[VMRecord]) -> None:
        """At daemon start, after re-adoption: `vms` are all the VMs left."""
        return None

    async def warm(self) -> None:
        """Make host resources ready ahead of the next create (runs in the background)."""
        return None

    async def close(self, vms: list[VMRecord]) -> None:
        """At daemon shutdown; running VMs outlive the daemon and keep what they use."""
        return None
