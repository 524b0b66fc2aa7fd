"""Drive the real `VMService` in-process, with no root and nothing booted.

The service, its SQLite store, the real `VsockCapability` and the real engines'
agent-channel rules are real; what would need root or a guest is a recording fake:

- `FakeEngine` records every `GuestConfig` it is given and every call, answers the
  agent channel the engine it mimics would (`FirecrackerEngine.agent_channel` /
  `QemuEngine.agent_channel`), and can be told to fail (`fail_start`, `fail_stop`)
  or to have its process die (`die`). Its "processes" outlive a daemon restart,
  like real VM processes do.
- `Recorded` wraps any capability (real or fake) and appends `"<name>.<hook>"` to a
  shared event log before running the hook; `fail_at={"prepare", ...}` makes that
  hook raise after it ran, so undo order is observable at every stage.
- `FakeGuest` stands in for the guest's readiness: SSH is ready at once unless told
  otherwise, and the agent check builds a real `AgentClient` from the channel the
  engine reported (so "no channel" fails exactly as it does for real).
- `Harness` wires them like `daemon/app.py` does and can `restart()` the daemon:
  a new `VMService` on the reopened store, then `reconcile()`.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import pytest

import banger.services.launch as launch_mod
import banger.services.vms as vms_mod
from banger.agent.client import AgentClient
from banger.api.models import CreateVM
from banger.capabilities.base import BootContributions, Capability, PrepareContext
from banger.capabilities.vsock import VsockCapability
from banger.config import Config
from banger.engines.base import (
    Availability,
    Drive,
    EngineHandle,
    GuestConfig,
    NetIface,
    OnSpawn,
)
from banger.engines.cids import HostCids
from banger.engines.firecracker import FirecrackerEngine
from banger.engines.qemu import QemuEngine
from banger.engines.state import SavedState, machine_fit, write_state
from banger.errors import BangerError
from banger.paths import Paths
from banger.services.artifacts import ArtifactService, BootImage, BootKernel
from banger.services.vms import VMService
from banger.sizing import MemoryFloor
from banger.store import Store
from banger.vm import VMRecord, VMRepository

Events = list[str]


class Injected(BangerError):
    """The failure a fake was told to raise."""

    code = "injected"


# -- engine -----------------------------------------------------------------------------


class FakeEngine:
    """A hypervisor that records what it was asked to boot and never boots it."""

    _pids = itertools.count(90000)

    def __init__(self, name: str, events: Events, channel: Callable[[GuestConfig], Any]) -> None:
        self.name = name
        self.events = events
        self._channel = channel
        self.configs: list[GuestConfig] = []
        self.alive: dict[int, GuestConfig] = {}
        self.names: dict[int, str] = {}  # pid -> VM name, for the event log
        self.fail_start: BaseException | None = None
        self.fail_stop: BaseException | None = None
        self.stops: list[tuple[str, int]] = []  # ("stop"|"kill", pid)
        self.restored: list[Any] = []  # the `restore` each start was given (None: a boot)
        self.restores: list[tuple[GuestConfig, SavedState]] = []  # the fitting ones
        self.fail_save: BaseException | None = None
        self.paused: set[int] = set()
        self.version = "1.0"
        self.ran: bool | None = True  # what `guest_ran` says of a restoring process
        self.resizes: list[tuple[str, str, int]] = []  # (VM, drive id, size)

    @classmethod
    def firecracker(cls, events: Events) -> FakeEngine:
        real = FirecrackerEngine("/nonexistent/firecracker")
        return cls("firecracker", events, real.agent_channel)

    @classmethod
    def qemu(cls, events: Events, *, vhost_vsock: bool = False) -> FakeEngine:
        real = QemuEngine("/nonexistent/qemu", vhost_vsock=vhost_vsock)
        return cls("qemu", events, real.agent_channel)

    @property
    def last(self) -> GuestConfig:
        return self.configs[-1]

    def availability(self) -> Availability:
        return Availability(True, f"fake {self.name}")

    def state_fit(self, config: GuestConfig) -> dict[str, Any]:
        agent = self._channel(config)
        return machine_fit(
            config,
            engine=self.name,
            version=self.version,
            accel="fake",
            agent=agent["transport"] if agent else None,
        )

    async def save_state(self, handle: EngineHandle, config: GuestConfig, dest: Path) -> SavedState:
        self.events.append(f"engine.save:{self.names.get(handle.pid, handle.pid)}")
        self.paused.add(handle.pid)
        if self.fail_save is not None:
            raise self.fail_save
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "vmstate").write_bytes(b"fake machine state " * 64)
        drives = {d.drive_id: str(d.path) for d in config.drives}
        return write_state(dest, self.state_fit(config), ["vmstate"], drives)

    async def set_links(self, handle: EngineHandle, nics: list[str], up: bool) -> None:
        name = self.names.get(handle.pid, handle.pid)
        self.events.append(f"engine.links:{name}:{','.join(nics)}:{'up' if up else 'down'}")

    def restores_copies(self) -> bool:
        return True

    async def guest_ran(self, handle: EngineHandle) -> bool | None:
        return self.ran

    async def resize_drive(self, handle: EngineHandle, drive_id: str, size: int) -> None:
        self.resizes.append((self.names.get(handle.pid, str(handle.pid)), drive_id, size))

    async def pause(self, handle: EngineHandle) -> None:
        self.events.append(f"engine.pause:{self.names.get(handle.pid, handle.pid)}")
        self.paused.add(handle.pid)

    async def resume(self, handle: EngineHandle) -> None:
        self.events.append(f"engine.resume:{self.names.get(handle.pid, handle.pid)}")
        self.paused.discard(handle.pid)

    async def start(
        self,
        config: GuestConfig,
        on_spawn: OnSpawn | None = None,
        *,
        restore: SavedState | None = None,
    ) -> EngineHandle:
        self.events.append(f"engine.{'restore' if restore else 'start'}:{config.name}")
        self.configs.append(config)
        self.restored.append(restore)
        if isinstance(restore, SavedState):  # (some tests pass a sentinel object)
            restore.check(self.state_fit(config))
            self.restores.append((config, restore))
            if restore.hold_nics:
                self.events.append(f"engine.links:{config.name}:down")
        if self.fail_start is not None:
            raise self.fail_start
        pid = next(self._pids)
        self.alive[pid] = config
        self.names[pid] = config.name
        extra: dict[str, Any] = {}
        agent = self._channel(config)
        if agent is not None:
            extra["agent"] = agent
        handle = EngineHandle(self.name, pid, pid * 7, str(config.run_dir / "ctl.sock"), extra)
        if on_spawn is not None:
            on_spawn(handle)
        return handle

    async def stop(self, handle: EngineHandle, timeout: float) -> None:
        self.events.append(f"engine.stop:{self.names.get(handle.pid, handle.pid)}")
        self.stops.append(("stop", handle.pid))
        if self.fail_stop is not None:
            raise self.fail_stop
        self.alive.pop(handle.pid, None)

    async def kill(self, handle: EngineHandle) -> None:
        self.events.append(f"engine.kill:{self.names.get(handle.pid, handle.pid)}")
        self.stops.append(("kill", handle.pid))
        self.alive.pop(handle.pid, None)

    def is_running(self, handle: EngineHandle) -> bool:
        return handle.pid in self.alive

    def die(self, pid: int | None = None) -> None:
        """The VM process exits on its own (guest crash, OOM kill, host reboot...)."""
        for p in [pid] if pid is not None else list(self.alive):
            self.alive.pop(p, None)


# -- capabilities -------------------------------------------------------------------------


class Recorded(Capability):
    """Wrap a capability: log each hook call, optionally fail it after it ran."""

    def __init__(self, inner: Any, events: Events, fail_at: Iterable[str] = ()) -> None:
        self.inner = inner
        # Called with (hook, vm) before the hook runs: lets a test look at the store
        # mid-create, or block there.
        self.spy: Callable[[str, VMRecord], None] | None = None
        self.name = inner.name
        self.stage = getattr(inner, "stage", inner.name)
        self.events = events
        self.fail_at = set(fail_at)

    async def _hook(self, hook: str, vm: VMRecord, *args: Any) -> None:
        self.events.append(f"{self.name}.{hook}:{vm.name}")
        if self.spy is not None:
            self.spy(hook, vm)
        await getattr(self.inner, hook)(vm, *args)
        if hook in self.fail_at:
            raise Injected(f"injected failure in {self.name}.{hook}")

    async def prepare(self, vm: VMRecord, ctx: PrepareContext) -> None:
        await self._hook("prepare", vm, ctx)

    async def attach(self, vm: VMRecord, boot: BootContributions) -> None:
        await self._hook("attach", vm, boot)

    async def detach(self, vm: VMRecord) -> None:
        await self._hook("detach", vm)

    async def hold(self, vm: VMRecord, held: bool) -> None:
        if hasattr(self.inner, "hold"):
            self.events.append(f"{self.name}.hold:{vm.name}:{'on' if held else 'off'}")
            await self.inner.hold(vm, held)

    async def destroy(self, vm: VMRecord) -> None:
        await self._hook("destroy", vm)

    async def apply(self, vm: VMRecord) -> None:
        await self._hook("apply", vm)

    async def reclaim(self, vms: list[VMRecord]) -> None:
        self.events.append(f"{self.name}.reclaim")
        await self.inner.reclaim(vms)


class FakeDisks(Capability):
    """Makes the two disk files a real create makes and contributes them in order."""

    name = "disks"
    stage = "disks"

    def __init__(self, vms_dir: Path) -> None:
        self.vms_dir = vms_dir

    async def prepare(self, vm: VMRecord, ctx: PrepareContext) -> None:
        d = self.vms_dir / vm.id
        d.mkdir(parents=True, exist_ok=True)
        if ctx.launch == "fork":  # copies of the snapshot's disks, as WorkDiskCapability
            assert ctx.image_work_seed is not None
            shutil.copyfile(ctx.image_rootfs, d / "rootfs.ext4")
            shutil.copyfile(ctx.image_work_seed, d / "work.ext4")
            return
        (d / "rootfs.ext4").write_bytes(b"root")
        (d / "work.ext4").write_bytes(b"work")

    async def attach(self, vm: VMRecord, boot: BootContributions) -> None:
        d = self.vms_dir / vm.id
        boot.drives.append(Drive("rootfs", d / "rootfs.ext4", is_root=True))
        boot.drives.append(Drive("work", d / "work.ext4"))

    async def detach(self, vm: VMRecord) -> None:
        return None

    async def destroy(self, vm: VMRecord) -> None:
        shutil.rmtree(self.vms_dir / vm.id, ignore_errors=True)


class FakeNetwork(Capability):
    """An address per VM (prepare) and a TAP per boot (attach), kept in memory."""

    name = "network"
    stage = "network"
    subnet = "172.30.0"

    def __init__(self) -> None:
        self.leases: dict[str, str] = {}
        self.taps: dict[str, str] = {}
        self._taps = itertools.count()

    async def prepare(self, vm: VMRecord, ctx: PrepareContext) -> None:
        used = set(self.leases.values())
        vm.ip = next(
            f"{self.subnet}.{n}" for n in range(2, 255) if f"{self.subnet}.{n}" not in used
        )
        self.leases[vm.id] = vm.ip

    async def attach(self, vm: VMRecord, boot: BootContributions) -> None:
        tap = f"tap-fake-{next(self._taps)}"
        self.taps[vm.id] = tap
        vm.tap = tap
        boot.nics.append(NetIface("eth0", tap, vm.mac))
        boot.ip, boot.gateway, boot.prefix = vm.ip, f"{self.subnet}.1", 24
        boot.dns = f"{self.subnet}.1"

    async def detach(self, vm: VMRecord) -> None:
        self.taps.pop(vm.id, None)
        vm.tap = None

    async def destroy(self, vm: VMRecord) -> None:
        self.leases.pop(vm.id, None)
        vm.ip = None


class FakeSwitch(Capability):
    """A capability with no contribution (the DNS stand-in)."""

    def __init__(self, name: str) -> None:
        self.name = self.stage = name


class FakeNat(FakeSwitch):
    """NAT's live setting: `apply` records (name, nat) or fails when told to."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.applied: list[tuple[str, bool]] = []
        self.fail_apply = False

    async def apply(self, vm: VMRecord) -> None:
        if self.fail_apply:
            raise Injected(f"{self.name} could not apply")
        self.applied.append((vm.name, vm.nat))


