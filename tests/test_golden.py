"""Golden snapshots without a guest: what a snapshot is keyed by, which creates may
restore, and what the daemon reclaims after a kill during a build."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest

from banger.capabilities.network import NetworkCapability
from banger.engines.base import Engine
from banger.engines.firecracker import FirecrackerEngine
from banger.engines.qemu import QemuEngine
from banger.services.admission import Admission
from banger.services.artifacts import BootImage, BootKernel
from banger.services.golden import BUILDING, META, GoldenSnapshots, Shape, can_restore
from banger.services.launch import ColdBoot, Identity, Restore
from banger.system.run import die_with_parent
from banger.vm import VMRecord, VMState


class Eng:
    name = "qemu"
    version = "7.2.0"

    def __init__(self, vsock: bool = False) -> None:
        self.vsock = vsock

    async def save_state(self, *a: Any) -> None: ...
    async def resize_drive(self, *a: Any) -> None: ...

    def restores_copies(self) -> bool:
        return not self.vsock


def _vm(**kw: Any) -> VMRecord:
    base: dict[str, Any] = dict(
        id="abc", name="a", state=VMState.CREATING, image="img", kernel="k", engine="qemu",
        vcpus=2, memory_mib=1024, disk_bytes=4 << 30, work_bytes=2 << 30, mac="02:00:00:00:00:01",
    )  # fmt: skip
    base.update(kw)
    return VMRecord(**base)


@pytest.fixture
def files(tmp_path: Path) -> tuple[BootImage, BootKernel]:
    for f in ("rootfs.ext4", "work-seed.ext4", "vmlinux", "initrd.img"):
        (tmp_path / f).write_bytes(f.encode())
    image = BootImage("img", tmp_path / "rootfs.ext4", tmp_path / "work-seed.ext4", None, None,
                      None, agent=True)  # fmt: skip
    return image, BootKernel("k", tmp_path / "vmlinux", tmp_path / "initrd.img")


def _golden(root: Path, eng: Eng) -> GoldenSnapshots:
    return GoldenSnapshots(
        root,
        lambda name: cast(Engine, eng),
        cast(NetworkCapability, None),
        Admission(1, 1.5, 4096),
        Identity(root / "known_hosts", "ssh-ed25519 AAAA", mount_work=True),
    )


def test_a_snapshot_is_keyed_by_everything_it_depends_on(
    files: tuple[BootImage, BootKernel],
) -> None:
    image, kernel = files
    eng = cast(Engine, Eng())
    base = Shape.of(_vm(), image, kernel, eng)
    assert base.name == Shape.of(_vm(name="other", work_bytes=9 << 30), image, kernel, eng).name
    for changed in (_vm(vcpus=1), _vm(memory_mib=512), _vm(disk_bytes=8 << 30)):
        other = Shape.of(changed, image, kernel, eng)
        assert other.family != base.family  # another shape altogether
    time.sleep(0.01)
    image.rootfs.write_bytes(b"rebuilt")  # a rebuilt image: same shape, new inputs
    rebuilt = Shape.of(_vm(), image, kernel, eng)
    assert rebuilt.family == base.family and rebuilt.name != base.name
    newer = cast(Engine, type("E", (Eng,), {"version": "8.0"})())
    assert Shape.of(_vm(), image, kernel, newer).name != rebuilt.name


def test_engines_declare_whether_copies_of_a_saved_machine_can_run() -> None:
    assert can_restore(cast(Engine, Eng()))
    assert not can_restore(cast(Engine, Eng(vsock=True)))
    assert not can_restore(cast(Engine, object()))
    # QEMU: not with vhost-vsock (the CID in the guest's memory is a host-global
    # name); Firecracker: yes (hybrid vsock: one socket per VM, the CID names nothing).
    assert can_restore(QemuEngine("/q", vhost_vsock=False))
    assert not can_restore(QemuEngine("/q", vhost_vsock=True))
    assert can_restore(FirecrackerEngine("/f"))


def test_choose_boots_until_a_complete_snapshot_exists(
    tmp_path: Path, files: tuple[BootImage, BootKernel]
) -> None:
    image, kernel = files
    golden = _golden(tmp_path / "golden", Eng())
    launch, shape = golden.choose(_vm(), image, kernel, cold=False)
    assert isinstance(launch, ColdBoot) and launch.rootfs == image.rootfs and shape is not None
    d = tmp_path / "golden" / shape.name
    (d / "state").mkdir(parents=True)
    (d / "rootfs.ext4").write_bytes(b"r")
    (d / "state" / "vmstate").write_bytes(b"x" * 10)
    state_doc = {"format": 1, "fit": {}, "files": {"vmstate": 10}, "saved_at": 1.0, "drives": {}}
    (d / "state" / "state.json").write_text(json.dumps(state_doc))
    assert isinstance(golden.choose(_vm(), image, kernel, cold=False)[0], ColdBoot)  # no META
    (d / META).write_text("{}")
    launch, _ = golden.choose(_vm(), image, kernel, cold=False)
    assert isinstance(launch, Restore) and launch.rootfs == d / "rootfs.ext4"
    assert isinstance(golden.choose(_vm(), image, kernel, cold=True)[0], ColdBoot)
    # A truncated state is not restored: the snapshot goes, the create boots.
    (d / "state" / "vmstate").write_bytes(b"x")
    assert isinstance(golden.choose(_vm(), image, kernel, cold=False)[0], ColdBoot)
    assert not d.exists()


def test_reclaim_kills_a_dead_daemons_golden_boot_and_removes_its_files(tmp_path: Path) -> None:
    root = tmp_path / "golden"
    half = root / f"{BUILDING}1234"
    half.mkdir(parents=True)
    (half / "rootfs.ext4").write_bytes(b"r")
    orphan = root / "abc-def"  # a complete directory name, but no golden.json
    orphan.mkdir()
    kept = root / "abc-123"
    kept.mkdir()
    (kept / META).write_text("{}")
    # A stand-in for the golden boot's hypervisor: its argv names the build dir.
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", f"{half}/rootfs.ext4"],
        preexec_fn=die_with_parent(),
    )
    try:
        asyncio.run(_golden(root, Eng()).reclaim())
        assert proc.wait(timeout=10) != 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 9)
    assert sorted(p.name for p in root.iterdir()) == ["abc-123"]
