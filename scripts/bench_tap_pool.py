#!/usr/bin/env python3
"""Cold TAP setup vs warm-pool acquire: median of N runs each (spec target: pool >= 3x).

Runs as root inside a network namespace it creates and deletes; the host's own
network configuration is never touched. Two call paths are measured:

- `in-namespace`: the daemon's path (the caller already lives in the namespace);
- `netns=`: every call hops into the namespace by name (tests, tooling).

Usage: sudo uv run python scripts/bench_tap_pool.py [--runs 20]
"""

from __future__ import annotations

import argparse
import functools
import secrets
import statistics
import sys
import time
from collections.abc import Callable

from banger.net._ns import call_in_netns
from banger.net.bridge import ensure_bridge
from banger.net.pool import TapPool
from banger.net.tap import create_tap, delete_tap
from banger.system import is_root, run


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def bench(runs: int, netns: str | None) -> tuple[float, float]:
    """(cold create median ms, pool acquire median ms)."""
    cold = []
    for i in range(runs):
        name = f"tap-cold-{i}"
        cold.append(_timed(functools.partial(create_tap, name, "banger0", netns=netns)))
        delete_tap(name, netns=netns)
    pool = TapPool("banger0", size=runs, netns=netns)
    pool.refill()
    warm = [_timed(pool.acquire) for _ in range(runs)]
    assert pool.stats.cold == 0, "every acquire should have been warm"
    for name in pool.busy:
        delete_tap(name, netns=netns)
    return statistics.median(cold), statistics.median(warm)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    if not is_root():
        print("needs root to create a network namespace (sudo uv run python ...)", file=sys.stderr)
        return 2
    ns = f"bgt-bench-{secrets.token_hex(3)}"
    run(["ip", "netns", "add", ns])
    try:
        ensure_bridge("banger0", netns=ns)
        results = {
            "in-namespace": call_in_netns(ns, lambda: bench(args.runs, None)),
            "netns=": bench(args.runs, ns),
        }
    finally:
        run(["ip", "netns", "del", ns], check=False)
    print(f"TAP setup, median of {args.runs} runs each")
    for path, (cold, warm) in results.items():
        print(
            f"  {path:<13} cold create {cold:7.3f} ms   pool acquire {warm * 1000:7.1f} us"
            f"   speed-up {cold / warm:,.0f}x"
        )
    ok = all(cold >= 3 * warm for cold, warm in results.values())
    print("target (pool >= 3x faster):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
