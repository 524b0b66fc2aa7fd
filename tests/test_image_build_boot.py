"""`image build` end to end, as a user runs it: the real CLI and daemon in a test-made
network namespace, the guest's apt reaching the host's mirror through NAT (and the
relay of tests/mirror_relay.py for the namespace's last hop).

Three boots in all: one build (shared by the module), one VM of the built image,
and one build cancelled with Ctrl-C while its script runs.

The daemon has a data dir of its own (copies of the cached kernel and golden
image), so the test can remove the base and show that the built image owns every
file it needs.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from banger.artifacts import ext4
from banger.imagespec import packages_digest, sha256_file, sha256_tree
from tests import netns
from tests.mirror_relay import mirror_relay
from tests.sandbox import Sandbox
from tests.vmkit import DATA, ensure_artifacts, private_home

pytestmark = [pytest.mark.boot, netns.skip_unless_netns()]

SETUP = """#!/bin/sh
set -e
echo "setup: installing the marker"
rg --version | head -1 > /etc/built-marker
echo dotfile > /root/.devrc
"""


@dataclass
class Built:
    b: Sandbox
    base: str
    dev: str
    setup: Path
    conf: Path
    build_err: str


def _private_data(home: Path) -> Path:
    """A data dir of the home's own holding copies of the cached kernel and golden
    image: the shared cache's tmp dir is swept by every daemon that starts on it (other
    test runs too), and the test removes the base image to show the build outlives it."""
    data = home / "data"
    for kind in ("kernels", "images"):
        src = DATA / kind
        for d in src.iterdir():
            if d.is_dir() and (kind == "kernels" or d.name == "debian-bookworm"):
                (data / kind / d.name).mkdir(parents=True)
                for f in d.iterdir():
                    ext4.clone_file(f, data / kind / d.name / f.name)
    return data


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    ensure_artifacts(tmp_path_factory.mktemp("pull"))
    inputs = tmp_path_factory.mktemp("inputs")
    setup = inputs / "setup.sh"
    setup.write_text(SETUP)
    conf = inputs / "conf"
    (conf / "sub").mkdir(parents=True)
    (conf / "sub" / "app.toml").write_text("answer = 42\n")
    with private_home(data=_private_data) as b, mirror_relay(str(b.ns)):
        res = b.run(
            "image", "build", "--from", "debian-bookworm", "--name", "dev",
            "--package", "ripgrep", "--script", str(setup),
            "--file", f"{conf}:/opt/conf", "--file", f"{setup}:/usr/local/share/setup.sh",
            timeout=1800,
        )  # fmt: skip
        yield Built(b, "debian-bookworm", "dev", setup, conf, res.stderr)


def _leftovers(b: Sandbox, image: str) -> list[str]:
    """Everything a build of `image` (or of a name it starts) could leave behind: the
    sandbox's VM leftovers (processes, TAPs, rows, rules, VM directories), its work
    directories and a half image."""
    found = b.leftovers()
    found += [f"work dir {p}" for p in b.paths.tmp_dir.glob(f"image-build-{image}*")]
    found += [f"image dir {p}" for p in b.paths.images_dir.glob(f"{image}-*")]
    return found


def test_the_image_has_the_package_script_and_files_and_outlives_its_base(built: Built) -> None:
    b = built.b
    assert "setup: installing the marker" in built.build_err  # script output streamed
    img = b.json("image", "show", built.dev)
    assert img["managed"] and img["kernel"] == "debian-6.1" and img["info"]["agent"]
    rows = Path(img["rootfs"]).with_name("packages.manifest").read_text().splitlines()
    assert any(r.startswith("ripgrep\t") for r in rows)

    # The provenance: the base and every step, in order, with what went in.
    rec = img["info"]["build"]
    assert rec["base"] == built.base and rec["base_source"] == "recipe:debian-bookworm"
    assert [(s["kind"], s["sha256"]) for s in rec["steps"]] == [
        ("file", sha256_tree(built.conf)),
        ("file", sha256_file(built.setup)),
        ("packages", packages_digest(["ripgrep"])),
        ("script", sha256_file(built.setup)),
    ]
    shown = b.run("image", "show", built.dev).stdout
    assert f"base       {built.base}" in shown and "3. packages ripgrep" in shown

    # It owns its files: the base goes, and the image still boots.
    b.run("image", "rm", built.base)
    res = b.run("vm", "run", "--name", "d1", built.dev, "--", "rg", "--version", timeout=900)
    assert any(line.startswith("ripgrep ") for line in res.stdout.splitlines()), res.stdout
    try:

        def sh(cmd: str) -> str:
            return b.run("vm", "exec", "d1", "--", "sh", "-c", cmd).stdout

        assert sh("cat /etc/built-marker").startswith("ripgrep ")
        assert sh("cat /opt/conf/sub/app.toml") == "answer = 42\n"
        assert sh("cat /usr/local/share/setup.sh") == SETUP
        assert sh("stat -c '%U %a' /usr/local/share/setup.sh") == "root 644\n"
        assert sh("cat /root/.devrc") == "dotfile\n"  # the work-seed is the built /root
        # The guest's apt sources are the host's mirror, as in the golden image.
        sources = sh("cat /etc/apt/sources.list")
        assert sources.startswith("deb http") and " bookworm main" in sources
        assert sh("ls /var/lib/apt/lists | grep -c _Packages || true") == "0\n"  # cleaned
        assert sh("ls /tmp/banger-build 2>&1 || true").endswith("No such file or directory\n")
    finally:
        b.run("vm", "delete", "--force", "d1", check=False)
    assert _leftovers(b, built.dev) == []


def test_ctrl_c_mid_script_cancels_the_build_and_leaves_nothing(
    built: Built, tmp_path: Path
) -> None:
    b = built.b
    slow = tmp_path / "slow.sh"
    slow.write_text("#!/bin/sh\necho READY-TO-CANCEL\nsleep 600\n")
    name = f"{built.dev}-cancelled"
    p = subprocess.Popen(
        b.argv("image", "build", "--from", built.dev, "--name", name, "--script", str(slow)),
        env=b.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A background job's SIGINT may be ignored, and Python then never raises
        # KeyboardInterrupt: give the CLI the Ctrl-C a terminal user has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    seen = []
    try:
        assert p.stderr is not None
        for line in p.stderr:
            seen.append(line)
            if "READY-TO-CANCEL" in line:
                break
        assert any("READY-TO-CANCEL" in s for s in seen), "".join(seen)
        # Mid-provision: the build VM runs, but it is not the user's to see.
        assert b.qemu_pids() and b.json("vm", "list") == []
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, "".join(seen) + err
    assert "cancelled; nothing was kept" in err
    assert name not in [i["name"] for i in b.json("image", "list")]
    assert not (b.paths.images_dir / name).exists()
    assert _leftovers(b, name) == []
    assert json.loads(b.run("vm", "list", "--json").stdout) == []
