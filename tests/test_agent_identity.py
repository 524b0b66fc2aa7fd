"""The pieces of the agent's `/identity` that replaced `ip`, `mount` and
`banger-resolv` with syscalls, run on the host: the network through rtnetlink in a
throwaway namespace (checked with iproute2), /etc/fstab read into mount(2)
arguments, resolv.conf, and when sshd needs no reload for a new host key."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from banger.agent import guest
from tests import netns

AGENT = Path(guest.__file__)


def _configure_in(ns: str, dev: str, mac: str, ip: str, prefix: int, gw: str) -> None:
    code = (
        f"import importlib.util as u; s = u.spec_from_file_location('g', {str(AGENT)!r}); "
        "g = u.module_from_spec(s); s.loader.exec_module(g); "
        f"g.configure_net({dev!r}, {mac!r}, {ip!r}, {prefix}, {gw!r})"
    )
    netns.exec_in(ns, sys.executable, "-c", code)


@netns.skip_unless_netns()
def test_configure_net_does_what_the_ip_batch_did() -> None:
    with netns.namespace() as ns:
        netns.ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
        # A fork's guest still has its source's address (and a secondary one).
        netns.ip(ns, "addr", "add", "172.30.0.9/24", "dev", "eth0")
        netns.ip(ns, "addr", "add", "172.30.0.10/24", "dev", "eth0")
        _configure_in(ns, "eth0", "02:aa:bb:cc:dd:ee", "172.30.0.7", 24, "172.30.0.1")
        link = json.loads(netns.ip(ns, "-j", "link", "show", "eth0").out)[0]
        assert link["address"] == "02:aa:bb:cc:dd:ee"
        assert "UP" in link["flags"]
        addrs = json.loads(netns.ip(ns, "-j", "-4", "addr", "show", "eth0").out)[0]["addr_info"]
        assert [(a["local"], a["prefixlen"]) for a in addrs] == [("172.30.0.7", 24)]
        routes = json.loads(netns.ip(ns, "-j", "-4", "route", "show", "default").out)
        assert [(r["gateway"], r["dev"], "onlink" in r["flags"]) for r in routes] == [
            ("172.30.0.1", "eth0", True)
        ]
        # Again (a second fork of the same guest): replaced, not added beside.
        _configure_in(ns, "eth0", "02:aa:bb:cc:dd:ef", "172.30.0.8", 24, "172.30.0.254")
        addrs = json.loads(netns.ip(ns, "-j", "-4", "addr", "show", "eth0").out)[0]["addr_info"]
        assert [a["local"] for a in addrs] == ["172.30.0.8"]
        routes = json.loads(netns.ip(ns, "-j", "-4", "route", "show", "default").out)
        assert [r["gateway"] for r in routes] == ["172.30.0.254"]


@netns.skip_unless_netns()
def test_configure_net_names_what_the_kernel_refused() -> None:
    with netns.namespace() as ns:
        netns.ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
        with pytest.raises(Exception, match=r"address 01:00:00:00:00:01 up: Cannot assign"):
            _configure_in(ns, "eth0", "01:00:00:00:00:01", "172.30.0.7", 24, "172.30.0.1")


def test_fstab_mount_arguments(tmp_path: Path) -> None:
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# comment /root\n"
        "/dev/vda  /      ext4  rw,relatime,errors=remount-ro  0 0\n"
        "/dev/vdb  /root  ext4  rw,relatime,nofail,x-systemd.device-timeout=90s,noatime 0 0\n"
        "UUID=abc  /srv   ext4  defaults 0 0\n"
        "/dev/vdc  /home  ext4  user,noexec 0 0\n"
    )
    relatime, noatime, noexec = 1 << 21, 1024, 8
    assert guest.fstab_mount("/", str(fstab)) == ("/dev/vda", "ext4", relatime, "errors=remount-ro")
    assert guest.fstab_mount("/root", str(fstab)) == ("/dev/vdb", "ext4", relatime | noatime, "")
    assert guest.fstab_mount("/srv", str(fstab)) is None  # mount(8) resolves UUID=
    assert guest.fstab_mount("/home", str(fstab)) is None  # a user option
    assert guest.fstab_mount("/nowhere", str(fstab)) is None
    assert noexec == guest._MOUNT_FLAGS["noexec"]


def test_background_steps_hand_back_errors_and_overruns(tmp_path: Path) -> None:
    """What `/identity` starts on a thread (the /root mount, the host key's fsync):
    the waiter re-raises the step's error; a mount that overruns is an error, a slow
    fsync is left to finish on its own."""
    key = tmp_path / "key"
    key.write_text("k")
    guest._fsync_later(str(key))()  # the file and its directory synced: no error
    with pytest.raises(FileNotFoundError):
        guest._fsync_later(str(tmp_path / "gone"))()
    release = threading.Event()
    try:
        stuck = guest._in_background("mount /root", release.wait, must_finish=True, within=0.01)
        with pytest.raises(RuntimeError, match=r"mount /root did not finish within 0.01 s"):
            stuck()
        slow = guest._in_background("fsync k", release.wait, must_finish=False, within=0.01)
        assert slow() is None
    finally:
        release.set()


def test_write_resolv_matches_banger_resolv(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/resolv.conf").symlink_to("/run/somewhere")  # replaced, not followed
    guest.write_resolv(["172.30.0.1"], "vm", root=str(tmp_path))
    lines = (tmp_path / "etc/resolv.conf").read_text().splitlines()
    assert [x for x in lines if not x.startswith("#")] == ["nameserver 172.30.0.1", "search vm"]
    assert not (tmp_path / "etc/resolv.conf").is_symlink()


def test_sshd_reload_needed_only_from_openssh_9_8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    pidfile = tmp_path / "sshd.pid"
    pidfile.write_text("42\n")
    monkeypatch.setattr(guest, "SSHD_PID", str(pidfile))
    old, new = tmp_path / "sshd-9.2", tmp_path / "sshd-9.8"
    old.write_bytes(b"\x7fELF...OpenSSH_9.2p1...")
    new.write_bytes(b"\x7fELF.../usr/lib/openssh/sshd-session...")
    (proc / "42/cmdline").write_bytes(b"sshd: /usr/sbin/sshd -D [listener]\0")
    assert guest._sshd_rereads_keys(str(old), str(proc))
    assert not guest._sshd_rereads_keys(str(new), str(proc))
    (proc / "42/cmdline").write_bytes(b"/usr/sbin/sshd\0-D\0-r\0")  # no re-exec
    assert not guest._sshd_rereads_keys(str(old), str(proc))
    assert not guest._sshd_rereads_keys(str(tmp_path / "missing"), str(proc))
