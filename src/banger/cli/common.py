"""Connecting to the daemon from a command, once per process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from banger.api.models import Operation
from banger.cli.output import StageProgress, err
from banger.client import Client


def client() -> Client:
    ctx = click.get_current_context()
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    root.obj = obj
    if "client" not in obj:
        c = Client.connect()
        if c.started_daemon_pid is not None:
            err.print(f"[dim]started the banger daemon (pid {c.started_daemon_pid})[/]")
        obj["client"] = c
        ctx.call_on_close(c.close)
    c = obj["client"]
    assert isinstance(c, Client)
    return c


def follow(op: Operation, title: str, quiet: bool = False) -> Operation:
    """Stream an operation's stages to stderr and return its final state."""
    c = client()
    with StageProgress(title, enabled=not quiet) as prog:
        final = c.wait(op, on_event=prog)
        prog.done(final)
    return final


json_option: Callable[[Any], Any] = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON."
)
