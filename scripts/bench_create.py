#!/usr/bin/env python3
"""Benchmark `vm create` -> SSH ready against a raw QEMU boot of the same artifacts.

Every round runs each variant the same way: K VMs at once (`--concurrent K`), each
timed from its start until SSH accepts the key; rounds alternate the variants' order
so what one leaves behind (disk writeback, teardown) slows all alike.

  banger  `vm create` through the client library, timed until the operation
          succeeds (the daemon reports success once SSH accepts the key); the VM's
          per-stage `timings` are kept, then it is deleted.
  raw     the same kernel, initrd, rootfs and work-seed booted by plain QEMU with
          banger's own pieces: disks from the work-disk code, the argv of the QEMU
          engine (compared with banger's VM, read from /proc), a TAP on a bridge of
          its own (`bgraw0`, 172.31.0.0/24). Disks and TAP are made before the clock
          starts: hiding them is banger's job, so they count as banger's overhead.

Guest boots vary a lot (under TCG easily 2x), so the report also gives banger's
host-side stages (measured directly) and paired per-round differences;
`--compare-poller` runs banger's SSH poller on the raw guests as well.

It runs in the boot tests' sandbox (tests/sandbox.py): a fresh namespace
(`bgbench-<hex>`), a private daemon and BANGER_HOME, the tests' artifact cache (or
`--data-dir`), all removed at the end, also on failure, Ctrl-C or SIGTERM.
`--no-netns` benchmarks your own daemon in the host namespace instead.
Targets (SPEC §7): one at a time <= 1.10x raw; K concurrent <= 1.3x K raw.

Usage: make bench-create ARGS="--runs 5 [--concurrent 4] [--json]"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import count, fmt_s, format_table, log, overhead, stop_signals_raise, summarize

if TYPE_CHECKING:
    from banger.capabilities.diskpool import DiskSpec
    from banger.client import Client

STAGES = ("image", "disks", "network", "boot", "ssh", "total")
TARGET_RATIO = 1.10  # SPEC §7: banger's overhead <= 10 % of the raw boot-to-SSH
TARGET_CONCURRENT_RATIO = 1.30  # SPEC §7: K concurrent creates vs K raw boots
RAW_BRIDGE, RAW_SUBNET = "bgraw0", "172.31.0.0/24"  # the daemon's is 172.30.0.0/24
NS_PREFIX = "bgbench-"
MAX_CONCURRENT = 32
T = TypeVar("T")


# -- pure helpers (unit-tested) ------------------------------------------------------


def stage_medians(timings: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-stage medians, the well-known stages first, in pipeline order; a stage
    missing from some runs is the median of those that have it."""
    keys = [k for k in STAGES if any(k in t for t in timings)]
    keys += sorted({k for t in timings for k in t} - set(STAGES))
    return {k: statistics.median([t[k] for t in timings if k in t]) for k in keys}


def host_side(timings: Mapping[str, float]) -> float:
    """Seconds banger spent before the guest could run: every stage but `ssh` (the
    guest's boot, as the SSH poll sees it) and `total`. Measured directly, it does not
    drown in guest-boot noise the way a difference of two boot times does."""
    return sum(v for k, v in timings.items() if k not in ("ssh", "total"))


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


