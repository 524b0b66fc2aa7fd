"""Real pulls of `debian-6.1` with the host's apt, and the kernel store around them."""

from __future__ import annotations

import gzip
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import banger
from banger.artifacts.kernels import (
    KernelInfo,
    get_spec,
    list_kernels,
    load_kernel,
    pull_kernel,
    remove_kernel,
    sweep_tmp,
    verify_kernel,
)
from banger.artifacts.kernels import apt as kapt
from banger.artifacts.kernels.cpio import read_newc
from banger.artifacts.kernels.elf import EM_X86_64, check_complete
from banger.artifacts.kernels.info import sha256_file
from banger.artifacts.kernels.modules import modinfo
from banger.errors import BangerError, Cancelled, NotFound
from banger.system import find_tool, is_root, run

NAME = "debian-6.1"
STAGES = ["resolve", "download", "unpack", "extract", "initramfs", "finalize"]


def apt_knows_the_kernel() -> str | None:
    """None if apt can resolve the package (after one `apt-get update` if needed)."""
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "busybox"):
        if find_tool(tool) is None:
            return f"{tool} is not installed"
    try:
        kapt.resolve(get_spec(NAME))
        return None
    except NotFound:
        pass
    if is_root():
        run(["apt-get", "update"], check=False, timeout=600)
    try:
        kapt.resolve(get_spec(NAME))
        return None
    except BangerError as exc:
        return f"apt cannot find the Debian cloud kernel package: {exc.message}"


class Recorder:
    def __init__(self, cancel_at: str | None = None) -> None:
        self.events: list[tuple[str, str, float | None]] = []
        self.cancel_at = cancel_at

    def __call__(self, stage: str, detail: str = "", fraction: float | None = None) -> None:
        self.events.append((stage, detail, fraction))
        if stage == self.cancel_at:
            raise Cancelled("cancelled by the test")

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(s for s, _, _ in self.events))


@pytest.fixture(scope="module")
def pulled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KernelInfo, Recorder]]:
    reason = apt_knows_the_kernel()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("kernels")
    rec = Recorder()
    info = pull_kernel(NAME, base / "kernels", base / "tmp", rec)
    yield info, rec


