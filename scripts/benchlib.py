"""What the benchmarks share: statistics, plain tables, argument types and stop
signals that become exceptions, so every `finally` (VM deletion, sandbox teardown)
runs on Ctrl-C or SIGTERM. The sandbox itself is tests/sandbox.py."""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.sandbox


@dataclass
class Sample:
    """One VM timed from its start until SSH accepted the key."""

    wall: float  # start -> SSH ready, seconds
    accel: str | None
    name: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # banger's per-stage
    engine: str | None = None
    ip: str | None = None
    banger_poll: float | None = None  # raw + --compare-poller: banger's poller got in
    argv: list[str] = field(default_factory=list, repr=False)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
    xs = list(values)
    return {"n": len(xs), "p50": statistics.median(xs), "min": min(xs), "max": max(xs)}


@dataclass(frozen=True)
class Overhead:
    ratio: float  # measured / baseline
    seconds: float  # measured - baseline
    percent: float  # of the baseline

    def meets(self, target_ratio: float) -> bool:
        return self.ratio <= target_ratio


def overhead(measured_s: float, baseline_s: float) -> Overhead:
    if baseline_s <= 0:
        raise ValueError(f"raw time must be positive, got {baseline_s}")
    diff = measured_s - baseline_s
    return Overhead(measured_s / baseline_s, diff, diff / baseline_s * 100)


def fmt_s(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain monospace table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in r] for r in rows]]
    if any(len(r) != len(headers) for r in cells):
        raise ValueError("every row needs one cell per header")
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        rest = [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        return "  ".join([r[0].ljust(widths[0]), *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= minimum (0 or 1)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            what = "must be at least 1" if minimum else "must not be negative"
            raise argparse.ArgumentTypeError(f"{what}, got {value}")
        return value

    return parse


class Terminated(SystemExit):
    pass


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_stop_signal(signum: int, _frame: object) -> None:
    for sig in STOP_SIGNALS:  # later ones must not cut the cleanup short
        signal.signal(sig, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(128 + signum)


def stop_signals_raise() -> None:
    """The first SIGINT/SIGTERM/SIGHUP becomes an exception, later ones are ignored.
    SIGINT too: a shell starts background jobs with it ignored."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)


def parallel(fn: Callable[[str], T], names: Sequence[str], timeout: float | None = None) -> list[T]:
    """fn on every name at once, on daemon threads (a Ctrl-C need not wait for them);
    once all are done, the failure that came first is raised."""
    done: dict[str, T] = {}
    failed: list[BaseException] = []

    def call(name: str) -> None:
        try:
            done[name] = fn(name)
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=call, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if failed:
        raise failed[0]
    return [done[n] for n in names if n in done]


def proc_argv(pid: int | None) -> list[str]:
    """A running process's argv (empty when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes() if pid else b""
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


async def wait_ssh(
    ip: str, key_path: Path, proc: subprocess.Popen[bytes], timeout: float, logs: Sequence[Path]
) -> float:
    """When a guest booted by `proc` first accepts root's SSH key and runs `true`
    (perf_counter). A TCP probe every 50 ms first keeps the poll tight: an SSH connect
    to a guest not up yet can sit in SYN retransmission for a second or more. `logs`
    (the hypervisor's, the console) are quoted when the guest dies or never answers."""
    import asyncssh

    key, deadline, last = asyncssh.read_private_key(key_path), time.monotonic() + timeout, None
    opts: dict[str, Any] = dict(username="root", client_keys=[key], known_hosts=None)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            why = next((t for t in map(tail, logs) if t), "")
            raise RuntimeError(f"raw qemu exited ({proc.returncode}) before SSH: {why}")
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(ip, 22), 0.5)
            w.close()
            async with asyncssh.connect(ip, connect_timeout=10, login_timeout=10, **opts) as c:
                await c.run("true", check=True, timeout=10)
            return time.perf_counter()
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            last = exc
            await asyncio.sleep(0.05)
    raise TimeoutError(
        f"raw guest {ip} did not accept SSH within {timeout:.0f}s ({last}); "
        f"console: {tail(logs[-1])}"
    )
