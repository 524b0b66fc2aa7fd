#!/usr/bin/env python3
"""Benchmark `vm create` → SSH ready against a raw QEMU boot of the same artifacts.

For every run, banger creates a fresh VM through the client library (wall time is
taken on the client side, from the create request to the operation's success,
which the daemon reports only once SSH accepts the key) and the VM's per-stage
`timings` are recorded; the VM is then deleted. The raw baseline boots the very
same kernel, initrd, rootfs and work-seed without banger: fresh disk clones with
the same SSH key injected, a TAP on a bridge of its own (`bgraw0`,
172.31.0.0/24, so it never meets the daemon's), and the QEMU argv produced by
banger's own builders (`banger.engines.guest_config` + `banger.engines.qemu`), so
the device set is identical. It is timed from process start until SSH accepts the
key and runs `true`. Disk cloning and TAP setup happen before the raw clock
starts: they are exactly the work banger has to hide, so they count as banger's
overhead, not as the guest's boot. banger's QEMU argv (read from /proc) is compared
with the raw one, and any difference beyond per-VM values is reported. Rounds
alternate which side goes first, so leftovers of one side (disk writeback,
teardown) slow both alike.

Guest boots vary a lot between runs (under TCG easily 2x), which a ratio of two
medians inherits; so the report also gives banger's host-side stages (everything
before the guest runs, measured directly) and paired per-run differences.
`--compare-poller` additionally runs banger's own SSH poller on the raw guests, to
tell polling slack in banger's `ssh` stage from the rest.

By default everything runs inside a fresh network namespace (`bgbench-<hex>`) with a
private daemon (temporary XDG state/config/runtime dirs; the data dir stays the
user's so pulled artifacts are shared, or `--data-dir`). The namespace has no
uplink, so a missing image or kernel is pulled first by the same private daemon in
the host namespace (a daemon that never ran a VM creates no network devices). The
namespace, the daemon, every VM process and the temporary directories are removed
at the end, also on failure, Ctrl-C or SIGTERM. `--no-netns` instead benchmarks
the user's own daemon in the host namespace (and creates the raw bridge there).

`--concurrent K` starts K creates at once against K raw boots at once (spec: total
wall <= 1.3x raw); the default, K=1, measures one VM at a time (spec: <= 1.10x).

Usage: make bench-create ARGS="--runs 5 [--concurrent 4] [--json]"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from banger.client import Client
    from banger.paths import Paths

STAGES = ("image", "disks", "network", "boot", "ssh", "total")
TARGET_RATIO = 1.10  # SPEC §7: banger's overhead <= 10 % of the raw boot-to-SSH
TARGET_CONCURRENT_RATIO = 1.30  # SPEC §7: K concurrent creates vs K raw boots
RAW_BRIDGE = "bgraw0"
RAW_SUBNET = "172.31.0.0/24"  # the daemon's default is 172.30.0.0/24
RAW_PREFIX = 24
NS_PREFIX = "bgbench-"
MAX_CONCURRENT = 32
# The measuring half runs as a child (inside the namespace); these tell it so.
ENV_INNER = "BGBENCH_INNER"
ENV_ROOT = "BGBENCH_ROOT"
ENGINES = ("auto", "qemu", "firecracker")
EngineName = Literal["auto", "qemu", "firecracker"]


# -- pure helpers (unit-tested) ------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0..100")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """p50/min/max/n of a sample; empty samples summarise to {"n": 0}."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def stage_medians(timings: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-stage medians over runs, the well-known stages first, in pipeline order.

    A stage missing from some runs is the median of the runs that have it, so a
    daemon that adds a stage later does not break the report.
    """
    keys = [k for k in STAGES if any(k in t for t in timings)]
    keys += sorted({k for t in timings for k in t} - set(STAGES))
    return {k: statistics.median([t[k] for t in timings if k in t]) for k in keys}


def host_side(timings: Mapping[str, float]) -> float:
    """Seconds banger spent before the guest could run: every stage but `ssh` (the
    guest's boot, as seen by the SSH poll) and `total`. Measured directly, so unlike
    a difference of two boot times it does not drown in guest-boot noise."""
    return sum(v for k, v in timings.items() if k not in ("ssh", "total"))


@dataclass(frozen=True)
class Overhead:
    ratio: float  # banger / raw
    seconds: float  # banger - raw
    percent: float  # of raw

    def meets(self, target_ratio: float) -> bool:
        return self.ratio <= target_ratio


def overhead(banger_s: float, raw_s: float) -> Overhead:
    if raw_s <= 0:
        raise ValueError(f"raw time must be positive, got {raw_s}")
    return Overhead(banger_s / raw_s, banger_s - raw_s, (banger_s - raw_s) / raw_s * 100)


def fmt_s(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain monospace table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    ncol = len(headers)
    if any(len(r) != ncol for r in cells):
        raise ValueError("every row needs one cell per header")
    widths = [max(len(r[i]) for r in cells) for i in range(ncol)]

    def line(r: list[str]) -> str:
        parts = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


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
    prev = ""
    for arg in argv[1:]:  # argv[0], the binary, is compared separately
        if prev == "-append":
            toks = arg.split()
            arg = " ".join(
                next((f"{p}<vm>" for p in _CMDLINE_PER_VM if t.startswith(p)), t) for t in toks
            )
        else:
            for rx, repl in _PER_VM:
                arg = rx.sub(repl, arg)
        out.append(arg)
        prev = arg
    return out


def argv_differences(banger: Sequence[str], raw: Sequence[str]) -> list[str]:
    """Human-readable differences between two QEMU argvs beyond per-VM values."""
    diffs: list[str] = []
    if banger and raw and banger[0] != raw[0]:
        diffs.append(f"binary: banger {banger[0]} vs raw {raw[0]}")
    a, b = argv_shape(banger), argv_shape(raw)
    if a != b:
        only_b = [x for x in a if x not in b]
        only_r = [x for x in b if x not in a]
        diffs += [f"banger only: {x}" for x in only_b] + [f"raw only: {x}" for x in only_r]
        if not only_b and not only_r:
            diffs.append("same options in a different order")
    return diffs


def cmdline_extras(cmdline: str, base: str, vm_ip: str | None, raw_ip: str) -> list[str]:
    """Kernel command-line fragments banger added beyond the base, the `ip=` parameter
    and the hostname (which `build_guest_config` produces itself), with banger's
    address rewritten to the raw guest's, so the raw guest boots the same way."""
    base_toks = set(base.split())
    extras = []
    for tok in cmdline.split():
        if tok in base_toks or tok.startswith((*_CMDLINE_PER_VM, "tsc_early_khz=")):
            continue
        extras.append(tok.replace(vm_ip, raw_ip) if vm_ip else tok)
    return extras


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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_create.py",
        description="Benchmark `banger vm create` -> SSH ready against a raw QEMU boot of "
        "the same artifacts (SPEC §7: overhead <= 10 %%; K concurrent <= 1.3x).",
    )
    p.add_argument("--runs", type=positive_int, default=3, help="measured runs (default 3)")
    p.add_argument(
        "--warmup", type=non_negative_int, default=0, help="unrecorded runs first (default 0)"
    )
    p.add_argument("--image", help="image (default: the daemon's default_image)")
    p.add_argument("--kernel", help="kernel (default: the image's)")
    p.add_argument("--engine", choices=ENGINES, help="hypervisor (default: from config)")
    p.add_argument("--vcpus", type=positive_int, help="vCPUs for both sides")
    p.add_argument("--memory", help="memory for both sides, e.g. 1G")
    p.add_argument(
        "--concurrent",
        type=positive_int,
        default=1,
        metavar="K",
        help=f"K creates at once vs K raw boots at once (1..{MAX_CONCURRENT}, default 1)",
    )
    p.add_argument(
        "--only",
        choices=("both", "banger", "raw"),
        default="both",
        help="measure one side only (no ratio then)",
    )
    p.add_argument(
        "--netns",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run in a fresh network namespace with a private daemon (default); "
        "--no-netns uses your own daemon in the host namespace",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="banger data dir (holding images/ and kernels/) for the private daemon "
        "(default: yours, so pulled artifacts are shared)",
    )
    p.add_argument(
        "--config", type=Path, help="config.toml for the private daemon (default: built-in)"
    )
    p.add_argument(
        "--ssh-timeout", type=float, default=180.0, help="seconds to wait for SSH (default 180)"
    )
    p.add_argument(
        "--compare-poller",
        action="store_true",
        help="also run banger's SSH poller on the raw guests, to tell polling slack in the "
        "ssh stage from the rest (a second SSH login may slow the raw guest slightly)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.add_argument("--check", action="store_true", help="exit 1 when the spec target is missed")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.concurrent > MAX_CONCURRENT:
        parser.error(f"--concurrent must be at most {MAX_CONCURRENT}, got {args.concurrent}")
    if args.ssh_timeout <= 0:
        parser.error(f"--ssh-timeout must be positive, got {args.ssh_timeout}")
    if args.memory is not None:
        from banger.errors import BangerError
        from banger.units import parse_size

        try:
            parse_size(args.memory)
        except (BangerError, ValueError) as exc:
            parser.error(f"--memory {args.memory!r} is not a size: {exc}")
    if not args.netns and (args.data_dir or args.config):
        parser.error(
            "--data-dir and --config configure the private daemon, which only --netns runs; "
            "drop --no-netns"
        )
    if args.data_dir is not None and not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a directory")
    if args.config is not None and not args.config.is_file():
        parser.error(f"--config {args.config} is not a file")
    if args.check and args.only != "both":
        parser.error("--check compares both sides; it cannot be used with --only")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the sandbox: namespace + private daemon (outer process) ---------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def pids_marked(marker: str, exclude: set[int]) -> list[int]:
    """Processes whose argv or environment mentions `marker` (our unique sandbox path):
    the private daemon inherits the sandbox's XDG dirs and every VM process names a
    file inside it, so this finds exactly what we started and nothing else."""
    needle = marker.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        if needle in _read(f"/proc/{entry}/cmdline") or needle in _read(f"/proc/{entry}/environ"):
            found.append(int(entry))
    return found


def netns_pids(ns: str) -> list[int]:
    res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(x) for x in res.stdout.split() if x.isdigit()]