# -- artifacts and guest readiness ----------------------------------------------------------


class FakeArtifacts:
    """One image and one kernel, as real files (the guest-config builder checks them)."""

    def __init__(self, root: Path, *, agent: bool = True) -> None:
        root.mkdir(parents=True, exist_ok=True)
        for f in ("rootfs.ext4", "vmlinux", "initrd.img"):
            (root / f).write_bytes(f.encode())
        self.root = root
        self.agent = agent
        self.fail: BaseException | None = None
        self.floors: dict[str, MemoryFloor] = {}  # image -> its minimum memory

    def memory_floor(self, name: str) -> MemoryFloor | None:
        return self.floors.get(name)

    async def ensure_image(self, name: str, progress: Any, *, refresh: bool) -> BootImage:
        if self.fail is not None:
            raise self.fail
        return BootImage(
            name, self.root / "rootfs.ext4", None, "debian-6.1", None, None, agent=self.agent
        )

    async def ensure_kernel_for(
        self, image: BootImage, override: str | None, progress: Any
    ) -> BootKernel:
        return BootKernel(override or "debian-6.1", self.root / "vmlinux", self.root / "initrd.img")


class FakeGuest:
    """The guest's side of readiness: SSH and the agent's /healthz."""

    def __init__(self, events: Events) -> None:
        self.events = events
        self.ssh_error: BaseException | None = None
        self.agent_error: BaseException | None = None
        self.on_ssh: Callable[[], None] | None = None  # e.g. make the engine die meanwhile
        self.ssh_hosts: list[str] = []
        self.agents: list[dict[str, Any] | None] = []
        self.identities: list[dict[str, Any]] = []  # /identity bodies (restores, forks)

    async def wait_for_ssh(
        self,
        host: str,
        key: Path,
        known_hosts: Path,
        names: list[str],
        timeout: float,
        is_alive: Callable[[], bool] | None = None,
        check: Callable[[], None] | None = None,
        *,
        login: bool = True,
        probe: bool = True,
    ) -> float:
        self.events.append(
            f"ssh:{names[0]}"
            + ("" if login else ":banner")
            + ("" if probe or not login else ":now")
        )
        self.ssh_hosts.append(host)
        if self.on_ssh is not None:
            self.on_ssh()
        if check is not None:
            check()
        if is_alive is not None and not is_alive():
            raise BangerError("the VM process exited while waiting for SSH")
        if self.ssh_error is not None:
            raise self.ssh_error
        return 0.0

    async def identity(self, agent: dict[str, Any] | None, body: dict[str, Any]) -> dict[str, Any]:
        self.events.append(f"identity:{body['hostname']}")
        self.identities.append(body)
        return {"ok": True, "seconds": {}}

    async def set_clock(self, agent: dict[str, Any] | None) -> dict[str, Any]:
        self.events.append(f"clock:{(agent or {}).get('transport')}")
        return {"unix_ns": 0, "was_off_s": 12.5}

    async def wait_healthy(self, agent: dict[str, Any] | None, timeout: float) -> float:
        self.events.append(f"agent:{(agent or {}).get('transport')}")
        self.agents.append(agent)
        AgentClient(agent)  # the real check: raises AgentUnavailable with no channel
        if self.agent_error is not None:
            raise self.agent_error
        return 0.0


