"""Per-VM disks: a copy-on-write rootfs clone and the /root work disk.

The work disk is the image's work-seed cloned and grown (fast path). A fork
(`vm create --from SNAP`) clones both disks saved with the snapshot, untouched. Images
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
from banger.artifacts.diskpool import DiskPool, DiskSpec
from banger.capabilities.base import BootContributions, Capability, PrepareContext
from banger.engines.base import Drive
from banger.progress import Progress, null_progress
from banger.vm import VMRecord

log = logging.getLogger("banger.workdisk")


class WorkDiskCapability(Capability):
    name = "disks"
    stage = "disks"

    def __init__(self, vms_dir: Path, authorized_key: str, pool_size: int = 1) -> None:
        self.vms_dir = vms_dir
        self.authorized_key = authorized_key
        self.pool = DiskPool(vms_dir.parent / "disk-pool", pool_size, self.build_disks)
        # Restores clone the rootfs saved with a golden snapshot: their own pool, so
        # cold and warm creates never sweep each other's ready disks.
        self.restore_pool = DiskPool(
            vms_dir.parent / "disk-pool-restore", pool_size, self.build_disks
        )
        self._refill: dict[str, asyncio.Task[None]] = {}

    def _pool(self, ctx: PrepareContext) -> DiskPool:
        return self.restore_pool if ctx.launch == "restore" else self.pool

    def rootfs(self, vm: VMRecord) -> Path:
        return self.vms_dir / vm.id / "rootfs.ext4"

    def work(self, vm: VMRecord) -> Path:
        return self.vms_dir / vm.id / "work.ext4"

    def _spec(self, vm: VMRecord, ctx: PrepareContext) -> DiskSpec:
        seed = ctx.image_work_seed if ctx.image_work_seed and ctx.image_work_seed.exists() else None
        return DiskSpec(ctx.image_rootfs, seed, vm.disk_bytes, vm.work_bytes, self.authorized_key)

    async def prepare(self, vm: VMRecord, ctx: PrepareContext) -> None:
        if ctx.launch == "fork":
            await asyncio.to_thread(self._fork_disks, vm, ctx)
            return
        spec = self._spec(vm, ctx)
        await asyncio.to_thread(self._prepare, vm, spec, ctx)
        self._refill_later(self._pool(ctx), spec)

    def _prepare(self, vm: VMRecord, spec: DiskSpec, ctx: PrepareContext) -> None:
        root, work = self.rootfs(vm), self.work(vm)
        root.parent.mkdir(parents=True, exist_ok=True)
        if self._pool(ctx).take(spec, root, work):
            ctx.progress("disks", "ready-made disks from the warm pool")
            log.info("vm %s disks: taken from the warm pool", vm.name)
            return
        self.build_disks(spec, root, work, ctx.progress)

    def _fork_disks(self, vm: VMRecord, ctx: PrepareContext) -> None:
        """A fork's disks: plain clones of the two saved with its snapshot. Nothing is
        written into them: the guest's memory (restored with them) caches what they
        held, so they must stay exactly as saved."""
        assert ctx.image_work_seed is not None
        root, work = self.rootfs(vm), self.work(vm)
        root.parent.mkdir(parents=True, exist_ok=True)
        how = ext4.clone_file(ctx.image_rootfs, root)
        ext4.clone_file(ctx.image_work_seed, work)
        ctx.progress("disks", f"both disks of the snapshot {how}")

    @classmethod
    def build_disks(
        cls, spec: DiskSpec, root: Path, work: Path, progress: Progress = null_progress
    ) -> None:
        """Clone and grow the rootfs, make the work disk, inject the SSH key (also the
        raw baseline of `make bench-create`, so both boot the same disks)."""
        how = ext4.clone_file(spec.rootfs, root)
        if spec.disk_bytes > root.stat().st_size:
            ext4.grow(root, spec.disk_bytes)
        progress("disks", f"rootfs {how}")
        if spec.work_seed is not None:
            ext4.clone_file(spec.work_seed, work)
            if spec.work_bytes > work.stat().st_size:
                ext4.grow(work, spec.work_bytes)
            path = "work-seed (fast path)"
        else:
            cls._work_from_rootfs(spec.rootfs, work, spec.work_bytes)
            path = "rebuilt /root from the rootfs (slow path: image has no work-seed)"
        log.info("work disk %s: %s", work, path)
        progress("disks", path)
        ext4.write_file_into(
            work, "/.ssh/authorized_keys", (spec.authorized_key + "\n").encode(), 0o600
        )

    def anticipate(self, vm: VMRecord, ctx: PrepareContext) -> None:
        self._refill_later(self._pool(ctx), spec=self._spec(vm, ctx))

    def _refill_later(self, pool: DiskPool, spec: DiskSpec) -> None:
        """Build the next VM's disks off the create path."""
        task = self._refill.get(str(pool.dir))
        if pool.size <= 0 or (task is not None and not task.done()):
            return
        self._refill[str(pool.dir)] = asyncio.create_task(self._refill_quietly(pool, spec))

    async def _refill_quietly(self, pool: DiskPool, spec: DiskSpec) -> None:
        try:
            made = await asyncio.to_thread(pool.fill, spec)
            if made:
                log.info("disk pool: built %d ready-made disk pair(s)", made)
        except Exception as exc:
            log.warning("disk pool refill failed: %s", exc)

    @staticmethod
    def _work_from_rootfs(rootfs: Path, work: Path, size: int) -> None:
        with tempfile.TemporaryDirectory(prefix="banger-root-") as tmp:
            tree = Path(tmp) / "root"
            # debugfs copies the directory out of the image without mounting it; what
            # its copy loses (setuid bits, owners, capabilities) is put back after.
            fixes = ext4.copy_dir_out(rootfs, "/root", Path(tmp))
            tree.mkdir(mode=0o700, exist_ok=True)  # an image without /root: start empty
            ext4.mkfs_from_dir(tree, work, size, label="work", root_mode=0o700)
            ext4.restore_metadata(work, fixes)

    async def reclaim(self, vms: list[VMRecord]) -> None:
        """At daemon start: remove VM directories no record owns (a record is always
        saved before its directory is made) and half-built or half-taken pool entries."""
        await asyncio.to_thread(self._recover, {vm.id for vm in vms})

    def _recover(self, known: set[str]) -> None:
        if self.vms_dir.is_dir():
            for d in self.vms_dir.iterdir():
                if d.name not in known:
                    log.warning("removing %s: no VM owns it", d)
                    shutil.rmtree(d, ignore_errors=True)
        self.pool.sweep_partial()
        self.restore_pool.sweep_partial()

    async def attach(self, vm: VMRecord, boot: BootContributions) -> None:
        boot.drives.append(Drive("rootfs", self.rootfs(vm), is_root=True))
        boot.drives.append(Drive("work", self.work(vm)))

    async def destroy(self, vm: VMRecord) -> None:
        d = self.vms_dir / vm.id
        await asyncio.to_thread(shutil.rmtree, d, True)
