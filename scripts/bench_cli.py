"""Benchmark the CLI's wall time and the idle daemon's memory.

20 runs each (p50 and max, wall clock from spawn to exit) of `banger vm list`,
`banger vm show NAME`, `banger --help` and `banger --version`, next to
`python3 -c pass` with the same interpreter in the same run, against a private
daemon in a private BANGER_HOME holding 10 VMs. The CLI offers no create without a
boot, so the VMs are stopped records written through the store API (`VMRepository`)
before the daemon starts, as the daemon itself stores them. The whole run happens in
a network namespace it makes (a daemon that finds VMs prepares the bridge there),
and the daemon's resident memory is read from /proc once the runs are done.

    make bench-cli ARGS="--runs 20 --vms 10"

Targets: `vm list` p50 <= 150 ms; daemon RSS <= 50 MB idle.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_tui import record_vms

LIST_TARGET_MS = 150.0
RSS_TARGET_MB = 50.0


def _banger() -> str:
    """The `banger` console script of this interpreter's environment: what users run."""
    exe = Path(sys.executable).parent / "banger"
    return str(exe) if exe.exists() else shutil.which("banger") or "banger"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """One run: wall time from spawn to exit, and the CPU time it used (user + system;
    less sensitive to a busy host than the wall time)."""
    cpu, t = _children_cpu(), time.perf_counter()
    res = subprocess.run(argv, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.decode()}")
    return wall, _children_cpu() - cpu


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for pid {pid}")


def start_daemon(env: dict[str, str], socket: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "banger.daemon", "--foreground"],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while not socket.exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the daemon did not start; see {log}")
        time.sleep(0.05)
    return daemon


def bench(runs: int, vms: int, settle: float) -> int:
    home = Path(tempfile.mkdtemp(prefix="bcli-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANGER_")}
    env.update(BANGER_HOME=str(home), BANGER_TAP_POOL_SIZE="0", BANGER_DISK_POOL_SIZE="0")
    os.environ.update(env)  # for the store API below: the same paths as the daemon's
    daemon = None
    try:
        from banger.paths import default_paths

        paths = default_paths()
        record_vms(paths.database, vms)
        paths.log_dir.mkdir(parents=True, exist_ok=True)
        daemon = start_daemon(env, paths.socket, paths.log_dir / "bench.out")
        banger = _banger()
        # One untimed run each: the daemon's first answers and the page cache warm up.
        for argv in (["vm", "list"], ["vm", "show", "bench-0000"]):
            timed([banger, *argv], env)
        cases = [
            ("python3 -c pass", [sys.executable, "-c", "pass"]),
            ("banger --version", [banger, "--version"]),
            ("banger --help", [banger, "--help"]),
            ("banger vm list", [banger, "vm", "list"]),
            ("banger vm list --json", [banger, "vm", "list", "--json"]),
            ("banger vm show bench-0000", [banger, "vm", "show", "bench-0000"]),
        ]
        results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in cases}
        for _ in range(runs):  # interleaved, so a burst of host load hits every case alike
            for name, argv in cases:
                results[name].append(timed(argv, env))
        time.sleep(settle)
        rss = rss_mb(daemon.pid)
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)
        shutil.rmtree(home, ignore_errors=True)

    load = os.getloadavg()[0]
    print(f"{vms} VMs recorded through the store API (stopped; the CLI has no create")
    print(f"without boot), private daemon in a network namespace; {runs} runs each,")
    print(f"interleaved; host load average {load:.1f} on {os.cpu_count()} CPUs")
    print(f"{'command':<28} {'wall p50':>9} {'wall max':>9} {'cpu p50':>9}")
    for name, runs_ in results.items():
        walls = [w for w, _ in runs_]
        cpu = statistics.median(c for _, c in runs_) * 1000
        p50, worst = statistics.median(walls) * 1000, max(walls) * 1000
        print(f"{name:<28} {p50:7.1f}ms {worst:7.1f}ms {cpu:7.1f}ms")
    list_p50 = statistics.median(w for w, _ in results["banger vm list"]) * 1000
    ok_list = list_p50 <= LIST_TARGET_MS
    ok_rss = rss <= RSS_TARGET_MB
    print(
        f"vm list p50 {list_p50:.1f} ms (target <= {LIST_TARGET_MS:.0f} ms): "
        f"{'ok' if ok_list else 'OVER'}"
    )
    print(f"daemon RSS idle {rss:.1f} MB (target <= {RSS_TARGET_MB:.0f} MB): ", end="")
    print("ok" if ok_rss else "OVER")
    return 0 if ok_list and ok_rss else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--vms", type=int, default=10)
    ap.add_argument("--settle", type=float, default=2.0, help="idle seconds before the RSS read")
    ap.add_argument("--netns", help=argparse.SUPPRESS)  # set when re-run inside the namespace
    args = ap.parse_args()
    if args.runs < 1 or args.vms < 1:
        ap.error("--runs and --vms must be at least 1")
    if args.netns:
        sys.exit(bench(args.runs, args.vms, args.settle))
    if os.geteuid() != 0:
        sys.exit("bench-cli makes a network namespace: run it as root")
    ns = f"bcli-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        argv = ["ip", "netns", "exec", ns, sys.executable, *sys.argv, "--netns", ns]
        rc = subprocess.run(argv, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    sys.exit(rc)


if __name__ == "__main__":
    main()
