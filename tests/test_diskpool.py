"""The warm disk pool: ready-made rootfs + work disk pairs, never stale."""

from __future__ import annotations

import os
from pathlib import Path

from banger.artifacts import ext4
from banger.artifacts.diskpool import DiskSpec
from banger.capabilities.workdisk import WorkDiskCapability

MIB = 1024**2


def image(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    tree = tmp_path / f"{name}-tree"
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    out = tmp_path / f"{name}.ext4"
    ext4.mkfs_from_dir(tree, out, 16 * MIB, label=name)
    return out


def test_pool_hands_out_built_disks_then_refills(tmp_path: Path) -> None:
    rootfs = image(tmp_path, "root", {"etc/hostname": "x\n"})
    seed = image(tmp_path, "seed", {".bashrc": "# hi\n"})
    cap = WorkDiskCapability(tmp_path / "state" / "vms", "ssh-ed25519 AAAA test", pool_size=1)
    spec = DiskSpec(rootfs, seed, 32 * MIB, 24 * MIB, "ssh-ed25519 AAAA test")

    dst = tmp_path / "vm"
    dst.mkdir()
    assert not cap.pool.take(spec, dst / "r.ext4", dst / "w.ext4")  # empty pool
    assert cap.pool.fill(spec) == 1
    assert cap.pool.fill(spec) == 0  # already full

    assert cap.pool.take(spec, dst / "r.ext4", dst / "w.ext4")
    assert (dst / "r.ext4").stat().st_size == 32 * MIB  # grown ahead of time
    assert (dst / "w.ext4").stat().st_size == 24 * MIB
    assert ext4.read_file_from(dst / "w.ext4", "/.bashrc") == b"# hi\n"
    assert ext4.read_file_from(dst / "w.ext4", "/.ssh/authorized_keys") == (
        b"ssh-ed25519 AAAA test\n"
    )
    assert not cap.pool.take(spec, dst / "r2.ext4", dst / "w2.ext4")  # used up


def test_a_changed_image_never_gets_a_stale_disk(tmp_path: Path) -> None:
    rootfs = image(tmp_path, "root", {"etc/version": "1\n"})
    cap = WorkDiskCapability(tmp_path / "state" / "vms", "key", pool_size=1)
    spec = DiskSpec(rootfs, None, 16 * MIB, 16 * MIB, "key")
    assert cap.pool.fill(spec) == 1

    st = rootfs.stat()
    os.utime(rootfs, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "rebuilt"
    dst = tmp_path / "vm"
    dst.mkdir()
    assert not cap.pool.take(spec, dst / "r.ext4", dst / "w.ext4")

    assert cap.pool.fill(spec) == 1  # the refill also sweeps the stale entry
    assert len(list(cap.pool.dir.iterdir())) == 1