def terminate_pids(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL whatever is still there after `grace` seconds."""
    alive = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if os.path.exists(f"/proc/{p}") and not _zombie(p)]
        time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return ") Z " in stat


@dataclass
class Sandbox:
    """A temporary home for a private daemon, optionally in its own namespace."""

    root: Path
    netns: str | None
    env: dict[str, str]
    private: bool = True  # False: the user's own daemon, which we must leave running

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    @property
    def runtime_dir(self) -> Path:
        return self.root / "run"

    @classmethod
    def create(cls, data_dir: Path | None, config: Path | None, netns: bool) -> Sandbox:
        # Short path: VM sockets live under the state dir and sun_path is 107 bytes.
        root = Path(tempfile.mkdtemp(prefix=NS_PREFIX, dir="/tmp"))
        box = cls(root, None, {})
        try:
            for sub in ("state", "config", "run"):
                (root / sub).mkdir(mode=0o700)
            env = {k: v for k, v in os.environ.items() if k != "BANGER_HOME"}
            env.update(
                XDG_STATE_HOME=str(root / "state"),
                XDG_CONFIG_HOME=str(root / "config"),
                XDG_RUNTIME_DIR=str(root / "run"),
                **{ENV_INNER: "1", ENV_ROOT: str(root)},
            )
            if data_dir is not None:
                data_dir = data_dir.resolve()
                if data_dir.name == "banger":
                    env["XDG_DATA_HOME"] = str(data_dir.parent)
                else:
                    # banger appends "banger" to XDG_DATA_HOME; a symlink maps any name.
                    (root / "data").mkdir()
                    (root / "data" / "banger").symlink_to(data_dir)
                    env["XDG_DATA_HOME"] = str(root / "data")
            if config is not None:
                (root / "config" / "banger").mkdir()
                shutil.copyfile(config, root / "config" / "banger" / "config.toml")
            box.env = env
            if netns:
                name = f"{NS_PREFIX}{secrets.token_hex(4)}"
                subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
                box.netns = name
                subprocess.run(
                    ["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True
                )
        except BaseException:
            box.teardown()
            raise
        return box

    def stop_daemon(self, prefix: Sequence[str] = ()) -> None:
        """`banger daemon stop`, then make sure: kill the pid-file PID if it is ours."""
        pid_file = self.runtime_dir / "banger" / "bangerd.pid"
        daemon_pid = _read(str(pid_file)).decode().strip()
        if (self.runtime_dir / "banger" / "bangerd.sock").exists():
            try:
                subprocess.run(
                    [*prefix, sys.executable, "-m", "banger.cli", "daemon", "stop"],
                    env=self.env,
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                log(f"warning: `banger daemon stop` failed: {exc}")
        # Ours only if it carries the sandbox in its environment: a recycled PID is not.
        marker = str(self.root).encode()
        if daemon_pid.isdigit() and marker in _read(f"/proc/{daemon_pid}/environ"):
            terminate_pids([int(daemon_pid)])

    def teardown(self) -> None:
        """Stop the daemon, kill everything we started, delete the namespace and files.

        Every step runs even when an earlier one failed: a half-torn-down sandbox is
        exactly what this must never leave behind.
        """
        try:
            self.stop_daemon(self.prefix)
        except Exception as exc:
            log(f"warning: stopping the daemon failed: {exc}")
        try:
            pids = set(pids_marked(str(self.root), exclude={os.getpid()}))
            if self.netns:
                pids.update(netns_pids(self.netns))
            pids.discard(os.getpid())
            if pids:
                terminate_pids(sorted(pids))
        except Exception as exc:
            log(f"warning: killing the sandbox's processes failed: {exc}")
        if self.netns:
            res = subprocess.run(
                ["ip", "netns", "del", self.netns], capture_output=True, text=True, check=False
            )
            if res.returncode != 0:
                log(f"warning: could not delete namespace {self.netns}: {res.stderr.strip()}")
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            log(f"warning: could not remove {self.root}")


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    """Temporarily replace os.environ (the outer process is single-threaded)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def missing_artifacts(env: Mapping[str, str], image: str | None, kernel: str | None) -> list[str]:
    """`banger … pull` arguments for what the sandbox's data dir lacks (image first)."""
    from banger.artifacts.images.store import is_outdated as is_outdated_image
    from banger.artifacts.images.store import load_image
    from banger.artifacts.kernels.pull import is_outdated, load_kernel
    from banger.config import load_config
    from banger.paths import default_paths

    with _environ(env):
        paths = default_paths()
        cfg = load_config(paths).config
    image = image or cfg.default_image
    info = load_image(paths.images_dir, image)
    if info is None or is_outdated_image(info):  # a create would rebuild it, offline
        return ["image", image]  # its kernel is known (and checked) once it is pulled
    if kernel or info.vmlinux is None:
        kernel = kernel or info.kernel or cfg.default_kernel
        k = load_kernel(paths.kernels_dir, kernel)
        if k is None or is_outdated(k):  # an outdated kernel would be re-pulled offline
            return ["kernel", kernel]
    return []


def prepull(box: Sandbox, image: str | None, kernel: str | None) -> None:
    """Pull missing artifacts before the namespace's daemon starts.

    The namespace has no uplink, so a daemon inside it cannot download anything.
    This runs the sandbox's daemon briefly in the host namespace instead: a daemon
    that never ran a VM sets up no bridge, TAP or nftables rule. It is stopped (and
    killed by PID if need be) before the measuring child starts its own.
    """
    try:
        for _ in range(2):  # an image first, then its kernel
            what = missing_artifacts(box.env, image, kernel)
            if not what:
                return
            log(f"pulling {what[0]} {what[1]} in the host namespace (the test one is offline)")
            subprocess.run(
                [sys.executable, "-m", "banger.cli", what[0], "pull", what[1]],
                env=box.env,
                check=True,
                timeout=3600,
            )
    finally:
        box.stop_daemon()


class _Terminated(SystemExit):
    pass


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_stop_signal(signum: int, _frame: object) -> None:
    """The first stop signal becomes an exception so every `finally` (VM deletion,
    sandbox teardown) runs; later ones are ignored, so a second Ctrl-C (or the outer
    process's SIGTERM after the terminal's SIGINT) cannot cut that cleanup short."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise _Terminated(128 + signum)


def install_signal_handlers() -> None:
    # SIGINT explicitly too: a shell starts background jobs with SIGINT ignored, and
    # an ignored SIGINT would let an interrupted run skip its cleanup.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)


def run_outer(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Set up the sandbox, run the measuring child in it, always tear it down."""
    if args.netns and os.geteuid() != 0:
        log(
            "error: --netns needs root (to create a network namespace): run with sudo, "
            "or pass --no-netns to benchmark your own daemon in the host namespace"
        )
        return 2
    install_signal_handlers()
    box: Sandbox | None = None
    child: subprocess.Popen[bytes] | None = None
    try:
        if args.netns:
            box = Sandbox.create(args.data_dir, args.config, netns=True)
            prepull(box, args.image, args.kernel)
            env = box.env
            prefix = box.prefix
            where = f"namespace {box.netns}, private daemon under {box.root}"
        else:
            # The user's own daemon and dirs; the root only holds the raw baseline.
            root = Path(tempfile.mkdtemp(prefix=NS_PREFIX, dir="/tmp"))
            box = Sandbox(root, None, {}, private=False)
            env = {**os.environ, ENV_INNER: "1", ENV_ROOT: str(root)}
            prefix = []
            where = "host namespace, your own daemon"
        log(f"bench-create: {where}")
        child = subprocess.Popen(
            [*prefix, sys.executable, os.path.abspath(__file__), *argv], env=env
        )
        try:
            return child.wait()
        except BaseException:
            # A terminal's Ctrl-C reached the child too (same process group), a SIGTERM
            # or a `kill -INT` of this process did not; the child ignores a second one.
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=60)  # let it delete its VMs and raw boots
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                child.kill()
                child.wait()
            raise
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except subprocess.CalledProcessError as exc:
        err = exc.stderr.decode(errors="replace").strip() if exc.stderr else ""
        log(f"error: {' '.join(map(str, exc.cmd))} failed: {err}")
        return 1
    finally:
        if box is not None:
            if box.private:  # stop the daemon, kill what is left, delete the namespace
                box.teardown()
            else:  # own daemon: only our raw VM processes and files
                pids = pids_marked(str(box.root), exclude={os.getpid()})
                if pids:
                    terminate_pids(pids)
                shutil.rmtree(box.root, ignore_errors=True)


