"""The engine interface: what the VM service needs from a hypervisor.

The guest-config builder produces a `GuestConfig` (kernel, command line, drives,
NICs, sizes, where to put sockets and the console log). An engine turns that into
a running process and returns an `EngineHandle`, a small JSON-able record the VM
service stores so that a restarted daemon can re-adopt the process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from banger.engines.state import SavedState


@dataclass(frozen=True)
class Drive:
    drive_id: str  # "rootfs", "work"
    path: Path
    read_only: bool = False
    is_root: bool = False


@dataclass(frozen=True)
class NetIface:
    iface_id: str  # "eth0"
    tap: str  # host TAP device name
    mac: str


@dataclass(frozen=True)
class GuestConfig:
    vm_id: str
    name: str
    kernel: Path  # ELF vmlinux
    initrd: Path | None
    cmdline: str
    vcpus: int
    memory_mib: int
    drives: tuple[Drive, ...]
    nics: tuple[NetIface, ...]
    run_dir: Path  # per-VM runtime dir: sockets, pid file
    console_log: Path  # serial console output goes here
    vsock_cid: int | None = None
    # Guest RAM in this file, mapped shared, where the engine can (QEMU): a saved
    # state then leaves the memory in the file, and restores map it copy-on-write
    # instead of loading it (a golden snapshot's source boot).
    memory_file: Path | None = None


def config_to_dict(config: GuestConfig) -> dict[str, Any]:
    """A JSON-able copy of `config` (kept with a running VM's handle, so a suspend
    or snapshot saves the machine exactly as it was launched)."""
    data = asdict(config)
    for key in ("kernel", "initrd", "run_dir", "console_log", "memory_file"):
        data[key] = str(data[key]) if data[key] is not None else None
    data["drives"] = [{**d, "path": str(d["path"])} for d in data["drives"]]
    data["nics"] = [dict(n) for n in data["nics"]]
    return data


def config_from_dict(data: dict[str, Any]) -> GuestConfig:
    return GuestConfig(
        vm_id=data["vm_id"],
        name=data["name"],
        kernel=Path(data["kernel"]),
        initrd=Path(data["initrd"]) if data.get("initrd") else None,
        cmdline=data["cmdline"],
        vcpus=int(data["vcpus"]),
        memory_mib=int(data["memory_mib"]),
        drives=tuple(Drive(**{**d, "path": Path(d["path"])}) for d in data["drives"]),
        nics=tuple(NetIface(**n) for n in data["nics"]),
        run_dir=Path(data["run_dir"]),
        console_log=Path(data["console_log"]),
        vsock_cid=data.get("vsock_cid"),
        memory_file=Path(data["memory_file"]) if data.get("memory_file") else None,
    )


@dataclass
class EngineHandle:
    engine: str
    pid: int
    # /proc/<pid>/stat starttime, so a recycled pid is never mistaken for our VM.
    start_time: int
    control_socket: str  # QMP socket (qemu) or API socket (firecracker)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineHandle:
        return cls(**data)


OnSpawn = Callable[[EngineHandle], None]


@dataclass(frozen=True)
class Availability:
    ok: bool
    detail: str  # e.g. "qemu 7.2.0, accel=tcg (kvm probe: no VMX)" or why not


class Engine(Protocol):
    name: str

    def availability(self) -> Availability: ...

    async def start(
        self,
        config: GuestConfig,
        on_spawn: OnSpawn | None = None,
        *,
        restore: SavedState | None = None,
    ) -> EngineHandle:
        """Launch the VM detached from the daemon (own session) and return once the
        hypervisor has accepted the configuration and the guest is booting. On failure
        nothing is left running.

        With `restore`, the machine is not booted but restored from that saved state
        (memory and device state; the disks are `config`'s drives) and is running
        when this returns. The state must fit `config` (`state_fit`), else
        `StateUnusable` is raised before anything is launched.

        `on_spawn` is called with the handle the moment the process exists, before any
        wait for readiness, so the caller can record it: a daemon killed during the
        wait leaves a pid the next daemon can find and kill."""
        ...

    def restores_copies(self) -> bool:
        """Whether copies of one saved machine can run side by side as distinct VMs
        (warm create): the engine saves, restores and resizes a drive of a running
        machine (`resize_drive`), and nothing host-global is named by the guest's
        saved memory (a vhost-vsock CID is; a virtio-serial port or Firecracker's
        per-VM hybrid vsock socket is not)."""
        ...

    @property
    def version(self) -> str:
        """The hypervisor's version (saved states and golden snapshots are tied to it)."""
        ...

    def state_fit(self, config: GuestConfig) -> dict[str, Any]:
        """What a state saved from `config` is tied to (`engines.state.machine_fit`)."""
        ...

    async def resize_drive(self, handle: EngineHandle, drive_id: str, size: int) -> None:
        """Tell a running guest a drive's new size (its file is already grown)."""
        ...

    async def set_links(self, handle: EngineHandle, nics: list[str], up: bool) -> None:
        """Connect (or cut) NICs of a running machine by id, where the engine can; a
        restore with `SavedState.hold_nics` starts with them cut."""
        ...

    async def guest_ran(self, handle: EngineHandle) -> bool | None:
        """Whether a restoring machine has let its guest run; None when it cannot tell."""
        ...

    async def save_state(self, handle: EngineHandle, config: GuestConfig, dest: Path) -> SavedState:
        """Pause the guest and write its memory and device state into `dest` (which
        must be empty or absent); `state.json` is written last. The guest stays
        paused: the caller then copies disks, and `resume`s or `kill`s it."""
        ...

    async def pause(self, handle: EngineHandle) -> None: ...

    async def resume(self, handle: EngineHandle) -> None:
        """Let a paused (or just saved) guest run again."""
        ...

    async def stop(self, handle: EngineHandle, timeout: float) -> None:
        """Ask the guest to shut down (ACPI / Ctrl-Alt-Del), wait up to `timeout`,
        then kill the process. Returns when the process is gone."""
        ...

    async def kill(self, handle: EngineHandle) -> None: ...

    def is_running(self, handle: EngineHandle) -> bool:
        """True when handle.pid is alive and is still the process we started."""
        ...
