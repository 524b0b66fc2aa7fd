"""The newc writer and the initramfs builder, checked with our reader and GNU cpio."""

from __future__ import annotations

import gzip
import io
import stat
from pathlib import Path

import pytest

from banger.artifacts.initramfs import init_script
from banger.artifacts.kernels.cpio import CpioWriter, read_newc
from banger.artifacts.kernels.initrd import build_initramfs, host_busybox
from banger.artifacts.kernels.modules import ModuleTree
from banger.system import find_tool, run
from tests.test_kernel_modules import make_tree


def small_archive() -> bytes:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.file("a/b/c.txt", b"hello", 0o600)
    w.symlink("bin/sh", "/bin/busybox")
    w.chardev("dev/console", 5, 1)
    w.file("odd", b"x" * 5)  # sizes not multiple of 4 exercise the padding
    w.close()
    return buf.getvalue()


def test_newc_roundtrip() -> None:
    entries = {e.name: e for e in read_newc(small_archive())}
    assert list(entries) == ["a", "a/b", "a/b/c.txt", "bin", "bin/sh", "dev", "dev/console", "odd"]
    assert entries["a/b"].is_dir
    assert entries["a/b/c.txt"].data == b"hello"
    assert stat.S_IMODE(entries["a/b/c.txt"].mode) == 0o600
    assert entries["bin/sh"].is_symlink and entries["bin/sh"].data == b"/bin/busybox"
    assert stat.S_ISCHR(entries["dev/console"].mode) and entries["dev/console"].rdev == (5, 1)
    assert entries["odd"].data == b"xxxxx"


def test_duplicate_entries_are_refused() -> None:
    w = CpioWriter(io.BytesIO())
    w.file("x", b"")
    with pytest.raises(ValueError, match="duplicate"):
        w.file("x", b"")


@pytest.mark.skipif(find_tool("cpio") is None, reason="GNU cpio is not installed")
def test_gnu_cpio_reads_our_archive() -> None:
    listing = run(["cpio", "-itv", "--quiet"], input=small_archive()).out.splitlines()
    assert any(line.startswith("crw") and line.endswith("dev/console") for line in listing)
    assert any(line.endswith("bin/sh -> /bin/busybox") for line in listing)
    assert any(line.endswith("a/b/c.txt") for line in listing)


def test_init_template_is_valid_posix_sh() -> None:
    script = init_script()
    assert script.startswith(b"#!/bin/sh\n")
    for needle in (b"switch_root", b"insmod", b"root=", b"rootfstype=", b"init=", b"devtmpfs"):
        assert needle in script
    busybox = find_tool("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    run([busybox, "sh", "-n", "-c", script.decode()])


@pytest.mark.skipif(find_tool("busybox") is None, reason="busybox-static is not installed")
def test_build_initramfs_with_synthetic_modules(tmp_path: Path) -> None:
    rel = make_tree(tmp_path, {"virtio_blk": ["virtio"], "virtio": [], "extra": []})
    tree = ModuleTree.scan(rel)
    order = tree.load_order(["virtio_blk"])
    busybox, applets = host_busybox()
    out = tmp_path / "initrd.img"
    build_initramfs(out, tree, order, busybox, applets)

    entries = {e.name: e for e in read_newc(gzip.decompress(out.read_bytes()))}
    assert entries["init"].data == init_script()
    assert entries["init"].mode & 0o111
    assert entries["bin/busybox"].data == busybox.read_bytes()
    for applet in ("bin/sh", "sbin/insmod", "sbin/switch_root", "bin/mount"):
        assert entries[applet].data == b"/bin/busybox", applet
    assert entries["etc/banger/modules"].data == b"virtio\nvirtio_blk\n"
    assert "lib/modules/6.1.0-test/virtio_blk.ko" in entries
    assert "lib/modules/6.1.0-test/extra.ko" not in entries
    assert entries["dev/console"].rdev == (5, 1)
    # Reproducible: same inputs, same bytes (fixed mtimes, gzip header mtime 0).
    again = tmp_path / "again.img"
    build_initramfs(again, tree, order, busybox, applets)
    assert again.read_bytes() == out.read_bytes()
