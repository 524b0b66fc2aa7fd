"""The VM model: the record (one row of `vms`), its states, and the repository that
owns the `vms` and `leases` SQL.

Neutral on purpose: services, capabilities and the daemon all speak in `VMRecord`,
so it lives below all of them and imports only engines' plain data and the store.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from banger.api.models import VM, Snapshot
from banger.engines.base import EngineHandle
from banger.errors import Conflict, NotFound
from banger.store import Store


class VMState(StrEnum):
    """A VM's lifecycle state, stored as its string value."""

    CREATING = "creating"  # being made; reconciliation removes it after a crash
    STARTING = "starting"  # booting; reconciliation kills it and stops it after a crash
    RUNNING = "running"
    STOPPING = "stopping"  # shutting down; reconciliation finishes that after a crash
    STOPPED = "stopped"
    DELETING = "deleting"  # being removed; reconciliation finishes that after a crash
    SUSPENDING = "suspending"  # saving its state; reconciliation finishes or undoes it
    SUSPENDED = "suspended"  # no process; memory and device state saved beside its disks
    RESUMING = "resuming"  # restoring that state; reconciliation stops it after a crash
    ERROR = "error"  # from earlier versions: a create failed or a start failed


class WrongState(Conflict):
    """An operation was asked of a VM in a state that does not allow it."""

    def __init__(
        self, vm: str, current: str, required: Iterable[str], action: str, hint: str = ""
    ) -> None:
        self.current = VMState(current)
        self.required = tuple(VMState(s) for s in required)
        names = [s.value for s in self.required]
        wanted = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        super().__init__(
            f"VM `{vm}` is {self.current.value}; {action} needs it {wanted}",
            hint=hint,
        )


@dataclass
class VMRecord:
    id: str
    name: str
    state: VMState
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
    vsock_cid: int | None = None
    handle: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    last_error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    updated_at: float = field(default_factory=time.time)
    # "" for the user's VMs; "image-build:<image>" for a build's throwaway VM, which
    # `vm list` hides and reconciliation removes whatever state it was left in.
    purpose: str = ""

    def __post_init__(self) -> None:
        self.state = VMState(self.state)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> VMRecord:
        row = dict(row)
        row["nat"] = bool(row["nat"])
        return cls(**row)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["nat"] = int(self.nat)
        row["state"] = self.state.value
        return row

    @property
    def running(self) -> bool:
        return self.state is VMState.RUNNING

    def require(self, *states: VMState, action: str, hint: str = "") -> None:
        """The state guard: refuse `action` unless the VM is in one of `states`.

        Modelled on QMP's `@require(Runstate...)`: the error names the current and the
        required states, so every refusal reads the same.
        """
        if self.state not in states:
            raise WrongState(self.name, self.state, states, action, hint)

    @property
    def agent_transport(self) -> str | None:
        """How the host reaches the guest agent while the VM runs (none when stopped)."""
        if not self.running or not self.handle:
            return None
        agent = self.handle.get("extra", {}).get("agent")
        return str(agent["transport"]) if isinstance(agent, dict) and "transport" in agent else None

    @property
    def engine_handle(self) -> EngineHandle | None:
        return EngineHandle.from_dict(self.handle) if self.handle else None

    def to_api(self, vm_dir: str) -> VM:
        return VM(
            id=self.id,
            name=self.name,
            state=self.state.value,
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
            vsock_cid=self.vsock_cid,
            agent=self.agent_transport,
            pid=(self.handle or {}).get("pid") if self.running else None,
            created_at=self.created_at,
            started_at=self.started_at,
            timings=self.timings,
            last_error=self.last_error,
            dir=vm_dir,
        )


