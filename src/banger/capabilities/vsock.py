"""Vsock: a context id (CID) per VM, the address of its guest agent channel.

The CID is allocated from the store on create (the lowest free one from 3; 0-2
are reserved), stays with the VM across stop/start, and is released when the VM
is deleted (its row goes, and with it the unique-indexed `vms.vsock_cid`). Every
boot contributes it to the guest config: Firecracker turns it into a hybrid-vsock
device, QEMU into `vhost-vsock-device` where `/dev/vhost-vsock` exists.

vhost-vsock CIDs are host-wide: a CID another daemon's (or anyone's) running VM
holds, or is handing out right now, is never chosen (`engines.cids.HostCids`), and a
VM whose CID was taken while it was stopped gets a new one when it boots.
"""

from __future__ import annotations

import logging
import threading

from banger.capabilities.base import BootContributions, Capability, PrepareContext
from banger.engines.cids import HostCids
from banger.errors import Conflict
from banger.vm import VMRecord, VMRepository

log = logging.getLogger("banger.vsock")

FIRST_CID = 3  # 0 hypervisor, 1 loopback, 2 host
LAST_CID = 0xFFFFFFFE  # 0xFFFFFFFF is VMADDR_CID_ANY


class VsockCapability(Capability):
    name = "vsock"
    stage = "vsock"

    def __init__(
        self, vms: VMRepository, first_cid: int = FIRST_CID, host: HostCids | None = None
    ) -> None:
        self.vms = vms
        self.first_cid = first_cid
        self.host = host or HostCids(owner=str(vms.store.path))
        self._lock = threading.Lock()

    def allocate(self, vm: VMRecord) -> int:
        """Give `vm` the lowest CID no other VM holds, here or anywhere on the host,
        recorded at once so that a concurrent create cannot take the same one."""
        return self._claim(vm, keep=None)

    async def prepare(self, vm: VMRecord, ctx: PrepareContext) -> None:
        cid = self.allocate(vm)
        ctx.progress("vsock", f"cid {cid}")

    async def attach(self, vm: VMRecord, boot: BootContributions) -> None:
        if vm.vsock_cid is None:  # a VM made before CIDs existed gets one on its next boot
            log.info("vm %s has no vsock CID yet; allocating one", vm.name)
            self.allocate(vm)
        else:  # keep it unless something else on the host took it meanwhile
            old = vm.vsock_cid
            if self.keep_or_move(vm) != old:
                log.warning(
                    "vm %s: vsock CID %d is in use on this host; now %s", vm.name, old, vm.vsock_cid
                )
        boot.vsock_cid = vm.vsock_cid

    def keep_or_move(self, vm: VMRecord) -> int:
        """`vm`'s CID, re-reserved host-wide; a new one when another VM holds it."""
        return self._claim(vm, keep=vm.vsock_cid)

    def _claim(self, vm: VMRecord, keep: int | None) -> int:
        """`keep` when no VM anywhere on the host holds it, else the lowest free CID
        (recorded in the store while the host-wide claim is held)."""

        def choose(taken: set[int]) -> int | None:
            if keep is not None and keep not in taken:
                return keep
            return self.vms.allocate_vsock_cid(vm.id, self.first_cid, LAST_CID, avoid=taken)

        with self._lock:
            cid = self.host.claim(choose)
        if cid is None:
            raise Conflict("no free vsock CID left", hint="delete unused VMs")
        vm.vsock_cid = cid
        return cid

    async def destroy(self, vm: VMRecord) -> None:
        self.vms.release_vsock_cid(vm.id)
        vm.vsock_cid = None
