"""Benchmark the CLI's wall time and the idle daemon's memory.

20 runs each (p50 and max of the wall clock from spawn to exit, p50 of the CPU time)
of `banger vm list`, `vm list --json`, `vm show NAME`, `--help` and `--version`, next
to `python3 -c pass` with the same interpreter in the same run, interleaved so a
burst of host load hits every command alike. They run against a private daemon in
the shared sandbox (tests/sandbox.py: its own BANGER_HOME and network namespace)
holding 10 VMs. The CLI offers no create without a boot, so the VMs are stopped
records written through the store API (`VMRepository`) before the daemon starts, as
the daemon itself stores them. The commands run inside the namespace.

Each phase prints the host load average it was measured at (the timed runs: before and
after them; the running VMs: when their RSS was read).

The daemon's resident memory (VmRSS from /proc) is read three ways: idle with no VM
(a fresh daemon, before the records are written), idle with the stopped VMs (a
restarted daemon: its network is made by the first `vm create`/`vm start`), and, with
`--running N`, once N VMs of a small shape (1 vCPU, `--memory`, 256 MiB by default:
the default image's services leave a 128 MiB guest too little page cache to stay
responsive, see the README) created through the CLI are all running. The first
boots and starts the shape's golden snapshot; the others restore it (warm create), as
a user's would. That runs real guests, so run it
under `bootslot`:

    make bench-cli ARGS="--runs 20 --vms 10"
    bootslot make bench-cli ARGS="--running 10"

Targets: `vm list` p50 <= 150 ms; daemon RSS <= 50 MB idle (no VM, and with the
stopped VMs) and <= 60 MB with 10 running VMs. Exit 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import benchlib
from bench_tui import record_vms

LIST_TARGET_MS = 150.0
RSS_TARGET_MB = 50.0  # idle: no VM, or only stopped ones
RUNNING_TARGET_MB = 60.0  # with 10 running VMs


def _banger() -> str:
    """The `banger` console script of this interpreter's environment: what users run."""
    exe = Path(sys.executable).parent / "banger"
    return str(exe) if exe.exists() else "banger"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str]) -> tuple[float, float]:
    """One run: wall time from spawn to exit, and the CPU time it used (user + system;
    less sensitive to a busy host than the wall time)."""
    cpu, t = _children_cpu(), time.perf_counter()
    res = subprocess.run(argv, capture_output=True, check=False)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.decode()}")
    return wall, _children_cpu() - cpu


def measure(runs: int) -> dict[str, list[tuple[float, float]]]:
    """Inside the sandbox's namespace, with its environment: time every command."""
    banger = _banger()
    cases = {
        "python3 -c pass": [sys.executable, "-c", "pass"],
        "banger --version": [banger, "--version"],
        "banger --help": [banger, "--help"],
        "banger vm list": [banger, "vm", "list"],
        "banger vm list --json": [banger, "vm", "list", "--json"],
        "banger vm show bench-0000": [banger, "vm", "show", "bench-0000"],
    }
    for argv in (cases["banger vm list"], cases["banger vm show bench-0000"]):
        timed(argv)  # untimed: the daemon's first answers, the page cache
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, argv in cases.items():
            results[name].append(timed(argv))
    return results


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for pid {pid}")


def wait_golden(root: Path, timeout: float = 900.0) -> None:
    """Until the golden snapshot of the shape exists (`golden.json` is written last),
    or `timeout`: later creates then boot cold, which only takes longer."""
    deadline = time.monotonic() + timeout
    while not list(root.glob("*/golden.json")) and time.monotonic() < deadline:
        time.sleep(2)


