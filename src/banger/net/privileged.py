"""One implementation of each privileged network operation, reachable two ways.

Every bridge/TAP/sysctl operation is registered here under a short name. `dispatch`
runs it in-process when we are root, and otherwise runs

    sudo -n -- <this python> -m banger.net.privileged <op> '<json kwargs>'

through `banger.system.run(..., privileged=True)`; that child calls the very same
registered function and prints one JSON document, `{"ok": true, "result": ...}` or
`{"ok": false, "error": {code, message, hint}}`, so errors keep their type and hint
across the sudo boundary. Only registered names run, with keyword arguments that
must match the function's signature; the functions validate every name they get.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from typing import Any

from banger.errors import BangerError, CommandFailed, InvalidInput, PrivilegeError, from_dict
from banger.system import is_root, run, sudo_ready

Op = Callable[..., Any]

_OPS: dict[str, Op] = {}
# Ops that only read: in the current namespace netlink dumps need no privilege.
_READ_ONLY: set[str] = set()


def register(name: str, *, read_only: bool = False) -> Callable[[Op], Op]:
    def deco(fn: Op) -> Op:
        _OPS[name] = fn
        if read_only:
            _READ_ONLY.add(name)
        return fn

    return deco


def _direct(op: str, kwargs: dict[str, Any]) -> bool:
    if is_root():
        return True
    return op in _READ_ONLY and kwargs.get("netns") is None


def dispatch(op: str, **kwargs: Any) -> Any:
    """Run registered `op` with `kwargs` (JSON-able) where it has the privilege it needs."""
    if op not in _OPS:
        raise InvalidInput(f"unknown privileged network operation {op!r}")
    if _direct(op, kwargs):
        return _OPS[op](**kwargs)
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


def _load_ops() -> None:
    # Importing the modules registers their operations.
    from banger.net import bridge, nat, tap  # noqa: F401


def _call(op: str, raw: str) -> Any:
    _load_ops()
    fn = _OPS.get(op)
    if fn is None:
        raise InvalidInput(f"unknown operation {op!r}", hint=f"one of: {', '.join(sorted(_OPS))}")
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
    # Run through the importable module so that the registry the op modules fill
    # is the one `main` reads (this file is `__main__` here, a different module).
    from banger.net.privileged import main as _main

    sys.exit(_main())
