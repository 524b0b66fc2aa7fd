"""The raw baseline of `make bench-create`: the artifacts a banger VM boots (kernel,
initrd, rootfs, work-seed), booted by plain QEMU with banger's own pieces and none of
its machinery: disks from the work-disk code (`WorkDiskCapability.build_disks`), the
argv of the QEMU engine (`QemuEngine.argv`), a TAP on a bridge of its own (`bgraw0`,
172.31.0.0/24, apart from the daemon's 172.30.0.0/24). Helpers compare that argv with
a banger VM's, so a difference in the device set is reported, not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchlib import Sample, log, wait_ssh

if TYPE_CHECKING:
    from banger.artifacts.diskpool import DiskSpec
    from banger.client import Client

RAW_BRIDGE, RAW_SUBNET = "bgraw0", "172.31.0.0/24"


# QEMU option values that legitimately differ between two VMs booting the same
# artifacts: names, per-VM file and socket paths, the TAP, MAC and vsock CID.
_PER_VM = [
    (re.compile(r"\b(file|path)=(?:[^,]|,,)*"), r"\1=<path>"),
    (re.compile(r"\bifname=[^,]*"), "ifname=<tap>"),
    (re.compile(r"\bmac=[^,]*"), "mac=<mac>"),
    (re.compile(r"\bguest-cid=\d+"), "guest-cid=<cid>"),
    (re.compile(r"^guest=(?:[^,]|,,)*"), "guest=<name>"),
]
_CMDLINE_PER_VM = ("ip=", "systemd.hostname=")


def argv_shape(argv: Sequence[str]) -> list[str]:
    """QEMU argv with per-VM values masked, so two VMs' device sets can be compared."""
    out: list[str] = []
    for arg in argv[1:]:  # argv[0], the binary, is compared separately
        if out and out[-1] == "-append":
            toks = arg.split()
            arg = " ".join(
                next((f"{p}<vm>" for p in _CMDLINE_PER_VM if t.startswith(p)), t) for t in toks
            )
        else:
            for rx, repl in _PER_VM:
                arg = rx.sub(repl, arg)
        out.append(arg)
    return out


def argv_differences(banger: Sequence[str], raw: Sequence[str]) -> list[str]:
    """Human-readable differences between two QEMU argvs beyond per-VM values."""
    diffs: list[str] = []
    if banger and raw and banger[0] != raw[0]:
        diffs.append(f"binary: banger {banger[0]} vs raw {raw[0]}")
    a, b = argv_shape(banger), argv_shape(raw)
    only_b, only_r = [x for x in a if x not in b], [x for x in b if x not in a]
    diffs += [f"banger only: {x}" for x in only_b] + [f"raw only: {x}" for x in only_r]
    if a != b and not only_b and not only_r:
        diffs.append("same options in a different order")
    return diffs


def cmdline_extras(cmdline: str, base: str, vm_ip: str | None, raw_ip: str) -> list[str]:
    """Kernel command-line fragments banger added beyond the base, `ip=` and the
    hostname (which the guest config builder makes itself), with banger's address
    rewritten to the raw guest's, so the raw guest boots the same way."""
    skip = (*_CMDLINE_PER_VM, "tsc_early_khz=")
    toks = [t for t in cmdline.split() if t not in base.split() and not t.startswith(skip)]
    return [t.replace(vm_ip, raw_ip) if vm_ip else t for t in toks]


