"""Helpers for end-to-end VM tests: artifacts pulled once per machine, and a private
daemon plus CLI running inside a network namespace the test creates (tests/sandbox.py).

Artifacts (kernel, image) are pulled in the host namespace into the per-machine cache
($BANGER_TEST_CACHE, default ~/.cache/banger-test) shared via BANGER_DATA_DIR, so
only the first run on a machine pays for the image build. Pulls touch no network
configuration; everything that does (bridge, TAPs, nft) happens in the namespace.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.sandbox import CACHE, Sandbox, sandbox, test_env

NsBanger = Sandbox  # the banger CLI as a user inside the sandbox's namespace runs it
DATA = CACHE / "data"

__all__ = ["CACHE", "DATA", "NsBanger", "banger_in_netns", "ensure_artifacts"]


def ensure_artifacts(home: Path) -> None:
    """Pull the default kernel and image through the real CLI (no-ops when cached)."""
    box = Sandbox.create(home, data_dir=DATA, own_netns=False, env=test_env())
    try:
        box.pull()
    finally:
        box.teardown()


@contextmanager
def banger_in_netns(home: Path) -> Iterator[Sandbox]:
    with sandbox(home, data_dir=DATA, env=test_env()) as box:
        yield box
