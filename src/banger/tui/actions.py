"""What can be done to a VM from the TUI, as data.

Each `VMAction` says which key runs it, which VM states it applies to, whether it
asks first, and how it calls the public client. The VMs view builds its key
bindings, its footer and its fan-out from this table, so a new daemon capability
(suspend, snapshots, exec …) is one entry here: `supported` hides the action while
the daemon does not list the feature in `GET /v1/status` (or the client lacks the
method the action needs).

Actions are one of three kinds:
- `op`: calls the daemon per VM (an operation, followed in the panel, or a direct
  change whose result is a line of text); several marked VMs fan out concurrently
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
ANY = frozenset({"creating", "running", "stopped", "error", "suspended"})
RUNNING = frozenset({"running"})
STOPPED = frozenset({"stopped", "error", "suspended"})  # start resumes a suspended VM
Supported = Callable[[Client, frozenset[str]], bool]


def _always(_: Client, __: frozenset[str]) -> bool:
    return True


def _feature(name: str) -> Supported:
    def check(_: Client, features: frozenset[str]) -> bool:
        return name in features

    return check


def _client_has(method: str) -> Supported:
    def check(c: Client, _: frozenset[str]) -> bool:
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
    run: Callable[[Client, VM, str], Operation | str] | None = None  # str: the prompt's answer
    argv: Callable[[VM, str], list[str]] | None = None  # terminal: `banger` arguments
    prompt: str = ""  # asked first (e.g. a command, a snapshot name); {name} is the VM
    supported: Supported = _always
    multi: bool = True  # applies to every marked VM (else: the highlighted one)


def _action(name: str) -> Callable[[Client, VM, str], Operation]:
    def run(c: Client, vm: VM, _: str) -> Operation:
        return c.vm_action(vm.name, name)

    return run


def _snapshot(c: Client, vm: VM, as_name: str) -> Operation:
    result = getattr(c, "snapshot_vm")(vm.name, as_name or None)  # noqa: B009 (optional API)
    assert isinstance(result, Operation)
    return result


def _toggle_nat(c: Client, vm: VM, _: str) -> str:
    from banger.api.models import SetVM

    after = c.set_vm(vm.name, SetVM(nat=not vm.nat))
    return f"{vm.name}: NAT {'on' if after.nat else 'off'}"


def _delete(c: Client, vm: VM, _: str) -> Operation:
    # The confirmation dialog is the safeguard the CLI's --force stands for.
    return c.delete_vm(vm.name, force=vm.state == "running")


VM_ACTIONS: list[VMAction] = [
    VMAction("start", "u", "Start", "started", "op", STOPPED, run=_action("start")),
    VMAction("stop", "s", "Stop", "stopped", "op", RUNNING, run=_action("stop")),
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
        argv=lambda vm, _: ["vm", "ssh", vm.name],
        multi=False,
    ),
    VMAction(
        "nat",
        "t",
        "Toggle NAT",
        "",
        "op",
        frozenset({"running", "stopped", "error", "suspended"}),
        show=False,
        run=_toggle_nat,
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
        run=_action("suspend"),
        supported=_feature("suspend"),
    ),
    VMAction(
        "snapshot",
        "S",
        "Snapshot",
        "snapshotted",
        "op",
        frozenset({"running", "stopped", "suspended"}),
        show=False,
        prompt="Snapshot {name} as (empty: a name with the date)",
        run=_snapshot,
        supported=_client_has("snapshot_vm"),
        multi=False,
    ),
    VMAction(
        "exec",
        "e",
        "Exec",
        "",
        "terminal",
        RUNNING,
        show=False,
        prompt="Command to run in {name} (through the guest agent)",
        argv=lambda vm, cmd: ["vm", "exec", "-i", "-t", vm.name, "--", "sh", "-c", cmd],
        supported=_client_has("exec"),
        multi=False,
    ),
]

BY_ID = {a.id: a for a in VM_ACTIONS}
