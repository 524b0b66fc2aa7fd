"""Helpers for end-to-end VM tests: artifacts pulled once per machine, and a private
daemon plus CLI running inside a network namespace the test creates.

Artifacts (kernel, image) are pulled in the host namespace into a per-machine cache
($BANGER_TEST_CACHE, default ~/.cache/banger-test) shared via BANGER_DATA_DIR, so
only the first run on a machine pays for the image build. Pulls touch no network
configuration; everything that does (bridge, TAPs, nft) happens in the namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import netns

CACHE = Path(os.environ.get("BANGER_TEST_CACHE") or Path.home() / ".cache" / "banger-test")


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANGER_")}
    env.update(
        BANGER_HOME=str(home),
        BANGER_DATA_DIR=str(CACHE / "data"),
        BANGER_TEST_HOOKS="1",
        BANGER_TAP_POOL_SIZE="2",
    )
    return env


def ensure_artifacts(home: Path) -> None:
    """Pull the default kernel and image through the real CLI (no-ops when cached)."""
    env = base_env(home)
    try:
        for kind in ("kernel", "image"):
            res = subprocess.run(
                [sys.executable, "-m", "banger.cli", kind, "pull"],
                env=env,
                capture_output=True,
                text=True,
                timeout=3600,
                check=False,
            )
            assert res.returncode == 0, f"{kind} pull failed:\n{res.stderr}"
    finally:
        subprocess.run([sys.executable, "-m", "banger.cli", "daemon", "stop"], env=env, check=False)


@dataclass
class NsBanger:
    """The banger CLI as a user inside namespace `ns` runs it."""

    ns: str
    home: Path
    env: dict[str, str]

    def run(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "banger.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"banger {' '.join(args)} failed ({res.returncode}):\n{res.stderr}"
            )
        return res

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Start the CLI without waiting (stdout and stderr piped)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "banger.cli", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def in_ns(self, *argv: str) -> str:
        return netns.exec_in(self.ns, *argv).out

    def daemon_pid(self) -> int | None:
        pid_file = self.home / "run" / "bangerd.pid"
        return int(pid_file.read_text()) if pid_file.exists() else None

    def qemu_pids(self) -> list[int]:
        """QEMU processes whose command line points into this test's state dir."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "qemu-system" in cmd and str(self.home) in cmd:
                pids.append(int(entry.name))
        return pids

    def taps(self) -> list[str]:
        out = self.in_ns("ip", "-o", "link", "show", "type", "tun")
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line]


@contextmanager
def banger_in_netns(home: Path) -> Iterator[NsBanger]:
    with netns.namespace() as ns:
        b = NsBanger(ns, home, base_env(home))
        try:
            yield b
        finally:
            b.run("daemon", "stop", check=False, timeout=30)
            for pid in b.qemu_pids():  # never leave a guest behind, whatever happened
                os.kill(pid, signal.SIGKILL)
            if (pid := b.daemon_pid()) is not None:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
