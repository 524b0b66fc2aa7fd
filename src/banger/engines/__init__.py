"""Engines: the hypervisors banger drives, behind one `Engine` protocol.

`get_engine("auto")` picks Firecracker when it is installed and KVM can run a
guest, QEMU `microvm` otherwise; an explicitly named engine that cannot run here
is an error that says why.
"""

from __future__ import annotations

from pathlib import Path

from banger.engine_names import engine_hint
from banger.engines.base import (
    Availability,
    Drive,
    Engine,
    EngineHandle,
    GuestConfig,
    NetIface,
)
from banger.engines.firecracker import FirecrackerEngine
from banger.engines.guest_config import build_guest_config
from banger.engines.kvm import KvmStatus, probe_kvm
from banger.engines.qemu import QemuEngine
from banger.errors import BangerError, InvalidInput, ToolMissing

KVM_CACHE_FILE = "kvm-probe.json"

__all__ = [
    "KVM_CACHE_FILE",
    "Availability",
    "Drive",
    "Engine",
    "EngineHandle",
    "FirecrackerEngine",
    "GuestConfig",
    "KvmStatus",
    "NetIface",
    "QemuEngine",
    "build_guest_config",
    "get_engine",
    "probe_kvm",
]


def get_engine(
    name: str = "auto",
    *,
    firecracker_bin: str | None = None,
    qemu_bin: str | None = None,
    cache_dir: Path | None = None,
) -> Engine:
    """The engine to run VMs with. `cache_dir` holds the remembered KVM probe."""
    kvm_cache = cache_dir / KVM_CACHE_FILE if cache_dir is not None else None
    fc = FirecrackerEngine(firecracker_bin, kvm_cache=kvm_cache)
    qemu = QemuEngine(qemu_bin, kvm_cache=kvm_cache)
    if name == "auto":
        if fc.availability().ok:
            return fc
        avail = qemu.availability()
        if not avail.ok:
            raise ToolMissing(
                f"no engine can run VMs here: {avail.detail}; firecracker: "
                f"{fc.availability().detail}",
                hint="sudo apt-get install qemu-system-x86",
            )
        return qemu
    engines: dict[str, Engine] = {e.name: e for e in (qemu, fc)}
    engine = engines.get(name)
    if engine is None:
        raise InvalidInput(f"unknown engine {name!r}", hint=f"{engine_hint()} for `engine`")
    avail = engine.availability()
    if not avail.ok:
        raise BangerError(
            f"engine {name!r} is not usable: {avail.detail}",
            hint='set engine = "auto" in config.toml to fall back to QEMU'
            if name == "firecracker"
            else "sudo apt-get install qemu-system-x86",
            code="engine_unavailable",
        )
    return engine