class VMRepository:
    """Every query of the `vms` and `leases` tables goes through here."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- vms -----------------------------------------------------------------------

    def all(self) -> list[VMRecord]:
        return [VMRecord.from_row(r) for r in self.store.all("vms", order="created_at")]

    def any(self) -> bool:
        return bool(self.store.all("vms"))

    def running(self) -> list[VMRecord]:
        return [vm for vm in self.all() if vm.running]

    def find(self, name_or_id: str) -> VMRecord | None:
        row = self.store.get("vms", "name", name_or_id) or self.store.get("vms", "id", name_or_id)
        return VMRecord.from_row(row) if row is not None else None

    def get(self, name_or_id: str) -> VMRecord:
        vm = self.find(name_or_id)
        if vm is None:
            raise NotFound(f"no VM named `{name_or_id}`", hint="`banger vm list` shows your VMs")
        return vm

    def name_taken(self, name: str) -> bool:
        return self.store.get("vms", "name", name) is not None

    def save(self, vm: VMRecord, *, durable: bool = True) -> None:
        """Store `vm`. `durable=False` (a step of a create or start: the record
        survives a daemon crash, not a host crash, until the next durable save) saves
        the fsync; see `Store.upsert`."""
        vm.updated_at = time.time()
        self.store.upsert("vms", "id", vm.to_row(), durable=durable)

    def delete(self, vm_id: str) -> None:
        self.store.delete("vms", "id", vm_id)

    # -- vsock CIDs ----------------------------------------------------------------

    def allocate_vsock_cid(
        self, vm_id: str, first: int, last: int, avoid: set[int] | frozenset[int] = frozenset()
    ) -> int | None:
        """Record the lowest CID from `first` no other VM holds (and not in `avoid`:
        in use elsewhere on the host) as `vm_id`'s, in one transaction (the unique index
        on vms.vsock_cid backs it); None when all of `first`..`last` are taken."""
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT vsock_cid FROM vms WHERE vsock_cid IS NOT NULL AND id != ?", (vm_id,)
            )
            used = {int(r[0]) for r in rows} | set(avoid)
            cid = first
            while cid in used:
                cid += 1
            if cid > last:
                return None
            db.execute("UPDATE vms SET vsock_cid = ? WHERE id = ?", (cid, vm_id))
        return cid

    def release_vsock_cid(self, vm_id: str) -> None:
        self.store.update("vms", "id", vm_id, {"vsock_cid": None})

    # -- leases --------------------------------------------------------------------

    def leased_ips(self) -> set[str]:
        return {r["ip"] for r in self.store.all("leases")}

    def add_lease(self, ip: str, vm_id: str) -> None:
        self.store.insert("leases", {"ip": ip, "vm_id": vm_id, "created_at": time.time()})

    def release_leases(self, vm_id: str) -> None:
        self.store.delete("leases", "vm_id", vm_id)


# -- snapshots -------------------------------------------------------------------------


@dataclass
class SnapshotRecord:
    """One row of `snapshots`: a VM's saved machine and disk copies in `dir`."""

    id: str
    name: str
    state: str  # "creating" until every file is in place, then "ready"
    vm_id: str
    vm_name: str
    image: str
    kernel: str
    engine: str
    vcpus: int
    memory_mib: int
    disk_bytes: int
    work_bytes: int
    nat: bool
    vm_state: str
    dir: str
    size_bytes: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SnapshotRecord:
        row = dict(row)
        row["nat"] = bool(row["nat"])
        return cls(**row)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["nat"] = int(self.nat)
        return row

    def to_api(self) -> Snapshot:
        from pathlib import Path

        d = Path(self.dir)
        return Snapshot(
            id=self.id,
            name=self.name,
            state="ready" if self.state == "ready" else "creating",
            vm=self.vm_name,
            vm_id=self.vm_id,
            vm_state=self.vm_state,
            image=self.image,
            kernel=self.kernel,
            engine=self.engine,
            vcpus=self.vcpus,
            memory_mib=self.memory_mib,
            disk_bytes=self.disk_bytes,
            work_bytes=self.work_bytes,
            nat=self.nat,
            dir=self.dir,
            rootfs=str(d / "rootfs.ext4"),
            work=str(d / "work.ext4"),
            state_dir=str(d / "state"),
            size_bytes=self.size_bytes,
            created_at=self.created_at,
            info=self.info,
        )


class SnapshotRepository:
    """Every query of the `snapshots` table goes through here."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def all(self) -> list[SnapshotRecord]:
        rows = self.store.all("snapshots", order="created_at")
        return [SnapshotRecord.from_row(r) for r in rows]

    def find(self, name_or_id: str) -> SnapshotRecord | None:
        row = self.store.get("snapshots", "name", name_or_id) or self.store.get(
            "snapshots", "id", name_or_id
        )
        return SnapshotRecord.from_row(row) if row is not None else None

    def get(self, name_or_id: str) -> SnapshotRecord:
        snap = self.find(name_or_id)
        if snap is None or snap.state != "ready":
            raise NotFound(
                f"no snapshot named `{name_or_id}`",
                hint="`banger snapshot list` shows your snapshots",
            )
        return snap

    def save(self, snap: SnapshotRecord) -> None:
        self.store.upsert("snapshots", "id", snap.to_row())

    def delete(self, snap_id: str) -> None:
        self.store.delete("snapshots", "id", snap_id)
