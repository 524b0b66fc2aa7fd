"""Is a booting guest still getting somewhere, and why did a VM's process end?

Under load a TCG guest may take minutes to reach SSH, so readiness has no fixed
wall clock: it waits as long as the guest shows progress (its console log grows)
and fails at once when the process is gone or the console shows a kernel panic.
The same console reading explains an engine that exited on its own (`exit_reason`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from banger.engines.process import log_tail
from banger.errors import BangerError

PANIC = "Kernel panic"


def _tail(path: Path, max_bytes: int = 16384) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _panic_line(text: str) -> str | None:
    for line in text.splitlines():
        if PANIC in line:
            return line[line.index(PANIC) :].strip()
    return None


def exit_reason(engine: str, pid: int, console_log: Path, engine_log: Path | None) -> str:
    """Why a VM's hypervisor process ended, as far as its logs tell."""
    console = _tail(console_log)
    panic = _panic_line(console)
    if panic:
        return f"the guest kernel panicked ({panic})"
    last = console.rstrip().splitlines()[-1:] or [""]
    if "reboot: Power down" in last[0] or "reboot: System halted" in last[0]:
        return "the guest powered off"
    if "reboot: Restarting system" in last[0]:
        return "the guest rebooted (a reboot stops a banger VM; `banger vm start` boots it)"
    detail = log_tail(engine_log) if engine_log is not None else ""
    return f"the {engine} process (pid {pid}) exited unexpectedly (killed or crashed)" + (
        f": {detail}" if detail else ""
    )


class BootWatch:
    """Called while waiting for a guest: raises when it died or stopped progressing.

    Progress is console output. `stall` seconds without a new byte (and without the
    process doing anything else we can see) end the wait.
    """

    def __init__(
        self,
        console_log: Path,
        is_running: Callable[[], bool],
        stall: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console_log = console_log
        self.is_running = is_running
        self.stall = stall
        self.clock = clock
        self._size = -1
        self._since = clock()
        self._scanned = 0

    def __call__(self) -> None:
        if not self.is_running():
            raise BangerError(
                "the VM process exited while waiting for SSH",
                hint=f"see the console: {self.console_log}",
            )
        try:
            size = self.console_log.stat().st_size
        except OSError:
            size = 0
        now = self.clock()
        if size != self._size:
            self._size, self._since = size, now
            self._check_panic(size)
        elif now - self._since > self.stall:
            raise BangerError(
                f"the guest made no progress for {self.stall:.0f}s (no console output)",
                hint=f"see the console: {self.console_log}; `boot_stall_timeout` in "
                "config.toml sets how long a quiet guest may take",
            )

    def _check_panic(self, size: int) -> None:
        if size <= self._scanned:
            return
        try:
            with self.console_log.open("rb") as f:
                f.seek(max(0, self._scanned - len(PANIC)))
                fresh = f.read(size - self._scanned + len(PANIC)).decode(errors="replace")
        except OSError:
            return
        self._scanned = size
        panic = _panic_line(fresh)
        if panic:
            raise BangerError(
                f"the guest kernel panicked while booting ({panic})",
                hint=f"see the console: {self.console_log}",
            )
