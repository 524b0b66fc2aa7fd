"""The one place that turns plain VM facts into what an engine boots.

Both engines consume the same `GuestConfig`, so the kernel command line, the drive
order (rootfs is vda, the work disk vdb) and the NIC are decided here once. The
guest configures its network from the kernel `ip=` parameter (no DHCP on the
bridge), so the builder needs the address, prefix and gateway; capabilities add
their own command-line fragments without knowing about each other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from banger.engines.base import Drive, GuestConfig, NetIface
from banger.errors import InvalidInput
from banger.net.addresses import kernel_ip_param, mac_for
from banger.sizing import check_memory, check_vcpus

# Linux x86 COMMAND_LINE_SIZE is 2048 including the NUL; Firecracker enforces it too.
MAX_CMDLINE = 2047
BASE_CMDLINE = "console=ttyS0 reboot=k panic=1 root=/dev/vda rw rootfstype=ext4"

# sun_path holds 107 bytes plus NUL; the longest socket an engine puts in the run
# dir is "firecracker.sock" (16), so the run dir itself may use at most 90.
MAX_RUN_DIR = 107 - len("/firecracker.sock")

_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_TAP = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # IFNAMSIZ - 1


def _check_file(what: str, path: Path) -> Path:
    if not path.is_file():
        raise InvalidInput(f"{what} {path} does not exist or is not a file")
    return path


def _nic(tap: str, mac: str) -> NetIface:
    if not _TAP.fullmatch(tap):
        raise InvalidInput(f"TAP name {tap!r} is not a valid interface name")
    if not _MAC.fullmatch(mac) or int(mac[:2], 16) & 1:
        raise InvalidInput(f"MAC {mac!r} is not a unicast MAC address")
    return NetIface("eth0", tap, mac)


def build_guest_config(
    *,
    vm_id: str,
    name: str,
    kernel: Path,
    initrd: Path | None,
    rootfs: Path,
    work_disk: Path | None,
    vcpus: int,
    memory_mib: int,
    run_dir: Path,
    ip: str | None = None,
    prefix: int = 24,
    gateway: str | None = None,
    dns: str | None = None,
    tap: str | None = None,
    mac: str | None = None,
    extra_cmdline: Sequence[str] = (),
    vsock_cid: int | None = None,
    console_log: Path | None = None,
    golden: bool = False,
    memory_file: Path | None = None,
) -> GuestConfig:
    """Validate the inputs and build the engine-neutral boot description.

    Networking is all-or-nothing: `ip`, `gateway` and `tap` together, or none of
    them (a guest with no NIC, e.g. an offline image build). `mac` defaults to
    `net.addresses.mac_for(vm_id)`. `console_log` defaults to `<run_dir>/console.log`.

    `golden`: the source boot of a golden snapshot (`banger.golden=1`): the same
    devices (a NIC on `tap`, both drives) but no `ip=`, so the guest stops before it
    takes an identity; a restored copy gets one from the agent's /identity request.
    `memory_file`: keep guest RAM in that file (`GuestConfig.memory_file`).
    """
    if not vm_id:
        raise InvalidInput("vm id must not be empty")
    if not _HOSTNAME.fullmatch(name):
        raise InvalidInput(
            f"VM name {name!r} is not a valid hostname",
            hint="use 1-63 letters, digits and inner hyphens",
        )
    check_vcpus(vcpus)
    check_memory(memory_mib * 1024**2)
    if len(str(run_dir).encode()) > MAX_RUN_DIR:
        raise InvalidInput(
            f"run dir {run_dir} is too long for UNIX socket paths (max {MAX_RUN_DIR} bytes)",
            hint="set XDG_RUNTIME_DIR (or BANGER_HOME) to a shorter path",
        )
    if vsock_cid is not None and not 3 <= vsock_cid < 0xFFFFFFFF:
        raise InvalidInput(f"vsock CID must be between 3 and 4294967294, got {vsock_cid}")

    drives = [Drive("rootfs", _check_file("root drive", rootfs), is_root=True)]
    if work_disk is not None:
        drives.append(Drive("work", _check_file("work drive", work_disk)))

    parts = [BASE_CMDLINE]
    nics: tuple[NetIface, ...] = ()
    if golden:
        if tap is None or ip is not None:
            raise InvalidInput("a golden boot has a NIC (tap) and no address")
        nics = (_nic(tap, (mac or mac_for(vm_id)).lower()),)
        parts.append("banger.golden=1")
    elif (ip, gateway, tap) != (None, None, None):
        if ip is None or gateway is None or tap is None:
            raise InvalidInput("guest networking needs ip, gateway and tap together")
        nics = (_nic(tap, (mac or mac_for(vm_id)).lower()),)
        parts.append(kernel_ip_param(ip, prefix, gateway, name, dns))
    parts.append(f"systemd.hostname={name}")
    for frag in extra_cmdline:
        if not frag.strip() or any(c in frag for c in "\n\r\0"):
            raise InvalidInput(f"invalid kernel command-line fragment {frag!r}")
        parts.append(frag.strip())
    cmdline = " ".join(parts)
    if len(cmdline) > MAX_CMDLINE:
        raise InvalidInput(f"kernel command line is {len(cmdline)} bytes, over {MAX_CMDLINE}")

    return GuestConfig(
        vm_id=vm_id,
        name=name,
        kernel=_check_file("kernel", kernel),
        initrd=_check_file("initrd", initrd) if initrd is not None else None,
        cmdline=cmdline,
        vcpus=vcpus,
        memory_mib=memory_mib,
        drives=tuple(drives),
        nics=nics,
        run_dir=run_dir,
        console_log=console_log or run_dir / "console.log",
        vsock_cid=vsock_cid,
        memory_file=memory_file,
    )
