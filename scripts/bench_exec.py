#!/usr/bin/env python3
"""Benchmark `banger vm exec` and `banger vm cp` against SSH on the same VM.

In a fresh network namespace (`bgbx-<hex>`) with a private daemon (a temporary
BANGER_HOME; the data dir is shared so pulled artifacts are reused, or --data-dir),
one VM is created, then:

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
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from banger.client import Client  # noqa: E402
from banger.paths import Paths  # noqa: E402


def log(msg: str) -> None:
    print(f"bench-exec: {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


class Box:
    def __init__(self, data_dir: Path | None) -> None:
        tag = secrets.token_hex(3)
        self.ns = f"bgbx-{tag}"
        self.home = Path(f"/tmp/bgbx-{tag}")
        self.home.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BANGER_")}
        self.env["BANGER_HOME"] = str(self.home)
        if data_dir:
            self.env["BANGER_DATA_DIR"] = str(data_dir)
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)

    def cli(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns, sys.executable, "-m", "banger.cli"]

    def run(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*self.cli(), *args], env=self.env, check=True, **kw)

    def client(self) -> Client:
        h = self.home
        data = Path(self.env.get("BANGER_DATA_DIR", h / "data"))
        return Client(Paths(h / "config", h / "state", data, h / "run"))

    def close(self) -> None:
        subprocess.run(
            [*self.cli(), "vm", "delete", "--force", "bench"],
            env=self.env,
            capture_output=True,
            check=False,
            timeout=120,
        )
        subprocess.run(
            [*self.cli(), "daemon", "stop"],
            env=self.env,
            capture_output=True,
            check=False,
            timeout=60,
        )
        subprocess.run(["ip", "netns", "del", self.ns], check=False)
        shutil.rmtree(self.home, ignore_errors=True)


def timed(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        out.append(time.perf_counter() - t0)
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    box = Box(args.data_dir)
    result: dict[str, Any] = {}
    try:
        log("pulling (if needed) and creating VM `bench`")
        # Pulls run in the host namespace (the namespace has no uplink) by a daemon that
        # never runs a VM, so it touches no network configuration; then it stops.
        host_cli = [sys.executable, "-m", "banger.cli"]
        for kind in ("kernel", "image"):
            subprocess.run([*host_cli, kind, "pull"], env=box.env, check=True)
        subprocess.run([*host_cli, "daemon", "stop"], env=box.env, check=True)
        t0 = time.perf_counter()
        box.run("vm", "create", "--name", "bench", "--memory", "1G", capture_output=True)
        log(f"VM ready in {time.perf_counter() - t0:.1f}s")
        c = box.client()
        cli = box.cli()

        log(f"exec vs ssh, {args.runs} runs each")
        timed([*cli, "vm", "exec", "bench", "--", "true"], box.env, 3)  # warm up
        timed([*cli, "vm", "ssh", "bench", "--", "true"], box.env, 3)
        ex = timed([*cli, "vm", "exec", "bench", "--", "true"], box.env, args.runs)
        ss = timed([*cli, "vm", "ssh", "bench", "--", "true"], box.env, args.runs)
        netns_cost = timed(["ip", "netns", "exec", box.ns, "true"], box.env, args.runs)
        result["exec_ms"] = {"p50": pct(ex, 50) * 1e3, "p90": pct(ex, 90) * 1e3}
        result["ssh_ms"] = {"p50": pct(ss, 50) * 1e3, "p90": pct(ss, 90) * 1e3}
        result["netns_exec_overhead_ms"] = statistics.median(netns_cost) * 1e3
        api = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            c.exec("bench", ["true"])
            api.append(time.perf_counter() - t0)
        result["api_exec_ms"] = {"p50": pct(api, 50) * 1e3, "p90": pct(api, 90) * 1e3}

        log(f"cp vs scp, {args.size} MB")
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            src = Path(tmp) / "blob"
            with open(src, "wb") as f:
                for _ in range(args.size):
                    f.write(os.urandom(1 << 20))
            digest = hashlib.sha256(src.read_bytes()).hexdigest()
            mb = args.size
            t0 = time.perf_counter()
            box.run("vm", "cp", str(src), "bench:/root/blob", capture_output=True)
            cp_in = time.perf_counter() - t0
            t0 = time.perf_counter()
            box.run("vm", "cp", "bench:/root/blob", str(Path(tmp) / "back"), capture_output=True)
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
        box.close()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--size", type=int, default=200, help="MB copied each way")
    ap.add_argument("--data-dir", type=Path, help="share pulled artifacts from here")
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