def accel_of(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "-accel" and i + 1 < len(argv):
            return argv[i + 1].split(",")[0]
        if arg == "-enable-kvm":
            return "kvm"
    return None


def raw_address(index: int) -> str:
    """Guest address of the index-th raw VM (.1 is the bridge)."""
    if not 0 <= index < 250:
        raise ValueError(f"raw VM index {index} out of range")
    return f"172.31.0.{index + 2}"


@dataclass
class Spec:
    """What both sides boot, resolved through the daemon."""

    image: str
    kernel: str  # what boots, for the report
    vmlinux: Path
    initrd: Path | None
    disks: DiskSpec  # the image's rootfs and work-seed, sizes and the SSH key
    key: Path
    vcpus: int
    memory_mib: int
    args: argparse.Namespace  # --kernel and --engine go to banger as given


def resolve_spec(client: Client, args: argparse.Namespace) -> Spec:
    """The artifacts banger will boot, chosen the way the daemon chooses them (what
    is missing is pulled, untimed). An image's own vmlinux boots unless --kernel."""
    from banger.artifacts.diskpool import DiskSpec
    from banger.config import load_config
    from banger.errors import NotFound
    from banger.services.ssh import ensure_key, public_key
    from banger.units import parse_size

    def fetch(kind: str, name: str) -> Any:
        try:
            return getattr(client, kind)(name)
        except NotFound:
            log(f"pulling {kind} {name} (not timed)")
            client.wait(getattr(client, f"pull_{kind}")(name))
            return getattr(client, kind)(name)

    cfg = load_config(client.paths).config
    image = fetch("image", args.image or cfg.default_image)
    vmlinux, initrd, kernel_name = image.vmlinux, image.initrd, f"{image.name}:vmlinux"
    if args.kernel or vmlinux is None:
        kernel_name = args.kernel or image.kernel or cfg.default_kernel
        kernel = fetch("kernel", kernel_name)
        vmlinux, initrd = kernel.vmlinux, kernel.initrd
    key = ensure_key(client.paths, cfg.ssh_key_path)  # the daemon made it; this finds it
    seed = Path(image.work_seed) if image.work_seed else None
    sizes = parse_size(cfg.default_disk_size), parse_size(cfg.default_work_size)
    disks = DiskSpec(Path(image.rootfs), seed, *sizes, public_key(key))
    memory_mib = parse_size(args.memory or cfg.default_memory) // 1024**2
    initrd = Path(initrd) if initrd else None
    vcpus = args.vcpus or cfg.default_vcpus
    return Spec(image.name, kernel_name, Path(vmlinux), initrd, disks, key, vcpus, memory_mib, args)


@dataclass
class RawVM:
    dir: Path
    tap: str
    ip: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready: float = 0.0
    banger_ready: float | None = None


class RawBoot:
    """The spec's artifacts booted by plain QEMU: banger's argv and disk builder, none
    of its machinery. Bridge, TAPs, QEMU and the SSH poll live in namespace `ns`."""

    key = "raw"
    keys: tuple[str, ...] = ("wall", "accel", "banger_poll")
    labels = ("raw boot -> SSH", "raw round (all K)")

    def __init__(self, spec: Spec, root: Path, ns: str | None) -> None:
        self.spec, self.root, self.ns = spec, root, ns
        self.template: list[str] = []  # banger's argv, once a banger VM was seen
        self.last_argv: list[str] = []
        self._engine: Any = None
        self._bridge = False

    def describe(self, s: Sample) -> str:
        extra = f", banger's poller {s.banger_poll:.3f}s" if s.banger_poll is not None else ""
        return f"raw: boot->SSH {s.wall:.3f}s (accel {s.accel}{extra})"

    def close(self) -> None:
        from banger.net.bridge import delete_bridge

        try:
            if self._bridge:
                delete_bridge(RAW_BRIDGE, netns=self.ns)
        except Exception as e:
            log(f"warning: could not delete bridge {RAW_BRIDGE}: {e}")

    def prepare(self, index: int, tag: str) -> RawVM:
        """Disks, TAP and argv for one raw VM; none of this is on the clock."""
        from banger.capabilities.workdisk import WorkDiskCapability
        from banger.engines.guest_config import BASE_CMDLINE, build_guest_config
        from banger.engines.qemu import QemuEngine
        from banger.net import addresses
        from banger.net.bridge import ensure_bridge
        from banger.net.tap import create_tap, delete_tap

        spec, ns, d = self.spec, self.ns, self.root / f"{tag}-{index}"
        if not self._bridge:
            self._bridge = True  # first: a half-made bridge is deleted too
            ensure_bridge(RAW_BRIDGE, RAW_SUBNET, netns=ns)
        if self._engine is None:  # the binary and accelerator banger's VM got, if seen
            qemu_bin = self.template[0] if self.template else None
            accel: Any = accel_of(self.template) or "auto"
            self._engine = QemuEngine(qemu_bin, accel=accel)
        (d / "run").mkdir(parents=True)
        WorkDiskCapability.build_disks(spec.disks, d / "rootfs.ext4", d / "work.ext4")
        tap, ip = f"bgrawt{index}", raw_address(index)
        delete_tap(tap, netns=ns)  # a leftover of an interrupted run would fail create_tap
        create_tap(tap, RAW_BRIDGE, netns=ns)
        extras: list[str] = []
        if self.template:
            cmd = self.template[self.template.index("-append") + 1]
            m = re.search(r"\bip=([0-9.]+)", cmd)
            extras = cmdline_extras(cmd, BASE_CMDLINE, m.group(1) if m else None, ip)
        cfg = build_guest_config(
            vm_id=f"bgraw{index}",
            name=f"raw-{index}",
            kernel=spec.vmlinux,
            initrd=spec.initrd,
            rootfs=d / "rootfs.ext4",
            work_disk=d / "work.ext4",
            vcpus=spec.vcpus,
            memory_mib=spec.memory_mib,
            run_dir=d / "run",
            ip=ip,
            prefix=int(RAW_SUBNET.split("/")[1]),
            gateway=addresses.gateway(RAW_SUBNET),
            tap=tap,
            # A stable MAC per address: a new MAC on a reused address would leave the
            # host's neighbour entry pointing at the previous guest for up to ~30 s.
            mac=addresses.mac_for(f"bgraw-{index}"),
            extra_cmdline=extras,
            vsock_cid=0x10000 + index if self._engine.uses_vhost_vsock() else None,
            console_log=d / "console.log",
        )
        return RawVM(d, tap, ip, self._engine.argv(cfg))

    def round(self, k: int, tag: str) -> tuple[list[Sample], float]:
        from banger.net._ns import call_in_netns

        vms: list[RawVM] = []
        try:
            for j in range(k):
                vms.append(self.prepare(j, tag))
            call_in_netns(self.ns, lambda: asyncio.run(self._boot_all(vms)))
        finally:
            self._cleanup(vms)
        self.last_argv, accel = vms[0].argv, accel_of(vms[0].argv) or "?"
        polls = [None if v.banger_ready is None else v.banger_ready - v.started for v in vms]
        samples = [
            Sample(v.ready - v.started, accel, banger_poll=p)
            for v, p in zip(vms, polls, strict=True)
        ]
        return samples, max(v.ready for v in vms) - min(v.started for v in vms)

    async def _boot_all(self, vms: Sequence[RawVM]) -> None:
        for v in vms:
            with open(v.dir / "qemu.log", "ab") as logf:
                v.started = time.perf_counter()
                # Own session like banger's engine: a terminal's Ctrl-C reaches us, not it.
                v.proc = subprocess.Popen(
                    v.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    start_new_session=True,
                )
        polls = [
            asyncio.ensure_future(self._banger_poll(v))
            for v in vms
            if self.spec.args.compare_poller
        ]
        try:
            await asyncio.gather(*(self._wait_ssh(v) for v in vms))
            if polls:
                await asyncio.wait(polls, timeout=30)
        finally:
            for t in polls:
                t.cancel()

    async def _banger_poll(self, v: RawVM) -> None:
        """banger's own SSH readiness poll on the raw guest, next to the tight one:
        the gap between the two is the polling slack inside banger's `ssh` stage."""
        from banger.services.ssh import wait_for_ssh

        def running() -> bool:
            return v.proc is not None and v.proc.poll() is None

        try:
            known_hosts, timeout = v.dir / "known_hosts", self.spec.args.ssh_timeout
            await wait_for_ssh(v.ip, self.spec.key, known_hosts, [], timeout, is_alive=running)
            v.banger_ready = time.perf_counter()
        except Exception as exc:
            log(f"warning: banger's SSH poller failed on the raw guest: {exc}")

    async def _wait_ssh(self, v: RawVM) -> None:
        assert v.proc is not None
        logs = (v.dir / "qemu.log", v.dir / "console.log")
        v.ready = await wait_ssh(v.ip, self.spec.key, v.proc, self.spec.args.ssh_timeout, logs)

    def _cleanup(self, vms: Sequence[RawVM]) -> None:
        from banger.net.tap import delete_tap

        for v in vms:
            if v.proc is not None:
                v.proc.kill()
                v.proc.wait(timeout=10)
            try:
                delete_tap(v.tap, netns=self.ns)
            except Exception as exc:
                log(f"warning: could not delete TAP {v.tap}: {exc}")
            shutil.rmtree(v.dir, ignore_errors=True)
