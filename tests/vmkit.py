"""Helpers for end-to-end VM tests: artifacts pulled once per machine, and a private
daemon plus CLI running inside a network namespace the test creates (tests/sandbox.py).

Artifacts (kernel, image) are pulled in the host namespace into the per-machine cache
($BANGER_TEST_CACHE, default ~/.cache/banger-test) shared via BANGER_DATA_DIR, so
only the first run on a machine pays for the image build. Pulls touch no network
configuration; everything that does (bridge, TAPs, nft) happens in the namespace.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from tests import netns
from tests.sandbox import CACHE, Sandbox, sandbox, test_env

NsBanger = Sandbox  # the banger CLI as a user inside the sandbox's namespace runs it
DATA = CACHE / "data"

__all__ = ["CACHE", "DATA", "NsBanger", "ensure_artifacts", "private_home"]


def ensure_artifacts(home: Path) -> None:
    """Pull the default kernel and image through the real CLI (no-ops when cached)."""
    box = Sandbox.create(home, data_dir=DATA, own_netns=False, env=test_env())
    try:
        box.pull()
    finally:
        box.teardown()


@contextmanager
def private_home(
    *,
    data: Callable[[Path], Path] | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Sandbox]:
    """A private daemon and CLI in a namespace of their own, with a BANGER_HOME of their
    own: a new short directory under /tmp (VM sockets live below it and UNIX socket
    paths are short), removed on the way out. Artifacts come from the shared cache
    (call ensure_artifacts first) unless `data(home)` makes and returns a data dir of
    the home's own. `env` adds to the boot tests' variables (tests.sandbox.test_env)."""
    home = Path(tempfile.mkdtemp(prefix=netns.PREFIX, dir="/tmp"))
    try:
        data_dir = DATA if data is None else data(home)
        with sandbox(home, data_dir=data_dir, env={**test_env(), **(env or {})}) as box:
            yield box
    finally:
        shutil.rmtree(home, ignore_errors=True)
