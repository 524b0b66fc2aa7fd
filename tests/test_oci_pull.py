"""`image pull` of OCI images without booting: a real registry on 127.0.0.1 (Debian's
docker-registry), an image built here with umoci, real skopeo/umoci/mkfs.ext4, and the
resulting ext4 read back with debugfs. Needs root (umoci unpack keeps owners)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.artifacts import ext4
from banger.artifacts import images as image_lib
from banger.artifacts.images.bootable import make_bootable
from banger.artifacts.images.info import ImageInfo
from banger.artifacts.images.oci import explain_skopeo, is_loopback_registry
from banger.errors import BangerError
from tests import oci_kit

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(shutil.which(t) for t in ("skopeo", "umoci", "docker-registry", "patchelf")),
    reason="needs root, skopeo, umoci, patchelf and docker-registry (scripts/setup.sh)",
)


class Env:
    def __init__(self, tmp: Path, addr: str) -> None:
        self.tmp, self.addr = tmp, addr
        self.images = tmp / "images"
        self.work = tmp / "work"

    def pull(self, ref: str, name: str = "app", **kw: Any) -> ImageInfo:
        stages: list[str] = []

        def progress(stage: str, detail: str = "", fraction: float | None = None) -> None:
            stages.append(stage)

        return asyncio.run(
            image_lib.pull_oci_image(
                image_lib.parse_reference(ref), name, self.images, self.work, progress, **kw
            )
        )

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.work.iterdir()) if self.work.exists() else []


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("oci")
    layout = oci_kit.build_image(tmp / "src")
    oci_kit.build_image(tmp / "src", arch="arm64", tag="arm")
    with oci_kit.registry(tmp) as addr:
        oci_kit.push(layout, "1", f"{addr}/test/app:1")
        oci_kit.push(layout, "arm", f"{addr}/test/app:arm")
        yield Env(tmp, addr)


def test_pull_applies_layers_keeps_owners_and_setuid_and_records_the_config(env: Env) -> None:
    # no --insecure: a registry on the loopback may speak plain HTTP, as with Docker
    info = env.pull(f"{env.addr}/test/app:1")
    rootfs = info.rootfs
    assert ext4.read_file_from(rootfs, "/etc/marker") == f"{oci_kit.MARKER}\n".encode()
    assert ext4.inode_info(rootfs, "/etc/doomed") is None  # the upper layer's whiteout
    owned = ext4.inode_info(rootfs, "/srv/owned")
    assert owned is not None
    assert (owned["user"], owned["group"], owned["mode"]) == (1234, 2345, 0o640)
    notes = ext4.inode_info(rootfs, "/home/app/notes")
    assert notes is not None and (notes["user"], notes["group"]) == (1000, 1000)
    setuid = ext4.inode_info(rootfs, "/usr/bin/setuid-tool")
    assert setuid is not None and setuid["mode"] == 0o4755
    # bootable: banger-init and the private Python, no SSH server
    assert ext4.inode_info(rootfs, "/sbin/banger-init") is not None
    assert ext4.inode_info(rootfs, "/opt/banger/bin/python3") is not None
    assert (info.init, info.ssh, info.cmdline) == (
        "banger-init",
        False,
        ("init=/sbin/banger-init",),
    )
    assert info.work_seed is None  # not a Debian-family image
    assert info.oci is not None
    assert info.oci.reference == f"{env.addr}/test/app:1"
    assert info.oci.digest.startswith("sha256:")
    assert (info.oci.env, info.oci.workdir, info.oci.user) == (
        ("GREETING=hello", f"PATH={oci_kit.IMAGE_PATH}"),
        "/srv",
        "1000",
    )
    assert info.oci.entrypoint == oci_kit.ENTRYPOINT
    assert info.summary()["oci"]["workdir"] == "/srv"
    assert b'"workdir": "/srv"' in (ext4.read_file_from(rootfs, "/opt/banger/image.json") or b"")
    assert env.leftovers() == []
    # A second pull of the same name replaces the first.
    again = env.pull(f"{env.addr}/test/app:1", insecure=True)
    assert again.created > info.created
    assert sorted(p.name for p in env.images.iterdir()) == ["app"]
    assert env.leftovers() == []


@pytest.mark.parametrize(
    ("ref", "insecure", "expect", "hint"),
    [
        ("{addr}/test/app:2", True, "test/app:2 does not exist on", "list-tags"),
        ("127.0.0.1:{closed}/test/app:1", True, "is unreachable (connection refused)", "running"),
        ("{addr}/test/app:arm", True, "is linux/arm64; banger runs linux/amd64", "linux/amd64"),
    ],
)
def test_pull_errors_name_the_problem_and_the_fix_and_leave_nothing(
    env: Env, ref: str, insecure: bool, expect: str, hint: str
) -> None:
    before = sorted(p.name for p in env.images.iterdir()) if env.images.exists() else []
    ref = ref.format(addr=env.addr, closed=oci_kit.free_port())
    with pytest.raises(BangerError) as exc:
        env.pull(ref, name="broken", insecure=insecure)
    assert expect in exc.value.message, exc.value.message
    assert "\n" not in exc.value.message
    assert hint in exc.value.hint
    after = sorted(p.name for p in env.images.iterdir()) if env.images.exists() else []
    assert after == before and env.leftovers() == []


def test_cancel_during_the_pull_leaves_nothing(env: Env) -> None:
    async def go() -> None:
        task: asyncio.Task[ImageInfo] | None = None

        def progress(stage: str, detail: str = "", fraction: float | None = None) -> None:
            if stage == "unpack" and task is not None:
                task.cancel()

        task = asyncio.ensure_future(
            image_lib.pull_oci_image(
                image_lib.parse_reference(f"{env.addr}/test/app:1"),
                "cancelled",
                env.images,
                env.work,
                progress,
                insecure=True,
            )
        )
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert not (env.images / "cancelled").exists()
    assert env.leftovers() == []


def test_pull_from_an_oci_archive(env: Env, tmp_path: Path) -> None:
    archive = tmp_path / "app.tar"
    import subprocess

    subprocess.run(
        ["skopeo", "--insecure-policy", "copy", f"oci:{env.tmp / 'src' / 'layout'}:1",
         f"oci-archive:{archive}"],
        check=True, capture_output=True,
    )  # fmt: skip
    info = env.pull(f"oci-archive:{archive}", name="from-archive")
    assert ext4.read_file_from(info.rootfs, "/etc/marker") == f"{oci_kit.MARKER}\n".encode()
    assert info.oci is not None and info.oci.reference == f"oci-archive:{archive}"


def _systemd_tree(root: Path) -> None:
    """The files of a Debian-like image with systemd, sshd, bash and ip (stubs)."""
    for d in ("sbin", "bin", "usr/sbin", "lib/systemd/system", "etc/ssh", "root", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for exe in ("lib/systemd/systemd", "usr/sbin/sshd", "bin/bash", "sbin/ip"):
        (root / exe).write_text("#!/bin/true\n")
        os.chmod(root / exe, 0o755)
    os.symlink("/lib/systemd/systemd", root / "sbin" / "init")
    units = root / "lib" / "systemd" / "system"
    (units / "multi-user.target").write_text("[Unit]\nDescription=Multi-User\n")
    (units / "ssh.service").write_text("[Service]\nExecStart=/usr/sbin/sshd -D\n"
                                       "[Install]\nWantedBy=multi-user.target\n")  # fmt: skip
    (root / "etc" / "ssh" / "ssh_host_rsa_key").write_text("baked into the image\n")
    (root / "etc" / "os-release").write_text('ID=ubuntu\nID_LIKE="debian"\n')


def test_an_image_with_systemd_and_sshd_gets_the_golden_setup(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    _systemd_tree(root)
    setup = make_bootable(root, {"cmd": ["/bin/bash"]}, lambda *a, **k: None)
    assert (setup.init, setup.ssh, setup.cmdline, setup.debian_family) == (
        "systemd",
        True,
        (),
        True,
    )
    etc = root / "etc" / "systemd" / "system"
    agent = (etc / "banger-agent.service").read_text()
    assert "ExecStart=/opt/banger/bin/python3 -I -S /opt/banger/banger-agent" in agent
    for wants in ("banger-agent.service", "banger-net.service", "ssh.service"):
        assert (etc / "multi-user.target.wants" / wants).is_symlink(), wants
    assert (etc / "ssh.service.wants" / "banger-hostkeys.service").is_symlink()
    assert (root / "etc" / "ssh" / "sshd_config.d" / "banger.conf").is_file()
    assert not (root / "etc" / "ssh" / "ssh_host_rsa_key").exists()  # each VM makes its own
    assert "/dev/vdb  /root" in (root / "etc" / "fstab").read_text()
    assert (root / "opt" / "banger" / "bin" / "python3").is_file()
    assert not (root / "sbin" / "banger-init").exists()


def test_a_plain_http_registry_elsewhere_needs_insecure() -> None:
    ref = image_lib.parse_reference("registry.example:5000/team/app:1")
    stderr = (
        'time="..." level=fatal msg="initializing source docker://registry.example:5000/'
        "team/app:1: pinging container registry registry.example:5000: Get "
        '\\"https://registry.example:5000/v2/\\": http: server gave HTTP response to HTTPS '
        'client"'
    )
    err = explain_skopeo(ref, stderr, insecure=False)
    assert err.message == "registry registry.example:5000 speaks plain HTTP, not HTTPS"
    assert "--insecure" in err.hint


@pytest.mark.parametrize(
    ("registry", "loopback"),
    [("127.0.0.1:5000", True), ("127.9.8.7", True), ("localhost:5000", True),
     ("[::1]:5000", True), ("10.0.0.1:5000", False), ("registry.example", False),
     ("localhost.example:80", False)],
)  # fmt: skip
def test_loopback_registries(registry: str, loopback: bool) -> None:
    assert is_loopback_registry(registry) is loopback


def test_a_daemon_killed_mid_pull_leaves_nothing_once_restarted(env: Env, banger_home: Any) -> None:
    """SIGKILL the daemon while umoci unpacks: the next daemon kills the orphaned
    children and removes the half-made pull; no image appears."""
    import signal

    from banger.api.models import OperationEvent, PullOciImage
    from banger.client import Client
    from tests.conftest import start_daemon

    daemon = start_daemon(banger_home)
    try:
        with Client(banger_home) as c:
            op = c.pull_oci_image(PullOciImage(ref=f"{env.addr}/test/app:1", name="killed"))
            for item in c.stream(op.id):
                if isinstance(item, OperationEvent) and item.stage in ("unpack", "bootable"):
                    break
                assert isinstance(item, OperationEvent), item
    finally:
        os.kill(daemon.proc.pid, signal.SIGKILL)
        daemon.proc.wait()
    tmp = banger_home.tmp_dir
    assert any(p.name.startswith("image-pull-killed-") for p in tmp.iterdir())
    again = start_daemon(banger_home)
    try:
        assert [p.name for p in tmp.iterdir() if not p.name.endswith(".lock")] == []
        assert not (banger_home.images_dir / "killed").exists()
        with Client(banger_home) as c:
            assert [i.name for i in c.images()] == []
    finally:
        again.stop()