def test_pull_produces_a_bootable_set(pulled: tuple[KernelInfo, Recorder]) -> None:
    info, rec = pulled
    assert rec.stages == STAGES
    fractions = [f for _, _, f in rec.events if f is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    hdr = check_complete(info.vmlinux.read_bytes())
    assert hdr.is64 and hdr.machine == EM_X86_64

    entries = {e.name: e for e in read_newc(gzip.decompress(info.initrd.read_bytes()))}
    assert "init" in entries and entries["init"].data.startswith(b"#!/bin/sh")
    assert entries["bin/busybox"].is_file and len(entries["bin/busybox"].data) > 500_000
    blk = entries[f"lib/modules/{info.kernel_release}/virtio_blk.ko"]
    assert modinfo(blk.data)["name"] == ["virtio_blk"]

    order = info.modules_txt.read_text().split()
    assert order == list(info.modules)
    assert entries["etc/banger/modules"].data.decode().split() == order
    for dep in ("virtio", "virtio_ring"):
        assert order.index(dep) < order.index("virtio_blk")
    assert order.index("vsock") < order.index("vmw_vsock_virtio_transport")
    assert "ext4" not in order  # built in

    assert info.package.startswith("linux-image-6.1.") and info.package.endswith("-cloud-amd64")
    assert info.metapackage == "linux-image-cloud-amd64"
    assert info.compression == "lz4"
    assert info.banger_version == banger.__version__
    assert set(info.files) == {"vmlinux", "initrd.img", "config", "modules.txt"}
    assert "CONFIG_VIRTIO_MMIO=m" in info.config.read_text()
    assert verify_kernel(info) == []
    assert list((info.path.parent.parent / "tmp").iterdir()) == []  # nothing left behind


def test_second_pull_is_a_fast_noop(pulled: tuple[KernelInfo, Recorder]) -> None:
    info, _ = pulled
    rec = Recorder()
    start = time.monotonic()
    again = pull_kernel(NAME, info.path.parent, info.path.parent.parent / "tmp", rec)
    assert time.monotonic() - start < 1.0
    assert again == info
    assert rec.stages == ["finalize"]


def test_list_and_load(pulled: tuple[KernelInfo, Recorder]) -> None:
    info, _ = pulled
    assert list_kernels(info.path.parent) == [info]
    assert load_kernel(info.path.parent, NAME) == info
    assert load_kernel(info.path.parent, "other") is None
    assert load_kernel(info.path.parent, "../x") is None


def test_verify_and_repair(pulled: tuple[KernelInfo, Recorder], tmp_path: Path) -> None:
    kernels, tmp = tmp_path / "kernels", tmp_path / "tmp"
    shutil.copytree(pulled[0].path, kernels / NAME)
    info = load_kernel(kernels, NAME)
    assert info is not None

    txt = info.modules_txt
    txt.write_text(txt.read_text().replace("virtio_blk", "virtio_xyz"))  # same size
    assert verify_kernel(info) == [
        f"modules.txt has sha256 {sha256_file(txt)}, expected {info.files['modules.txt'].sha256}"
    ]

    info.initrd.write_bytes(b"truncated")  # a size change: the pull repairs it
    repaired = pull_kernel(NAME, kernels, tmp)
    assert verify_kernel(repaired) == []
    assert list(tmp.iterdir()) == []


def test_cancelled_pull_leaves_nothing(tmp_path: Path) -> None:
    reason = apt_knows_the_kernel()
    if reason:
        pytest.skip(reason)
    kernels, tmp = tmp_path / "kernels", tmp_path / "tmp"
    with pytest.raises(Cancelled):
        pull_kernel(NAME, kernels, tmp, Recorder(cancel_at="initramfs"))
    assert list(kernels.iterdir()) == []
    assert list(tmp.iterdir()) == []


def test_remove_and_sweep(tmp_path: Path) -> None:
    kernels, tmp = tmp_path / "kernels", tmp_path / "tmp"
    (kernels / "k1").mkdir(parents=True)
    (kernels / "k1" / "vmlinux").write_bytes(b"x")
    remove_kernel(kernels, "k1", tmp)
    assert not (kernels / "k1").exists()
    with pytest.raises(NotFound):
        remove_kernel(kernels, "k1", tmp)

    (tmp / "kernel-pull-debian-6.1-abc" / "root").mkdir(parents=True)
    (tmp / "image-build-xyz").mkdir()  # another builder's: not ours to sweep
    removed = sweep_tmp(tmp)
    assert [p.name for p in removed] == ["kernel-pull-debian-6.1-abc"]
    assert [p.name for p in tmp.iterdir()] == ["image-build-xyz"]
    assert sweep_tmp(tmp_path / "absent") == []


def test_unknown_package_hint_says_apt_get_update() -> None:
    if find_tool("apt-cache") is None:
        pytest.skip("apt-cache is not installed")
    spec = get_spec(NAME).model_copy(update={"package": "banger-no-such-package"})
    with pytest.raises(NotFound) as info:
        kapt.resolve(spec)
    assert "apt-get update" in info.value.hint


def test_a_changed_catalog_recipe_makes_the_kernel_outdated(
    pulled: tuple[KernelInfo, Recorder], tmp_path: Path
) -> None:
    from banger.artifacts.kernels import is_outdated

    kernels = tmp_path / "kernels"
    shutil.copytree(pulled[0].path, kernels / NAME)
    current = load_kernel(kernels, NAME)
    assert current is not None and not is_outdated(current)
    # A kernel pulled when the catalog asked for fewer modules (an older banger).
    manifest = kernels / NAME / "manifest.json"
    manifest.write_text(
        current.model_copy(update={"catalog_modules": ("virtio_blk",)}).model_dump_json(
            exclude={"path"}
        )
    )
    old = load_kernel(kernels, NAME)
    assert old is not None and is_outdated(old)
