"""Per-VM disks: a copy-on-write rootfs clone and the /root work disk.

The work disk is the image's work-seed cloned and grown (fast path). Images
without a seed take the slow path: /root is copied out of the rootfs and a new
ext4 is built from it. The managed SSH key is written into the work disk's
/root/.ssh/authorized_keys with debugfs, so no mount (and no root) is needed.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path

from banger.artifacts import ext4
from banger.capabilities.base import BootContributions, PrepareContext
from banger.engines.base import Drive
from banger.services.records import VMRecord
from banger.system import run

log = logging.getLogger("banger.workdisk")


class WorkDiskCapability:
    name = "disks"
    stage = "disks"

    def __init__(self, vms_dir: Path, authorized_key: str) -> None:
        self.vms_dir = vms_dir
        self.authorized_key = authorized_key

    def rootfs(self, vm: VMRecord) -> Path:
        return self.vms_dir / vm.id / "rootfs.ext4"

    def work(self, vm: VMRecord) -> Path:
        return self.vms_dir / vm.id / "work.ext4"

    async def prepare(self, vm: VMRecord, ctx: PrepareContext) -> None:
        await asyncio.to_thread(self._prepare, vm, ctx)

    def _prepare(self, vm: VMRecord, ctx: PrepareContext) -> None:
        root, work = self.rootfs(vm), self.work(vm)
        root.parent.mkdir(parents=True, exist_ok=True)
        how = ext4.clone_file(ctx.image_rootfs, root)
        if vm.disk_bytes > root.stat().st_size:
            ext4.grow(root, vm.disk_bytes)
        ctx.progress("disks", f"rootfs {how}")
        if ctx.image_work_seed is not None and ctx.image_work_seed.exists():
            ext4.clone_file(ctx.image_work_seed, work)
            if vm.work_bytes > work.stat().st_size:
                ext4.grow(work, vm.work_bytes)
            path = "work-seed (fast path)"
        else:
            self._work_from_rootfs(ctx.image_rootfs, work, vm.work_bytes)
            path = "rebuilt /root from the rootfs (slow path: image has no work-seed)"
        log.info("vm %s work disk: %s", vm.name, path)
        ctx.progress("disks", path)
        ext4.write_file_into(
            work, "/.ssh/authorized_keys", (self.authorized_key + "\n").encode(), 0o600
        )

    @staticmethod
    def _work_from_rootfs(rootfs: Path, work: Path, size: int) -> None:
        with tempfile.TemporaryDirectory(prefix="banger-root-") as tmp:
            tree = Path(tmp) / "root"
            # debugfs copies the directory out of the image without mounting it.
            run(["debugfs", "-R", f"rdump /root {tmp}", str(rootfs)], timeout=600)
            ext4.mkfs_from_dir(tree, work, size, label="work", root_mode=0o700)

    async def attach(self, vm: VMRecord, boot: BootContributions) -> None:
        boot.drives.append(Drive("rootfs", self.rootfs(vm), is_root=True))
        boot.drives.append(Drive("work", self.work(vm)))

    async def detach(self, vm: VMRecord) -> None:
        return None

    async def destroy(self, vm: VMRecord) -> None:
        d = self.vms_dir / vm.id
        await asyncio.to_thread(shutil.rmtree, d, True)
