"""Throwaway network namespaces for tests, so no test touches the host's namespace.

Each namespace gets a unique `bgt-<hex>` name and is deleted on the way out of
`namespace()`, whether the test passed or not; everything inside it (bridges, TAPs,
nftables tables, sysctls) dies with it.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from banger.system import Result, find_tool, is_root, run

PREFIX = "bgt-"


@functools.cache
def unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if not is_root():
        return "needs root to create network namespaces (run the tests as root)"
    if find_tool("ip") is None:
        return "needs `ip` from iproute2 (apt-get install iproute2)"
    try:
        with namespace():
            pass
    except Exception as exc:
        return f"`ip netns add` does not work here: {exc}"
    return None


def skip_unless_netns() -> pytest.MarkDecorator:
    reason = unavailable_reason()
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def names() -> list[str]:
    out = run(["ip", "netns", "list"]).out
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def leftovers() -> list[str]:
    return [n for n in names() if n.startswith(PREFIX)]


def ip(ns: str, *args: str) -> Result:
    """`ip -n NS ...` (reads and test scaffolding; the code under test uses netlink)."""
    return run(["ip", "-n", ns, *args])


def exec_in(ns: str, *argv: str, check: bool = True) -> Result:
    return run(["ip", "netns", "exec", ns, *argv], check=check)


def add(prefix: str = PREFIX) -> str:
    """A new namespace `<prefix><hex>` with its loopback up (deleted again if half-made)."""
    name = f"{prefix}{secrets.token_hex(4)}"
    try:
        run(["ip", "netns", "add", name])
        ip(name, "link", "set", "lo", "up")
    except BaseException:
        delete(name)
        raise
    return name


def delete(name: str) -> None:
    run(["ip", "netns", "del", name], check=False)
    assert name not in names(), f"namespace {name} survived its deletion"


@contextmanager
def namespace(prefix: str = PREFIX) -> Iterator[str]:
    name = add(prefix)
    try:
        yield name
    finally:
        delete(name)
