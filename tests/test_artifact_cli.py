"""Kernels and images through the real CLI and daemon (no pulls: those have their own
tests): register validation, promote, list/show/rm, and errors a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from banger.artifacts import ext4
from tests.conftest import RunningDaemon, cli


def small_ext4(tmp_path: Path, name: str) -> Path:
    tree = tmp_path / f"{name}-tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("x\n")
    img = tmp_path / f"{name}.ext4"
    ext4.mkfs_from_dir(tree, img, 16 * 1024**2, label=name)
    return img


def test_register_refuses_a_non_ext4_file(daemon: RunningDaemon, tmp_path: Path) -> None:
    bogus = tmp_path / "rootfs.img"
    bogus.write_bytes(b"\0" * 8192)
    res = cli("image", "register", "--name", "bad", "--rootfs", str(bogus))
    assert res.returncode != 0
    assert "ext4" in res.stderr and str(bogus) in res.stderr
    assert "hint:" in res.stderr and "Traceback" not in res.stderr
    assert json.loads(cli("image", "list", "--json").stdout) == []


def test_register_show_promote_and_remove(daemon: RunningDaemon, tmp_path: Path) -> None:
    rootfs = small_ext4(tmp_path, "root")
    seed = small_ext4(tmp_path, "seed")
    res = cli(
        "image", "register", "--name", "mine", "--rootfs", str(rootfs), "--work-seed", str(seed),
        "--kernel", "debian-6.1", "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    img = json.loads(res.stdout)
    assert img["managed"] is False and img["rootfs"] == str(rootfs)

    dup = cli("image", "register", "--name", "mine", "--rootfs", str(rootfs))
    assert dup.returncode != 0 and "already exists" in dup.stderr

    res = cli("image", "promote", "mine")
    assert res.returncode == 0, res.stderr
    shown = json.loads(cli("image", "show", "mine", "--json").stdout)
    assert shown["managed"] is True
    managed_root = Path(shown["rootfs"])
    assert managed_root != rootfs and ext4.is_ext4(managed_root)
    assert str(daemon.paths.images_dir) in shown["rootfs"]
    assert rootfs.exists()  # the user's files are left where they were

    res = cli("image", "rm", "mine")
    assert res.returncode == 0, res.stderr
    assert not managed_root.exists()
    missing = cli("image", "show", "mine")
    assert missing.returncode != 0 and "does not exist" in missing.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["kernel", "pull", "no-such-kernel"], "no-such-kernel"),
        (["image", "pull", "no-such-image"], "no-such-image"),
        (["kernel", "show", "debian-6.1"], "not pulled"),
    ],
)
def test_unknown_artifacts_are_named(daemon: RunningDaemon, args: list[str], needle: str) -> None:
    res = cli(*args)
    assert res.returncode != 0
    assert needle in res.stderr and "hint:" in res.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["vm", "create", "--name", "Bad_Name"], "not a valid VM name"),
        (["vm", "create", "--name", "ok", "--memory", "lots"], "is not a size"),
        (["vm", "create", "--name", "ok", "--memory", "64M"], "too small"),
        (["vm", "create", "--name", "ok", "--vcpus", "0"], "out of range"),
        (["vm", "show", "ghost"], "no VM named `ghost`"),
        # a fan-out command names the fix too, after each VM's error
        (["vm", "set", "ghost", "--memory", "1G"], "`banger vm list` shows your VMs"),
    ],
)
def test_bad_vm_input_fails_before_any_work(
    daemon: RunningDaemon, args: list[str], needle: str
) -> None:
    res = cli(*args)
    assert res.returncode != 0
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert json.loads(cli("vm", "list", "--json").stdout) == []
