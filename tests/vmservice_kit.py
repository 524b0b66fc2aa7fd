"""A VMService without root or a guest: real store, real detached processes, real
pidfds; a recording engine and recording capabilities stand in for QEMU and the
host network (no boot, no TAP), and readiness is a switch the test flips.

The engine's "hypervisor" is a real detached Python process whose argv names the
VM's run directory, as QEMU's does, so kill, re-adoption, orphan search and the
exit watcher all act on a real process.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from banger.api.models import CreateVM
from banger.capabilities.base import BootContributions, Capability, PrepareContext
from banger.config import Config
from banger.engines import process
from banger.engines.base import Availability, Drive, EngineHandle, GuestConfig, NetIface, OnSpawn
from banger.engines.state import SavedState, machine_fit, write_state
from banger.paths import Paths
from banger.progress import Progress
from banger.services import vms as vms_module
from banger.services.admission import Admission
from banger.services.artifacts import BootImage, BootKernel
from banger.services.vms import VMService
from banger.sizing import MemoryFloor
from banger.store import Store
from banger.vm import VMRecord

_SLEEPER = "import time, sys; print('booting', flush=True); time.sleep(600)"


class RecordingEngine:
    """Starts a real detached process per VM; records every call."""

    name = "qemu"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.started = asyncio.Event()
        self.release_start = asyncio.Event()
        self.release_start.set()

    def availability(self) -> Availability:
        return Availability(True, "recording engine")

    def state_fit(self, config: GuestConfig) -> dict[str, Any]:
        return machine_fit(config, engine=self.name, version="rec", accel="none", agent=None)

    async def save_state(self, handle: EngineHandle, config: GuestConfig, dest: Path) -> SavedState:
        self.calls.append(("save", handle.pid))
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "vmstate").write_bytes(b"recorded state")
        return write_state(dest, self.state_fit(config), ["vmstate"], {})

    async def pause(self, handle: EngineHandle) -> None:
        self.calls.append(("pause", handle.pid))

    async def resume(self, handle: EngineHandle) -> None:
        self.calls.append(("resume", handle.pid))

    async def start(
        self,
        config: GuestConfig,
        on_spawn: OnSpawn | None = None,
        *,
        restore: SavedState | None = None,
    ) -> EngineHandle:
        if restore is not None:
            restore.check(self.state_fit(config))
        config.run_dir.mkdir(parents=True, exist_ok=True)
        spawned = process.spawn(
            [sys.executable, "-c", _SLEEPER, str(config.run_dir)],
            log=config.run_dir / "engine.log",
            stdout=config.console_log,
        )
        handle = EngineHandle(self.name, spawned.pid, spawned.start_time, "", {})
        self.calls.append(("start", handle.pid))
        try:
            if on_spawn is not None:
                on_spawn(handle)
            self.started.set()
            await self.release_start.wait()
        except BaseException:
            await process.terminate(handle.pid, handle.start_time, grace=0)
            raise
        return handle

    async def stop(self, handle: EngineHandle, timeout: float) -> None:
        self.calls.append(("stop", handle.pid))
        await process.terminate(handle.pid, handle.start_time, grace=0.2)

    async def kill(self, handle: EngineHandle) -> None:
        self.calls.append(("kill", handle.pid))
        await process.terminate(handle.pid, handle.start_time, grace=0)

    def is_running(self, handle: EngineHandle) -> bool:
        return process.is_alive(handle.pid, handle.start_time)


@dataclass
class RecordingCap(Capability):
    """A capability that records its hooks and holds what it made in `held`."""

    name: str
    stage: str
    events: list[tuple[str, str]] = field(default_factory=list)
    held: set[str] = field(default_factory=set)
    gate: asyncio.Event | None = None  # prepare waits here when set up
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    vms_dir: Path | None = None  # the disks capability removes the VM directory

    async def prepare(self, vm: VMRecord, ctx: PrepareContext) -> None:
        self.events.append(("prepare", vm.name))
        self.held.add(f"{vm.id}:persistent")
        self.entered.set()
        if self.gate is not None:
            await asyncio.to_thread(_wait_event_blocking, self.gate)
        if self.name == "network":
            vm.ip = "10.9.0.2"
        if self.name == "disks":
            ctx.vm_dir.mkdir(parents=True, exist_ok=True)
            (ctx.vm_dir / "rootfs.ext4").write_bytes(b"")

    async def attach(self, vm: VMRecord, boot: BootContributions) -> None:
        self.events.append(("attach", vm.name))
        self.held.add(f"{vm.id}:runtime")
        if self.name == "network":
            vm.tap = "tap-pool-9"
            boot.ip, boot.gateway, boot.prefix = vm.ip, "10.9.0.1", 24
            boot.nics.append(NetIface("eth0", vm.tap, vm.mac))
        if self.vms_dir is not None:
            boot.drives.append(Drive("rootfs", self.vms_dir / vm.id / "rootfs.ext4", is_root=True))

    async def detach(self, vm: VMRecord) -> None:
        self.events.append(("detach", vm.name))
        self.held.discard(f"{vm.id}:runtime")
        if self.name == "network":
            vm.tap = None

    async def destroy(self, vm: VMRecord) -> None:
        self.events.append(("destroy", vm.name))
        self.held.discard(f"{vm.id}:persistent")
        if self.vms_dir is not None:
            shutil.rmtree(self.vms_dir / vm.id, ignore_errors=True)


def _wait_event_blocking(event: asyncio.Event) -> None:
    """Block a worker thread until `event` is set (polling: Events are loop-bound)."""
    import time

    while not event.is_set():
        time.sleep(0.01)


class FakeArtifacts:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.rootfs = root / "rootfs.ext4"
        self.rootfs.write_bytes(b"")
        self.kernel = root / "vmlinux"
        self.kernel.write_bytes(b"")

    def memory_floor(self, name: str) -> MemoryFloor | None:
        return None

    async def ensure_image(self, name: str, progress: Progress, *, refresh: bool) -> BootImage:
        return BootImage(name, self.rootfs, None, "k", self.kernel, None)

    async def ensure_kernel_for(
        self, image: BootImage, name: str | None, progress: Progress
    ) -> BootKernel:
        return BootKernel("k", self.kernel, None)


@dataclass
class Kit:
    vms: VMService
    engine: RecordingEngine
    caps: list[RecordingCap]
    store: Store
    paths: Paths
    ready: asyncio.Event
    events: list[tuple[str, str]] = field(default_factory=list)

    def cap(self, name: str) -> RecordingCap:
        return next(c for c in self.caps if c.name == name)

    def progress(self, stage: str, detail: str = "", fraction: float | None = None) -> None:
        self.events.append((stage, detail))

    def create(self, name: str, **kw: Any) -> asyncio.Task[VMRecord]:
        return asyncio.create_task(self.vms.create(CreateVM(name=name, **kw), self.progress))

    def rebuild(self) -> VMService:
        """A fresh VMService on the same store: the next daemon."""
        return _service(self.store, self.paths, self.engine, self.caps, self.vms.admission)

    def live_pids(self) -> list[int]:
        return [s.pid for s in process.processes_with_arg(str(self.paths.vms_dir))]


def _service(
    store: Store, paths: Paths, engine: RecordingEngine, caps: list[RecordingCap], adm: Admission
) -> VMService:
    return VMService(
        store=store,
        paths=paths,
        config=Config(boot_stall_timeout=5),
        artifacts=FakeArtifacts(paths.data_dir / "art"),  # type: ignore[arg-type]
        engine_for=lambda _name: engine,
        resolve_engine=lambda _name: "qemu",
        capabilities=list(caps),  # type: ignore[arg-type]
        ssh_key=paths.state_dir / "id",
        admission=adm,
    )


@contextmanager
def vm_kit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, boot_limit: int = 4, host_mib: int = 65536
) -> Iterator[Kit]:
    paths = Paths(tmp_path / "c", tmp_path / "s", tmp_path / "d", tmp_path / "r")
    for d in (paths.state_dir, paths.data_dir):
        d.mkdir(parents=True, exist_ok=True)
    store = Store(paths.database)
    engine = RecordingEngine()
    caps = [
        RecordingCap("disks", "disks", vms_dir=paths.vms_dir),
        RecordingCap("network", "network"),
    ]
    ready = asyncio.Event()
    ready.set()

    async def fake_wait_for_ssh(
        host: str, key: Path, kh: Path, names: list[str], timeout: float, **kw: Any
    ) -> float:
        check: Callable[[], None] | None = kw.get("check")
        while not ready.is_set():
            if check is not None:
                check()
            await asyncio.sleep(0.02)
        return 0.0

    monkeypatch.setattr(vms_module, "wait_for_ssh", fake_wait_for_ssh)
    adm = Admission(boot_limit, 1.0, host_mib)
    kit = Kit(_service(store, paths, engine, caps, adm), engine, caps, store, paths, ready)
    try:
        yield kit
    finally:
        for key in kit.vms.watcher.watching():
            kit.vms.watcher.unwatch(key)
        for pid in kit.live_pids():
            process.kill(pid)
        store.close()
