#!/usr/bin/env python3
"""Benchmark `vm create` -> SSH ready against a raw QEMU boot of the same artifacts.

Every round runs each variant the same way: K VMs at once (`--concurrent K`), each
timed from its start until SSH accepts the key, in alternating order (so what one
leaves behind, disk writeback or teardown, slows all alike).

  banger  `vm create` through the client library, timed until the operation
          succeeds (the daemon reports success once SSH accepts the key); the VM's
          per-stage `timings` are kept, then it is deleted.
  raw     the same kernel, initrd, rootfs and work-seed booted by plain QEMU with
          banger's own disk code and QEMU argv (scripts/rawboot.py), its argv
          compared with banger's VM's. Disks and TAP are made before the clock
          starts: hiding them is banger's job, so they count as banger's overhead.

Guest boots vary a lot (under TCG easily 2x), so the report also gives banger's
host-side stages (measured directly) and paired per-round differences;
`--compare-poller` runs banger's SSH poller on the raw guests as well.

It runs in the boot tests' sandbox (tests/sandbox.py): a fresh namespace
(`bgbench-<hex>`), a private daemon and BANGER_HOME, the tests' artifact cache (or
`--data-dir`), all removed at the end, also on failure, Ctrl-C or SIGTERM.
`--no-netns` benchmarks your own daemon in the host namespace instead.
Targets (SPEC §7): one at a time <= 1.10x raw; K concurrent <= 1.3x K raw.

`--warm` runs cold boots and warm creates side by side instead (no raw baseline):
first one create of the shape, then a wait until the daemon saved its golden snapshot;
then every round a `vm create --cold` and a `vm create` that restores it, each with its
stages. Targets (issue 8, TCG here): warm create -> SSH p50 <= 2.0 s and >= 10x faster
than the cold boot of the same run.

Usage: make bench-create ARGS="--runs 5 [--concurrent 4] [--warm] [--json]"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    Sample,
    count,
    fmt_s,
    format_table,
    log,
    overhead,
    parallel,
    proc_argv,
    stop_signals_raise,
    summarize,
)
from rawboot import RawBoot, Spec, accel_of, argv_differences, resolve_spec

if TYPE_CHECKING:
    from banger.client import Client

STAGES = ("image", "disks", "network", "boot", "restore", "identity", "ssh", "total")
TARGET_RATIO = 1.10  # SPEC §7: banger's overhead <= 10 % of the raw boot-to-SSH
TARGET_CONCURRENT_RATIO = 1.30  # SPEC §7: K concurrent creates vs K raw boots
NS_PREFIX = "bgbench-"
MAX_CONCURRENT = 32
TARGET_WARM_P50 = 2.0  # issue 8: warm create -> SSH p50 on this TCG machine
TARGET_WARM_SPEEDUP = 10.0  # ... and at least this many times faster than a cold boot
GOLDEN_WAIT = 1800.0  # the golden boot shares the host with nothing else meanwhile


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


# -- arguments -------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_create.py",
        description="Benchmark `banger vm create` -> SSH ready against a raw QEMU boot of "
        "the same artifacts (SPEC §7: overhead <= 10 %%; K concurrent <= 1.3x).",
    )
    p.add_argument("--runs", type=count(1), default=3, help="measured runs (default 3)")
    p.add_argument("--warmup", type=count(0), default=0, help="unrecorded runs first (default 0)")
    p.add_argument("--image", help="image (default: the daemon's default_image)")
    p.add_argument(
        "--kernel",
        help="kernel (default: the image's); another than the image's own (e.g. one from "
        "`banger kernel build`) is measured beside the image's kernel in the same run",
    )
    p.add_argument(
        "--engine", choices=("auto", "qemu", "firecracker"), help="hypervisor (default: config)"
    )
    p.add_argument("--vcpus", type=count(1), help="vCPUs for both sides")
    p.add_argument("--memory", help="memory for both sides, e.g. 1G")
    p.add_argument(
        "--concurrent",
        type=count(1),
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
        "(default: the tests' artifact cache, $BANGER_TEST_CACHE/data)",
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
    p.add_argument(
        "--warm",
        action="store_true",
        help="cold boot (`vm create --cold`) against warm create (restore of the golden "
        "snapshot) in the same run, per stage; no raw baseline",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.add_argument("--check", action="store_true", help="exit 1 when the spec target is missed")
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
        p.error(
            "--data-dir and --config configure the private daemon, which only --netns runs; "
            "drop --no-netns"
        )
    if args.data_dir is not None and not args.data_dir.is_dir():
        p.error(f"--data-dir {args.data_dir} is not a directory")
    if args.config is not None and not args.config.is_file():
        p.error(f"--config {args.config} is not a file")
    if args.check and args.only != "both":
        p.error("--check compares both sides; it cannot be used with --only")
    if args.warm and (args.only != "both" or args.compare_poller):
        p.error("--warm compares cold and warm creates; drop --only and --compare-poller")
    return args


# -- the variants: each runs K VMs at once and times each until SSH is ready -------------


class Variant(Protocol):
    """One way of getting a VM to SSH. A new one (a class with these members) goes into
    VARIANTS, which orders the report, and into measure()'s list."""

    key: str  # its section in the JSON report and its name in the log
    keys: tuple[str, ...]  # the Sample fields its JSON samples show
    labels: tuple[str, str]  # its rows in the table: one VM's wall, a round of K

    def describe(self, s: Sample) -> str: ...  # one log line per sample

    def round(self, k: int, tag: str) -> tuple[list[Sample], float]: ...  # samples, wall


