"""The VM sizing rules, in one place: vCPUs, memory, root and work disk sizes.

`vm create`, `vm set`, the CLI and the guest-config builder all validate through
here. Static rules (syntax, minimums, the engines' vCPU limit) need nothing; the
host bounds (RAM, CPUs, free space where the disks live) come from `HostLimits`,
probed by whoever knows the state directory (the daemon).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from banger.errors import InvalidInput
from banger.units import parse_size

MiB = 1024**2
MAX_VCPUS = 32  # Firecracker's limit; QEMU microvm gets the same so VMs stay portable
# The least memory any VM may have: what the kernel and banger-init need to boot an
# image that runs nothing else. Each image has its own minimum on top of this
# (`MemoryFloor`): the catalog declares it for the images built from a recipe.
MIN_MEMORY_MIB = 128
# OCI images booted by banger-init (no systemd): banger-init, the agent on its
# private Python and the image's entrypoint.
INIT_MIN_MEMORY_MIB = 128
MIN_WORK_BYTES = 16 * MiB
MIN_DISK_BYTES = 64 * MiB  # the rootfs is never shrunk below its image; this catches typos


@dataclass(frozen=True)
class HostLimits:
    """What this host can give one VM (`cpus` is informational: vCPUs may overcommit)."""

    cpus: int
    memory_bytes: int
    disk_free_bytes: int
    disk_dir: Path

    @classmethod
    def probe(cls, disk_dir: Path) -> HostLimits:
        mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        d = disk_dir
        while not d.exists() and d != d.parent:
            d = d.parent
        st = os.statvfs(d)
        return cls(
            cpus=os.cpu_count() or 1,
            memory_bytes=mem,
            disk_free_bytes=st.f_bavail * st.f_frsize,
            disk_dir=disk_dir,
        )


def human(n: int) -> str:
    """`23.5G`, `512M`: sizes in messages, rounded for reading."""
    for unit, scale in (("T", 1024**4), ("G", 1024**3), ("M", MiB)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + unit
    return f"{n}B"


def _size(flag: str, value: str | int) -> int:
    try:
        n = parse_size(value)
    except InvalidInput as exc:
        raise InvalidInput(f"{flag}: {exc.message}", hint=exc.hint) from None
    if n < 0:
        raise InvalidInput(f"{flag} {value} is negative", hint="use a positive size, e.g. 2G")
    return n


def check_vcpus(vcpus: int, host: HostLimits | None = None) -> int:
    """1 to MAX_VCPUS (the engines' limit). More vCPUs than host CPUs is allowed, as
    with QEMU and Firecracker themselves: it is slow, not wrong."""
    if isinstance(vcpus, bool) or not isinstance(vcpus, int):
        raise InvalidInput(f"--vcpus {vcpus!r} is not a whole number", hint="e.g. --vcpus 2")
    if not 1 <= vcpus <= MAX_VCPUS:
        raise InvalidInput(f"--vcpus {vcpus} is out of range", hint=f"use 1 to {MAX_VCPUS}")
    return vcpus


@dataclass(frozen=True)
class MemoryFloor:
    """The least memory a VM of one image may have, and what needs it (e.g. "sshd,
    the agent and opencode's server run in it")."""

    image: str
    mib: int
    reason: str = ""


def check_image_memory(mib: int, floor: MemoryFloor, *, configured: bool = False) -> None:
    """Refuse `mib` under the image's minimum. `configured`: the size is the config's
    `default_memory`, not a --memory the user gave, so the fix names the config too."""
    if mib >= floor.mib:
        return
    need = f"{floor.mib}M"
    fix = f"pass --memory {need} or more"
    if configured:
        fix = f"set default_memory to {need} or more in banger's config.toml, or {fix}"
    raise InvalidInput(
        f"image {floor.image} needs at least {floor.mib} MiB of memory"
        + (f" ({floor.reason})" if floor.reason else ""),
        hint=fix,
    )


def check_memory(
    value: str | int,
    host: HostLimits | None = None,
    floor: MemoryFloor | None = None,
    *,
    configured: bool = False,
) -> int:
    """Memory in MiB from `1G`, `512M`, … within [the image's minimum (`floor`, at
    least MIN_MEMORY_MIB), host RAM]."""
    n = _size("--memory", value)
    mib = n // MiB
    if floor is not None:
        check_image_memory(mib, floor, configured=configured)
    if mib < MIN_MEMORY_MIB:
        raise InvalidInput(
            f"--memory {value} is too small: a VM needs at least {MIN_MEMORY_MIB} MiB",
            hint=f"use at least {MIN_MEMORY_MIB}M",
        )
    if host is not None and n > host.memory_bytes:
        raise InvalidInput(
            f"--memory {value} is more than this host's {human(host.memory_bytes)} of RAM",
            hint=f"use at most {host.memory_bytes // 1024**3}G",
        )
    return mib


def _at_least(flag: str, value: str | int, minimum: int) -> int:
    n = _size(flag, value)
    if n < minimum:
        raise InvalidInput(f"{flag} {value} is too small", hint=f"use at least {minimum // MiB}M")
    return n


def check_disk_size(value: str | int) -> int:
    return _at_least("--disk-size", value, MIN_DISK_BYTES)


def check_work_size(value: str | int) -> int:
    return _at_least("--work-size", value, MIN_WORK_BYTES)


def check_disks(
    disk: str | int, work: str | int, host: HostLimits | None = None
) -> tuple[int, int]:
    """Root and work disk sizes in bytes; together at most the free space where they live."""
    disk_bytes, work_bytes = check_disk_size(disk), check_work_size(work)
    if host is not None and disk_bytes + work_bytes > host.disk_free_bytes:
        free = human(host.disk_free_bytes)
        raise InvalidInput(
            f"--disk-size {human(disk_bytes)} + --work-size {human(work_bytes)} "
            f"is more than the {free} free on {host.disk_dir}",
            hint="use smaller disks or free some space there",
        )
    return disk_bytes, work_bytes


def precheck(
    *,
    vcpus: int | None = None,
    memory: str | None = None,
    disk_size: str | None = None,
    work_size: str | None = None,
) -> None:
    """The host-independent rules for whichever values were given (the CLI runs this
    before it contacts the daemon, which applies the host bounds too)."""
    if vcpus is not None:
        check_vcpus(vcpus)
    if memory is not None:
        check_memory(memory)
    if disk_size is not None:
        check_disk_size(disk_size)
    if work_size is not None:
        check_work_size(work_size)


@dataclass(frozen=True)
class Sizing:
    vcpus: int
    memory_mib: int
    disk_bytes: int
    work_bytes: int


def check_sizing(
    vcpus: int,
    memory: str | int,
    disk: str | int,
    work: str | int,
    host: HostLimits | None,
    floor: MemoryFloor | None = None,
    *,
    configured_memory: bool = False,
) -> Sizing:
    disk_bytes, work_bytes = check_disks(disk, work, host)
    n_vcpus = check_vcpus(vcpus, host)
    mib = check_memory(memory, host, floor, configured=configured_memory)
    return Sizing(n_vcpus, mib, disk_bytes, work_bytes)
