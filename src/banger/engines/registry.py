"""One engine instance per kind for the daemon, and resolution of "auto".

`resolve` runs the availability checks (once per name; the KVM probe itself is
cached on disk) and answers the concrete engine a new VM will use. `get`
returns the instance for a VM's recorded engine without re-checking, so a VM
can still be stopped or re-adopted after its hypervisor binary was removed.
"""

from __future__ import annotations

from pathlib import Path

from banger.config import Config
from banger.engine_names import engine_hint
from banger.engines import KVM_CACHE_FILE, get_engine
from banger.engines.base import Engine
from banger.engines.firecracker import FirecrackerEngine
from banger.engines.qemu import QemuEngine
from banger.errors import InvalidInput


class EngineRegistry:
    def __init__(self, config: Config, cache_dir: Path) -> None:
        self.config = config
        self.cache_dir = cache_dir
        kvm_cache = cache_dir / KVM_CACHE_FILE
        self._engines: dict[str, Engine] = {
            e.name: e
            for e in (
                QemuEngine(config.qemu_bin, kvm_cache=kvm_cache),
                FirecrackerEngine(config.firecracker_bin, kvm_cache=kvm_cache),
            )
        }
        self._resolved: dict[str, str] = {}

    def resolve(self, requested: str | None) -> str:
        name = requested or self.config.engine
        if name not in self._resolved:
            engine = get_engine(
                name,
                firecracker_bin=self.config.firecracker_bin,
                qemu_bin=self.config.qemu_bin,
                cache_dir=self.cache_dir,
            )
            self._resolved[name] = engine.name
        return self._resolved[name]

    def get(self, name: str) -> Engine:
        try:
            return self._engines[name]
        except KeyError:
            raise InvalidInput(f"unknown engine {name!r}", hint=engine_hint()) from None
