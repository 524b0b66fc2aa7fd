"""Register, promote, list, load, remove, sweep and the pull fast path, on small
real ext4 images (no network, no mmdebstrap)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from banger.artifacts import ext4
from banger.artifacts.ext4 import MiB
from banger.artifacts.images import (
    list_images,
    load_image,
    promote_image,
    pull_image,
    register_image,
    remove_image,
    sweep_tmp,
    verify,
)
from banger.artifacts.publish import remove_tree, work_dir
from banger.errors import BangerError, Conflict, InvalidInput, NotFound
from banger.system import find_tool, is_root, run

pytestmark = pytest.mark.skipif(find_tool("mkfs.ext4") is None, reason="needs e2fsprogs")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, float | None]] = []

    def __call__(self, stage: str, detail: str = "", fraction: float | None = None) -> None:
        self.events.append((stage, detail, fraction))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "etc").mkdir()
    (src / "etc/os-release").write_text("ID=test\n")
    rootfs, seed = tmp_path / "user-rootfs.img", tmp_path / "user-seed.img"
    ext4.mkfs_from_dir(src, rootfs, 32 * MiB, "root")
    (src / "etc/os-release").unlink()
    (src / "etc").rmdir()
    (src / ".bashrc").write_text("# hi\n")
    ext4.mkfs_from_dir(src, seed, 16 * MiB, "work", root_mode=0o700)
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"\x7fELF" + b"\0" * 1020)
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"not a filesystem" * 512)
    return {"rootfs": rootfs, "seed": seed, "vmlinux": vmlinux, "junk": junk}


def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "data/images", tmp_path / "data/tmp"


def test_register_validates(files: dict[str, Path], tmp_path: Path) -> None:
    info = register_image("mine", files["rootfs"], work_seed=files["seed"], kernel="debian-6.1")
    assert not info.managed and info.directory is None
    assert info.rootfs == files["rootfs"].resolve() and info.rootfs.is_absolute()
    assert info.work_seed == files["seed"].resolve()
    assert info.files["rootfs"].size == 32 * MiB and info.files["rootfs"].sha256 is None
    assert info.kernel == "debian-6.1" and info.source == "registered"

    with pytest.raises(ext4.NotExt4) as err:
        register_image("bad", files["junk"])
    assert str(files["junk"]) in err.value.message
    assert "ext4" in err.value.message and "mkfs.ext4" in err.value.hint
    with pytest.raises(ext4.NotExt4):
        register_image("bad", files["rootfs"], work_seed=files["junk"])
    with pytest.raises(InvalidInput, match="does not exist"):
        register_image("bad", tmp_path / "missing.ext4")
    with pytest.raises(InvalidInput, match="not a regular file"):
        register_image("bad", tmp_path)
    with pytest.raises(InvalidInput, match="not both"):
        register_image("bad", files["rootfs"], kernel="k", vmlinux=files["vmlinux"])
    with pytest.raises(InvalidInput, match="neither an ELF"):
        register_image("bad", files["rootfs"], vmlinux=files["junk"])
    with pytest.raises(InvalidInput, match="needs a vmlinux"):
        register_image("bad", files["rootfs"], initrd=files["junk"])
    with pytest.raises(InvalidInput):
        register_image("Bad Name", files["rootfs"])


def test_promote_list_load_remove(files: dict[str, Path], tmp_path: Path) -> None:
    images, tmp = dirs(tmp_path)
    reg = register_image("mine", files["rootfs"], work_seed=files["seed"], vmlinux=files["vmlinux"])
    rec = Recorder()
    info = promote_image(reg, images, tmp, rec)
    assert info.managed and info.directory == images / "mine"
    assert info.rootfs == images / "mine/rootfs.ext4"
    assert info.work_seed == images / "mine/work-seed.ext4"
    assert info.vmlinux == images / "mine/vmlinux"
    assert info.source == "promoted"
    assert all(f.sha256 for f in info.files.values())
    assert verify(info) == []
    assert info.rootfs.read_bytes() == files["rootfs"].read_bytes()
    assert info.rootfs.stat().st_blocks * 512 < 8 * MiB  # the copy stayed sparse
    assert {e[0] for e in rec.events} == {"copy", "finalize"}
    assert list(tmp.glob("image-*")) == []  # nothing left in flight

    assert load_image(images, "mine") == info
    assert [i.name for i in list_images(images)] == ["mine"]
    assert load_image(images, "other") is None
    assert load_image(images, "../etc") is None

    with pytest.raises(Conflict):
        promote_image(reg, images, tmp)

    # A managed image with a wrong-sized file is reported, not silently used.
    with open(info.work_seed or "", "ab") as f:
        f.write(b"x")
    assert verify(info) and "work_seed" in verify(info)[0]

    remove_image(images, "mine", tmp)
    assert not (images / "mine").exists() and list_images(images) == []
    assert list(tmp.glob("image-*")) == []
    with pytest.raises(NotFound):
        remove_image(images, "mine", tmp)


def test_pull_of_an_existing_image_is_instant(files: dict[str, Path], tmp_path: Path) -> None:
    images, tmp = dirs(tmp_path)
    reg = register_image("debian-bookworm", files["rootfs"], work_seed=files["seed"])
    made = promote_image(reg, images, tmp)
    rec = Recorder()
    start = time.monotonic()
    got = pull_image("debian-bookworm", images, tmp, rec)
    assert time.monotonic() - start < 1.0
    assert got == made
    assert rec.events == [("finalize", "debian-bookworm is already pulled", 1.0)]


def test_pull_unknown_image(tmp_path: Path) -> None:
    images, tmp = dirs(tmp_path)
    with pytest.raises(NotFound):
        pull_image("no-such-image", images, tmp)


@pytest.mark.skipif(
    not is_root() or find_tool("mmdebstrap") is None, reason="needs root and mmdebstrap"
)
def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    images, tmp = dirs(tmp_path)
    rec = Recorder()
    # Nothing listens on port 9 (discard): mmdebstrap fails at its first download.
    with pytest.raises(BangerError):
        pull_image("debian-bookworm", images, tmp, rec, debian_mirror="http://127.0.0.1:9/debian")
    assert [e[0] for e in rec.events][:3] == ["mirror", "mirror", "debootstrap"]
    assert not (images / "debian-bookworm").exists()
    assert list(tmp.glob("image-*")) == []


def test_sweep_tmp_only_touches_image_leftovers(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    (tmp / "image-build-x-123/tree/etc").mkdir(parents=True)
    (tmp / "image-build-x-123/tree/etc/passwd").write_text("x")
    (tmp / "image-rm-y-456").mkdir()
    (tmp / "kernel-pull-z").mkdir()
    removed = sweep_tmp(tmp)
    assert sorted(p.name for p in removed) == ["image-build-x-123", "image-rm-y-456"]
    assert sorted(p.name for p in tmp.iterdir()) == ["kernel-pull-z"]
    assert sweep_tmp(tmp_path / "absent") == []


def test_sweep_tmp_leaves_a_build_another_process_is_running(tmp_path: Path) -> None:
    # Two daemons share one data directory (tests and benchmarks share the artifact
    # cache): the one starting must not delete the other's build in progress, while
    # a dead build's leftovers still go.
    tmp = tmp_path / "tmp"
    with work_dir(tmp, "image-build-") as live:
        (live / "rootfs.ext4").write_text("half")
        (tmp / "image-build-dead").mkdir()
        removed = sweep_tmp(tmp)
        assert [p.name for p in removed] == ["image-build-dead"]
        assert (live / "rootfs.ext4").read_text() == "half"
    assert list(tmp.iterdir()) == []


@pytest.mark.skipif(not is_root(), reason="needs root to bind-mount")
def test_remove_tree_never_deletes_through_a_mount(tmp_path: Path) -> None:
    # What a build killed mid-mmdebstrap could leave: the host's directories mounted
    # inside the tree. Removing the tree must not delete what is behind the mount.
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    tree = tmp_path / "tmp/image-build-x/tree"
    (tree / "dev").mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "etc/file").write_text("x")
    run(["mount", "--bind", str(outside), str(tree / "dev")])
    try:
        remove_tree(tmp_path / "tmp/image-build-x")
    finally:
        run(["umount", "--lazy", str(tree / "dev")], check=False)
    assert not (tmp_path / "tmp/image-build-x").exists()
    assert (outside / "keep.txt").read_text() == "keep"


def test_images_built_from_an_older_recipe_are_outdated() -> None:
    from datetime import UTC, datetime

    from banger.artifacts.images import ImageInfo, is_outdated, load_recipe
    from banger.artifacts.images.recipe import recipe_digest

    current = recipe_digest(load_recipe("debian-bookworm"))

    def image(source: str, digest: str) -> ImageInfo:
        return ImageInfo(
            name="x", files={}, created=datetime.now(UTC), banger_version="0",
            source=source, recipe_digest=digest, managed=True, directory=None,
        )  # fmt: skip

    assert not is_outdated(image("recipe:debian-bookworm", current))
    assert is_outdated(image("recipe:debian-bookworm", ""))  # built before digests
    assert is_outdated(image("recipe:debian-bookworm", "0" * 16))
    assert not is_outdated(image("promoted", ""))  # not ours to rebuild
