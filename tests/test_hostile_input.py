"""Hostile input through the real daemon and the real CLI: strict request bodies,
names matched in full, host bounds with their numbers, filesystem errors as 4xx
with a hint, private files, and a CLI that reports config errors at once."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from banger.paths import Paths
from banger.system import run
from tests.conftest import RunningDaemon, cli

ABSENT = 'default_image = "no-such-image"\ndefault_kernel = "no-such-kernel"\n'


@pytest.fixture
def http(daemon: RunningDaemon) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=str(daemon.paths.socket))
    return httpx.Client(transport=transport, base_url="http://bangerd", timeout=20)


def error_of(resp: httpx.Response, status: int | tuple[int, ...]) -> dict[str, Any]:
    allowed = status if isinstance(status, tuple) else (status,)
    assert resp.status_code in allowed, resp.text
    err: dict[str, Any] = resp.json()["error"]
    assert err["message"] and err["hint"], err
    return err


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"vcpus": "2"}, "vcpus"),
        ({"vcpus": True}, "vcpus"),
        ({"vcpus": 2.0}, "vcpus"),
        ({"nat": "true"}, "nat"),
        ({"name": "a", "colour": "red"}, "unknown request field `colour`"),
        ({"name": "t24\n"}, "not a valid VM name"),
        ({"name": ""}, "not a valid VM name"),
        ({"name": "UPPER"}, "not a valid VM name"),
        ({"vcpus": 999}, "--vcpus 999 is out of range"),
        ({"memory": "64M"}, "image debian-bookworm needs at least 256 MiB"),
        ({"memory": "64M", "image": "no-such-image"}, "at least 128 MiB"),  # every VM's
        ({"memory": "2G\n"}, "is not a size"),
    ],
)
def test_create_refuses_loose_or_bad_fields(
    http: httpx.Client, body: dict[str, Any], needle: str
) -> None:
    err = error_of(http.post("/v1/vms", json=body), (400, 422))
    assert needle in err["message"]
    assert http.get("/v1/vms").json() == []


def test_host_bounds_name_the_numbers(http: httpx.Client) -> None:
    err = error_of(http.post("/v1/vms", json={"memory": "10000G"}), 422)
    assert re.search(r"more than this host's [\d.]+G of RAM", err["message"]), err
    assert re.search(r"at most \d+G", err["hint"])
    err = error_of(http.post("/v1/vms", json={"disk_size": "100T"}), 422)
    assert re.search(
        r"--disk-size 100T \+ --work-size \S+ is more than the \S+ free on /", err["message"]
    ), err
    err = error_of(http.post("/v1/vms", json={"vcpus": 33}), 422)
    assert "use 1 to 32" in err["hint"]


@pytest.mark.parametrize("since", ["abc", "-5", "1.5", "", "99999999999999999999"])
def test_event_stream_refuses_a_bad_since(http: httpx.Client, since: str) -> None:
    op = http.post("/v1/debug/ticker", params={"ticks": 1, "interval": 0}).json()
    err = error_of(http.get(f"/v1/operations/{op['id']}/events", params={"since": since}), 400)
    assert "since" in err["message"]


def test_flags_must_be_booleans(http: httpx.Client) -> None:
    err = error_of(http.delete("/v1/vms/x", params={"force": "maybe"}), 400)
    assert "force=maybe" in err["message"] and "force=true" in err["hint"]


def test_register_maps_filesystem_errors_to_4xx(http: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    ext2 = tmp_path / "old.ext2"
    run(["mke2fs", "-q", "-F", "-t", "ext2", str(ext2), "8M"])
    cases = {
        str(tmp_path / "a"): "Symlink loop",
        str(tmp_path / "x\0y"): "NUL byte",
        str(tmp_path / ("n" * 300)): "too long",
        str(ext2): "is ext2, not ext4",
        str(tmp_path): "not a regular file",
    }
    for path, needle in cases.items():
        err = error_of(http.post("/v1/images", json={"name": "img", "rootfs": path}), (400, 422))
        assert needle in err["message"], (path, err)
    err = error_of(http.post("/v1/images", json={"name": "t24\n", "rootfs": str(ext2)}), 422)
    assert "not valid" in err["message"]
    assert http.get("/v1/images").json() == []


def test_cli_refuses_empty_name_and_huge_sizes_before_any_boot(banger_home: Paths) -> None:
    banger_home.config_dir.mkdir(parents=True)
    banger_home.config_file.write_text(ABSENT)
    try:
        res = cli("vm", "create", "--name", "")
        assert res.returncode == 2, res.stderr
        assert "'' is not a valid VM name" in res.stderr and "hint:" in res.stderr
        res = cli("vm", "create", "--memory", "10000G")
        assert res.returncode == 2 and "of RAM" in res.stderr, res.stderr
        res = cli("vm", "create", "--disk-size", "100T")
        assert res.returncode == 2 and "free on" in res.stderr, res.stderr
        assert "Errno" not in res.stderr
        res = cli("vm", "create", "--memory", "lots")
        assert res.returncode == 2 and "`lots` is not a size" in res.stderr
        # `vm run --rm -- CMD`: CMD is the command, not the image.
        res = cli("vm", "run", "--rm", "--", "uname", "-a")
        assert res.returncode != 0
        assert "image `no-such-image` does not exist" in res.stderr, res.stderr
        assert "uname" not in res.stderr
    finally:
        cli("daemon", "stop")


def test_errors_print_brackets_as_written(banger_home: Paths) -> None:
    """Error text that looks like rich markup (`[/udp]`) is printed, not parsed: no
    traceback, the hint reads as in `--help`."""
    banger_home.config_dir.mkdir(parents=True)
    banger_home.config_file.write_text(ABSENT)
    try:
        res = cli("vm", "create", "--name", "p", "-p", "8080")
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr, res.stderr
        assert "--publish '8080' is not a port mapping" in res.stderr
        assert "use [ADDR:]HOST_PORT:GUEST_PORT[/udp], e.g. 8080:80" in res.stderr, res.stderr
    finally:
        cli("daemon", "stop")


def test_names_with_url_characters_reach_the_daemon_as_typed(banger_home: Paths) -> None:
    """A name with a space, `?`, `%` or a non-ASCII letter is a name the daemon does not
    know, not a malformed request or another name."""
    banger_home.config_dir.mkdir(parents=True)
    banger_home.config_file.write_text(ABSENT)
    try:
        for name in ("a b", "a?b", "a%20b", "a#b", "Ü"):
            res = cli("vm", "show", name)
            assert res.returncode == 1, res.stderr
            assert f"no VM named `{name}`" in res.stderr, res.stderr
        res = cli("image", "pull", "bad ref!!")
        assert res.returncode in (1, 2), res.stderr
        assert "malformed HTTP" not in res.stderr and "bad ref!!" in res.stderr, res.stderr
    finally:
        cli("daemon", "stop")


def test_cp_names_a_missing_source_as_typed_without_a_daemon(banger_home: Paths) -> None:
    res = cli("vm", "cp", "./no-such-file", "box:/root/")
    assert res.returncode == 2, res.stderr
    assert "./no-such-file does not exist" in res.stderr, res.stderr
    assert not banger_home.socket.exists()  # no daemon was started for it


def test_broken_config_is_reported_at_once(banger_home: Paths) -> None:
    banger_home.config_dir.mkdir(parents=True)
    banger_home.config_file.write_text("default_vcpus = 'many'\n")
    t0 = time.monotonic()
    res = cli("vm", "list")
    assert time.monotonic() - t0 < 10
    assert res.returncode == 2, res.stderr
    assert str(banger_home.config_file) in res.stderr and "default_vcpus" in res.stderr
    assert not banger_home.socket.exists()  # no daemon was started


def _loose(*roots: Path) -> list[str]:
    out = subprocess.run(
        ["find", *map(str, roots), "-perm", "/077"], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_daemon_makes_old_files_private_and_runs_from_root(
    banger_home: Paths, tmp_path: Path
) -> None:
    # What an earlier version left behind: 0755 directories, 0644 files.
    for d in (banger_home.state_dir / "vms" / "abc", banger_home.data_dir / "images"):
        d.mkdir(parents=True, mode=0o755)
        os.chmod(d, 0o755)
    for f in (banger_home.known_hosts, banger_home.state_dir / "vms" / "abc" / "console.log"):
        f.write_text("x")
        os.chmod(f, 0o644)
    os.chmod(banger_home.state_dir, 0o755)
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "banger.cli", "vm", "list", "--json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == []
        pid = int(banger_home.pid_file.read_text())
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        roots = (banger_home.state_dir, banger_home.data_dir, banger_home.config_dir)
        assert _loose(*roots) == []
        db = banger_home.database
        for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            if f.exists():
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    finally:
        cli("daemon", "stop")
