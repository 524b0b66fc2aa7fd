"""Fault injection for tests, off unless the daemon runs with BANGER_TEST_HOOKS=1.

`BANGER_FAIL_AT=<stage>` makes the named create stage raise after it did its work,
so tests can check that a failed create rolls back everything it made.
"""

from __future__ import annotations

import os

from banger.errors import BangerError


def enabled() -> bool:
    return os.environ.get("BANGER_TEST_HOOKS") == "1"


def maybe_fail(stage: str) -> None:
    if enabled() and os.environ.get("BANGER_FAIL_AT") == stage:
        raise BangerError(f"injected failure at stage `{stage}`", code="injected_failure")