# -- measuring (inner process) ---------------------------------------------------------


@dataclass
class Spec:
    """What both sides boot."""

    image: str
    kernel: str  # what boots, for the report
    kernel_override: str | None  # --kernel, passed to banger as given
    vmlinux: Path
    initrd: Path | None
    rootfs: Path
    work_seed: Path | None
    key: Path
    pubkey: str
    vcpus: int
    memory_mib: int
    disk_bytes: int
    work_bytes: int
    engine: EngineName | None  # as requested; the VM record says what it resolved to


@dataclass
class BangerSample:
    name: str
    wall: float
    timings: dict[str, float]
    engine: str
    accel: str | None
    ip: str | None
    argv: list[str] = field(default_factory=list, repr=False)


@dataclass
class RawSample:
    wall: float
    accel: str
    # --compare-poller: when banger's own SSH poller, run on the same boot, got in.
    banger_poll: float | None = None


@dataclass
class Round:
    banger: list[BangerSample] = field(default_factory=list)
    raw: list[RawSample] = field(default_factory=list)
    banger_wall: float | None = None  # first submit -> last ready
    raw_wall: float | None = None


def resolve_spec(client: Client | None, paths: Paths, args: argparse.Namespace) -> Spec:
    """The artifacts banger will boot, chosen the way the daemon chooses them.

    Through the daemon when there is one (pulling what is missing, untimed); for
    `--only raw` from the managed stores on disk, so the raw baseline can be measured
    even when the daemon cannot run. As in the daemon, an image that carries its own
    vmlinux boots it unless `--kernel` says otherwise.
    """
    from banger.artifacts.images.store import load_image
    from banger.artifacts.kernels.pull import load_kernel
    from banger.config import load_config
    from banger.errors import NotFound
    from banger.services.ssh import ensure_key, public_key
    from banger.units import parse_size

    cfg = load_config(paths).config
    image_name = args.image or cfg.default_image
    vmlinux: Path | None
    initrd: Path | None
    if client is not None:
        try:
            image = client.image(image_name)
        except NotFound:
            log(f"pulling image {image_name} (not timed)")
            client.wait(client.pull_image(image_name))
            image = client.image(image_name)
        rootfs, seed = Path(image.rootfs), Path(image.work_seed) if image.work_seed else None
        image_kernel = image.kernel
        vmlinux = Path(image.vmlinux) if image.vmlinux else None
        initrd = Path(image.initrd) if image.initrd else None
    else:
        info = load_image(paths.images_dir, image_name)
        if info is None:
            raise RuntimeError(
                f"image {image_name} is not in {paths.images_dir} "
                f"(`banger image pull {image_name}` first)"
            )
        rootfs, seed = info.rootfs, info.work_seed
        image_kernel, vmlinux, initrd = info.kernel, info.vmlinux, info.initrd
    if args.kernel or vmlinux is None:
        kernel_name = args.kernel or image_kernel or cfg.default_kernel
        if client is not None:
            try:
                kernel = client.kernel(kernel_name)
            except NotFound:
                log(f"pulling kernel {kernel_name} (not timed)")
                client.wait(client.pull_kernel(kernel_name))
                kernel = client.kernel(kernel_name)
            vmlinux = Path(kernel.vmlinux)
            initrd = Path(kernel.initrd) if kernel.initrd else None
        else:
            kinfo = load_kernel(paths.kernels_dir, kernel_name)
            if kinfo is None:
                raise RuntimeError(
                    f"kernel {kernel_name} is not in {paths.kernels_dir} "
                    f"(`banger kernel pull {kernel_name}` first)"
                )
            vmlinux = kinfo.vmlinux
            initrd = kinfo.initrd if kinfo.initrd.exists() else None
    else:
        kernel_name = f"{image_name}:vmlinux"
    # The daemon made (or found) this key at start; ensure_key only returns its path.
    key = ensure_key(paths, cfg.ssh_key_path)
    return Spec(
        image=image_name,
        kernel=kernel_name,
        kernel_override=args.kernel,
        vmlinux=vmlinux,
        initrd=initrd,
        rootfs=rootfs,
        work_seed=seed,
        key=key,
        pubkey=public_key(key),
        vcpus=args.vcpus or cfg.default_vcpus,
        memory_mib=parse_size(args.memory or cfg.default_memory) // 1024**2,
        disk_bytes=parse_size(cfg.default_disk_size),
        work_bytes=parse_size(cfg.default_work_size),
        engine=args.engine,
    )


