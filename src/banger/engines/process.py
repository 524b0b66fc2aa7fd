"""Hypervisor processes: spawned detached, tracked by pid + start time.

This module and `banger.system` are the only places allowed to import
`subprocess` (a test enforces it).

VM processes must outlive the daemon, so they are never the daemon's children:
`spawn` runs the hypervisor through a throwaway `/bin/sh` that backgrounds it and
prints `$!`, then exits. The hypervisor is re-parented to init (or the nearest
subreaper) at once, lives in a session of its own, and a restarted daemon finds it
again by pid. Because a pid can be recycled, every later check pairs the pid with
the process start time from /proc/<pid>/stat (field 22), which never changes for
the life of a process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from banger.engines.base import EngineHandle
from banger.errors import CommandFailed

# $1 = stdout file, $2 = stderr file, then the argv. `echo $!` is the only output,
# so reading the launcher's stdout never blocks on the hypervisor itself.
_LAUNCHER = 'o=$1; e=$2; shift 2; "$@" </dev/null >>"$o" 2>>"$e" & echo $!'

# How long a started hypervisor may take to answer on its control socket. An idle host
# needs milliseconds (QEMU's QMP, Firecracker's API), but a loaded one may not run the
# new process for seconds. The wait ends at once when the process exits, so only a
# hypervisor that hangs before answering costs the whole bound.
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Spawned:
    pid: int
    start_time: int


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    stdout: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Spawned:
    """Start `argv` detached; stderr goes to `log`, stdout to `stdout` (or `log`).

    Both files are opened for appending so a restarted VM keeps its history.
    Engines pass the VM's run dir as `cwd` so a VM never pins the daemon's cwd.
    Raises `CommandFailed` when the process is gone before we can record it.
    """
    out = stdout or log
    for f in {log, out}:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch(mode=0o600, exist_ok=True)
    proc = subprocess.run(
        ["/bin/sh", "-c", _LAUNCHER, "banger-spawn", str(out), str(log), *map(str, argv)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
        check=False,
        timeout=10,
    )
    text = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0 or not text.isdigit():
        raise CommandFailed(
            f"could not launch `{argv[0]}`: {proc.stderr.decode(errors='replace').strip()}"
        )
    pid = int(text)
    start = pid_start_time(pid)
    if start is None:
        raise CommandFailed(
            f"`{os.path.basename(argv[0])}` exited immediately: {log_tail(log) or 'no output'}",
            hint=f"see {log}",
        )
    return Spawned(pid, start)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the
    # last ')'. What follows starts with field 3 (state).
    return raw[raw.rfind(")") + 2 :].split()


def pid_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot), or None if gone."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 is index 19 counting from field 3


def is_alive(pid: int, start_time: int) -> bool:
    """True when `pid` runs and is the very process that had `start_time`.

    Zombies count as dead: a VM whose parent does not reap it (e.g. a container
    init that never calls wait) has still exited.
    """
    return pid > 0 and pid_start_time(pid) == start_time


def kill(pid: int, start_time: int | None = None, sig: int = signal.SIGKILL) -> bool:
    """Signal `pid` if it is (still) ours; returns whether a signal was sent."""
    if pid <= 0 or (start_time is not None and not is_alive(pid, start_time)):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


async def wait_gone(pid: int, start_time: int, timeout: float) -> bool:
    """Poll until the process is gone; True if it went within `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while is_alive(pid, start_time):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


async def terminate(pid: int, start_time: int, grace: float = 2.0) -> None:
    """SIGTERM (lets the hypervisor finish in-flight disk writes), then SIGKILL.

    `grace=0` skips SIGTERM. Raises `CommandFailed` if even SIGKILL did not work.
    """
    if (
        grace > 0
        and kill(pid, start_time, signal.SIGTERM)
        and await wait_gone(pid, start_time, grace)
    ):
        return
    kill(pid, start_time, signal.SIGKILL)
    if not await wait_gone(pid, start_time, 5.0):
        raise CommandFailed(f"process {pid} did not exit after SIGKILL")


def processes_with_arg(fragment: str) -> list[Spawned]:
    """Live processes whose command line has an argument containing `fragment`.

    Finds a hypervisor by the VM directory its argv names, for the one instant a
    daemon can die in: after the process exists but before its pid was recorded.
    """
    found = []
    needle = fragment.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(needle in arg for arg in argv[1:]):
            start = pid_start_time(int(entry.name))
            if start is not None:
                found.append(Spawned(int(entry.name), start))
    return found


def open_pidfd(pid: int, start_time: int) -> int | None:
    """A pidfd for our process (readable once it exits), or None when it is already
    gone. Raises OSError where the kernel has no pidfd_open (callers poll instead)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    # The pid may have been recycled between the record and the open: check after.
    if not is_alive(pid, start_time):
        os.close(fd)
        return None
    return fd


def log_tail(path: Path, lines: int = 5, max_bytes: int = 8192) -> str:
    """The last lines of a log file, joined with ' | ', for error messages."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(line for line in data.strip().splitlines()[-lines:] if line.strip())


class DetachedEngine:
    """What both engines do alike with their hypervisor process. An engine adds how
    it talks to it: a readiness probe for `_wait_ready`, and `_request_shutdown`."""

    name: str
    _start_timeout: float

    async def _wait_ready(
        self, handle: EngineHandle, ready: Callable[[], Awaitable[bool]], log: Path, poll: float
    ) -> None:
        """Poll `ready` until True; fail with the log's tail if the process exits."""
        deadline = time.monotonic() + self._start_timeout
        while True:
            if not self.is_running(handle):
                raise CommandFailed(
                    f"{self.name} exited during start: {log_tail(log) or 'no output'}",
                    hint=f"see {log}",
                )
            if await ready():
                return
            if time.monotonic() > deadline:
                raise CommandFailed(
                    f"{self.name} did not answer on {handle.control_socket} "
                    f"within {self._start_timeout:.0f}s",
                    hint=f"see {log}",
                )
            await asyncio.sleep(poll)

    async def _request_shutdown(self, handle: EngineHandle) -> bool:
        """Ask the guest to shut down; False when the request could not be sent."""
        raise NotImplementedError

    async def stop(self, handle: EngineHandle, timeout: float) -> None:
        if not self.is_running(handle):
            return
        if await self._request_shutdown(handle) and await wait_gone(
            handle.pid, handle.start_time, timeout
        ):
            return
        await terminate(handle.pid, handle.start_time)

    async def kill(self, handle: EngineHandle) -> None:
        await terminate(handle.pid, handle.start_time, grace=0.0)

    def is_running(self, handle: EngineHandle) -> bool:
        return is_alive(handle.pid, handle.start_time)
