"""Real VM records for capability tests (no daemon needed)."""

from __future__ import annotations

from banger.vm import VMRecord


def vm_record(name: str, ip: str | None, *, state: str = "running", nat: bool = False) -> VMRecord:
    return VMRecord(
        id=f"id-{name}",
        name=name,
        state=state,
        image="debian-bookworm",
        kernel="debian-6.1",
        engine="qemu",
        vcpus=1,
        memory_mib=256,
        disk_bytes=1 << 30,
        work_bytes=1 << 28,
        mac="02:00:00:00:00:01",
        nat=nat,
        ip=ip,
    )
