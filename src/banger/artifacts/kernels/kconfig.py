"""Kernel configuration for `banger kernel build`: fragments, and the required options.

A build's config is `make tinyconfig`, then banger's fragment (`microvm.config`,
shipped as package data), then the user's `--config-fragment`, completed by `make
olddefconfig`. Kconfig may still turn an option off that a fragment asked for
(a dependency is missing) or a user fragment may switch one off on purpose, so
the final `.config` is checked against `REQUIRED` before anything is compiled.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from banger.errors import BangerError

FRAGMENT = "microvm.config"

# What a banger guest cannot boot or work without, built in (`=y`): booting without
# an initramfs on both engines, graceful stop, the agent's channel, and what systemd
# and Docker inside the guest need. The repository fragment sets each of them.
REQUIRED: tuple[tuple[str, str], ...] = (
    ("64BIT", "an x86-64 kernel"),
    ("PVH", "QEMU boots the ELF vmlinux through its PVH entry"),
    ("SERIAL_8250_CONSOLE", "the console on ttyS0 (boot log, readiness)"),
    ("VIRTIO_MMIO", "the device transport of QEMU microvm and Firecracker"),
    ("VIRTIO_MMIO_CMDLINE_DEVICES", "virtio-mmio devices named on the command line"),
    ("ACPI", "finding virtio-mmio devices and the power button through ACPI"),
    ("PCI", "ACPI loading its tables (the PCI_Config region handler)"),
    ("VIRTIO_BLK", "the root disk /dev/vda and the work disk"),
    ("EXT4_FS", "the ext4 root and work filesystems"),
    ("DEVTMPFS", "/dev without an initramfs"),
    ("DEVTMPFS_MOUNT", "/dev mounted before init runs"),
    ("VIRTIO_NET", "the VM's network interface"),
    ("VSOCKETS", "the guest agent's channel"),
    ("VIRTIO_VSOCKETS", "the guest agent's channel"),
    ("VIRTIO_CONSOLE", "the agent's virtio-serial channel where vsock is missing"),
    ("ACPI_BUTTON", "graceful `vm stop` on QEMU (ACPI power button)"),
    ("INPUT_EVDEV", "systemd-logind seeing the power button"),
    ("SERIO_I8042", "graceful `vm stop` on Firecracker (Ctrl-Alt-Del)"),
    ("KEYBOARD_ATKBD", "graceful `vm stop` on Firecracker (Ctrl-Alt-Del)"),
    ("UNIX", "systemd and sshd"),
    ("INET", "IPv4 networking"),
    ("UNIX98_PTYS", "terminals for ssh and exec"),
    ("FHANDLE", "systemd"),
    ("INOTIFY_USER", "systemd"),
    ("SIGNALFD", "systemd"),
    ("TIMERFD", "systemd"),
    ("EPOLL", "systemd"),
    ("TMPFS", "systemd (/run, /tmp)"),
    ("TMPFS_POSIX_ACL", "systemd-journald"),
    ("CGROUPS", "systemd and Docker (cgroup v2)"),
    ("MEMCG", "Docker memory limits"),
    ("CGROUP_PIDS", "Docker"),
    ("CGROUP_BPF", "Docker device rules on cgroup v2"),
    ("BPF_SYSCALL", "Docker device rules on cgroup v2"),
    ("CPUSETS", "Docker"),
    ("NAMESPACES", "Docker"),
    ("UTS_NS", "Docker"),
    ("IPC_NS", "Docker"),
    ("PID_NS", "Docker"),
    ("NET_NS", "Docker"),
    ("USER_NS", "rootless containers"),
    ("SECCOMP_FILTER", "systemd sandboxing and Docker"),
    ("OVERLAY_FS", "Docker's overlay2 storage"),
    ("VETH", "Docker's bridge network"),
    ("BRIDGE", "Docker's bridge network"),
    ("BRIDGE_NETFILTER", "Docker's bridge network"),
    ("NF_TABLES", "Docker's NAT rules (iptables-nft)"),
    ("NFT_COMPAT", "Docker's NAT rules (iptables-nft)"),
    ("NF_NAT", "Docker's NAT rules"),
    ("NETFILTER_XT_MATCH_ADDRTYPE", "Docker's NAT rules"),
    ("NETFILTER_XT_MATCH_CONNTRACK", "Docker's NAT rules"),
    ("NETFILTER_XT_TARGET_MASQUERADE", "Docker's NAT rules"),
    ("IP_NF_NAT", "Docker's NAT rules"),
    ("IP_NF_FILTER", "Docker's NAT rules"),
    ("POSIX_MQUEUE", "Docker"),
    ("KEYS", "Docker"),
)

_SET = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")


class KernelConfigError(BangerError):
    code = "kernel_config"
    http_status = 422


@dataclass(frozen=True)
class Fragment:
    """A config fragment and where it came from (for messages)."""

    origin: str
    text: str

    def values(self) -> dict[str, str]:
        return parse(self.text)


def parse(text: str) -> dict[str, str]:
    """`{option: value}` of a .config or fragment ("n" for `# CONFIG_X is not set`);
    a later line wins, as in Kconfig."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := _SET.match(line):
            out[m.group(1)] = m.group(2).strip().strip('"')
        elif m := _UNSET.match(line):
            out[m.group(1)] = "n"
    return out


def check_fragment(fragment: Fragment) -> None:
    """Refuse a fragment with lines Kconfig would ignore silently (a typo costs a
    whole build otherwise)."""
    for n, raw in enumerate(fragment.text.splitlines(), 1):
        line = raw.strip()
        if not line or _SET.match(line) or _UNSET.match(line):
            continue
        if line.startswith("#"):
            continue
        raise KernelConfigError(
            f"{fragment.origin}:{n}: {line!r} is not a config line",
            hint="write `CONFIG_NAME=value` or `# CONFIG_NAME is not set`, one per line",
        )


def repository_fragment() -> Fragment:
    text = resources.files("banger.artifacts.kernels").joinpath(FRAGMENT).read_text()
    return Fragment(f"banger's {FRAGMENT}", text)


def fragments_digest(fragments: list[Fragment]) -> str:
    """What decides the config besides the source: changes when any fragment does."""
    h = hashlib.sha256(b"base=tinyconfig\n")
    for f in fragments:
        h.update(hashlib.sha256(f.text.encode()).digest())
    return h.hexdigest()


def check_required(final: str, fragments: list[Fragment]) -> None:
    """Fail, naming the first required option that is not `=y` in the final config,
    and the fragment that turned it off (or that a dependency of it is off)."""
    values = parse(final)
    missing = [(opt, why) for opt, why in REQUIRED if values.get(opt, "n") != "y"]
    if not missing:
        return
    opt, why = missing[0]
    got = values.get(opt, "n")
    culprit = next(
        (f for f in reversed(fragments) if f.values().get(opt, "y") != "y"),
        None,
    )
    others = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    message = (
        f"CONFIG_{opt} is required by banger ({why}) but is '{got}' in the final config{others}"
    )
    if culprit is not None:
        raise KernelConfigError(
            f"{message}; remove it from {culprit.origin}",
            hint=f"delete the CONFIG_{opt} line from {culprit.origin}, or set CONFIG_{opt}=y",
        )
    raise KernelConfigError(
        f"{message}: an option it depends on is off",
        hint=f"see `make menuconfig` (search {opt}) for its dependencies and enable them "
        "in your --config-fragment",
    )
