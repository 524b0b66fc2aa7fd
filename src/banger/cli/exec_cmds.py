"""`banger vm exec` and `banger vm cp`: commands and files through the guest agent
(no SSH: works on images without sshd, no keys, no network route needed)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from banger.errors import BangerError, DaemonUnavailable, InvalidInput


def _paths_socket() -> Path:
    from banger.paths import default_paths

    return default_paths().socket


def _open(name: str, spec: dict[str, Any]) -> Any:
    """A stream to the daemon; starts the daemon (like every command) if needed."""
    from banger.stream import GuestStream

    try:
        return GuestStream(_paths_socket(), name, spec)
    except DaemonUnavailable:
        from banger.cli.common import client

        c = client()  # starts one, or explains why it cannot
        return GuestStream(c.paths.socket, name, spec)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            import select

            select.select([], [fd], [])


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _window(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
        return size.lines, size.columns
    except OSError:
        return 0, 0


def _pump_stdin(stream: Any, tty: bool) -> None:
    while True:
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        if not data:
            if not tty:
                stream.close_stdin()
            return
        stream.write(data)


def run_exec(
    name: str,
    command: tuple[str, ...],
    *,
    interactive: bool,
    tty: bool,
    env: dict[str, str],
    workdir: str | None,
    user: str | None,
    timeout: float | None,
) -> int:
    from banger.stream import exec_spec

    rows, cols = _window(0 if sys.stdin.isatty() else 1) if tty else (0, 0)
    spec = exec_spec(
        command,
        stdin=interactive,
        tty=tty,
        env=env,
        workdir=workdir,
        user=user,
        timeout=timeout,
        rows=rows,
        cols=cols,
        term=os.environ.get("TERM"),
    )
    stream = _open(name, spec)
    raw = tty and interactive and sys.stdin.isatty()
    previous: dict[signal.Signals, Any] = {}

    def forward(signum: int, _frame: object) -> None:
        # a thread does the sending: the handler may interrupt a send in progress
        threading.Thread(target=stream.signal, args=(signum,), daemon=True).start()

    def resize(_signum: int, _frame: object) -> None:
        r, c = _window(0)
        if r and c:
            threading.Thread(target=stream.resize, args=(r, c), daemon=True).start()

    if tty:
        previous[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, resize)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, forward)
    info: dict[str, Any] = {}
    try:
        with _raw_terminal(0) if raw else contextlib.nullcontext():
            if interactive:
                threading.Thread(target=_pump_stdin, args=(stream, tty), daemon=True).start()
            for ev in stream.events():
                if ev.kind == "stdout":
                    _write_all(1, ev.data)
                elif ev.kind == "stderr":
                    _write_all(2, ev.data)
                else:
                    info = ev.info
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stream.close()
    code = int(info.get("code", 255))
    if info.get("error"):
        from banger.cli.output import err, escape

        err.print(f"[red]error:[/] {escape(str(info['error']))}", highlight=False)
        if code == 127:
            err.print(f"[dim]hint:[/] is `{command[0]}` installed in {name} and on its PATH?")
    return code


def _env(values: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--env {v!r} is not K=V", hint="e.g. --env DEBUG=1")
        env[key] = value
    return env


@click.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("-i", "--interactive", is_flag=True, help="Send stdin to the command.")
@click.option("-t", "--tty", is_flag=True, help="Run it on a terminal (with -i: a shell).")
@click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="Set a variable.")
@click.option(
    "-w", "--workdir", help="Working directory (default: an OCI image's WorkingDir, else home)."
)
@click.option(
    "-u", "--user", help="User (name or uid[:gid]; default: an OCI image's User, else root)."
)
@click.option("--timeout", type=float, help="Kill the command after S seconds (exit 124).")
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(
    name: str,
    command: tuple[str, ...],
    interactive: bool,
    tty: bool,
    env: tuple[str, ...],
    workdir: str | None,
    user: str | None,
    timeout: float | None,
) -> None:
    """Run a command in a VM through its guest agent; exits with its exit code.

    \b
      banger vm exec NAME -- uname -a
      banger vm exec -it NAME -- bash
      echo hi | banger vm exec -i NAME -- cat
    """
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidInput("no command given", hint=f"banger vm exec {name} -- CMD ARGS...")
    sys.exit(
        run_exec(
            name,
            command,
            interactive=interactive,
            tty=tty,
            env=_env(env),
            workdir=workdir,
            user=user,
            timeout=timeout,
        )
    )


_REMOTE = re.compile(r"^([a-zA-Z0-9][a-zA-Z0-9-]*):(.*)$")


def _split(arg: str) -> tuple[str | None, str]:
    """NAME:/path → (NAME, /path); anything else is local (./a:b stays local)."""
    if arg.startswith(("/", "./", "../", "~")):
        return None, arg
    m = _REMOTE.match(arg)
    if m:
        return m.group(1), m.group(2) or "/root"
    return None, arg


class _Bar:
    """A progress bar on stderr for copies worth watching (and only on a terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.progress: Any = None

    def start(self, total: int) -> None:
        label = self.label
        if self.progress is None and total >= 8 << 20 and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TransferSpeedColumn,
            )

            from banger.cli.output import err

            self.progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=err,
                transient=True,
            )
            self.task = self.progress.add_task(label, total=total)
            self.progress.start()

    def update(self, done: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@click.command("cp")
@click.argument("src")
@click.argument("dst")
def cp(src: str, dst: str) -> None:
    """Copy files or directories between the host and a VM (modes, mtimes, symlinks
    and, as root, ownership are kept).

    \b
      banger vm cp ./proj NAME:/root/proj     into the VM
      banger vm cp NAME:/etc/os-release .     out of it
    A relative VM path is relative to /root.
    """
    from banger.cli.common import client
    from banger.cli.output import err

    (src_vm, src_path), (dst_vm, dst_path) = _split(src), _split(dst)
    if (src_vm is None) == (dst_vm is None):
        raise InvalidInput(
            "exactly one side of `vm cp` must be in a VM",
            hint="write the VM side as NAME:/path, e.g. `banger vm cp ./f box:/root/`",
        )
    if dst_vm is not None and not Path(src_path).expanduser().exists():
        # Checked before a daemon is started for it, and named as typed (`./x`, `~/x`).
        raise InvalidInput(f"{src_path} does not exist", hint="check the local path")
    c = client()
    if dst_vm is not None:
        local = Path(src_path).expanduser()
        bar = _Bar(f"→ {dst_vm}")
        try:
            stats = c.copy_to(dst_vm, local, dst_path, bar.update, bar.start)
        finally:
            bar.close()
        err.print(f"copied {_stats(stats)} to {dst_vm}:{dst_path}", highlight=False)
        return
    assert src_vm is not None
    bar = _Bar(f"← {src_vm}")
    try:
        out = c.copy_from(src_vm, src_path, Path(dst_path).expanduser(), bar.update, bar.start)
    finally:
        bar.close()
    err.print(f"copied {_stats(out)} from {src_vm}:{src_path}", highlight=False)


def _stats(s: dict[str, Any]) -> str:
    from banger.units import format_size

    files, size = int(s.get("files", 0)), int(s.get("bytes", 0))
    return f"{files} file{'s' if files != 1 else ''} ({format_size(size)})"


def attach(group: click.Group) -> None:
    group.add_command(exec_)
    group.add_command(cp)


__all__ = ["BangerError", "attach", "cp", "exec_", "run_exec"]


@click.command("mcp")
@click.option(
    "--max-output",
    type=int,
    default=32 << 10,
    show_default=True,
    help="Most bytes of command output or file content returned per tool call.",
)
def mcp(max_output: int) -> None:
    """Serve the Model Context Protocol on stdio (for coding agents).

    \b
    Register it with an MCP client, e.g.:
      claude mcp add banger -- banger mcp
    """
    from banger.mcp_server import serve

    serve(max_output)