def _proc_argv(pid: int | None) -> list[str]:
    if not pid:
        return []
    raw = _read(f"/proc/{pid}/cmdline")
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def banger_round(client: Client, spec: Spec, k: int, tag: str, ssh_timeout: float) -> Round:
    """K creates submitted together; each timed on its own thread and client."""
    from banger.api.models import CreateVM
    from banger.client import Client as ClientT

    names = [f"bench-{tag}-{j}" for j in range(k)]
    barrier = threading.Barrier(k)
    starts: dict[str, float] = {}
    results: dict[str, BangerSample] = {}
    errors: dict[str, BaseException] = {}

    def one(name: str) -> None:
        try:
            with ClientT(client.paths, timeout=ssh_timeout + 60) as c:
                req = CreateVM(
                    name=name,
                    image=spec.image,
                    kernel=spec.kernel_override,
                    engine=spec.engine,
                    vcpus=spec.vcpus,
                    memory=f"{spec.memory_mib}M",
                )
                barrier.wait()
                t0 = time.perf_counter()
                starts[name] = t0
                op = c.create_vm(req)
                c.wait(op)
                wall = time.perf_counter() - t0
                vm = c.vm(name)
                argv = _proc_argv(vm.pid)
                results[name] = BangerSample(
                    name, wall, dict(vm.timings), vm.engine, accel_of(argv), vm.ip, argv
                )
        except BaseException as exc:
            errors[name] = exc
            barrier.abort()

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in names]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            name, exc = next(iter(errors.items()))
            raise RuntimeError(f"banger create of {name} failed: {exc}") from exc
        samples = [results[n] for n in names]
        round_wall = max(starts[s.name] + s.wall for s in samples) - min(starts.values())
        return Round(banger=samples, banger_wall=round_wall)
    finally:
        delete_vms(client, names)


