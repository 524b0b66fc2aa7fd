"""Fault injection for tests, off unless the daemon runs with BANGER_TEST_HOOKS=1.

A test sets a stage name (`POST /v1/debug/fail-at?stage=disks`, or the env var
BANGER_FAIL_AT at daemon start); the next create raises right after that stage
did its work, so the test can check that a failed create rolls back everything.
"""

from __future__ import annotations

import os

from banger.errors import BangerError

_fail_at: str | None = os.environ.get("BANGER_FAIL_AT") or None


def enabled() -> bool:
    return os.environ.get("BANGER_TEST_HOOKS") == "1"


def set_fail_at(stage: str | None) -> None:
    global _fail_at
    _fail_at = stage or None


def maybe_fail(stage: str) -> None:
    if enabled() and _fail_at == stage:
        raise BangerError(f"injected failure at stage `{stage}`", code="injected_failure")
