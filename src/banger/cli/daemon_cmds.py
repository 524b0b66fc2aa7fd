"""`banger daemon start|stop|status`."""

from __future__ import annotations

import os
import signal
import time

import click

from banger.cli.common import json_option
from banger.cli.output import out, print_json
from banger.client import Client
from banger.errors import DaemonUnavailable
from banger.paths import default_paths, ensure_dirs
from banger.spawn import socket_answers, start_detached


@click.group()
def daemon() -> None:
    """Start, stop and inspect the banger daemon."""


@daemon.command()
def start() -> None:
    """Start the daemon in the background (any command does this on demand)."""
    paths = default_paths()
    ensure_dirs(paths)
    if socket_answers(paths):
        out.print(f"the daemon is already running ({paths.socket})")
        return
    pid = start_detached(paths)
    out.print(f"started the banger daemon (pid {pid}) on {paths.socket}")


@daemon.command()
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait.")
def stop(timeout: float) -> None:
    """Stop the daemon. Running VMs keep running and are re-adopted on next start."""
    paths = default_paths()
    if not socket_answers(paths):
        out.print("the daemon is not running")
        return
    pid = int(paths.pid_file.read_text()) if paths.pid_file.exists() else None
    with Client(paths) as c:
        c.shutdown()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not socket_answers(paths) and (pid is None or not _alive(pid)):
            out.print("stopped the banger daemon")
            return
        time.sleep(0.05)
    if pid is not None and _alive(pid):
        os.kill(pid, signal.SIGKILL)
        out.print(f"the daemon did not stop in {timeout:.0f}s; killed pid {pid}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@daemon.command()
@json_option
def status(as_json: bool) -> None:
    """Show whether the daemon runs, its pid, version, uptime and directories."""
    paths = default_paths()
    if not socket_answers(paths):
        if as_json:
            print_json({"running": False, "socket": str(paths.socket)})
            raise SystemExit(3)
        raise DaemonUnavailable(
            f"the daemon is not running (no answer on {paths.socket})",
            hint="`banger daemon start`, or just run any command",
        )
    with Client(paths) as c:
        st = c.status()
    if as_json:
        print_json({"running": True, **st.model_dump()})
        return
    out.print(f"[green]running[/]  pid {st.pid}  version {st.version} (api {st.api})")
    out.print(f"uptime   {st.uptime_s:.0f}s   VMs running: {st.vms_running}")
    out.print(f"socket   {st.socket}")
    for k, v in st.dirs.items():
        out.print(f"{k:<8} {v}")