# -- the harness -----------------------------------------------------------------------------


def progress_log(into: list[tuple[str, str]]) -> Any:
    def progress(stage: str, detail: str = "", fraction: float | None = None) -> None:
        into.append((stage, detail))

    return progress


class Harness:
    """A `VMService` wired like the daemon's, on fakes; `restart()` simulates a new daemon."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, engine: str = "firecracker") -> None:
        # Short: the VM run dir must fit in a UNIX socket path.
        self.root = Path(tempfile.mkdtemp(prefix="bvs-"))
        self.paths = Paths(
            config_dir=self.root / "c",
            state_dir=self.root / "s",
            data_dir=self.root / "d",
            runtime_dir=self.root / "r",
        )
        self.events: Events = []
        self.progress: list[tuple[str, str]] = []
        self.default_engine = engine
        self.engines: dict[str, FakeEngine] = {
            "firecracker": FakeEngine.firecracker(self.events),
            "qemu": FakeEngine.qemu(self.events),
        }
        self.artifacts = FakeArtifacts(self.root / "art")
        self.guest = FakeGuest(self.events)
        self.network = FakeNetwork()
        self.nat = FakeNat("nat")
        self.dns = FakeSwitch("dns")
        self.ssh_key = self.root / "c" / "id_ed25519"
        self.ssh_key.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{self.ssh_key}.pub").write_text("ssh-ed25519 AAAAC3fake banger\n")
        monkeypatch.setattr(vms_mod, "wait_for_ssh", self.guest.wait_for_ssh)
        monkeypatch.setattr(vms_mod, "wait_healthy", self.guest.wait_healthy)
        monkeypatch.setattr(launch_mod, "set_guest_clock", self.guest.set_clock)
        self.store = Store(self.paths.database)
        # The daemon's fault-injection point (`fault=` of VMService): a create raises
        # right after the named stage ("disks", "vsock", "network", "boot", "ssh").
        self.fail_after: str | None = None
        self.stages: list[str] = []  # the stages a create/start passed, in order
        self.caps: dict[str, Recorded] = {}
        self.vms = self._service()

    def _service(self) -> VMService:
        inner: list[Any] = [
            FakeDisks(self.paths.vms_dir),
            VsockCapability(  # a registry of its own: other test runs' CIDs are theirs
                VMRepository(self.store),
                host=HostCids(str(self.paths.database), self.paths.runtime_dir / "cids"),
            ),
            self.network,
            self.nat,
            self.dns,
        ]
        self.caps = {c.name: Recorded(c, self.events) for c in inner}
        return VMService(
            store=self.store,
            paths=self.paths,
            config=Config(engine=cast(Any, self.default_engine)),
            artifacts=cast(ArtifactService, self.artifacts),
            engine_for=lambda name: self.engines[name],
            resolve_engine=lambda req: req or self.default_engine,
            capabilities=cast(list[Capability], list(self.caps.values())),
            ssh_key=self.ssh_key,
            fault=self._fault,
        )

    def _fault(self, stage: str) -> None:
        self.stages.append(stage)
        if stage == self.fail_after:
            raise Injected(f"injected failure at stage `{stage}`")

    @property
    def cap_order(self) -> list[str]:
        return list(self.caps)

    def engine(self, name: str | None = None) -> FakeEngine:
        return self.engines[name or self.default_engine]

    def fail(self, cap: str, *hooks: str) -> None:
        self.caps[cap].fail_at = set(hooks)

    async def create(self, name: str = "devbox", **kw: Any) -> VMRecord:
        return await self.vms.create(CreateVM(name=name, **kw), progress_log(self.progress))

    async def stop(self, name: str, **kw: Any) -> VMRecord:
        return await self.vms.stop(name, progress_log(self.progress), **kw)

    async def start(self, name: str, **kw: Any) -> VMRecord:
        return await self.vms.start(name, progress_log(self.progress), **kw)

    async def suspend(self, name: str) -> VMRecord:
        return await self.vms.suspend(name, progress_log(self.progress))

    async def delete(self, name: str, **kw: Any) -> str:
        return await self.vms.delete(name, progress_log(self.progress), **kw)

    def row(self, vm_id: str) -> dict[str, Any] | None:
        return self.store.get("vms", "id", vm_id)

    def cids(self) -> dict[str, int | None]:
        return {r["name"]: r["vsock_cid"] for r in self.store.all("vms")}

    async def restart(self) -> None:
        """The daemon dies and a new one starts: same database, same VM processes."""
        self.store.close()
        self.store = Store(self.paths.database)
        self.events.clear()
        self.vms = self._service()
        await self.vms.reconcile()

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.root, ignore_errors=True)