# -- arguments -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_create.py",
        description="Benchmark `banger vm create` -> SSH ready against a raw QEMU boot of "
        "the same artifacts (SPEC §7: overhead <= 10 %%; K concurrent <= 1.3x).",
    )
    add = p.add_argument
    add("--runs", type=count(1), default=3, help="measured runs (default 3)")
    add("--warmup", type=count(0), default=0, help="unrecorded runs first (default 0)")
    add("--image", help="image (default: the daemon's default_image)")
    add("--kernel", help="kernel (default: the image's)")
    add("--engine", choices=("auto", "qemu", "firecracker"), help="hypervisor (default: config)")
    add("--vcpus", type=count(1), help="vCPUs for both sides")
    add("--memory", help="memory for both sides, e.g. 1G")
    k_help = f"K creates at once vs K raw boots at once (1..{MAX_CONCURRENT}, default 1)"
    add("--concurrent", type=count(1), default=1, metavar="K", help=k_help)
    only_help = "measure one side only (no ratio then)"
    add("--only", choices=("both", "banger", "raw"), default="both", help=only_help)
    netns_help = "run in a fresh network namespace with a private daemon (default); "
    netns_help += "--no-netns uses your own daemon in the host namespace"
    add("--netns", action=argparse.BooleanOptionalAction, default=True, help=netns_help)
    data_help = "banger data dir (holding images/ and kernels/) for the private daemon "
    add("--data-dir", type=Path, help=data_help + "(default: the tests' $BANGER_TEST_CACHE)")
    add("--config", type=Path, help="config.toml for the private daemon (default: built-in)")
    add("--ssh-timeout", type=float, default=180.0, help="seconds to wait for SSH (default 180)")
    poller_help = "also run banger's SSH poller on the raw guests, to tell polling slack in "
    poller_help += "the ssh stage from the rest (a second login may slow the raw guest)"
    add("--compare-poller", action="store_true", help=poller_help)
    add("--json", action="store_true", help="print machine-readable JSON on stdout")
    add("--check", action="store_true", help="exit 1 when the spec target is missed")
    args = p.parse_args(argv)
    if args.concurrent > MAX_CONCURRENT:
        p.error(f"--concurrent must be at most {MAX_CONCURRENT}, got {args.concurrent}")
    if args.ssh_timeout <= 0:
        p.error(f"--ssh-timeout must be positive, got {args.ssh_timeout}")
    if args.memory is not None:
        from banger.errors import BangerError
        from banger.units import parse_size

        try:
            parse_size(args.memory)
        except (BangerError, ValueError) as exc:
            p.error(f"--memory {args.memory!r} is not a size: {exc}")
    if not args.netns and (args.data_dir or args.config):
        p.error("--data-dir and --config configure the private daemon, which only --netns runs; "
                "drop --no-netns")  # fmt: skip
    if args.data_dir is not None and not args.data_dir.is_dir():
        p.error(f"--data-dir {args.data_dir} is not a directory")
    if args.config is not None and not args.config.is_file():
        p.error(f"--config {args.config} is not a file")
    if args.check and args.only != "both":
        p.error("--check compares both sides; it cannot be used with --only")
    return args


# -- what both sides boot, and what a round yields ---------------------------------------


@dataclass
class Spec:
    image: str
    kernel: str  # what boots, for the report
    vmlinux: Path
    initrd: Path | None
    disks: DiskSpec  # the image's rootfs and work-seed, sizes and the SSH key
    key: Path
    vcpus: int
    memory_mib: int
    args: argparse.Namespace  # --kernel and --engine go to banger as given


@dataclass
class Sample:
    wall: float  # start -> SSH ready, seconds
    accel: str | None
    name: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # banger's per-stage
    engine: str | None = None
    ip: str | None = None
    banger_poll: float | None = None  # raw + --compare-poller: banger's poller got in
    argv: list[str] = field(default_factory=list, repr=False)


@dataclass
class Round:
    samples: dict[str, list[Sample]] = field(default_factory=dict)  # by variant key
    walls: dict[str, float] = field(default_factory=dict)  # first start -> last ready


def resolve_spec(client: Client, args: argparse.Namespace) -> Spec:
    """The artifacts banger will boot, chosen the way the daemon chooses them (what
    is missing is pulled, untimed). An image's own vmlinux boots unless --kernel."""
    from banger.capabilities.diskpool import DiskSpec
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


# -- the variants: each runs K VMs at once and times each until SSH is ready -------------


