"""What can be done to a VM from the TUI, as data.

Each `VMAction` says which key runs it, which VM states it applies to, whether it
asks first, and how it calls the public client. The VMs view builds its key
bindings, its footer and its fan-out from this table, so a new daemon capability
(suspend, snapshots, exec …) is one entry here: `supported` hides the action while
the client has no such method.

Actions are one of three kinds:
- `op`: starts a daemon operation per VM; several marked VMs fan out concurrently
  and each result is reported on its own;
- `screen`: opens a view for one VM (logs, ports, health, details);
- `terminal`: suspends the TUI and runs a real `banger` command in the terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from banger.api.models import VM, Operation
from banger.client import Client

Kind = Literal["op", "screen", "terminal"]
ANY = frozenset({"creating", "running", "stopped", "error"})
RUNNING = frozenset({"running"})
STOPPED = frozenset({"stopped", "error"})


def _always(_: Client) -> bool:
    return True


def _has(method: str) -> Callable[[Client], bool]:
    def check(c: Client) -> bool:
        return callable(getattr(c, method, None))

    return check


@dataclass(frozen=True)
class VMAction:
    id: str
    key: str
    label: str
    verb: str  # "stopped", for "✓ a stopped"
    kind: Kind
    states: frozenset[str] = ANY
    confirm: bool = False
    show: bool = True  # in the footer (every action is in the `?` key list)
    key_display: str | None = None
    run: Callable[[Client, VM], Operation] | None = None
    argv: Callable[[VM], list[str]] | None = None  # terminal actions: `banger` arguments
    supported: Callable[[Client], bool] = _always
    multi: bool = True  # applies to every marked VM (else: the highlighted one)


def _action(name: str) -> Callable[[Client, VM], Operation]:
    def run(c: Client, vm: VM) -> Operation:
        return c.vm_action(vm.name, name)

    return run


def _stop(c: Client, vm: VM) -> Operation:
    return c.vm_action(vm.name, "stop")


def _delete(c: Client, vm: VM) -> Operation:
    # The confirmation dialog is the safeguard the CLI's --force stands for.
    return c.delete_vm(vm.name, force=vm.state == "running")


def _call(method: str) -> Callable[[Client, VM], Operation]:
    def run(c: Client, vm: VM) -> Operation:
        result = getattr(c, method)(vm.name)
        assert isinstance(result, Operation)
        return result

    return run


VM_ACTIONS: list[VMAction] = [
    VMAction("start", "u", "Start", "started", "op", STOPPED, run=_action("start")),
    VMAction("stop", "s", "Stop", "stopped", "op", RUNNING, run=_stop),
    VMAction(
        "restart", "r", "Restart", "restarted", "op", RUNNING, show=False, run=_action("restart")
    ),
    VMAction(
        "delete",
        "x",
        "Delete",
        "deleted",
        "op",
        frozenset({"running", "stopped", "error"}),
        confirm=True,
        run=_delete,
    ),
    VMAction(
        "ssh",
        "enter",
        "SSH",
        "",
        "terminal",
        RUNNING,
        key_display="⏎",
        argv=lambda vm: ["vm", "ssh", vm.name],
        multi=False,
    ),
    VMAction("logs", "l", "Logs", "", "screen", ANY, multi=False),
    VMAction("ports", "p", "Ports", "", "screen", RUNNING, show=False, multi=False),
    VMAction("health", "h", "Health", "", "screen", ANY, show=False, multi=False),
    VMAction("info", "i", "Details", "", "screen", ANY, show=False, multi=False),
    # Capabilities other parts of banger add; shown once the client has them.
    VMAction(
        "suspend",
        "z",
        "Suspend",
        "suspended",
        "op",
        RUNNING,
        show=False,
        run=_call("suspend_vm"),
        supported=_has("suspend_vm"),
    ),
    VMAction(
        "exec",
        "e",
        "Exec",
        "",
        "terminal",
        RUNNING,
        show=False,
        argv=lambda vm: ["vm", "exec", "-it", vm.name, "--", "/bin/bash", "-l"],
        supported=_has("exec_vm"),
        multi=False,
    ),
]

BY_ID = {a.id: a for a in VM_ACTIONS}