def bench(runs: int, vms: int, settle: float, running: int, memory: str = "256M") -> int:
    from tests.sandbox import CACHE, sandbox

    # No warm pools: the daemon's idle memory, not the pools' work, is what is measured.
    env = {"BANGER_TAP_POOL_SIZE": "0", "BANGER_DISK_POOL_SIZE": "0"}
    data = CACHE / "data" if running else None  # booting needs the shared artifacts
    with sandbox(prefix="bcli-", env=env, data_dir=data) as box:
        if running:
            box.pull(show=True)
        pid = box.start_daemon()
        time.sleep(settle)
        rss_empty = rss_mb(pid)
        box.stop_daemon()
        record_vms(box.paths.database, vms)
        pid = box.start_daemon()
        argv = [*box.prefix, sys.executable, __file__, "--measure", "--runs", str(runs)]
        load_before = os.getloadavg()[0]
        out = subprocess.run(argv, env=box.env, capture_output=True, text=True, check=False)
        timed_load = (load_before, os.getloadavg()[0])  # around the timed runs
        if out.returncode != 0:
            raise SystemExit(f"the measurement failed:\n{out.stderr}")
        results: dict[str, list[list[float]]] = json.loads(out.stdout)
        time.sleep(settle)
        rss_stopped = rss_mb(pid)
        rss_running = running_load = None
        if running:
            for i in range(running):
                t = time.monotonic()
                shape = ("--vcpus", "1", "--memory", memory)
                box.run("vm", "create", "--name", f"run-{i:02d}", *shape, timeout=1800)
                took, rss = time.monotonic() - t, rss_mb(pid)  # figures even if a later one hangs
                print(f"run-{i:02d} up after {took:.0f}s; daemon RSS {rss:.1f} MB", file=sys.stderr)
                if i == 0:  # the rest restore the golden snapshot the first one started
                    wait_golden(box.paths.state_dir / "golden")
            states = [vm["state"] for vm in box.json("vm", "list")]
            if states.count("running") < running:
                raise SystemExit(f"not every VM is running: {states}")
            time.sleep(settle)
            rss_running = rss_mb(pid)
            running_load = os.getloadavg()[0]  # when that RSS was read
        # the sandbox's teardown stops the daemon and every VM by PID

    print(f"{vms} VMs recorded through the store API (stopped; the CLI has no create")
    print(f"without a boot); private daemon in the sandbox; {runs} interleaved runs each;")
    before, after = timed_load
    print(f"host load average {before:.1f} before, {after:.1f} after the timed runs", end="")
    print(f" ({os.cpu_count()} CPUs)")
    rows = []
    for name, samples in results.items():
        wall = benchlib.summarize([w * 1000 for w, _ in samples])
        cpu = benchlib.summarize([c * 1000 for _, c in samples])
        rows.append([name, f"{wall['p50']:.1f}ms", f"{wall['max']:.1f}ms", f"{cpu['p50']:.1f}ms"])
    print(benchlib.format_table(["command", "wall p50", "wall max", "cpu p50"], rows))
    list_p50 = benchlib.summarize([w * 1000 for w, _ in results["banger vm list"]])["p50"]
    ok = {
        "list": list_p50 <= LIST_TARGET_MS,
        "idle": rss_empty <= RSS_TARGET_MB,
        "stopped": rss_stopped <= RSS_TARGET_MB,
    }
    verdict = {True: "ok", False: "OVER"}
    print(f"vm list p50 {list_p50:.1f} ms (target <= {LIST_TARGET_MS:.0f} ms): ", end="")
    print(verdict[ok["list"]])
    print(f"daemon RSS idle {rss_empty:.1f} MB (target <= {RSS_TARGET_MB:.0f} MB): ", end="")
    print(verdict[ok["idle"]])
    print(f"daemon RSS with {vms} stopped VMs {rss_stopped:.1f} MB ", end="")
    print(f"(target <= {RSS_TARGET_MB:.0f} MB): {verdict[ok['stopped']]}")
    if rss_running is not None:
        ok["running"] = rss_running <= RUNNING_TARGET_MB
        print(
            f"daemon RSS with {running} running VMs {rss_running:.1f} MB "
            f"(target <= {RUNNING_TARGET_MB:.0f} MB): {verdict[ok['running']]}; "
            f"host load average {running_load:.1f} then"
        )
    return 0 if all(ok.values()) else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=benchlib.count(1), default=20)
    ap.add_argument("--vms", type=benchlib.count(1), default=10)
    ap.add_argument("--settle", type=float, default=2.0, help="idle seconds before the RSS read")
    ap.add_argument(
        "--running",
        type=benchlib.count(0),
        default=0,
        help="also boot N VMs (1 vCPU, --memory each) and read the RSS with all running",
    )
    ap.add_argument("--memory", default="256M", help="guest memory of the --running VMs")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the inner run
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.runs)))
        return
    if os.geteuid() != 0:
        sys.exit("bench-cli runs its daemon in a network namespace: run it as root")
    benchlib.stop_signals_raise()
    sys.exit(bench(args.runs, args.vms, args.settle, args.running, args.memory))


if __name__ == "__main__":
    main()
