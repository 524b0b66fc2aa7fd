"""Golden snapshots: one saved machine per image + kernel + engine + shape, so a
create restores instead of booting.

A golden snapshot is a guest booted with `banger.golden=1` (guest_config): it has
the same devices as any VM (rootfs, work disk, NIC, agent channel) but stops before
it takes an identity: no `/root` mounted, no network; sshd runs with a throwaway
host key nothing can reach; its agent runs and waits. Once the agent answers, the
engine saves the machine (`Engine.save_state`) and the process is killed. The
saved state and the root filesystem it ran on are one unit in
`<state>/golden/<shape>-<inputs>/`:

    state/          the engine's saved state (`state.json` written last); with
                    QEMU its `ram` is the guest memory itself, which restores map
                    copy-on-write (never written again: VMs map it while they run;
                    a sweep unlinks it, and running VMs keep the unlinked file)
    rootfs.ext4     the disk the state belongs to (VMs get clones of it)
    golden.json     what it was made from; written last, so a directory without
                    it is incomplete

The directory name is a digest of everything the snapshot depends on: the image's
rootfs and work-seed (path, size, mtime), the kernel and initrd, the engine and its
version, vCPUs, memory and rootfs size, the guest agent program and the image
recipe. A rebuilt image, another kernel, a new banger agent or recipe gives another
name, so a stale snapshot is never found; it is swept when its successor is made.

The first create of a shape boots cold and builds the snapshot in the background
(one build at a time, in a boot slot). Builds happen in `.b-*` directories; a
daemon killed meanwhile leaves a process and a directory that `reclaim` removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from banger.agent import GUEST_PROGRAM
from banger.agent.client import AgentClient
from banger.artifacts import ext4
from banger.capabilities.network import NetworkCapability
from banger.engines import process
from banger.engines.base import Engine
from banger.engines.guest_config import build_guest_config
from banger.engines.state import StateUnusable, read_state
from banger.errors import BangerError
from banger.net.addresses import mac_for
from banger.progress import null_progress
from banger.services.admission import Admission
from banger.services.artifacts import BootImage, BootKernel
from banger.services.launch import ColdBoot, Identity, Launch, Restore
from banger.vm import VMRecord

log = logging.getLogger("banger.golden")

GOLDEN_FORMAT = 2  # 2: guest RAM in a file of its own (state/ram) where the engine can
META = "golden.json"
ROOTFS = "rootfs.ext4"
STATE = "state"
BUILDING = ".b-"
BOOT_TIMEOUT = 900.0  # a golden boot under TCG on a busy host
SETTLE_TIMEOUT = 120.0
GOLDEN_CID = 3  # the lowest guest CID


def _stamp(p: Path | None) -> str:
    if p is None:
        return "-"
    st = p.stat()
    return f"{p}:{st.st_size}:{st.st_mtime_ns}"


def _recipe_digest(image: str) -> str:
    from banger.artifacts.images.recipe import load_recipe, recipe_digest

    try:
        return recipe_digest(load_recipe(image))
    except BangerError:
        return "-"  # a registered image: no recipe of ours


@dataclass(frozen=True)
class Shape:
    """A machine a golden snapshot is made for, and the digest of its inputs."""

    image: BootImage
    kernel: BootKernel
    engine: str
    vcpus: int
    memory_mib: int
    disk_bytes: int
    name: str  # "<shape digest>-<inputs digest>": the snapshot's directory

    @classmethod
    def of(cls, vm: VMRecord, image: BootImage, kernel: BootKernel, engine: Engine) -> Shape:
        shape = "|".join(
            [image.name, kernel.name, vm.engine, str(vm.vcpus), str(vm.memory_mib),
             str(vm.disk_bytes)]
        )  # fmt: skip
        inputs = "|".join(
            [str(GOLDEN_FORMAT), _stamp(image.rootfs), _stamp(image.work_seed),
             _stamp(kernel.vmlinux), _stamp(kernel.initrd), engine.version,
             hashlib.sha256(GUEST_PROGRAM.read_bytes()).hexdigest(), _recipe_digest(image.name)]
        )  # fmt: skip
        name = f"{_digest(shape)}-{_digest(inputs)}"
        return cls(image, kernel, vm.engine, vm.vcpus, vm.memory_mib, vm.disk_bytes, name)

    @property
    def family(self) -> str:
        return self.name.split("-", 1)[0]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def can_restore(engine: Engine) -> bool:
    """What the engine declares (`Engine.restores_copies`): QEMU with its
    virtio-serial agent channel, Firecracker (hybrid vsock)."""
    restores = getattr(engine, "restores_copies", None)  # an engine may not say: no
    return restores is not None and bool(restores())


class GoldenSnapshots:
    """Finds, builds and sweeps golden snapshots; chooses how a create launches."""

    def __init__(
        self,
        root: Path,
        engine_for: Callable[[str], Engine],
        network: NetworkCapability,
        admission: Admission,
        identity: Identity,
        enabled: bool = True,
    ) -> None:
        self.root = root
        self.engine_for = engine_for
        self.network = network
        self.admission = admission
        self.identity = identity
        self.enabled = enabled
        self._building: dict[str, asyncio.Task[None]] = {}

    # -- choosing --------------------------------------------------------------

    def choose(
        self, vm: VMRecord, image: BootImage, kernel: BootKernel, *, cold: bool
    ) -> tuple[Launch, Shape | None]:
        """Restore the shape's golden snapshot when a usable one exists, else boot."""
        engine = self.engine_for(vm.engine)
        if cold or not self.enabled or image.work_seed is None or not can_restore(engine):
            return ColdBoot(image.rootfs), None
        try:
            shape = Shape.of(vm, image, kernel, engine)
        except OSError:
            return ColdBoot(image.rootfs), None
        d = self.root / shape.name
        if not (d / META).is_file():
            return ColdBoot(image.rootfs), shape
        try:
            state = read_state(d / STATE, what="golden snapshot")
        except StateUnusable as exc:
            log.warning("golden snapshot %s is unusable (%s); removing it", d, exc.message)
            shutil.rmtree(d, ignore_errors=True)
            return ColdBoot(image.rootfs), shape
        return Restore(state, d / ROOTFS, self.identity, f"golden snapshot {shape.name}"), shape

    def build_later(self, shape: Shape, ready: Callable[[Path], None] = lambda p: None) -> None:
        """Make the shape's golden snapshot in the background (once at a time), then
        call `ready` with its root disk."""
        if (self.root / shape.name / META).is_file():
            return
        task = self._building.get(shape.name)
        if task is not None and not task.done():
            return
        self._building[shape.name] = asyncio.create_task(self._build_quietly(shape, ready))

    async def wait_builds(self) -> None:
        """For tests and benchmarks: wait for builds in flight."""
        tasks = [t for t in self._building.values() if not t.done()]
        if tasks:
            await asyncio.wait(tasks)

    async def _build_quietly(self, shape: Shape, ready: Callable[[Path], None]) -> None:
        t = time.monotonic()
        try:
            final = await self.build(shape)
            log.info("golden snapshot %s ready in %.1fs", shape.name, time.monotonic() - t)
            ready(final / ROOTFS)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("golden snapshot %s failed: %s", shape.name, exc)

    # -- building --------------------------------------------------------------

    async def build(self, shape: Shape) -> Path:
        engine = self.engine_for(shape.engine)
        tmp = self.root / f"{BUILDING}{secrets.token_hex(4)}"
        tmp.mkdir(parents=True, mode=0o700)
        try:
            await asyncio.to_thread(self._disks, shape, tmp)
            await asyncio.to_thread(self.network.ensure_ready)
            tap = await asyncio.to_thread(self.network.pool.lease)
            try:
                async with self.admission.boot_slot(null_progress):
                    await self._boot_and_save(engine, shape, tmp, tap.name)
                (tmp / "ram").unlink(missing_ok=True)  # an engine that did not use it
            finally:
                await asyncio.to_thread(self.network.pool.release, tap.name)
            meta = {
                "format": GOLDEN_FORMAT,
                "name": shape.name,
                "image": shape.image.name,
                "kernel": shape.kernel.name,
                "engine": shape.engine,
                "vcpus": shape.vcpus,
                "memory_mib": shape.memory_mib,
                "disk_bytes": shape.disk_bytes,
                "made_at": time.time(),
            }
            (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
            final = self.root / shape.name
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
            self._sweep(shape)
            return final
        except BaseException:
            await self._kill_in(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _disks(shape: Shape, tmp: Path) -> None:
        root, work = tmp / ROOTFS, tmp / "work.ext4"
        ext4.clone_file(shape.image.rootfs, root)
        if shape.disk_bytes > root.stat().st_size:
            ext4.grow(root, shape.disk_bytes)
        assert shape.image.work_seed is not None
        # A stand-in for the work disk: the guest never mounts it (restores get the
        # VM's own), but the device must exist so the saved machine has it.
        ext4.clone_file(shape.image.work_seed, work)

    async def _boot_and_save(self, engine: Engine, shape: Shape, tmp: Path, tap: str) -> None:
        ram = tmp / "ram"  # where engines that can keep guest RAM in a file keep it
        fd = os.open(ram, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, shape.memory_mib << 20)
        finally:
            os.close(fd)
        cfg = build_guest_config(
            vm_id=f"golden-{shape.name}",
            name="banger-golden",
            kernel=shape.kernel.vmlinux,
            initrd=shape.kernel.initrd,
            rootfs=tmp / ROOTFS,
            work_disk=tmp / "work.ext4",
            vcpus=shape.vcpus,
            memory_mib=shape.memory_mib,
            run_dir=tmp / "run",
            tap=tap,
            mac=mac_for(shape.name),
            console_log=tmp / "console.log",
            golden=True,
            memory_file=ram,
            # An agent channel over vsock needs a CID; restores keep it, which only
            # engines whose CIDs name nothing on the host allow (`restores_copies`).
            vsock_cid=GOLDEN_CID,
        )
        handle = await engine.start(cfg)
        try:
            agent = AgentClient(handle.extra.get("agent"), timeout=5.0)
            deadline = time.monotonic() + BOOT_TIMEOUT
            while True:
                if not engine.is_running(handle):
                    raise BangerError(f"the golden boot of {shape.name} exited; see {tmp}")
                try:
                    await agent.session()  # frames only: never the HTTP fallback
                    break
                except BangerError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            await _settle(agent)
            await engine.save_state(handle, cfg, tmp / STATE)
        finally:
            await engine.kill(handle)

    def _sweep(self, keep: Shape) -> None:
        """Remove snapshots of the same shape made from older inputs."""
        for d in self.root.iterdir():
            if d.name != keep.name and d.name.startswith(f"{keep.family}-"):
                log.info("golden snapshot %s is outdated; removing it", d.name)
                shutil.rmtree(d, ignore_errors=True)

    async def _kill_in(self, d: Path) -> None:
        for p in await asyncio.to_thread(process.processes_with_arg, f"{d}/"):
            log.warning("killing golden-boot process %d", p.pid)
            await process.terminate(p.pid, p.start_time, grace=0.0)

    # -- daemon life -----------------------------------------------------------

    async def reclaim(self) -> None:
        """At daemon start: kill the boots of builds a killed daemon left, and remove
        their directories and incomplete snapshots."""
        if not self.root.is_dir():
            return
        for d in self.root.iterdir():
            if d.name.startswith(BUILDING) or not (d / META).is_file():
                await self._kill_in(d)
                log.warning("removing unfinished golden snapshot %s", d)
                shutil.rmtree(d, ignore_errors=True)

    async def close(self) -> None:
        for task in self._building.values():
            task.cancel()
        for task in self._building.values():
            with contextlib.suppress(BaseException):  # cancelled or failed: gone either way
                await task


async def _settle(agent: AgentClient) -> None:
    """Let the golden boot finish starting what it starts, so a restore does not
    inherit a half-booted system; `degraded` counts as finished."""
    try:
        stream, info = await agent.open(
            {"kind": "exec", "argv": ["systemctl", "is-system-running", "--wait"]}
        )
        if info.get("error"):
            return
        async with asyncio.timeout(SETTLE_TIMEOUT):
            while (await stream.next_event()).kind != "exit":
                pass
    except (BangerError, TimeoutError) as exc:
        log.info("golden boot did not settle (%s); saving it anyway", exc)
