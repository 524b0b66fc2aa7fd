"""The guest-config builder: command line, drive order, NIC, validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from banger.engines.base import Drive, NetIface
from banger.engines.guest_config import build_guest_config
from banger.errors import InvalidInput
from banger.net.addresses import mac_for


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("vmlinux", "initrd.img", "rootfs.ext4", "work.ext4"):
        (tmp_path / name).write_bytes(b"x")
        out[name] = tmp_path / name
    return out


def _build(files: dict[str, Path], tmp_path: Path, **kw: Any) -> Any:
    args: dict[str, Any] = dict(
        vm_id="vm-1",
        name="devbox",
        kernel=files["vmlinux"],
        initrd=files["initrd.img"],
        rootfs=files["rootfs.ext4"],
        work_disk=files["work.ext4"],
        vcpus=2,
        memory_mib=1024,
        run_dir=tmp_path / "run",
        ip="172.30.0.7",
        prefix=24,
        gateway="172.30.0.1",
        tap="tap-pool-3",
    )
    args.update(kw)
    return build_guest_config(**args)


def test_full_config(files: dict[str, Path], tmp_path: Path) -> None:
    cfg = _build(files, tmp_path, dns="172.30.0.1", extra_cmdline=["banger.agent=1"], vsock_cid=9)
    assert cfg.cmdline == (
        "console=ttyS0 reboot=k panic=1 root=/dev/vda rw rootfstype=ext4 "
        "ip=172.30.0.7::172.30.0.1:255.255.255.0:devbox:eth0:off:172.30.0.1 "
        "systemd.hostname=devbox banger.agent=1"
    )
    assert cfg.drives == (
        Drive("rootfs", files["rootfs.ext4"], read_only=False, is_root=True),
        Drive("work", files["work.ext4"]),
    )
    assert cfg.nics == (NetIface("eth0", "tap-pool-3", mac_for("vm-1")),)
    assert (cfg.vcpus, cfg.memory_mib, cfg.vsock_cid) == (2, 1024, 9)
    assert cfg.initrd == files["initrd.img"]
    assert cfg.console_log == tmp_path / "run" / "console.log"


def test_without_dns_prefix_16_and_explicit_mac(files: dict[str, Path], tmp_path: Path) -> None:
    cfg = _build(
        files, tmp_path, ip="10.9.3.4", prefix=16, gateway="10.9.0.1", mac="02:AA:bb:cc:dd:ee"
    )
    assert "ip=10.9.3.4::10.9.0.1:255.255.0.0:devbox:eth0:off systemd" in cfg.cmdline
    assert cfg.nics[0].mac == "02:aa:bb:cc:dd:ee"


def test_golden_boot_has_the_devices_but_no_address(files: dict[str, Path], tmp_path: Path) -> None:
    cfg = _build(files, tmp_path, ip=None, gateway=None, golden=True)
    assert "ip=" not in cfg.cmdline and "banger.golden=1" in cfg.cmdline.split()
    assert cfg.nics == (NetIface("eth0", "tap-pool-3", mac_for("vm-1")),)
    assert [d.drive_id for d in cfg.drives] == ["rootfs", "work"]
    with pytest.raises(InvalidInput, match="golden"):
        _build(files, tmp_path, golden=True)  # with an address


def test_no_network_no_work_disk_no_initrd(files: dict[str, Path], tmp_path: Path) -> None:
    cfg = _build(files, tmp_path, ip=None, gateway=None, tap=None, work_disk=None, initrd=None)
    assert "ip=" not in cfg.cmdline
    assert cfg.nics == ()
    assert [d.drive_id for d in cfg.drives] == ["rootfs"]
    assert cfg.initrd is None


def test_mac_is_stable_local_unicast_and_distinct() -> None:
    mac = mac_for("vm-1")
    assert mac == mac_for("vm-1") != mac_for("vm-2")
    first = int(mac.split(":")[0], 16)
    assert first & 0b10 and not first & 0b01  # locally administered, unicast
    assert len(mac.split(":")) == 6


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"vcpus": 0}, "--vcpus"),
        ({"vcpus": 33}, "--vcpus"),
        ({"memory_mib": 64}, "at least 128 MiB"),
        ({"name": "bad_name"}, "not a valid hostname"),
        ({"name": "-x"}, "not a valid hostname"),
        ({"name": "a" * 64}, "not a valid hostname"),
        ({"vm_id": ""}, "vm id"),
        ({"ip": "172.30.0.300"}, "invalid guest network"),
        ({"gateway": "10.0.0.1"}, "outside the guest network"),
        ({"ip": "172.30.0.1"}, "cannot be a guest address"),
        ({"ip": "172.30.0.255"}, "cannot be a guest address"),
        ({"prefix": 33}, "invalid guest network"),
        ({"dns": "dns.example"}, "invalid guest network"),
        ({"tap": None}, "ip, gateway and tap together"),
        ({"gateway": None}, "ip, gateway and tap together"),
        ({"tap": "this-name-is-way-too-long"}, "not a valid interface name"),
        ({"mac": "03:00:00:00:00:01"}, "not a unicast MAC"),
        ({"mac": "02:00:00:00:01"}, "not a unicast MAC"),
        ({"vsock_cid": 2}, "vsock CID"),
        ({"extra_cmdline": ["ok", "bad\nfrag"]}, "command-line fragment"),
        ({"extra_cmdline": ["  "]}, "command-line fragment"),
        ({"extra_cmdline": ["x" * 2100]}, "over 2047"),
    ],
)
def test_validation(
    files: dict[str, Path], tmp_path: Path, kw: dict[str, Any], needle: str
) -> None:
    with pytest.raises(InvalidInput, match=needle):
        _build(files, tmp_path, **kw)


@pytest.mark.parametrize("missing", ["vmlinux", "initrd.img", "rootfs.ext4", "work.ext4"])
def test_missing_files_are_named(files: dict[str, Path], tmp_path: Path, missing: str) -> None:
    files[missing].unlink()
    with pytest.raises(InvalidInput, match=f"{files[missing]} does not exist"):
        _build(files, tmp_path)


def test_run_dir_too_long_for_unix_sockets(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="UNIX socket"):
        _build(files, tmp_path, run_dir=Path("/" + "d" * 100))