def delete_vms(client: Client, names: Sequence[str]) -> None:
    from banger.client import Client as ClientT
    from banger.errors import BangerError, NotFound

    def one(name: str) -> None:
        try:
            with ClientT(client.paths) as c:
                c.wait(c.delete_vm(name, force=True))
        except NotFound:
            pass
        except BangerError as exc:
            log(f"warning: could not delete {name}: {exc}")

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)


@dataclass
class RawVM:
    index: int
    dir: Path
    tap: str
    ip: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready: float = 0.0
    banger_ready: float | None = None


class RawBooter:
    """Boots the spec's artifacts with plain QEMU: banger's argv, none of its machinery."""

    def __init__(
        self, spec: Spec, root: Path, ssh_timeout: float, compare_poller: bool = False
    ) -> None:
        self.spec = spec
        self.root = root / "raw"
        self.ssh_timeout = ssh_timeout
        self.compare_poller = compare_poller
        self._bridge = False
        self._probed_accel: str | None = None
        self.template: list[str] = []  # banger's argv, when a banger VM was seen
        self.last_argv: list[str] = []  # the argv of the last raw boot

    def __enter__(self) -> RawBooter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bridge:
            from banger.net.bridge import delete_bridge

            try:
                delete_bridge(RAW_BRIDGE)
            except Exception as e:
                log(f"warning: could not delete bridge {RAW_BRIDGE}: {e}")

    def _accel(self) -> str:
        """The accelerator banger's VM got; without one, what banger's engine would pick."""
        from banger.engines.qemu import QemuEngine

        seen = accel_of(self.template)
        if seen:
            return seen
        if self._probed_accel is None:
            self._probed_accel = QemuEngine().accel()  # a real KVM probe: once
        return self._probed_accel

    def _qemu_bin(self) -> str:
        if self.template:
            return self.template[0]
        from banger.engines.qemu import QemuEngine

        qemu = QemuEngine().qemu_bin
        if qemu is None:
            raise RuntimeError(
                "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
            )
        return qemu

    def prepare(self, index: int, tag: str) -> RawVM:
        """Disks, TAP and argv for one raw VM; none of this is on the clock."""
        from banger.artifacts import ext4
        from banger.engines.guest_config import BASE_CMDLINE, build_guest_config, mac_for
        from banger.engines.qemu import QemuEngine, build_argv, host_tsc_khz
        from banger.net import addresses
        from banger.net.bridge import ensure_bridge
        from banger.net.tap import create_tap, delete_tap

        spec = self.spec
        if not self._bridge:
            self._bridge = True  # set first: a half-made bridge is deleted too
            ensure_bridge(RAW_BRIDGE, RAW_SUBNET)
        d = self.root / f"{tag}-{index}"
        (d / "run").mkdir(parents=True)
        rootfs, work = d / "rootfs.ext4", d / "work.ext4"
        # The same steps as banger's work-disk capability, so the guest sees the same disks.
        ext4.clone_file(spec.rootfs, rootfs)
        if spec.disk_bytes > rootfs.stat().st_size:
            ext4.grow(rootfs, spec.disk_bytes)
        if spec.work_seed is not None:
            ext4.clone_file(spec.work_seed, work)
            if spec.work_bytes > work.stat().st_size:
                ext4.grow(work, spec.work_bytes)
        else:
            raise RuntimeError(f"image {spec.image} has no work-seed; the raw baseline needs one")
        ext4.write_file_into(work, "/.ssh/authorized_keys", (spec.pubkey + "\n").encode(), 0o600)
        tap = f"bgrawt{index}"
        delete_tap(tap)  # a leftover from an interrupted run would make create_tap fail
        create_tap(tap, RAW_BRIDGE)
        ip = raw_address(index)
        extras: list[str] = []
        banger_ip = None
        if self.template:
            cmd = self.template[self.template.index("-append") + 1]
            m = re.search(r"\bip=([0-9.]+)", cmd)
            banger_ip = m.group(1) if m else None
            extras = cmdline_extras(cmd, BASE_CMDLINE, banger_ip, ip)
        engine = QemuEngine()
        accel = self._accel()
        vsock = engine.uses_vhost_vsock()
        cfg = build_guest_config(
            vm_id=f"bgraw{index}",
            name=f"raw-{index}",
            kernel=spec.vmlinux,
            initrd=spec.initrd,
            rootfs=rootfs,
            work_disk=work,
            vcpus=spec.vcpus,
            memory_mib=spec.memory_mib,
            run_dir=d / "run",
            ip=ip,
            prefix=RAW_PREFIX,
            gateway=addresses.gateway(RAW_SUBNET),
            tap=tap,
            # A stable MAC per address: a new MAC on a reused address would leave the
            # host's neighbour entry pointing at the previous guest for up to ~30 s.
            mac=mac_for(f"bgraw-{index}"),
            extra_cmdline=extras,
            vsock_cid=0x10000 + index if vsock else None,
            console_log=d / "console.log",
        )
        argv = build_argv(
            cfg,
            qemu_bin=self._qemu_bin(),
            accel=accel,  # type: ignore[arg-type]
            vhost_vsock=vsock,
            tsc_khz=host_tsc_khz() if accel == "tcg" else None,
        )
        return RawVM(index, d, tap, ip, argv)

    def boot_all(self, vms: Sequence[RawVM]) -> None:
        """Start every VM, then wait until each accepts SSH; times per VM."""

        async def all_ready() -> None:
            pollers = [self._banger_poll(v) for v in vms] if self.compare_poller else []
            tasks = [asyncio.ensure_future(c) for c in pollers]
            try:
                await asyncio.gather(*(self._wait_ssh(v) for v in vms))
                if tasks:
                    await asyncio.wait(tasks, timeout=30)
            finally:
                for t in tasks:
                    t.cancel()

        for v in vms:
            with open(v.dir / "qemu.log", "ab") as logf:
                v.started = time.perf_counter()
                # Own session like banger's engine, so a terminal's Ctrl-C reaches us,
                # not QEMU; we kill it ourselves.
                v.proc = subprocess.Popen(
                    v.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    start_new_session=True,
                )
        asyncio.run(all_ready())

    async def _banger_poll(self, v: RawVM) -> None:
        """banger's own SSH readiness poll, on the raw guest, next to the tight one:
        the gap between the two is the polling slack inside banger's `ssh` stage."""
        from banger.services.ssh import wait_for_ssh

        try:
            await wait_for_ssh(
                v.ip,
                self.spec.key,
                v.dir / "known_hosts",
                [],
                self.ssh_timeout,
                is_alive=lambda: v.proc is not None and v.proc.poll() is None,
            )
            v.banger_ready = time.perf_counter()
        except Exception as exc:
            log(f"warning: banger's SSH poller failed on the raw guest: {exc}")

    async def _wait_ssh(self, v: RawVM) -> None:
        """TCP probe every 50 ms, then an SSH login running `true`.

        A short TCP probe first keeps the poll tight: a plain SSH connect to a guest
        that is not up yet can sit in SYN retransmission for a second or more, which
        would add polling slack to the "raw" time and flatter banger.
        """
        import asyncssh

        key = asyncssh.read_private_key(self.spec.key)
        deadline = time.monotonic() + self.ssh_timeout
        last: BaseException | None = None
        assert v.proc is not None
        while time.monotonic() < deadline:
            if v.proc.poll() is not None:
                tail = _tail(v.dir / "qemu.log") or _tail(v.dir / "console.log")
                raise RuntimeError(f"raw qemu exited ({v.proc.returncode}) before SSH: {tail}")
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection(v.ip, 22), 0.5)
                w.close()
            except (OSError, TimeoutError) as exc:
                last = exc
                await asyncio.sleep(0.05)
                continue
            try:
                async with asyncssh.connect(
                    v.ip,
                    username="root",
                    client_keys=[key],
                    known_hosts=None,
                    connect_timeout=10,
                    login_timeout=10,
                ) as conn:
                    await conn.run("true", check=True, timeout=10)
                v.ready = time.perf_counter()
                return
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                last = exc
                await asyncio.sleep(0.05)
        raise TimeoutError(
            f"raw guest {v.ip} did not accept SSH within {self.ssh_timeout:.0f}s ({last}); "
            f"console: {_tail(v.dir / 'console.log')}"
        )

    def cleanup(self, vms: Sequence[RawVM]) -> None:
        from banger.net.tap import delete_tap

        for v in vms:
            if v.proc is not None and v.proc.poll() is None:
                v.proc.kill()
            if v.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    v.proc.wait(timeout=10)
        for v in vms:
            try:
                delete_tap(v.tap)
            except Exception as exc:
                log(f"warning: could not delete TAP {v.tap}: {exc}")
            shutil.rmtree(v.dir, ignore_errors=True)

    def round(self, k: int, tag: str) -> Round:
        vms: list[RawVM] = []
        try:
            for j in range(k):
                vms.append(self.prepare(j, tag))
            self.boot_all(vms)
        finally:
            self.cleanup(vms)
        self.last_argv = vms[0].argv
        accel = accel_of(vms[0].argv) or "?"
        samples = [
            RawSample(
                v.ready - v.started,
                accel,
                v.banger_ready - v.started if v.banger_ready is not None else None,
            )
            for v in vms
        ]
        wall = max(v.ready for v in vms) - min(v.started for v in vms)
        return Round(raw=samples, raw_wall=wall)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


