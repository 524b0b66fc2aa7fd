"""Applying the real debian-bookworm recipe to a small fake Debian tree (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from banger.agent import GUEST_PROGRAM
from banger.artifacts.images.configure import (
    apply_recipe,
    guest_path,
    split_work_seed,
    write_packages_manifest,
)
from banger.artifacts.images.recipe import load_recipe
from banger.progress import null_progress
from banger.system import is_root

# Files are chowned to root:root, as they must be in the image.
pytestmark = pytest.mark.skipif(not is_root(), reason="needs root (chown to root)")

STATUS = """\
Package: openssh-server
Status: install ok installed
Maintainer: x
Description: x
Version: 1:9.2p1-2+deb12u3
Architecture: amd64

Package: removed-one
Status: deinstall ok config-files
Maintainer: x
Description: x
Version: 1.0
Architecture: all
"""


ESCAPE = Path(f"/tmp/banger-test-escape-{os.getpid()}")


def fake_debian(root: Path) -> None:
    """The parts of a bootstrapped bookworm tree the recipe touches."""
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")  # merged /usr, as in bookworm
    units = root / "usr/lib/systemd/system"
    for unit in ("multi-user.target", "apt-daily.timer", "ssh.service", "getty@.service"):
        (units / unit).write_text("[Unit]\nDescription=x\n")
    etc = root / "etc"
    for d in ("systemd/system/timers.target.wants", "systemd/system/getty.target.wants", "ssh"):
        (etc / d).mkdir(parents=True)
    (etc / "systemd/system/timers.target.wants/apt-daily.timer").symlink_to(
        "/lib/systemd/system/apt-daily.timer"
    )
    (etc / "systemd/system/getty.target.wants/getty@tty1.service").symlink_to(
        "/lib/systemd/system/getty@.service"
    )
    for key in ("ssh_host_rsa_key", "ssh_host_rsa_key.pub", "ssh_host_ed25519_key"):
        (etc / "ssh" / key).write_text("secret")
    (etc / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    # An absolute symlink that, followed on the host, would leave the tree.
    (etc / "resolv.conf").symlink_to(ESCAPE)
    (root / "root").mkdir(mode=0o700)
    (root / "root/.bashrc").write_text("# bashrc\n")
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    (root / "var/lib/apt/lists").mkdir(parents=True)
    (root / "var/lib/apt/lists/some_Packages").write_text("x")
    (root / "tmp").mkdir()


def test_apply_recipe(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    fake_debian(root)
    assert apply_recipe(root, load_recipe("debian-bookworm"), null_progress) is True
    etc = root / "etc"

    # files, with modes and owners
    net = root / "usr/local/sbin/banger-net"
    assert net.stat().st_mode & 0o7777 == 0o755 and net.stat().st_uid == 0
    assert (etc / "ssh/sshd_config.d/banger.conf").stat().st_mode & 0o777 == 0o644
    assert (root / "root/.ssh").stat().st_mode & 0o777 == 0o700
    # the resolv.conf symlink was replaced, not written through
    assert not (etc / "resolv.conf").is_symlink()
    assert not ESCAPE.exists()
    assert (etc / "hostname").read_text() == "banger\n"
    # units: enabled by their [Install] section, masked to /dev/null, default target
    sysd = etc / "systemd/system"
    assert os.readlink(sysd / "ssh.service.wants/banger-hostkeys.service") == (
        "/etc/systemd/system/banger-hostkeys.service"
    )
    assert (sysd / "multi-user.target.wants/banger-net.service").is_symlink()
    assert (sysd / "network-online.target.wants/banger-net.service").is_symlink()
    assert os.readlink(sysd / "apt-daily.timer") == "/dev/null"
    assert not (sysd / "timers.target.wants/apt-daily.timer").is_symlink()
    assert os.readlink(sysd / "getty@tty1.service") == "/dev/null"
    assert not (sysd / "getty.target.wants/getty@tty1.service").is_symlink()
    assert os.readlink(sysd / "default.target") == "/lib/systemd/system/multi-user.target"
    assert os.readlink(etc / "systemd/network/99-default.link") == "/dev/null"
    # the guest agent: banger's own guest.py, executable, its unit enabled
    agent = root / "usr/local/bin/banger-agent"
    assert agent.read_bytes() == GUEST_PROGRAM.read_bytes()
    assert agent.stat().st_mode & 0o7777 == 0o755 and agent.stat().st_uid == 0
    assert (sysd / "banger-agent.service").stat().st_mode & 0o777 == 0o644
    assert os.readlink(sysd / "multi-user.target.wants/banger-agent.service") == (
        "/etc/systemd/system/banger-agent.service"
    )
    # clean-up
    assert sorted(p.name for p in (etc / "ssh").iterdir()) == ["sshd_config.d"]
    assert (etc / "machine-id").read_text() == ""
    assert list((root / "var/lib/apt/lists").iterdir()) == []

    manifest = tmp_path / "packages.manifest"
    assert write_packages_manifest(root, manifest) == 1
    assert manifest.read_text() == "openssh-server\t1:9.2p1-2+deb12u3\tamd64\n"

    seed = tmp_path / "seed"
    split_work_seed(root, seed)
    assert list((root / "root").iterdir()) == []
    assert (root / "root").stat().st_mode & 0o777 == 0o700
    assert {p.name for p in seed.iterdir()} >= {".bashrc", ".tmux.conf", ".ssh", ".local"}
    assert seed.stat().st_mode & 0o777 == 0o700


def test_guest_path_never_leaves_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "etc/abs").symlink_to("/etc")
    (root / "etc/up").symlink_to("../../../../..")
    assert guest_path(root, "/etc/abs/passwd") == root / "etc/passwd"
    assert guest_path(root, "/etc/up/etc/shadow") == root / "etc/shadow"
    assert guest_path(root, "/etc/abs") == root / "etc/abs"  # last component not followed
    assert guest_path(root, "/etc/abs", follow_last=True) == root / "etc"


def test_agent_can_be_left_out(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    fake_debian(root)
    recipe = load_recipe("debian-bookworm")
    recipe = recipe.model_copy(update={"agent": recipe.agent.model_copy(update={"enabled": False})})
    assert apply_recipe(root, recipe, null_progress) is False
    assert not (root / "usr/local/bin/banger-agent").exists()
    assert not (root / "etc/systemd/system/banger-agent.service").exists()
