"""The daemon's start-up pass that makes banger's files private (`paths.tighten`):
it fixes loose modes, but never enters a mount (a build's /proc) or a work directory
another live process holds, and a file it cannot change does not stop the daemon."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from banger.artifacts.publish import work_dir
from banger.paths import Paths, ensure_dirs, home_paths, tighten

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts and chattr need root")


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = home_paths(tmp_path / "home")
    ensure_dirs(p)
    return p


def test_loose_modes_become_private(paths: Paths) -> None:
    loose = paths.data_dir / "images" / "x" / "image.json"
    loose.parent.mkdir(parents=True)
    loose.write_text("{}")
    os.chmod(loose, 0o644)
    os.chmod(loose.parent, 0o755)
    assert tighten(paths) >= 2
    assert (mode(loose), mode(loose.parent)) == (0o600, 0o700)


def test_a_work_dir_another_build_holds_is_left_alone(paths: Paths) -> None:
    left = paths.tmp_dir / "banger-img-dead"  # no one holds it: tightened
    left.mkdir(parents=True, mode=0o755)
    os.chmod(left, 0o755)
    with work_dir(paths.tmp_dir, "banger-img-") as held:
        inner = held / "rootfs" / "etc" / "passwd"
        inner.parent.mkdir(parents=True)
        inner.write_text("root:x:0:0::/root:/bin/sh\n")
        os.chmod(inner, 0o644)
        os.chmod(held, 0o755)
        tighten(paths)
        assert (mode(held), mode(inner)) == (0o755, 0o644)
    assert mode(left) == 0o700


SCRIPT = """
import json, os, subprocess, sys
from pathlib import Path
from banger.paths import home_paths, tighten
paths = home_paths(sys.argv[1])
proc = paths.tmp_dir / "banger-img-build" / "rootfs" / "proc"
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(proc)], check=True)
(proc / "cpuinfo").write_text("x")
os.chmod(proc / "cpuinfo", 0o644)
subprocess.run(["mount", "-o", "remount,ro", str(proc)], check=True)
changed = tighten(paths)
print(json.dumps({"changed": changed, "mode": os.stat(proc / "cpuinfo").st_mode & 0o777}))
"""


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare (util-linux)")
def test_a_read_only_mount_inside_a_build_is_not_entered(paths: Paths) -> None:
    proc = paths.tmp_dir / "banger-img-build" / "rootfs" / "proc"
    proc.mkdir(parents=True)
    sibling = proc.parent / "etc"
    sibling.mkdir(mode=0o755)
    os.chmod(sibling, 0o755)
    home = str(paths.config_dir.parent)
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", SCRIPT, home],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr  # no EROFS out of tighten
    result = json.loads(r.stdout)
    assert result["mode"] == 0o644  # the mount was not touched
    assert mode(sibling) == 0o700  # the rest of the build tree was


def test_a_file_that_cannot_change_is_logged_not_fatal(
    paths: Paths, caplog: pytest.LogCaptureFixture
) -> None:
    stuck = paths.state_dir / "stuck"
    stuck.write_text("x")
    os.chmod(stuck, 0o644)
    other = paths.state_dir / "other"
    other.write_text("y")
    os.chmod(other, 0o644)
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable flag")
    try:
        tighten(paths)
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    assert mode(stuck) == 0o644 and mode(other) == 0o600
    assert f"cannot make {stuck} private" in caplog.text