@dataclass
class Round:
    samples: dict[str, list[Sample]] = field(default_factory=dict)  # by variant key
    walls: dict[str, float] = field(default_factory=dict)  # first start -> last ready


class BangerCreate:
    """`vm create --cold` through the client: K submitted together, each on its own
    thread. Cold: a daemon with golden snapshots would otherwise restore."""

    key = "banger"
    keys: tuple[str, ...] = ("name", "wall", "timings", "engine", "accel", "ip")
    labels = ("banger create (client wall)", "banger round (all K)")
    cold = True

    def __init__(self, client: Client, spec: Spec) -> None:
        self.client, self.spec = client, spec
        self.kernel: str | None = spec.args.kernel  # None: the image's own
        self.prefix = "bench"

    def describe(self, s: Sample) -> str:
        stages = " ".join(f"{k}={v:.2f}" for k, v in s.timings.items())
        return f"{self.key} {s.name}: wall {s.wall:.3f}s ({stages})"

    def round(self, k: int, tag: str) -> tuple[list[Sample], float]:
        from banger.api.models import CreateVM

        spec, names = self.spec, [f"{self.prefix}-{tag}-{j}" for j in range(k)]
        barrier = threading.Barrier(k)
        starts: dict[str, float] = {}
        vm_args = dict(image=spec.image, kernel=self.kernel, engine=spec.args.engine)
        vm_args.update(vcpus=spec.vcpus, memory=f"{spec.memory_mib}M", cold=self.cold)

        def one(name: str) -> Sample:
            try:  # the barrier starts all K at once; a failure releases the others
                c = type(self.client)(self.client.paths, timeout=spec.args.ssh_timeout + 60)
                req = CreateVM(name=name, **vm_args)
                barrier.wait()
                starts[name] = t0 = time.perf_counter()
                c.wait(c.create_vm(req))
                wall = time.perf_counter() - t0
            except BaseException as exc:
                barrier.abort()
                raise RuntimeError(f"banger create of {name} failed: {exc}") from exc
            vm = c.vm(name)
            argv = proc_argv(vm.pid)
            return Sample(
                wall, accel_of(argv), name, dict(vm.timings), vm.engine, vm.ip, None, argv
            )

        try:
            samples = parallel(one, names)
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

        parallel(one, names, timeout=120)


