"""`banger kernel build` for real: Debian's linux-source compiled with banger's
fragment, then the golden image booted with it (no initramfs) to SSH under QEMU.

The build goes through the real CLI into the shared test data dir
(BANGER_TEST_CACHE/data, see tests/vmkit.py): the first run on a machine downloads
the source and compiles it (minutes; see README "Building a kernel"), later runs
find the kernel up to date. One guest boots, shared by the assertions.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.artifacts.kernels import apt
from banger.errors import BangerError
from tests import netns
from tests.sandbox import Sandbox, sandbox
from tests.sandbox import test_env as sandbox_env  # (not collected as a test)
from tests.vmkit import DATA, NsBanger, ensure_artifacts

pytestmark = [pytest.mark.boot, netns.skip_unless_netns()]

NAME = "test-micro"
BUILD_TIMEOUT = 3 * 3600  # a fresh build on a loaded 2-core machine


@pytest.fixture
def host() -> Iterator[Sandbox]:
    """The CLI in the host namespace (a build needs no VM network), shared data dir."""
    box = Sandbox.create(data_dir=DATA, own_netns=False, env=sandbox_env())
    try:
        yield box
    finally:
        box.teardown()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    try:
        apt.candidate("linux-source-6.1")
    except BangerError as exc:
        pytest.skip(f"apt does not know linux-source-6.1: {exc.message}")
    ensure_artifacts(tmp_path_factory.mktemp("pull"))
    box = Sandbox.create(data_dir=DATA, own_netns=False, env=sandbox_env())
    try:
        started = time.monotonic()
        res = box.run("kernel", "build", "--name", NAME, timeout=BUILD_TIMEOUT, check=False)
        assert res.returncode == 0, f"kernel build failed:\n{res.stderr[-3000:]}"
        took = time.monotonic() - started
        print(f"\nkernel build {NAME}: {took:.0f} s")  # the fresh-build figure, with -s
        shown = box.json("kernel", "show", NAME)
    finally:
        box.teardown()
    return dict(shown)


def test_the_built_kernel_is_recorded_without_initramfs(built: dict[str, str]) -> None:
    assert built["kind"] == "built" and built["initrd"] is None
    assert built["package"] == "linux-source-6.1"
    assert re.fullmatch(r"6\.1\.\d+-banger", built["kernel_release"])
    assert Path(built["vmlinux"]).read_bytes()[:4] == b"\x7fELF"
    config = (Path(built["path"]) / "config").read_text()
    assert "CONFIG_VIRTIO_BLK=y" in config and "# CONFIG_MODULES is not set" in config


def test_a_fragment_disabling_virtio_blk_is_caught_before_compiling(
    built: dict[str, str], host: Sandbox, tmp_path: Path
) -> None:
    """On the real kernel tree: the config step runs, the check stops the build."""
    bad = tmp_path / "no-blk.config"
    bad.write_text("# CONFIG_VIRTIO_BLK is not set\n")
    args = ("kernel", "build", "--name", "bad-blk", "--config-fragment", str(bad))
    res = host.run(*args, timeout=900, check=False, netns=False)
    assert res.returncode != 0
    assert "CONFIG_VIRTIO_BLK is required by banger" in res.stderr
    assert "is 'n' in the final config" in res.stderr and str(bad) in res.stderr
    listed = json.loads(host.run("kernel", "list", "--json", netns=False).stdout)
    assert "bad-blk" not in [k["name"] for k in listed]
    tmp = host.paths.tmp_dir
    assert not [p for p in tmp.iterdir() if "bad-blk" in p.name] if tmp.is_dir() else True


@pytest.fixture(scope="module")
def guest(built: dict[str, str]) -> Iterator[NsBanger]:
    with sandbox(data_dir=DATA, env=sandbox_env()) as b:  # a short /tmp home: VM sockets
        b.run("vm", "create", "--name", "k", "--kernel", NAME, "--memory", "512M", timeout=900)
        yield b


def test_the_golden_image_boots_to_ssh_with_the_built_kernel(
    guest: NsBanger, built: dict[str, str]
) -> None:
    assert guest.json("vm", "show", "k")["kernel"] == NAME
    uname = guest.run("vm", "ssh", "k", "--", "uname -a", timeout=120).stdout
    assert built["kernel_release"] in uname
    # No initramfs: the root was mounted by the kernel itself, and no modules exist.
    cmdline = guest.run("vm", "ssh", "k", "--", "cat /proc/cmdline", timeout=60).stdout
    assert "root=/dev/vda" in cmdline
    mods = guest.run("vm", "ssh", "k", "--", "cat /proc/modules 2>&1; echo end", timeout=60)
    assert mods.stdout.strip().endswith("end") and ".ko" not in mods.stdout


def test_the_guest_is_healthy_and_runs_systemd_with_cgroup_v2(
    guest: NsBanger, built: dict[str, str]
) -> None:
    health = guest.json("vm", "health", "k")
    assert health["healthy"] is True, health
    assert built["kernel_release"] in str(health["info"]["kernel"])
    out = guest.run(
        "vm", "ssh", "k", "--",
        "systemctl is-system-running --wait; stat -fc %T /sys/fs/cgroup; ls /dev/vsock",
        timeout=180,
    ).stdout  # fmt: skip
    assert "cgroup2fs" in out and "/dev/vsock" in out
    assert out.splitlines()[0] in ("running", "degraded"), out


def test_vm_stop_is_a_graceful_power_off(guest: NsBanger) -> None:
    """The ACPI power button reaches systemd: the guest powers itself off."""
    guest.run("vm", "stop", "k", timeout=180)
    logs = guest.run("vm", "logs", "k", timeout=60).stdout
    assert "reboot: Power down" in logs, logs[-2000:]
