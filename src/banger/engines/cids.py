"""Host-wide vsock CIDs.

A vhost-vsock CID is unique per *host*, not per banger store: a second daemon (another
BANGER_HOME, another user) or any other VM manager handing a running guest's CID to a
new one makes that VM fail to start (EADDRINUSE). So before a CID is used, it is
checked against

- the command lines of every running process (`...vsock...,guest-cid=N`, how QEMU,
  banger's or anyone's, is told a guest's CID), and
- reservations: a CID being handed out right now is written to a host-wide registry
  directory for RESERVE_FOR seconds, naming the daemon (pid, start time) and its store,
  so two daemons choosing at the same moment, before either hypervisor is up, never
  choose the same. A reservation whose daemon is gone counts for nothing.

Choosing and reserving happen under an flock on the registry's lock file, so the check
and the claim are one step host-wide. Firecracker's hybrid vsock has no host-wide CID,
but it goes through the same choice (a CID is a CID).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path

from banger.engines.process import pid_start_time

log = logging.getLogger("banger.vsock")

RESERVE_FOR = 120.0  # seconds: far longer than from choosing a CID to a running hypervisor
_GUEST_CID = re.compile(rb"vsock[^\x00]*guest-cid=(\d+)")


def default_registry() -> Path:
    uid = os.geteuid()
    return Path("/run/banger/vsock") if uid == 0 else Path(f"/tmp/banger-vsock-{uid}")


def cids_in_command_lines(proc: Path = Path("/proc")) -> set[int]:
    """CIDs named by running processes' command lines (`-device vhost-vsock-…,guest-cid=N`)."""
    found: set[int] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or hidden
        found.update(int(m.group(1)) for m in _GUEST_CID.finditer(cmdline))
    return found


class HostCids:
    """The host-wide view of vsock CIDs for one daemon (`owner`: its store)."""

    def __init__(self, owner: str, registry: Path | None = None) -> None:
        self.owner = owner
        self.registry = registry or default_registry()
        self.me = f"{os.getpid()} {pid_start_time(os.getpid())}"

    def claim(self, choose: Callable[[set[int]], int | None]) -> int | None:
        """Call `choose(taken)` with the CIDs in use elsewhere on the host, and reserve
        what it returns, as one step host-wide. Never fails on the registry: without
        one (unusable directory), only running processes are checked."""
        registry = self._registry()
        if registry is None:
            return choose(cids_in_command_lines())
        lock = os.open(registry / "lock", os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            taken = cids_in_command_lines() | self._reserved_by_others(registry)
            cid = choose(taken)
            if cid is not None:
                self._reserve(registry, cid)
            return cid
        finally:
            os.close(lock)

    def _registry(self) -> Path | None:
        d = self.registry
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(d)
        except OSError as exc:
            log.warning("vsock CID registry %s unusable: %s", d, exc)
            return None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            log.warning("vsock CID registry %s is not a private directory of ours; ignored", d)
            return None
        return d

    def _reserved_by_others(self, registry: Path) -> set[int]:
        taken: set[int] = set()
        now = time.time()
        for entry in registry.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                text = entry.read_text()
                age = now - entry.stat().st_mtime
            except OSError:
                continue
            pid, _, rest = text.partition(" ")
            start, _, owner = rest.partition(" ")
            alive = pid.isdigit() and str(pid_start_time(int(pid))) == start
            if age > RESERVE_FOR or not alive:
                with contextlib.suppress(OSError):
                    entry.unlink()  # stale: its daemon is gone or its VM long started
                continue
            if owner != self.owner:
                taken.add(int(entry.name))
        return taken

    def _reserve(self, registry: Path, cid: int) -> None:
        tmp = registry / f".{cid}.{os.getpid()}"
        try:
            tmp.write_text(f"{self.me} {self.owner}")
            os.replace(tmp, registry / str(cid))
        except OSError as exc:
            log.warning("cannot reserve vsock CID %d in %s: %s", cid, registry, exc)
