"""ext4 helpers on real (small, sparse) images, read back with debugfs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from banger.artifacts import ext4
from banger.artifacts.ext4 import MiB
from banger.errors import CommandFailed, InvalidInput
from banger.system import find_tool, run

pytestmark = pytest.mark.skipif(
    any(find_tool(t) is None for t in ("mkfs.ext4", "debugfs", "resize2fs", "e2fsck")),
    reason="needs e2fsprogs",
)


def debugfs(image: Path, request: str) -> str:
    return run(["debugfs", "-R", request, str(image)]).out


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


@pytest.fixture
def image(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "hello.txt").write_text("hello\n")
    (src / "big.bin").write_bytes(os.urandom(256 * 1024))
    img = tmp_path / "fs.ext4"
    ext4.mkfs_from_dir(src, img, 64 * MiB, "banger-test", root_mode=0o700)
    return img


def test_mkfs_from_dir(image: Path) -> None:
    assert image.stat().st_size == 64 * MiB
    assert allocated(image) < 8 * MiB  # sparse: metadata and data only, no zeroed journal
    assert debugfs(image, "cat /sub/hello.txt") == "hello\n"
    sb = ext4.read_superblock(image)
    assert sb is not None
    assert (sb.block_size, sb.size_bytes) == (4096, 64 * MiB)
    assert not sb.needs_check
    root = ext4.inode_info(image, "/")
    assert root is not None and root["mode"] == 0o700 and root["user"] == 0
    assert "banger-test" in run(["dumpe2fs", "-h", str(image)]).out
    run(["e2fsck", "-fn", str(image)])  # consistent


def test_mkfs_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        ext4.mkfs_from_dir(tmp_path, tmp_path / "x", 10 * MiB + 1, "x")
    with pytest.raises(InvalidInput):
        ext4.mkfs_from_dir(tmp_path, tmp_path / "x", 16 * MiB, "a-label-longer-than-16")


def test_is_ext4(image: Path, tmp_path: Path) -> None:
    assert ext4.is_ext4(image)
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * 4096)
    assert not ext4.is_ext4(junk)
    assert not ext4.is_ext4(tmp_path / "missing")
    assert not ext4.is_ext4(tmp_path)
    with pytest.raises(ext4.NotExt4) as err:
        ext4.require_ext4(junk, "rootfs")
    assert str(junk) in err.value.message and "mkfs.ext4" in err.value.hint


def test_clone_file_keeps_content_and_holes(image: Path, tmp_path: Path) -> None:
    dst = tmp_path / "clone.ext4"
    how = ext4.clone_file(image, dst)
    assert how in ("reflink", "sparse")
    assert dst.stat().st_size == image.stat().st_size
    assert dst.read_bytes() == image.read_bytes()
    if how == "sparse":
        assert allocated(dst) <= allocated(image) + 64 * 1024
    # A trailing hole is kept too.
    tail = tmp_path / "tail"
    with open(tail, "wb") as f:
        f.write(b"x" * 4096)
        f.truncate(32 * MiB)
    ext4.clone_file(tail, tmp_path / "tail2")
    assert (tmp_path / "tail2").stat().st_size == 32 * MiB
    assert allocated(tmp_path / "tail2") < MiB


def test_grow(image: Path) -> None:
    assert ext4.grow(image, 256 * MiB)
    sb = ext4.read_superblock(image)
    assert sb is not None and sb.size_bytes == 256 * MiB
    assert image.stat().st_size == 256 * MiB
    assert allocated(image) < 16 * MiB
    assert debugfs(image, "cat /sub/hello.txt") == "hello\n"
    assert not ext4.grow(image, 128 * MiB)  # never shrinks
    run(["e2fsck", "-fn", str(image)])


def test_grow_checks_a_filesystem_that_was_mounted(image: Path) -> None:
    # Pretend a VM mounted it after the last check: resize2fs would refuse without e2fsck.
    run(["debugfs", "-w", "-R", "ssv mtime 20300101", str(image)])
    sb = ext4.read_superblock(image)
    assert sb is not None and sb.needs_check
    assert ext4.grow(image, 128 * MiB)
    sb = ext4.read_superblock(image)
    assert sb is not None and sb.size_bytes == 128 * MiB and sb.last_check >= sb.mount_time


def test_compact_gives_back_the_space_of_deleted_files(image: Path) -> None:
    """`image build` trims its disks: blocks a file held and then freed cost nothing in
    the image file afterwards, and what is left reads back the same."""
    run(["debugfs", "-w", "-R", "rm /big.bin", str(image)])
    before = allocated(image)
    ext4.compact(image)
    assert allocated(image) <= before - 200 * 1024  # the 256 KiB file's blocks went
    assert debugfs(image, "cat /sub/hello.txt") == "hello\n"
    corrupt = image.with_name("not-ext4")
    corrupt.write_bytes(b"\0" * MiB)
    with pytest.raises(CommandFailed, match="e2fsck could not repair"):
        ext4.compact(corrupt)


def test_write_file_into_creates_parents_with_root_ownership(image: Path) -> None:
    key = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLE banger\n"
    ext4.write_file_into(image, "/.ssh/authorized_keys", key, 0o600)
    assert debugfs(image, "cat /.ssh/authorized_keys").encode() == key
    f = ext4.inode_info(image, "/.ssh/authorized_keys")
    d = ext4.inode_info(image, "/.ssh")
    assert f is not None and d is not None
    assert (f["mode"], f["user"], f["group"], f["size"]) == (0o600, 0, 0, len(key))
    assert (d["mode"], d["user"], d["group"]) == (0o700, 0, 0)
    # Replacing keeps one file with the new content; existing dirs are left as they are.
    ext4.write_file_into(image, "/.ssh/authorized_keys", b"new\n", 0o644)
    assert ext4.read_file_from(image, "/.ssh/authorized_keys") == b"new\n"
    f = ext4.inode_info(image, "/.ssh/authorized_keys")
    assert f is not None and f["mode"] == 0o644
    ext4.write_file_into(image, "/a/b/c.txt", b"deep", 0o600, dir_mode=0o755)
    assert ext4.read_file_from(image, "/a/b/c.txt") == b"deep"
    b = ext4.inode_info(image, "/a/b")
    assert b is not None and b["mode"] == 0o755
    assert ext4.read_file_from(image, "/nope") is None
    run(["e2fsck", "-fn", str(image)])


@pytest.mark.parametrize("bad", ["relative/path", "/a/../b", "/with space", "/", '/q"uote'])
def test_write_file_into_rejects_odd_paths(image: Path, bad: str) -> None:
    with pytest.raises(InvalidInput):
        ext4.write_file_into(image, bad, b"x")


def test_write_file_into_refuses_non_ext4(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 8192)
    with pytest.raises(ext4.NotExt4):
        ext4.write_file_into(junk, "/x", b"x")


def test_tree_size_counts_blocks(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x")
    (tmp_path / "b").write_bytes(b"x" * 5000)
    os.link(tmp_path / "b", tmp_path / "b2")  # hard link: counted once
    size = ext4.tree_size(tmp_path)
    assert size == 4096 + 256 + (256 + 4096) + (256 + 8192)


@pytest.mark.parametrize("kind", ["ext2", "ext3"])
def test_ext2_and_ext3_are_refused_as_ext4(tmp_path: Path, kind: str) -> None:
    """The ext magic is shared by ext2/3/4; only a filesystem with extents is ext4."""
    old = tmp_path / f"{kind}.img"
    run(["mke2fs", "-q", "-F", "-t", kind, str(old), "16M"])
    assert ext4.is_ext4(old)  # the magic alone says yes
    with pytest.raises(ext4.NotExt4) as err:
        ext4.require_ext4(old, "rootfs")
    assert f"is {kind}, not ext4" in err.value.message
    assert "tune2fs -O extents" in err.value.hint


def test_truncated_ext4_is_refused(image: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.ext4"
    cut.write_bytes(image.read_bytes()[: 2 * MiB])
    with pytest.raises(ext4.NotExt4, match="is truncated"):
        ext4.require_ext4(cut, "rootfs")
    ext4.require_ext4(image, "rootfs")  # the whole image passes


CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep


@pytest.mark.skipif(os.geteuid() != 0, reason="makes files owned by other users")
def test_work_disk_slow_path_keeps_setuid_owners_and_xattrs(tmp_path: Path) -> None:
    """An image without a work-seed gets /root copied out of its rootfs: that copy
    keeps setuid/setgid/sticky bits, owners, file capabilities and other xattrs."""
    from banger.artifacts.diskpool import DiskSpec
    from banger.capabilities.workdisk import WorkDiskCapability

    src = tmp_path / "src"
    home = src / "root"
    (home / "shared dir").mkdir(parents=True)
    tool = home / "suid-tool"
    tool.write_bytes(b"\x7fELF not really\n")
    os.chmod(tool, 0o4755)
    os.chmod(home / "shared dir", 0o2770)
    os.chown(home / "shared dir", 0, 2345)
    owned = home / "shared dir" / "owned by 1234"
    owned.write_text("mine\n")
    os.chown(owned, 1234, 2345)
    os.chmod(owned, 0o640)
    (home / "drop").mkdir(mode=0o1777)
    os.chmod(home / "drop", 0o1777)
    capped = home / "pinger"
    capped.write_bytes(b"#!/bin/sh\n")
    os.chmod(capped, 0o755)
    os.setxattr(capped, "security.capability", CAP_NET_RAW)
    os.setxattr(owned, "user.note", b"kept")
    os.symlink("shared dir/owned by 1234", home / "link")
    os.chmod(home, 0o700)
    rootfs, root, work = tmp_path / "rootfs.ext4", tmp_path / "r.ext4", tmp_path / "w.ext4"
    ext4.mkfs_from_dir(src, rootfs, 64 * MiB, "rootfs")

    spec = DiskSpec(rootfs, None, 64 * MiB, 64 * MiB, "ssh-ed25519 AAAA test")
    WorkDiskCapability.build_disks(spec, root, work)

    def info(path: str) -> tuple[int, int, int]:
        i = ext4.inode_info(work, path)
        assert i is not None, path
        return i["mode"], i["user"], i["group"]

    assert info("/suid-tool") == (0o4755, 0, 0)
    assert info('"/shared dir"') == (0o2770, 0, 2345)
    assert info('"/shared dir/owned by 1234"') == (0o640, 1234, 2345)
    assert info("/drop") == (0o1777, 0, 0)
    assert info("/") == (0o700, 0, 0)
    caps = debugfs(work, "ea_get /pinger security.capability")
    assert CAP_NET_RAW.hex(" ") in caps.replace("\n", " "), caps
    assert '"kept"' in debugfs(work, 'ea_get "/shared dir/owned by 1234" user.note')
    assert ext4.read_file_from(work, "/suid-tool") == b"\x7fELF not really\n"
    assert debugfs(work, "stat /link").count("Type: symlink") == 1
    assert ext4.read_file_from(work, "/.ssh/authorized_keys") == b"ssh-ed25519 AAAA test\n"
