"""`image build` without a guest: its inputs (file specs, package names, sizes), the
digests of its provenance, and the one-line errors the real CLI and daemon give
for bad input before anything is made. The build itself is in
tests/test_image_build_boot.py."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from banger.artifacts.images.built import snapshot_inputs
from banger.client import Client
from banger.errors import InvalidInput
from banger.imagespec import (
    FileSpec,
    build_digest,
    check_package,
    packages_digest,
    parse_file_spec,
    sha256_tree,
)
from tests.conftest import RunningDaemon, cli
from tests.test_artifact_cli import small_ext4


@pytest.mark.parametrize(
    ("spec", "src", "dest"),
    [
        ("motd:/etc/motd", "motd", "/etc/motd"),
        ("./a:b/c:/opt/x", "./a:b/c", "/opt/x"),  # split at the last ":/"
        ("/abs/dir:/srv/", "/abs/dir", "/srv/"),
    ],
)
def test_file_spec_splits_at_the_guest_path(spec: str, src: str, dest: str) -> None:
    assert parse_file_spec(spec) == FileSpec(src, dest)


@pytest.mark.parametrize("spec", ["motd", "motd:etc/motd", ":/etc/motd", "motd:/", "a:/x/../y"])
def test_bad_file_specs_say_what_is_wrong(spec: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_file_spec(spec)
    assert "--file" in exc.value.message and exc.value.hint


@pytest.mark.parametrize("name", ["ripgrep", "g++", "libc6:amd64", "curl=7.88.1-10", "fd/bookworm"])
def test_package_names_apt_knows_are_taken(name: str) -> None:
    assert check_package(name) == name


@pytest.mark.parametrize("name", ["", "-y", "Rip", "a", "x;rm -rf /", "--allow-unauthenticated"])
def test_other_package_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="not a Debian package name"):
        check_package(name)


def test_digests_follow_content_mode_and_order(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"data")
    assert sha256_tree(f) == hashlib.sha256(b"data").hexdigest()
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x").write_text("1")
    (d / "link").symlink_to("sub/x")
    first = sha256_tree(d)
    assert sha256_tree(d) == first  # stable
    os.chmod(d / "sub" / "x", 0o700)
    assert sha256_tree(d) != first  # modes count
    second = sha256_tree(d)
    (d / "sub" / "x").write_text("2")
    assert sha256_tree(d) != second  # content counts
    assert packages_digest(["a", "b"]) != packages_digest(["b", "a"])
    assert build_digest("base", "r", ["1", "2"]) != build_digest("base", "r", ["2", "1"])
    assert build_digest("base", "r", ["1"]) != build_digest("other", "r", ["1"])


def test_steps_run_files_then_packages_then_scripts(tmp_path: Path) -> None:
    (tmp_path / "conf").write_text("c\n")
    (tmp_path / "b.sh").write_text("#!/bin/sh\necho b\n")
    (tmp_path / "a.sh").write_text("echo a\n")
    work = tmp_path / "work"
    work.mkdir()
    snap = snapshot_inputs(
        work,
        [FileSpec(str(tmp_path / "conf"), "/etc/conf")],
        [str(tmp_path / "b.sh"), str(tmp_path / "a.sh")],
    )
    # The snapshot is what the guest gets: editing the original changes nothing.
    (tmp_path / "b.sh").write_text("changed\n")
    steps = snap.steps(["ripgrep", "jq"])
    assert [(s.kind, s.what) for s in steps] == [
        ("file", f"{tmp_path}/conf -> /etc/conf"),
        ("packages", "ripgrep jq"),
        ("script", f"{tmp_path}/b.sh"),
        ("script", f"{tmp_path}/a.sh"),
    ]
    assert steps[2].sha256 == hashlib.sha256(b"#!/bin/sh\necho b\n").hexdigest()
    assert steps[1].sha256 == packages_digest(["ripgrep", "jq"])
    assert [s.dest for s in snap.scripts] == [
        "/tmp/banger-build/00-b.sh",
        "/tmp/banger-build/01-a.sh",
    ]


def _fails(res: object, *needles: str) -> None:
    out = res.stderr  # type: ignore[attr-defined]
    assert res.returncode != 0, out  # type: ignore[attr-defined]
    assert "Traceback" not in out
    first = out.splitlines()[0]
    for n in needles:
        assert n in first, out
    assert "hint:" in out


def test_bad_input_is_refused_before_anything_is_made(
    daemon: RunningDaemon, tmp_path: Path
) -> None:
    rootfs = small_ext4(tmp_path, "root")
    assert cli("image", "register", "--name", "base", "--rootfs", str(rootfs)).returncode == 0
    script = tmp_path / "setup.sh"
    script.write_text("true\n")

    def build(*args: str) -> object:
        return cli("image", "build", "--from", "base", "--name", "dev", *args)

    _fails(cli("image", "build", "--from", "nosuch", "--name", "dev"), "nosuch", "does not exist")
    _fails(build("--script", str(tmp_path / "missing.sh")), "missing.sh", "does not exist")
    _fails(build("--script", str(tmp_path)), "is a directory")
    _fails(build("--file", "setup.sh"), "--file", "SRC:DST")
    _fails(build("--file", f"{tmp_path / 'nope'}:/etc/nope"), "nope", "does not exist")
    _fails(build("--package", "x;reboot"), "not a Debian package name")
    _fails(build("--size", "lots"), "not a size")
    _fails(build("--size", "1M"), "smaller than the base")
    _fails(cli("image", "build", "--from", "base", "--name", "base"), "`base` already exists")
    _fails(cli("image", "build", "--from", "base", "--name", "Bad Name"), "not valid")
    # Nothing was started: no operation, no VM, no image, no work directory.
    with Client.connect(daemon.paths, autostart=False) as c:
        assert [op.kind for op in c.operations()] == []
    assert json.loads(cli("vm", "list", "--json").stdout) == []
    assert [i["name"] for i in json.loads(cli("image", "list", "--json").stdout)] == ["base"]
    tmp_dir = daemon.paths.tmp_dir
    assert not tmp_dir.exists() or not [p for p in tmp_dir.iterdir() if "build" in p.name]