def build_report(
    args: argparse.Namespace, spec: Spec, rounds: Sequence[Round], parity: list[str] | None
) -> dict[str, Any]:
    bangers = [s for r in rounds for s in r.banger]
    raws = [s for r in rounds for s in r.raw]
    k = args.concurrent
    accels = sorted({a for a in [*(s.accel for s in bangers), *(s.accel for s in raws)] if a})
    report: dict[str, Any] = {
        "image": spec.image,
        "kernel": spec.kernel,
        "engine": sorted({s.engine for s in bangers})[0] if bangers else spec.engine or "qemu",
        "accel": "/".join(accels) or "unknown",
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "runs": len(rounds),
        "concurrent": k,
        "banger": None,
        "raw": None,
        "overhead": None,
        "target": None,
        "argv_parity": parity,
    }
    if bangers:
        report["banger"] = {
            "samples": [{k2: v for k2, v in asdict(s).items() if k2 != "argv"} for s in bangers],
            "stage_p50": stage_medians([s.timings for s in bangers]),
            "wall": summarize([s.wall for s in bangers]),
            "round_wall": summarize([r.banger_wall for r in rounds if r.banger_wall]),
            "host_side": summarize([host_side(s.timings) for s in bangers]),
            "client_extra": summarize(
                [s.wall - s.timings["total"] for s in bangers if "total" in s.timings]
            ),
        }
    if raws:
        report["raw"] = {
            "samples": [asdict(s) for s in raws],
            "wall": summarize([s.wall for s in raws]),
            "round_wall": summarize([r.raw_wall for r in rounds if r.raw_wall]),
            "poller_slack": summarize(
                [s.banger_poll - s.wall for s in raws if s.banger_poll is not None]
            ),
        }
    if bangers and raws:
        raw_p50 = report["raw"]["wall"]["p50"]
        total_p50 = report["banger"]["stage_p50"].get("total")
        wall_p50 = report["banger"]["wall"]["p50"]
        ov: dict[str, Any] = {"wall": asdict(overhead(wall_p50, raw_p50))}
        if total_p50 is not None:
            ov["daemon_total"] = asdict(overhead(total_p50, raw_p50))
        if k > 1:
            ov["round_wall"] = asdict(
                overhead(report["banger"]["round_wall"]["p50"], report["raw"]["round_wall"]["p50"])
            )
        host_p50 = report["banger"]["host_side"]["p50"]
        ov["host_side"] = {"seconds": host_p50, "percent": host_p50 / raw_p50 * 100}
        # Per-round differences pair each banger boot with the raw boot next to it,
        # which cancels slow drifts in host load that a difference of medians keeps.
        paired = [
            statistics.fmean(b.wall for b in r.banger) - statistics.fmean(x.wall for x in r.raw)
            for r in rounds
            if r.banger and r.raw
        ]
        ov["paired_diff"] = summarize(paired)
        raw_w = report["raw"]["wall"]
        ov["raw_spread"] = raw_w["max"] / raw_w["min"] if raw_w["min"] > 0 else None
        report["overhead"] = ov
        # Judged on what the user waits for: the client-side wall (>= the daemon's total).
        judged = ov["round_wall"] if k > 1 else ov["wall"]
        limit = TARGET_CONCURRENT_RATIO if k > 1 else TARGET_RATIO
        report["target"] = {
            "ratio": judged["ratio"],
            "limit": limit,
            "met": judged["ratio"] <= limit,
            "what": f"{k} concurrent creates vs {k} raw boots, total wall"
            if k > 1
            else "banger wall p50 / raw boot-to-SSH p50",
        }
    return report