class BangerCreate:
    """`vm create` through the client: K submitted together, each on its own thread."""

    key = "banger"
    keys = ("name", "wall", "timings", "engine", "accel", "ip")  # what the JSON shows

    def __init__(self, client: Client, spec: Spec) -> None:
        self.client, self.spec = client, spec

    def describe(self, s: Sample) -> str:
        stages = " ".join(f"{k}={v:.2f}" for k, v in s.timings.items())
        return f"banger {s.name}: wall {s.wall:.3f}s ({stages})"

    def round(self, k: int, tag: str) -> tuple[list[Sample], float]:
        from banger.api.models import CreateVM

        spec, names = self.spec, [f"bench-{tag}-{j}" for j in range(k)]
        barrier = threading.Barrier(k)
        starts: dict[str, float] = {}

        def one(name: str) -> Sample:
            try:  # the barrier starts all K at once; a failure releases the others
                c = type(self.client)(self.client.paths, timeout=spec.args.ssh_timeout + 60)
                memory, kernel, engine = f"{spec.memory_mib}M", spec.args.kernel, spec.args.engine
                req = CreateVM(
                    name=name,
                    image=spec.image,
                    kernel=kernel,
                    engine=engine,
                    vcpus=spec.vcpus,
                    memory=memory,
                )
                barrier.wait()
                starts[name] = t0 = time.perf_counter()
                c.wait(c.create_vm(req))
                wall = time.perf_counter() - t0
            except BaseException as exc:
                barrier.abort()
                raise RuntimeError(f"banger create of {name} failed: {exc}") from exc
            vm = c.vm(name)
            argv = _proc_argv(vm.pid)
            return Sample(
                wall, accel_of(argv), name, dict(vm.timings), vm.engine, vm.ip, None, argv
            )

        try:
            samples = _parallel(one, names)
            return samples, max(starts[s.name] + s.wall for s in samples) - min(starts.values())
        finally:
            self.delete(names)

    def delete(self, names: Sequence[str]) -> None:
        from banger.errors import BangerError, NotFound

        def one(name: str) -> None:
            try:
                c = type(self.client)(self.client.paths)
                c.wait(c.delete_vm(name, force=True))
            except NotFound:
                pass
            except BangerError as exc:
                log(f"warning: could not delete {name}: {exc}")

        _parallel(one, names, timeout=120)


