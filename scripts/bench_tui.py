"""Benchmark `banger tui` with many VMs: how long until the table is full, what one
refresh costs on the UI thread, and how long a key press takes to move the cursor.

A private daemon runs in a temporary BANGER_HOME whose store holds N stopped VM
records (written before the daemon starts, as it stores them); nothing boots and no
network is touched. The app runs headless under Textual's pilot.

    make bench-tui ARGS="--vms 100 --presses 50"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def record_vms(db: Path, n: int) -> None:
    from banger.store import Store
    from banger.vm import VMRecord, VMRepository

    store = Store(db)
    repo = VMRepository(store)
    try:
        for i in range(n):
            repo.save(
                VMRecord(
                    id=f"{i:012x}",
                    name=f"bench-{i:04d}",
                    state="stopped",
                    image="debian-bookworm",
                    kernel="debian-6.1",
                    engine="qemu",
                    vcpus=1 + i % 4,
                    memory_mib=512,
                    disk_bytes=1 << 32,
                    work_bytes=1 << 31,
                    mac=f"02:00:00:00:{i // 256:02x}:{i % 256:02x}",
                    ip=f"172.30.{i // 250}.{2 + i % 250}",
                )
            )
    finally:
        store.close()


def ms(xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(len(xs) * 0.95))]
    return f"median {statistics.median(xs) * 1000:7.2f} ms   p95 {p95 * 1000:7.2f} ms"


async def measure(n: int, presses: int, seconds: float) -> None:
    from banger.paths import default_paths
    from banger.tui.app import BangerApp

    paths = default_paths()
    applies: list[float] = []
    app = BangerApp(paths, interval=0.8)
    real_apply = app._apply

    def timed_apply(*args: object) -> None:
        t = time.perf_counter()
        real_apply(*args)  # type: ignore[arg-type]
        applies.append(time.perf_counter() - t)

    app._apply = timed_apply  # type: ignore[method-assign]
    t0 = time.perf_counter()
    async with app.run_test(size=(120, 40)) as pilot:
        while app.w_vms.row_count < n:
            await pilot.pause(0.005)
        full = time.perf_counter() - t0
        keys: list[float] = []
        span = max(1, min(20, n - 1))
        for i in range(presses):
            key = "down" if (i // span) % 2 == 0 else "up"
            before = app.w_vms.cursor_row
            t = time.perf_counter()
            await pilot.press(key)
            while app.w_vms.cursor_row == before:
                await pilot.pause(0)
            keys.append(time.perf_counter() - t)
        await pilot.pause(seconds)  # refreshes keep coming while idle
    print(f"VMs in the table: {n}")
    print(f"table full after start:  {full * 1000:7.1f} ms (daemon already running)")
    print(f"one refresh (UI thread): {ms(applies)}   ({len(applies)} refreshes)")
    print(f"key press → cursor moved: {ms(keys)}   ({presses} presses)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=100, help="VM records (at least 2)")
    ap.add_argument("--presses", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=3.0, help="idle time to sample refreshes")
    args = ap.parse_args()
    if args.vms < 2:
        ap.error("--vms must be at least 2 (the cursor has to move)")
    home = Path(tempfile.mkdtemp(prefix="bbt-", dir="/tmp"))
    os.environ["BANGER_HOME"] = str(home)
    daemon = None
    try:
        from banger.paths import default_paths

        paths = default_paths()
        record_vms(paths.database, args.vms)
        paths.log_dir.mkdir(parents=True, exist_ok=True)
        with open(paths.log_dir / "bench.out", "ab") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "banger.daemon", "--foreground"],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while not paths.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        asyncio.run(measure(args.vms, args.presses, args.seconds))
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(15)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