class WarmCreate(BangerCreate):
    """`vm create` restoring the shape's golden snapshot (`prime` waits until one is
    saved)."""

    key = "warm"
    labels = ("warm create (client wall)", "warm round (all K)")
    cold = False

    def prime(self) -> None:
        """One create of the shape, then wait for the daemon's golden snapshot."""
        golden = self.client.paths.state_dir / "golden"
        if not any(golden.glob("*/golden.json")):
            samples, _ = self.round(1, "prime")
            log(f"warm: primed with {self.describe(samples[0])}")
        deadline = time.monotonic() + GOLDEN_WAIT
        while not any(golden.glob("*/golden.json")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no golden snapshot in {golden} after {GOLDEN_WAIT:.0f}s")
            time.sleep(2)
        log(f"warm: golden snapshot ready in {golden}")


class ImageKernel(BangerCreate):
    """`vm create` with the image's own kernel while --kernel names another one: the
    two kernels' create -> SSH side by side, in the same rounds (same host load)."""

    key = "image_kernel"
    labels = ("banger create, image's kernel", "banger round, image's kernel (all K)")

    def __init__(self, client: Client, spec: Spec) -> None:
        super().__init__(client, spec)
        self.kernel, self.prefix = None, "bench-ik"


def image_kernel(client: Client, args: argparse.Namespace, spec: Spec) -> str | None:
    """The kernel the image boots without --kernel, when --kernel names another."""
    from banger.config import load_config

    if not args.kernel:
        return None
    image = client.image(spec.image)
    own = f"{image.name}:vmlinux" if image.vmlinux else image.kernel
    own = own or load_config(client.paths).config.default_kernel
    return None if own == args.kernel else own


# -- the report ---------------------------------------------------------------------------

# In order; ImageKernel runs only when --kernel names another kernel than the image's.
VARIANTS: dict[str, type[Variant]] = {
    v.key: v for v in (BangerCreate, WarmCreate, RawBoot, ImageKernel)
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
    args: argparse.Namespace,
    spec: Spec,
    rounds: Sequence[Round],
    parity: list[str] | None,
    own_kernel: str | None = None,
) -> dict[str, Any]:
    k, every = args.concurrent, [s for r in rounds for ss in r.samples.values() for s in ss]
    engines = sorted({s.engine for s in every if s.engine}) or [args.engine or "qemu"]
    report: dict[str, Any] = {
        "image": spec.image,
        "kernel": spec.kernel,
        "image_kernel_name": own_kernel,  # measured beside --kernel, when it names another
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
    b, r, ik = report["banger"], report["raw"], report["image_kernel_name"]
    if b and (w := report[WarmCreate.key]):
        cold_p50, warm_p50 = b["wall"]["p50"], w["wall"]["p50"]
        speedup = cold_p50 / warm_p50 if warm_p50 > 0 else math.inf
        report["warm_vs_cold"] = {"cold_p50": cold_p50, "warm_p50": warm_p50, "speedup": speedup}
        report["target"] = {
            "warm_p50": warm_p50,
            "speedup": speedup,
            "limit": TARGET_WARM_P50,
            "min_speedup": TARGET_WARM_SPEEDUP,
            "met": warm_p50 <= TARGET_WARM_P50 and speedup >= TARGET_WARM_SPEEDUP,
            "what": f"warm create -> SSH p50 <= {TARGET_WARM_P50:.1f} s and "
            f">= {TARGET_WARM_SPEEDUP:.0f}x faster than cold",
        }
    if b and report[ImageKernel.key]:
        mine, own = b["wall"]["p50"], report[ImageKernel.key]["wall"]["p50"]
        report["kernel_vs_image_kernel"] = {
            "kernel": spec.kernel,
            "image_kernel": ik,
            "p50": mine,
            "image_kernel_p50": own,
            "ratio": mine / own if own > 0 else None,
        }
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
    w = report[WarmCreate.key]
    title = "banger vm create -> SSH ready vs raw QEMU boot of the same artifacts"
    if w:
        title = "banger vm create -> SSH ready: cold boot vs warm create (golden snapshot restore)"
    lines = [
        title,
        f"engine {report['engine']}, accel {report['accel'].upper()}, image {report['image']}, "
        f"kernel {report['kernel']}, {report['vcpus']} vCPU / {report['memory_mib']} MiB, "
        f"{report['runs']} run(s) of {k} VM(s) at a time",
        "",
    ]
    if b and w:
        cold, warm = b["stage_p50"], w["stage_p50"]
        keys = [k for k in STAGES if k in cold or k in warm]
        keys += sorted((set(cold) | set(warm)) - set(STAGES))
        table = [(stage, fmt_s(cold.get(stage)), fmt_s(warm.get(stage))) for stage in keys]
        lines += [format_table(["stage", "cold p50 s", "warm p50 s"], table), ""]
    elif b:
        rows = [(stage, fmt_s(v)) for stage, v in b["stage_p50"].items()]
        lines += [format_table(["banger stage", "p50 s"], rows), ""]
    sides = [(report[key], v.labels) for key, v in VARIANTS.items() if report[key]]
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
    if kv := report.get("kernel_vs_image_kernel"):
        lines.append(
            f"kernel {kv['kernel']} vs the image's {kv['image_kernel']}: create -> SSH p50 "
            f"{kv['p50']:.3f} s vs {kv['image_kernel_p50']:.3f} s"
            + (f" ({kv['ratio']:.3f}x)" if kv["ratio"] else "")
        )
    if (ps := r["poller_slack"] if r else {}).get("n"):
        lines.append(
            f"banger's SSH poller on the raw guests got in {ps['p50']:+.3f} s after the "
            f"tight poll (p50; min {ps['min']:+.3f}, max {ps['max']:+.3f})"
        )
    if (wc := report.get("warm_vs_cold")) and (t := report["target"]):
        verdict = "met" if t["met"] else "NOT met"
        lines.append(
            f"warm create p50 {wc['warm_p50']:.3f} s vs cold boot p50 {wc['cold_p50']:.3f} s: "
            f"{wc['speedup']:.1f}x faster"
        )
        lines.append(f"target ({t['what']}): {verdict}")
        return "\n".join(lines)
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
    made: list[Variant] = [BangerCreate(client, spec), raw]
    if own_kernel := image_kernel(client, args, spec):
        log(f"kernel {spec.kernel} is measured beside the image's kernel {own_kernel}")
        made.append(ImageKernel(client, spec))
    banger_side = ("both", "banger")
    variants = [
        v
        for v in made
        if args.only in ("both", v.key) or (v.key == ImageKernel.key and args.only in banger_side)
    ]
    if args.warm:
        warm = WarmCreate(client, spec)
        warm.prime()
        variants = [BangerCreate(client, spec), warm]
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
                if v.key == "banger" and samples[0][0].argv and not args.warm:
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
    report = build_report(args, spec, rounds, parity, own_kernel)
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
            from banger.artifacts.kernels import catalog, load_kernel

            if args.kernel and args.kernel not in catalog():  # built: nothing to pull
                if load_kernel(box.paths.kernels_dir, args.kernel) is None:
                    raise RuntimeError(
                        f"kernel {args.kernel} is not in {box.paths.kernels_dir}: build it "
                        f"there (BANGER_DATA_DIR={box.paths.data_dir} banger kernel build "
                        f"--name {args.kernel}) or pass --data-dir"
                    )
                box.pull(args.image, show=True)  # the image and its own kernel, measured beside it
            else:
                box.pull(args.image, args.kernel, show=True)
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
