"""Connecting to the daemon from a command, once per process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from banger.cli.output import StageProgress, err
from banger.client import Client
from banger.errors import BangerError, Cancelled, DaemonUnavailable, NotFound

if TYPE_CHECKING:  # only the commands that build models import pydantic
    from banger.api.models import VM, Operation, OperationEvent


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


def follow(
    op: Operation,
    title: str,
    quiet: bool = False,
    *,
    cancel_on_interrupt: bool = False,
    output_stage: str | None = None,
) -> Operation:
    """Stream an operation's stages to stderr and return its final state.

    If the daemon is lost mid-way, the error (exit 3) says what became of the
    operation's VM, as a restarted daemon sees it. With `cancel_on_interrupt`,
    Ctrl-C cancels the operation and waits for its rollback. Events of
    `output_stage` are lines of output, printed as they come (unless quiet)."""
    c = client()
    try:
        with StageProgress(title, enabled=not quiet) as prog:

            def on_event(ev: OperationEvent) -> None:
                if output_stage is not None and ev.stage == output_stage:
                    if not quiet:
                        prog.line(ev.detail)
                else:
                    prog(ev)

            try:
                final = c.wait(op, on_event=on_event)
            except KeyboardInterrupt:
                if not cancel_on_interrupt:
                    raise
                raise _cancel(c, op) from None
            prog.done(final)
    except DaemonUnavailable as exc:
        raise after_daemon_loss(c, op, exc) from None
    return final


def _cancel(c: Client, op: Operation) -> BangerError:
    """Ctrl-C: cancel the operation and wait until its rollback is done."""
    err.print(f"[yellow]cancelling {op.kind} {op.target}…[/] (it cleans up after itself)")
    try:
        c.cancel(op.id)
        while (now := c.operation(op.id)).state == "running":
            time.sleep(0.2)
    except KeyboardInterrupt:
        return Cancelled(
            f"{op.kind} {op.target}: cancel requested; the daemon finishes the clean-up",
            hint="`banger daemon status` shows whether it is still running",
        )
    if now.state == "succeeded":
        return Cancelled(f"{op.kind} {op.target} had already finished", hint="nothing was undone")
    return Cancelled(f"{op.kind} {op.target} cancelled; nothing was kept")


def after_daemon_loss(c: Client, op: Operation, exc: DaemonUnavailable) -> DaemonUnavailable:
    """The error for an operation whose daemon went away: ask a (re)started daemon
    what state the operation's VM ended in."""
    lost = f"the banger daemon stopped during {op.kind} {op.target}"
    if op.kind == "image.build":
        return DaemonUnavailable(
            f"{lost}; no image was published, and the next daemon start removes the "
            "build's VM and temp files",
            hint="run the build again (it starts the daemon)",
        )
    if not op.kind.startswith("vm."):
        return DaemonUnavailable(f"{lost}; its outcome is unknown", hint=exc.hint)
    try:
        vm = _ask_again(c, op.target)
    except NotFound:
        return DaemonUnavailable(
            f"{lost}; the restarted daemon has no VM `{op.target}` (it was rolled back)",
            hint="run the command again",
        )
    except BangerError as again:
        return DaemonUnavailable(
            f"{lost}; the daemon cannot be reached: {again.message}", hint=again.hint or exc.hint
        )
    hint = {
        "running": f"it works: `banger vm ssh {vm.name}`",
        "stopped": f"`banger vm start {vm.name}` boots it",
    }.get(vm.state, f"`banger vm show {vm.name}` for details")
    why = f" ({vm.last_error})" if vm.last_error else ""
    return DaemonUnavailable(f"{lost}; {vm.name} is now {vm.state}{why}", hint=hint)


json_option: Callable[[Any], Any] = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON."
)


def _ask_again(c: Client, name: str, patience: float = 30.0) -> VM:
    """The VM as a (re)started daemon reports it. A dying daemon's socket can still
    accept for a moment, so contact is retried for a while."""
    deadline = time.monotonic() + patience
    while True:
        try:
            with Client.connect(c.paths) as fresh:
                return fresh.vm(name)
        except DaemonUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
