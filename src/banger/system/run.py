"""Running host programs, directly or with privilege."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from banger.errors import CommandFailed, PrivilegeError
from banger.system.tools import require_tool


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")


def is_root() -> bool:
    return os.geteuid() == 0


@functools.cache
def sudo_ready() -> bool:
    """True when privileged commands can run without a password prompt."""
    if is_root():
        return True
    try:
        require_tool("sudo")
    except Exception:
        return False
    proc = subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False)
    return proc.returncode == 0


def _argv(argv: Sequence[str], privileged: bool) -> list[str]:
    cmd = [str(a) for a in argv]
    if "/" not in cmd[0]:
        cmd[0] = require_tool(cmd[0])
    if privileged and not is_root():
        if not sudo_ready():
            raise PrivilegeError(
                f"`{os.path.basename(cmd[0])}` needs root and sudo would ask for a password",
                hint="run banger as root, or allow passwordless sudo for ip, nft and "
                "losetup (see README: Privileges)",
            )
        cmd = ["sudo", "-n", "--", *cmd]
    return cmd


def _check(cmd: list[str], rc: int, out: bytes, err: bytes, check: bool) -> Result:
    res = Result(tuple(cmd), rc, out, err)
    if check and rc != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-5:]
        raise CommandFailed(
            f"`{' '.join(cmd[:4])}{' …' if len(cmd) > 4 else ''}` failed (exit {rc}): "
            + (" | ".join(tail) or "no output"),
            hint="see the daemon log for the full command and output",
        )
    return res


def run(
    argv: Sequence[str],
    *,
    privileged: bool = False,
    check: bool = True,
    input: bytes | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Result:
    cmd = _argv(argv, privileged)
    try:
        proc = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            timeout=timeout,
            check=False,
            preexec_fn=die_with_parent(),
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"`{cmd[0]}` timed out after {timeout}s") from exc
    return _check(cmd, proc.returncode, proc.stdout, proc.stderr, check)


async def arun(
    argv: Sequence[str],
    *,
    privileged: bool = False,
    check: bool = True,
    input: bytes | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Result:
    """Async `run`; the child is killed if the awaiting task is cancelled."""
    cmd = _argv(argv, privileged)
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        start_new_session=True,
        preexec_fn=die_with_parent(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except (asyncio.CancelledError, TimeoutError) as exc:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if isinstance(exc, TimeoutError):
            raise CommandFailed(f"`{cmd[0]}` timed out after {timeout}s") from exc
        raise
    assert proc.returncode is not None
    return _check(cmd, proc.returncode, out, err, check)


@functools.cache
def _prctl() -> Callable[..., int] | None:
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec hook that makes the child get `sig` when the thread that started it
    dies (the daemon crashed, a test run was killed), so a build or unpack does not go
    on writing into a tree nobody owns and a helper does not outlive its owner. A child
    whose parent is gone before the hook runs exits at once. The caller's thread must
    outlive the child (the one that waits for it). Resolved in the parent: the child,
    forked from a threaded process, must not import or load anything."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(sig))
        if os.getppid() != parent:  # died before the signal was armed
            os._exit(1)

    return hook


def run_lines(
    argv: Sequence[str],
    on_line: Callable[[str], None],
    *,
    on_idle: Callable[[], None] | None = None,
    idle_every: float = 2.0,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    nice: int = 0,
    check: bool = True,
) -> Result:
    """Run a long program, handing each line of its output (stdout and stderr merged)
    to `on_line` as it comes, and calling `on_idle` after `idle_every` s of silence.

    Either callback may raise (for example `Cancelled`): the program's whole process
    group is then terminated (SIGTERM, SIGKILL after 10 s) and waited for before the
    exception propagates. The program also gets SIGTERM if this process dies. A non-zero
    exit raises `CommandFailed` naming the last lines of output (with `check`); the
    result's stdout holds the last 40 lines either way.
    """
    cmd = _argv(argv, False)
    if nice:
        cmd = [require_tool("nice"), "-n", str(nice), *cmd]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        start_new_session=True,
        preexec_fn=die_with_parent(),
    )
    assert proc.stdout is not None
    lines: queue.Queue[bytes | None] = queue.Queue()
    tail: deque[str] = deque(maxlen=40)

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    reader = threading.Thread(target=pump, name=f"run-lines-{proc.pid}", daemon=True)
    reader.start()
    try:
        while True:
            try:
                raw = lines.get(timeout=idle_every)
            except queue.Empty:
                if on_idle is not None:
                    on_idle()
                continue
            if raw is None:
                break
            line = raw.decode(errors="replace").rstrip("\n")
            tail.append(line)
            on_line(line)
        proc.wait()
    except BaseException:
        # SIGTERM first: make then deletes the half-written targets it was building,
        # so a later run does not take a truncated object for an up-to-date one.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        reader.join(timeout=5)
        proc.stdout.close()
    out = "\n".join(tail).encode()
    return _check(cmd, proc.returncode, out, out, check)


def spawn_detached(argv: Sequence[str], *, log_path: os.PathLike[str] | str) -> int:
    """Start a long-lived process in its own session, output appended to log_path.

    Used for the daemon; it must not die with the CLI that started it. The log is
    private (0600) and the process starts with umask 077, so what it writes is too.
    """
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
            umask=0o077,
        )
    return proc.pid


def run_interactive(argv: Sequence[str]) -> int:
    """Run a program attached to our terminal (e.g. `ssh`) and return its exit code."""
    cmd = [str(a) for a in argv]
    if "/" not in cmd[0]:
        cmd[0] = require_tool(cmd[0])
    return subprocess.call(cmd)