def render(report: dict[str, Any]) -> str:
    k = report["concurrent"]
    lines = [
        "banger vm create -> SSH ready vs raw QEMU boot of the same artifacts",
        f"engine {report['engine']}, accel {report['accel'].upper()}, image {report['image']}, "
        f"kernel {report['kernel']}, {report['vcpus']} vCPU / {report['memory_mib']} MiB, "
        f"{report['runs']} run(s) of {k} VM(s) at a time",
        "",
    ]
    b, r = report["banger"], report["raw"]
    if b:
        rows = [(stage, fmt_s(v)) for stage, v in b["stage_p50"].items()]
        lines += [format_table(["banger stage", "p50 s"], rows), ""]
    rows2: list[tuple[str, str, str, str]] = []
    if b:
        w = b["wall"]
        rows2.append(
            ("banger create (client wall)", fmt_s(w["p50"]), fmt_s(w["min"]), fmt_s(w["max"]))
        )
    if r:
        w = r["wall"]
        rows2.append(("raw boot -> SSH", fmt_s(w["p50"]), fmt_s(w["min"]), fmt_s(w["max"])))
    if k > 1:
        for label, side in (("banger round (all K)", b), ("raw round (all K)", r)):
            if side and side["round_wall"].get("n"):
                w = side["round_wall"]
                rows2.append((label, fmt_s(w["p50"]), fmt_s(w["min"]), fmt_s(w["max"])))
    lines += [format_table(["seconds", "p50", "min", "max"], rows2), ""]
    ov = report["overhead"]
    if ov:
        for key, label in (
            ("daemon_total", "banger total (daemon)"),
            ("wall", "banger wall (client)"),
        ):
            if key in ov:
                o = ov[key]
                lines.append(
                    f"{label} / raw = {o['ratio']:.3f}x; banger overhead = {o['seconds']:+.3f} s "
                    f"({o['percent']:+.1f} % of raw)"
                )
        h = ov["host_side"]
        lines.append(
            f"banger host-side stages (all but ssh) p50 = {h['seconds']:.3f} s "
            f"({h['percent']:.1f} % of raw): measured directly, immune to guest-boot noise"
        )
        pd = ov["paired_diff"]
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
        if "round_wall" in ov:
            o = ov["round_wall"]
            lines.append(f"{k} at once: banger / raw total wall = {o['ratio']:.3f}x")
        t = report["target"]
        lines.append(
            f"target ({t['what']} <= {t['limit']:.2f}x): "
            + ("met" if t["met"] else "NOT met")
            + f" ({t['ratio']:.3f}x)"
        )
    ps = r["poller_slack"] if r else {}
    if ps.get("n"):
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


