"""The VM record: one row of the `vms` table, typed."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from banger.api.models import VM
from banger.engines.base import EngineHandle
from banger.store import Store


@dataclass
class VMRecord:
    id: str
    name: str
    state: str
    image: str
    kernel: str
    engine: str
    vcpus: int
    memory_mib: int
    disk_bytes: int
    work_bytes: int
    mac: str
    nat: bool = False
    ip: str | None = None
    tap: str | None = None
    handle: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    last_error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    updated_at: float = field(default_factory=time.time)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> VMRecord:
        row = dict(row)
        row["nat"] = bool(row["nat"])
        return cls(**row)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["nat"] = int(self.nat)
        return row

    @property
    def engine_handle(self) -> EngineHandle | None:
        return EngineHandle.from_dict(self.handle) if self.handle else None

    def save(self, store: Store) -> None:
        self.updated_at = time.time()
        store.upsert("vms", "id", self.to_row())

    def to_api(self, vm_dir: str) -> VM:
        return VM(
            id=self.id,
            name=self.name,
            state=self.state,
            image=self.image,
            kernel=self.kernel,
            engine=self.engine,
            vcpus=self.vcpus,
            memory_mib=self.memory_mib,
            disk_bytes=self.disk_bytes,
            work_bytes=self.work_bytes,
            nat=self.nat,
            ip=self.ip,
            mac=self.mac,
            tap=self.tap,
            pid=(self.handle or {}).get("pid") if self.state == "running" else None,
            created_at=self.created_at,
            started_at=self.started_at,
            timings=self.timings,
            last_error=self.last_error,
            dir=vm_dir,
        )