def _parallel(
    fn: Callable[[str], T], names: Sequence[str], timeout: float | None = None
) -> list[T]:
    """fn on every name at once, on daemon threads (a Ctrl-C need not wait for them);
    the first failure is raised once all are done."""
    done: dict[str, Any] = {}

    def call(name: str) -> None:
        try:
            done[name] = fn(name)
        except BaseException as exc:
            done[name] = exc

    threads = [threading.Thread(target=call, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    for n in names:
        if isinstance(done.get(n), BaseException):
            raise done[n]
    return [done[n] for n in names if n in done]


def _proc_argv(pid: int | None) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes() if pid else b""
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


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
    keys = ("wall", "accel", "banger_poll")

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
        from banger.engines.guest_config import BASE_CMDLINE, build_guest_config, mac_for
        from banger.engines.qemu import QemuEngine
        from banger.net import addresses
        from banger.net.bridge import ensure_bridge
        from banger.net.tap import create_tap, delete_tap

        spec, ns, d = self.spec, self.ns, self.root / f"{tag}-{index}"
        if not self._bridge:
            self._bridge = True  # first: a half-made bridge is deleted too
            ensure_bridge(RAW_BRIDGE, RAW_SUBNET, netns=ns)
        if self._engine is None:  # the binary and accelerator banger's VM got, if seen
            qemu, accel = self.template[:1] or [None], accel_of(self.template) or "auto"
            self._engine = QemuEngine(qemu[0], accel=accel)  # type: ignore[arg-type]
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
            mac=mac_for(f"bgraw-{index}"),
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
            args = (v.ip, self.spec.key, v.dir / "known_hosts", [], self.spec.args.ssh_timeout)
            await wait_for_ssh(*args, is_alive=running)
            v.banger_ready = time.perf_counter()
        except Exception as exc:
            log(f"warning: banger's SSH poller failed on the raw guest: {exc}")

    async def _wait_ssh(self, v: RawVM) -> None:
        """TCP probe every 50 ms, then an SSH login running `true`. The short probe
        keeps the poll tight: an SSH connect to a guest not up yet can sit in SYN
        retransmission for a second or more, which would flatter banger."""
        import asyncssh

        key, timeout = asyncssh.read_private_key(self.spec.key), self.spec.args.ssh_timeout
        deadline, last = time.monotonic() + timeout, None
        assert v.proc is not None
        while time.monotonic() < deadline:
            if v.proc.poll() is not None:
                tail = _tail(v.dir / "qemu.log") or _tail(v.dir / "console.log")
                raise RuntimeError(f"raw qemu exited ({v.proc.returncode}) before SSH: {tail}")
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection(v.ip, 22), 0.5)
                w.close()
                opts: dict[str, Any] = dict(username="root", client_keys=[key], known_hosts=None)
                async with asyncssh.connect(
                    v.ip, connect_timeout=10, login_timeout=10, **opts
                ) as c:
                    await c.run("true", check=True, timeout=10)
                v.ready = time.perf_counter()
                return
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                last = exc
                await asyncio.sleep(0.05)
        console = _tail(v.dir / "console.log")
        raise TimeoutError(f"raw guest {v.ip} did not accept SSH within {timeout:.0f}s ({last}); "
                           f"console: {console}")  # fmt: skip

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


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


# -- the report ---------------------------------------------------------------------------

VARIANTS: dict[str, Any] = {"banger": BangerCreate, "raw": RawBoot}  # report order
# Row labels: one VM's wall, and a round of K.
LABELS = {
    "banger": ("banger create (client wall)", "banger round (all K)"),
    "raw": ("raw boot -> SSH", "raw round (all K)"),
}


def summarize_variant(key: str, rounds: Sequence[Round]) -> dict[str, Any] | None:
    samples, keys = [s for r in rounds for s in r.samples.get(key, [])], VARIANTS[key].keys
    if not samples:
        return None
    out: dict[str, Any] = {
        "samples": [{k: getattr(s, k) for k in keys} for s in samples],
        "wall": summarize([s.wall for s in samples]),
        "round_wall": summarize([r.walls[key] for r in rounds if r.walls.get(key)]),
    }
    if "timings" in keys:
        out["stage_p50"] = stage_medians([s.timings for s in samples])
        out["host_side"] = summarize([host_side(s.timings) for s in samples])
        out["client_extra"] = summarize(
            [s.wall - s.timings["total"] for s in samples if "total" in s.timings]
        )
    if "banger_poll" in keys:
        out["poller_slack"] = summarize(
            [s.banger_poll - s.wall for s in samples if s.banger_poll is not None]
        )
    return out


def build_report(
    args: argparse.Namespace, spec: Spec, rounds: Sequence[Round], parity: list[str] | None
) -> dict[str, Any]:
    k, every = args.concurrent, [s for r in rounds for ss in r.samples.values() for s in ss]
    engines = sorted({s.engine for s in every if s.engine}) or [args.engine or "qemu"]
    report: dict[str, Any] = {
        "image": spec.image,
        "kernel": spec.kernel,
        "engine": engines[0],
        "accel": "/".join(sorted({s.accel for s in every if s.accel})) or "unknown",
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "runs": len(rounds),
        "concurrent": k,
        **{key: summarize_variant(key, rounds) for key in VARIANTS},
        "overhead": None,
        "target": None,
        "argv_parity": parity,
    }
    b, r = report["banger"], report["raw"]
    if not (b and r):
        return report
    raw_p50, host_p50 = r["wall"]["p50"], b["host_side"]["p50"]
    ov: dict[str, Any] = {"wall": asdict(overhead(b["wall"]["p50"], raw_p50))}
    if "total" in b["stage_p50"]:
        ov["daemon_total"] = asdict(overhead(b["stage_p50"]["total"], raw_p50))
    if k > 1:
        ov["round_wall"] = asdict(overhead(b["round_wall"]["p50"], r["round_wall"]["p50"]))
    ov["host_side"] = {"seconds": host_p50, "percent": host_p50 / raw_p50 * 100}
    # Per-round differences pair each banger boot with the raw boot next to it,
    # which cancels slow drifts in host load that a difference of medians keeps.
    means = [
        {key: statistics.fmean(s.wall for s in ss) for key, ss in x.samples.items() if ss}
        for x in rounds
    ]
    ov["paired_diff"] = summarize(
        [m["banger"] - m["raw"] for m in means if {"banger", "raw"} <= m.keys()]
    )
    ov["raw_spread"] = r["wall"]["max"] / r["wall"]["min"] if r["wall"]["min"] > 0 else None
    report["overhead"] = ov
    # Judged on what the user waits for: the client-side wall (>= the daemon's total).
    judged, limit = (
        (ov["round_wall"], TARGET_CONCURRENT_RATIO) if k > 1 else (ov["wall"], TARGET_RATIO)
    )
    what = f"{k} concurrent creates vs {k} raw boots, total wall"
    what = what if k > 1 else "banger wall p50 / raw boot-to-SSH p50"
    report["target"] = {
        "ratio": judged["ratio"],
        "limit": limit,
        "met": judged["ratio"] <= limit,
        "what": what,
    }
    return report


def render(report: dict[str, Any]) -> str:
    k, b, r, ov = report["concurrent"], report["banger"], report["raw"], report["overhead"]
    lines = [
        "banger vm create -> SSH ready vs raw QEMU boot of the same artifacts",
        f"engine {report['engine']}, accel {report['accel'].upper()}, image {report['image']}, "
        f"kernel {report['kernel']}, {report['vcpus']} vCPU / {report['memory_mib']} MiB, "
        f"{report['runs']} run(s) of {k} VM(s) at a time",
        "",
    ]
    if b:
        rows = [(stage, fmt_s(v)) for stage, v in b["stage_p50"].items()]
        lines += [format_table(["banger stage", "p50 s"], rows), ""]
    sides = [(report[key], labels) for key, labels in LABELS.items() if report[key]]
    walls = [(labels[0], side["wall"]) for side, labels in sides]
    if k > 1:
        walls += [
            (labels[1], side["round_wall"]) for side, labels in sides if side["round_wall"].get("n")
        ]
    cells = [(label, fmt_s(w["p50"]), fmt_s(w["min"]), fmt_s(w["max"])) for label, w in walls]
    lines += [format_table(["seconds", "p50", "min", "max"], cells), ""]
    for key, label in (("daemon_total", "banger total (daemon)"), ("wall", "banger wall (client)")):
        if o := (ov or {}).get(key):
            lines.append(
                f"{label} / raw = {o['ratio']:.3f}x; banger overhead = {o['seconds']:+.3f} s "
                f"({o['percent']:+.1f} % of raw)"
            )
    if ov:
        h, pd, t = ov["host_side"], ov["paired_diff"], report["target"]
        lines.append(
            f"banger host-side stages (all but ssh) p50 = {h['seconds']:.3f} s "
            f"({h['percent']:.1f} % of raw): measured directly, immune to guest-boot noise"
        )
        if pd.get("n"):
            lines.append(
                f"paired per-run difference (banger wall - raw) p50 = {pd['p50']:+.3f} s "
                f"(min {pd['min']:+.3f}, max {pd['max']:+.3f})"
            )
        if ov.get("raw_spread") and ov["raw_spread"] > 1.3:
            lines.append(
                f"note: raw boot-to-SSH varies {ov['raw_spread']:.1f}x between runs; with "
                f"{report['runs']} run(s) the ratio of medians is mostly that noise "
                "(more --runs, or read the host-side figure)"
            )
        if o := ov.get("round_wall"):
            lines.append(f"{k} at once: banger / raw total wall = {o['ratio']:.3f}x")
        verdict = "met" if t["met"] else "NOT met"
        lines.append(f"target ({t['what']} <= {t['limit']:.2f}x): {verdict} ({t['ratio']:.3f}x)")
    if (ps := r["poller_slack"] if r else {}).get("n"):
        lines.append(
            f"banger's SSH poller on the raw guests got in {ps['p50']:+.3f} s after the "
            f"tight poll (p50; min {ps['min']:+.3f}, max {ps['max']:+.3f})"
        )
    parity = report["argv_parity"]
    if parity is None:
        lines.append("argv parity: not checked (no banger VM argv to compare)")
    elif not parity:
        lines.append("argv parity: identical QEMU device set and options (per-VM values aside)")
    else:
        lines.append("argv parity: DIFFERENT:\n  " + "\n  ".join(parity))
    return "\n".join(lines)


# -- running -------------------------------------------------------------------------------


def measure(args: argparse.Namespace, client: Client, root: Path, ns: str | None) -> int:
    """Every round, every variant; then the report."""
    spec = resolve_spec(client, args)
    log(
        f"image {spec.image} ({spec.disks.rootfs}), kernel {spec.kernel} ({spec.vmlinux}), "
        f"{spec.vcpus} vCPU, {spec.memory_mib} MiB"
    )
    raw = RawBoot(spec, root / "raw", ns)
    variants = [v for v in (BangerCreate(client, spec), raw) if args.only in ("both", v.key)]
    rounds: list[Round] = []
    parity: list[str] | None = None
    try:
        for i in range(args.warmup + args.runs):
            label = "warm-up" if i < args.warmup else f"run {i - args.warmup + 1}/{args.runs}"
            tag, rnd = f"{i}{secrets.token_hex(2)}", Round()
            # Alternate the order; the first round is banger's: raw copies its argv.
            for v in variants[::-1] if i % 2 == 1 and raw.template else variants:
                samples = rnd.samples[v.key], rnd.walls[v.key] = v.round(args.concurrent, tag)
                for s in samples[0]:
                    log(f"{label} {v.describe(s)}")
                if v.key == "banger" and samples[0][0].argv:
                    if (engine := samples[0][0].engine) != "qemu":
                        raise RuntimeError(
                            f"banger used the {engine} engine; the raw baseline boots with "
                            "QEMU only (pass --engine qemu, or --only banger)"
                        )
                    raw.template = samples[0][0].argv
            if raw.template and raw.last_argv and parity is None:
                parity = argv_differences(raw.template, raw.last_argv)
            if i >= args.warmup:
                rounds.append(rnd)
    finally:
        raw.close()
    report = build_report(args, spec, rounds, parity)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 1 if args.check and report["target"] and not report["target"]["met"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.netns and os.geteuid() != 0:
        log(
            "error: --netns needs root (to create a network namespace): run with sudo, "
            "or pass --no-netns to benchmark your own daemon in the host namespace"
        )
        return 2
    stop_signals_raise()
    from tests.sandbox import CACHE, Sandbox

    from banger.client import Client
    from banger.errors import BangerError
    from banger.paths import default_paths

    # --no-netns: the sandbox holds only the raw VMs (and kills them at the end).
    kw = dict(own_netns=args.netns, prefix=NS_PREFIX, config=args.config)
    box = Sandbox.create(data_dir=args.data_dir or CACHE / "data", **kw)
    rc = 1
    try:
        if args.netns:
            log(f"bench-create: namespace {box.ns}, private daemon under {box.home}")
            box.pull(args.image, args.kernel)
            box.start_daemon()
        else:
            log("bench-create: host namespace, your own daemon")
        client = Client.connect(box.paths if args.netns else default_paths())
        rc = measure(args, client, box.home, box.ns)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        rc = 130
    except (BangerError, RuntimeError, TimeoutError, OSError, AssertionError) as exc:
        hint = f" ({exc.hint})" if isinstance(exc, BangerError) and exc.hint else ""
        log(f"error: {exc.message if isinstance(exc, BangerError) else exc}{hint}")
    finally:
        try:
            box.teardown()
        except AssertionError as exc:  # something survived: say so, and fail
            log(f"error: {exc}")
            rc = rc or 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