def run_inner(args: argparse.Namespace) -> int:
    from banger.client import Client
    from banger.errors import BangerError
    from banger.paths import default_paths

    install_signal_handlers()
    root = Path(os.environ[ENV_ROOT])
    paths = default_paths()
    client: Client | None = None
    if args.only != "raw":
        try:
            client = Client.connect(paths)
        except BangerError as exc:
            log(f"error: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
            return 1
    rounds: list[Round] = []
    parity: list[str] | None = None
    try:
        spec = resolve_spec(client, paths, args)
        log(
            f"image {spec.image} ({spec.rootfs}), kernel {spec.kernel} ({spec.vmlinux}), "
            f"{spec.vcpus} vCPU, {spec.memory_mib} MiB"
        )
        with RawBooter(spec, root, args.ssh_timeout, args.compare_poller) as raw:
            total = args.warmup + args.runs
            for i in range(total):
                label = "warm-up" if i < args.warmup else f"run {i - args.warmup + 1}/{args.runs}"
                tag = f"{i}{secrets.token_hex(2)}"
                rnd = Round()

                def run_banger(label: str = label, tag: str = tag, rnd: Round = rnd) -> None:
                    assert client is not None
                    b = banger_round(client, spec, args.concurrent, tag, args.ssh_timeout)
                    rnd.banger, rnd.banger_wall = b.banger, b.banger_wall
                    if b.banger and b.banger[0].argv:
                        if b.banger[0].engine != "qemu":
                            raise RuntimeError(
                                f"banger used the {b.banger[0].engine} engine; the raw baseline "
                                "boots with QEMU only (pass --engine qemu, or --only banger)"
                            )
                        raw.template = b.banger[0].argv
                    for s in b.banger:
                        stages = " ".join(f"{k}={v:.2f}" for k, v in s.timings.items())
                        log(f"{label} banger {s.name}: wall {s.wall:.3f}s ({stages})")

                def run_raw(label: str = label, tag: str = tag, rnd: Round = rnd) -> None:
                    r = raw.round(args.concurrent, tag)
                    rnd.raw, rnd.raw_wall = r.raw, r.raw_wall
                    for rs in r.raw:
                        extra = (
                            f", banger's poller {rs.banger_poll:.3f}s"
                            if rs.banger_poll is not None
                            else ""
                        )
                        log(f"{label} raw: boot->SSH {rs.wall:.3f}s (accel {rs.accel}{extra})")

                steps = []
                if client is not None:
                    steps.append(run_banger)
                if args.only in ("both", "raw"):
                    steps.append(run_raw)
                # Alternate the order (banger-raw, raw-banger, ...) so that what one
                # side leaves behind (writeback of its disk clones, teardown) slows
                # both sides alike. The first round is banger's: raw copies its argv.
                if i % 2 == 1 and raw.template:
                    steps.reverse()
                for step in steps:
                    step()
                if raw.template and raw.last_argv and parity is None:
                    parity = argv_differences(raw.template, raw.last_argv)
                if i >= args.warmup:
                    rounds.append(rnd)
            spec_out = spec
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except (BangerError, RuntimeError, TimeoutError, OSError) as exc:
        msg = exc.message if isinstance(exc, BangerError) else str(exc)
        log(f"error: {msg}")
        return 1
    finally:
        if client is not None:
            client.close()
    report = build_report(args, spec_out, rounds, parity)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    if args.check and report["target"] and not report["target"]["met"]:
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if os.environ.get(ENV_INNER) == "1":
        return run_inner(args)
    return run_outer(args, argv)


if __name__ == "__main__":
    sys.exit(main())
