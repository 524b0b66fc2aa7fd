#!/usr/bin/env python3
"""Benchmark `vm suspend` and the resume of a suspended VM until SSH answers.

In the boot tests' sandbox (tests/sandbox.py: a fresh network namespace `bgbs-<hex>`,
a private daemon and BANGER_HOME, the tests' artifact cache or --data-dir), one VM
(--memory, default 1G) is created (a cold boot, timed for comparison), then --runs
rounds of:

  suspend  `vm suspend` through the client library, until the operation finished
           (state saved, process ended, TAP released); the daemon's `save` stage
           (the engine's part) is reported beside it.
  resume   `vm start` of the suspended VM until the operation finished: the daemon
           reports success once SSH accepts the key and the agent set the clock.
           Its stages (`restore`, `clock`, `ssh`) are reported too.

Each round checks that a process started before the first suspend still runs.
Then (unless --no-fork) one `vm snapshot` of the running VM and one
`vm create --from` that snapshot until SSH answers are timed.
Targets (issue 8, TCG): resume of a suspended 1 GiB VM -> SSH <= 1.5 s; suspend
<= 2 s. Everything made is removed at the end, also on failure or Ctrl-C.

Usage: make bench-suspend ARGS="--runs 5 [--memory 1G] [--json]"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import fmt_s, format_table, log, stop_signals_raise, summarize
from tests.sandbox import CACHE, Sandbox


def bench(args: argparse.Namespace) -> dict[str, Any]:
    box = Sandbox.create(data_dir=args.data_dir or CACHE / "data", prefix="bgbs-")
    rows: dict[str, list[float]] = {k: [] for k in ("suspend", "save", "resume", "restore",
                                                    "clock", "ssh")}  # fmt: skip
    result: dict[str, Any] = {"memory": args.memory, "runs": args.runs}
    try:
        log("pulling (if needed)")
        box.pull()
        log(f"creating VM `bench` ({args.memory}): a cold boot")
        t0 = time.perf_counter()
        box.run("vm", "create", "--name", "bench", "--memory", args.memory)
        result["cold_create_s"] = time.perf_counter() - t0
        c = box.client(timeout=600)
        c.exec("bench", "nohup sleep 100000 >/dev/null 2>&1 &")
        marker = c.exec("bench", "pgrep -f 'sleep 100000'").output.split()[0]
        for i in range(args.runs):
            t0 = time.perf_counter()
            c.wait(c.vm_action("bench", "suspend"))
            rows["suspend"].append(time.perf_counter() - t0)
            vm = c.vm("bench")
            assert vm.state == "suspended", vm.state
            rows["save"].append(vm.timings.get("save", 0.0))
            time.sleep(1)
            t0 = time.perf_counter()
            c.wait(c.vm_action("bench", "start"))
            rows["resume"].append(time.perf_counter() - t0)
            vm = c.vm("bench")
            for stage in ("restore", "clock", "ssh"):
                rows[stage].append(vm.timings.get(stage, 0.0))
            still = c.exec("bench", "pgrep -f 'sleep 100000'").output.split()
            assert still and still[0] == marker, "the process did not survive the resume"
            log(f"round {i + 1}: suspend {rows['suspend'][-1]:.2f}s, "
                f"resume {rows['resume'][-1]:.2f}s")  # fmt: skip
        result["seconds"] = {k: summarize(v) for k, v in rows.items()}
        if args.fork:
            from banger.api.models import CreateVM

            t0 = time.perf_counter()
            c.wait(c.take_snapshot("bench", "bench-snap"))
            result["snapshot_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            c.wait(c.create_vm(CreateVM(name="bench-fork", from_snapshot="bench-snap")))
            result["fork_s"] = time.perf_counter() - t0
            result["fork_timings"] = c.vm("bench-fork").timings
            log(f"snapshot {result['snapshot_s']:.2f}s, fork -> SSH {result['fork_s']:.2f}s")
    finally:
        box.teardown()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--memory", default="1G")
    ap.add_argument("--data-dir", type=Path, help="data dir (default: the tests' cache)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--no-fork", dest="fork", action="store_false", help="skip `vm snapshot` + fork timing"
    )
    args = ap.parse_args()
    stop_signals_raise()
    result = bench(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    secs = result["seconds"]
    table = [[k, fmt_s(secs[k].get("p50")), fmt_s(secs[k].get("min")), fmt_s(secs[k].get("max"))]
             for k in secs]  # fmt: skip
    print(f"cold create -> SSH: {result['cold_create_s']:.2f}s ({result['memory']})")
    print(format_table(["stage", "p50", "min", "max"], table))
    if "fork_s" in result:
        print(f"vm snapshot (running): {result['snapshot_s']:.2f}s")
        print(f"vm create --from -> SSH: {result['fork_s']:.2f}s {result['fork_timings']}")
    print("targets (TCG): resume -> SSH <= 1.5 s, suspend <= 2 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
