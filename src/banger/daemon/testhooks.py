"""Fault injection for tests, off unless the daemon runs with BANGER_TEST_HOOKS=1.

Two kinds of hook:

- a failing stage: a test sets a stage name (`POST /v1/debug/fail-at?stage=disks`,
  or BANGER_FAIL_AT at daemon start); the next create raises right after that stage
  did its work, so the test can check that a failed create rolls back everything.
- named crash points (`POINTS`): with `BANGER_CRASH_AT=<point>[,<point>...]` (or
  `POST /v1/debug/crash-at?point=...`) the daemon SIGKILLs itself the moment it
  reaches that point: a kill -9 at an exact instant. The crash-point test uses
  them to check that the next daemon reclaims everything.
"""

from __future__ import annotations

import logging
import os
import signal

from banger.errors import BangerError, InvalidInput

log = logging.getLogger("banger.testhooks")

# Every point where the lifecycle can be cut, in the order an operation passes them.
# `<op>:<stage>` is reached right after that stage did its work.
POINTS = (
    "create:recorded",  # the record exists, nothing else
    "create:disks",  # `create:<capability>`: right after that capability's prepare
    "create:vsock",
    "create:network",  # prepare: lease taken
    "create:nat",
    "create:dns",
    "create:publish",
    "create:attached",  # TAP, NAT rule, DNS record made
    "create:spawned",  # the hypervisor exists and its pid is recorded
    "create:booted",  # the hypervisor accepted the config
    "create:ready",  # SSH (and agent) answered, not yet marked running
    "start:recorded",
    "start:attached",
    "start:spawned",
    "start:booted",
    "stop:recorded",
    "stop:halted",  # the process is gone, runtime resources not yet released
    "delete:halted",  # a running VM was killed and released (a stopped one: no-op)
    "delete:recorded",
    "delete:disks",
    "delete:network",
    "suspend:recorded",  # state `suspending` recorded, nothing saved yet
    "suspend:saved",  # the state is complete, the paused process still lives
    "resume:recorded",  # state `resuming` recorded, nothing launched
    "resume:attached",
    "resume:spawned",  # the hypervisor exists, the state is loading
    "resume:booted",  # the guest runs again, its saved state removed
)

_fail_at: str | None = os.environ.get("BANGER_FAIL_AT") or None
_crash_at: set[str] = set()


def enabled() -> bool:
    return os.environ.get("BANGER_TEST_HOOKS") == "1"


def set_fail_at(stage: str | None) -> None:
    global _fail_at
    _fail_at = stage or None


def maybe_fail(stage: str) -> None:
    if enabled() and _fail_at == stage:
        raise BangerError(f"injected failure at stage `{stage}`", code="injected_failure")


def set_crash_at(point: str | None) -> None:
    """Arm (or, with None, clear) a crash point."""
    if point is None:
        _crash_at.clear()
        return
    if point not in POINTS and not point.startswith("create:"):  # + create:<capability>
        raise InvalidInput(f"unknown crash point `{point}`", hint=f"one of: {', '.join(POINTS)}")
    _crash_at.add(point)


def crash_point(name: str) -> None:
    """A crash point: SIGKILL the daemon here when a test armed `name`."""
    if enabled() and name in _crash_at:
        log.warning("test hook: SIGKILL at crash point %s", name)
        for h in logging.getLogger().handlers:
            h.flush()
        os.kill(os.getpid(), signal.SIGKILL)


for _point in filter(None, (os.environ.get("BANGER_CRASH_AT") or "").split(",")):
    set_crash_at(_point)
