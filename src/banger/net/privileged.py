"""What the sudo path may run: the privileged network operations, in one table.

`OPERATIONS` maps each name to its body in `banger.net.ops`; it is the whole list of
what `python -m banger.net.privileged` runs, and nothing adds to it at run time.
`dispatch` runs an operation in-process when we are root (or when it only reads the
current namespace), and otherwise runs

    sudo -n -- <this python> -m banger.net.privileged <op> '<json kwargs>'

through `banger.system.run(..., privileged=True)`; that child calls the very same
function and prints one JSON document, `{"ok": true, "result": ...}` or
`{"ok": false, "error": {code, message, hint}}`, so errors keep their type and hint
across the sudo boundary. Keyword arguments must match the function's signature; the
functions validate every name they get. (`nft` and `resolvectl` are run through
`sudo -n` as themselves, by `nat` and `resolved`.)
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from banger.errors import BangerError, CommandFailed, InvalidInput, PrivilegeError, from_dict
from banger.net import ops
from banger.system import is_root, run, sudo_ready


@dataclass(frozen=True)
class Operation:
    fn: Callable[..., Any]
    # Only reads: in the current namespace a netlink dump needs no privilege.
    read_only: bool = False


OPERATIONS: dict[str, Operation] = {
    "get_bridge": Operation(ops.get_bridge, read_only=True),
    "ensure_bridge": Operation(ops.ensure_bridge),
    "delete_bridge": Operation(ops.delete_bridge),
    "create_tap": Operation(ops.create_tap),
    "attach_tap": Operation(ops.attach_tap),
    "delete_tap": Operation(ops.delete_tap),
    "set_tap_up": Operation(ops.set_tap_up),
    "list_taps": Operation(ops.list_taps, read_only=True),
    "tap_exists": Operation(ops.tap_exists, read_only=True),
    "forget_neighbor": Operation(ops.forget_neighbor),
    "route_localnet": Operation(ops.route_localnet),
    "ip_forward": Operation(ops.ip_forward),
}


def _direct(op: str, kwargs: dict[str, Any]) -> bool:
    if is_root():
        return True
    return OPERATIONS[op].read_only and kwargs.get("netns") is None


def dispatch(op: str, **kwargs: Any) -> Any:
    """Run `op` with `kwargs` (JSON-able) where it has the privilege it needs."""
    if op not in OPERATIONS:
        raise InvalidInput(f"unknown privileged network operation {op!r}")
    if _direct(op, kwargs):
        return OPERATIONS[op].fn(**kwargs)
    if not sudo_ready():
        raise PrivilegeError(
            f"network operation `{op}` needs root (CAP_NET_ADMIN) and sudo would ask "
            "for a password",
            hint="run bangerd as root, or allow passwordless sudo for "
            f"`{sys.executable} -m banger.net.privileged` (see README: Privileges)",
        )
    argv = [sys.executable, "-m", "banger.net.privileged", op, json.dumps(kwargs)]
    res = run(argv, privileged=True, check=False, timeout=60)
    return _decode(op, res.returncode, res.out, res.stderr.decode(errors="replace"))


def _decode(op: str, rc: int, out: str, err: str) -> Any:
    try:
        doc = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = " | ".join(err.strip().splitlines()[-3:]) or "no output"
        raise CommandFailed(
            f"privileged network operation `{op}` failed (exit {rc}): {tail}",
            hint="run `python -m banger.net.privileged` as root to see the full error",
        ) from None
    if doc.get("ok"):
        return doc.get("result")
    raise from_dict(doc.get("error", {}))


def _call(op: str, raw: str) -> Any:
    entry = OPERATIONS.get(op)
    if entry is None:
        raise InvalidInput(
            f"unknown operation {op!r}", hint=f"one of: {', '.join(sorted(OPERATIONS))}"
        )
    fn = entry.fn
    kwargs = json.loads(raw) if raw else {}
    if not isinstance(kwargs, dict):
        raise InvalidInput("arguments must be a JSON object")
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as exc:
        raise InvalidInput(f"bad arguments for {op}: {exc}") from None
    return fn(**kwargs)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m banger.net.privileged <op> ['<json kwargs>']", file=sys.stderr)
        return 2
    try:
        result = _call(args[0], args[1] if len(args) == 2 else "")
    except BangerError as exc:
        print(json.dumps({"ok": False, "error": exc.to_dict()}))
        return 1
    except ValueError as exc:  # malformed JSON arguments
        print(json.dumps({"ok": False, "error": InvalidInput(str(exc)).to_dict()}))
        return 1
    print(json.dumps({"ok": True, "result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
