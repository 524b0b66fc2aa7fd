#!/usr/bin/env python3
"""Benchmark `banger vm exec` and `banger vm cp` against SSH on the same VM.

In the boot tests' sandbox (tests/sandbox.py: a fresh network namespace `bgbx-<hex>`,
a private daemon and BANGER_HOME, the tests' artifact cache or --data-dir), one VM
is created, then:

  exec     `banger vm exec VM -- true` wall time per CLI invocation (p50/p90 over
           --runs), next to `banger vm ssh VM -- true`; both run inside the
           namespace (`ip netns exec`), as a user there would.
  cp       a --size MB random file into the VM and back with `banger vm cp`, next
           to `scp` with banger's own key and known_hosts (MB/s, contents checked).
  fan-out  16 concurrent execs on the VM through the Python API: every exit code and
           output must be right.

Targets (issue 11): exec p50 <= 60 ms. Everything made (VM, daemon, namespace,
temporary files) is removed at the end, also on failure or Ctrl-C.

Usage: make bench-exec ARGS="--runs 30 --size 200 [--json]"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import log, percentile
from tests.sandbox import CACHE, Sandbox


def timed(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        out.append(time.perf_counter() - t0)
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    box = Sandbox.create(data_dir=args.data_dir or CACHE / "data", prefix="bgbx-")
    result: dict[str, Any] = {}
    try:
        log("pulling (if needed) and creating VM `bench`")
        box.pull(show=True)  # in the host namespace: the sandbox's has no way out
        t0 = time.perf_counter()
        box.run("vm", "create", "--name", "bench", "--memory", "1G")
        log(f"VM ready in {time.perf_counter() - t0:.1f}s")
        c = box.client()
        cli = box.argv()

        log(f"exec vs ssh, {args.runs} runs each")
        timed([*cli, "vm", "exec", "bench", "--", "true"], box.env, 3)  # warm up
        timed([*cli, "vm", "ssh", "bench", "--", "true"], box.env, 3)
        ex = timed([*cli, "vm", "exec", "bench", "--", "true"], box.env, args.runs)
        ss = timed([*cli, "vm", "ssh", "bench", "--", "true"], box.env, args.runs)
        netns_cost = timed(["ip", "netns", "exec", box.ns, "true"], box.env, args.runs)
        result["exec_ms"] = {"p50": percentile(ex, 50) * 1e3, "p90": percentile(ex, 90) * 1e3}
        result["ssh_ms"] = {"p50": percentile(ss, 50) * 1e3, "p90": percentile(ss, 90) * 1e3}
        result["netns_exec_overhead_ms"] = statistics.median(netns_cost) * 1e3
        api = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            c.exec("bench", ["true"])
            api.append(time.perf_counter() - t0)
        result["api_exec_ms"] = {"p50": percentile(api, 50) * 1e3, "p90": percentile(api, 90) * 1e3}

        log(f"cp vs scp, {args.size} MB")
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            src = Path(tmp) / "blob"
            with open(src, "wb") as f:
                for _ in range(args.size):
                    f.write(os.urandom(1 << 20))
            digest = hashlib.sha256(src.read_bytes()).hexdigest()
            mb = args.size
            t0 = time.perf_counter()
            box.run("vm", "cp", str(src), "bench:/root/blob")
            cp_in = time.perf_counter() - t0
            t0 = time.perf_counter()
            box.run("vm", "cp", "bench:/root/blob", str(Path(tmp) / "back"))
            cp_out = time.perf_counter() - t0
            back = hashlib.sha256((Path(tmp) / "back").read_bytes()).hexdigest()
            assert back == digest, "vm cp round trip changed the file"
            info = c.ssh_info("bench")
            from banger.system.ssh import ssh_options

            opts = ssh_options(Path(str(info["key"])), Path(str(info["known_hosts"])))
            scp = ["ip", "netns", "exec", box.ns, "scp", "-q", *opts]
            t0 = time.perf_counter()
            subprocess.run([*scp, str(src), f"root@{info['ip']}:/root/blob.scp"], check=True)
            scp_in = time.perf_counter() - t0
            t0 = time.perf_counter()
            dest = str(Path(tmp) / "back.scp")
            subprocess.run([*scp, f"root@{info['ip']}:/root/blob.scp", dest], check=True)
            scp_out = time.perf_counter() - t0
            result["cp_MBps"] = {"in": mb / cp_in, "out": mb / cp_out}
            result["scp_MBps"] = {"in": mb / scp_in, "out": mb / scp_out}
            c.exec("bench", "rm -f /root/blob /root/blob.scp")

        log("16 concurrent execs")

        def one(n: int) -> bool:
            r = c.exec("bench", f"seq {1000 + n}; echo err{n} >&2; exit {n}")
            return (
                r.exit_code == n
                and r.output.split() == [str(i) for i in range(1, 1001 + n)]
                and r.stderr == f"err{n}\n".encode()
            )

        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            oks = list(pool.map(one, range(16)))
        result["concurrent16"] = {
            "all_correct": all(oks),
            "correct": sum(oks),
            "wall_s": time.perf_counter() - t0,
        }
    finally:
        box.teardown()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--size", type=int, default=200, help="MB copied each way")
    ap.add_argument("--data-dir", type=Path, help="data dir (default: the tests' cache)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = bench(args)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(
            f"vm exec -- true   p50 {r['exec_ms']['p50']:.1f} ms  p90 {r['exec_ms']['p90']:.1f} ms"
        )
        print(f"vm ssh -- true    p50 {r['ssh_ms']['p50']:.1f} ms  p90 {r['ssh_ms']['p90']:.1f} ms")
        print(f"  (both include `ip netns exec`: {r['netns_exec_overhead_ms']:.1f} ms)")
        print(f"Client.exec       p50 {r['api_exec_ms']['p50']:.1f} ms (in-process)")
        print(
            f"vm cp {args.size} MB      in {r['cp_MBps']['in']:.1f} MB/s  "
            f"out {r['cp_MBps']['out']:.1f} MB/s"
        )
        print(
            f"scp {args.size} MB        in {r['scp_MBps']['in']:.1f} MB/s  "
            f"out {r['scp_MBps']['out']:.1f} MB/s"
        )
        cc = r["concurrent16"]
        print(f"16 concurrent     {cc['correct']}/16 correct in {cc['wall_s']:.2f}s")
    target = r["exec_ms"]["p50"] <= 60
    print(f"target exec p50 <= 60 ms: {'met' if target else 'NOT met'}")
    return 0 if r["concurrent16"]["all_correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
