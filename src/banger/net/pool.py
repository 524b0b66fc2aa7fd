"""A warm pool of idle, bridge-attached TAP devices (`tap-pool-N`).

Creating a TAP costs several netlink round trips (and a sudo hop for a non-root
daemon); taking one from the pool is a dictionary operation. The daemon calls
`reclaim` on its first network use, `refill` in the background, `acquire` on the
create path, `release` when a VM stops and `close` at shutdown.

A VM keeps its pooled name while it runs. Renaming to `tap-<vmid>` would need the
link down (a rename is refused while it is up), a second netlink round trip and a
window in which the bridge port flaps, on the very path the pool exists to make
fast; the store records which TAP a VM holds, and IFNAMSIZ (15 characters) would
truncate most VM ids anyway.

Idle TAPs live as long as the daemon that made them: `close` (a clean shutdown)
deletes them, including any a refill still had in flight, while busy ones stay with
their running VMs. They are a cache of this daemon's next creates, not host
configuration: left behind, they would be `ip link` clutter on a host where nothing
runs. Only after a crash are `tap-pool-*` devices left; the next daemon's `reclaim`
adopts them as capacity (up to `size`) and deletes the rest.

Netlink work happens outside the lock (names are reserved first), so a slow refill
never blocks an `acquire`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field

from banger.errors import Conflict, InvalidInput, NotFound
from banger.net._ns import check_ifname
from banger.net.tap import (
    attach_tap,
    create_tap,
    default_owner,
    delete_tap,
    held_taps,
    list_taps,
    set_tap_up,
)

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "tap-pool-"


@dataclass(frozen=True)
class TapLease:
    name: str
    cold: bool  # True: the pool was empty and the TAP was created on demand


@dataclass
class PoolStats:
    warm: int = 0  # acquires served from the pool
    cold: int = 0  # acquires that had to create a TAP
    created: int = 0
    deleted: int = 0


@dataclass(frozen=True)
class ReclaimReport:
    adopted: list[str] = field(default_factory=list)  # now idle in the pool
    deleted: list[str] = field(default_factory=list)  # beyond capacity or unusable
    in_use: list[str] = field(default_factory=list)  # held by running VMs


class TapPool:
    def __init__(
        self,
        bridge: str,
        size: int = 4,
        prefix: str = DEFAULT_PREFIX,
        netns: str | None = None,
        owner_uid: int | None = None,
    ) -> None:
        if size < 0:
            raise InvalidInput(f"TAP pool size must be >= 0, not {size}")
        self.bridge = check_ifname(bridge, "bridge")
        self.prefix = prefix
        check_ifname(f"{prefix}999", "TAP pool prefix")
        self.size = size
        self.netns = netns
        self.owner = default_owner(owner_uid)
        self.stats = PoolStats()
        self._lock = threading.Lock()
        self._idle: deque[str] = deque()
        self._busy: set[str] = set()
        self._reserved: set[str] = set()  # names with netlink work in flight
        self._foreign: set[str] = set()  # our naming pattern, not our device
        self._incoming = 0  # in-flight devices that will land in `_idle`
        self._closed = False  # after `close`: nothing is pooled any more

    # -- introspection -------------------------------------------------------------

    @property
    def idle(self) -> list[str]:
        with self._lock:
            return list(self._idle)

    @property
    def busy(self) -> set[str]:
        with self._lock:
            return set(self._busy)

    def owns(self, name: str) -> bool:
        rest = name[len(self.prefix) :] if name.startswith(self.prefix) else ""
        return rest.isdigit()

    # -- the create path -----------------------------------------------------------

    def acquire(self) -> str:
        """An idle TAP, now marked busy; created on the spot when the pool is empty."""
        return self.lease().name

    def lease(self) -> TapLease:
        with self._lock:
            if self._idle:
                name = self._idle.popleft()
                self._busy.add(name)
                self.stats.warm += 1
                return TapLease(name, cold=False)
            self.stats.cold += 1
        name = self._create_one()
        with self._lock:
            self._reserved.discard(name)
            self._busy.add(name)
        log.info("TAP pool empty: created %s cold", name)
        return TapLease(name, cold=True)

    def set_up(self, name: str, up: bool) -> None:
        """Take a leased TAP's link down or bring it up again (`release` and `reclaim`
        bring a pooled TAP back up whatever state a VM left it in)."""
        if not self.owns(name):
            raise InvalidInput(f"`{name}` is not a `{self.prefix}N` device of this pool")
        set_tap_up(name, up, netns=self.netns)

    def release(self, name: str) -> None:
        """Take back a TAP a VM no longer uses: keep it idle, or delete it when full."""
        if not self.owns(name):
            raise InvalidInput(f"`{name}` is not a `{self.prefix}N` device of this pool")
        with self._lock:
            if name in self._idle or name in self._reserved:
                return  # a repeated release: already on its way back
            self._busy.discard(name)
            keep = not self._closed and len(self._idle) + self._incoming < self.size
            self._reserved.add(name)
            if keep:
                self._incoming += 1
        usable = False
        try:
            if keep:
                # Cheap insurance: whatever the hypervisor or a user did to the port,
                # it goes back to the pool attached and up.
                attach_tap(name, self.bridge, netns=self.netns)
                usable = True
            else:
                self._delete(name)
        except NotFound:
            pass  # the device is gone; nothing to keep
        finally:
            # On any other error the device is forgotten, not pooled: `reclaim` at the
            # next daemon start adopts or deletes it.
            with self._lock:
                self._reserved.discard(name)
                if keep:
                    self._incoming -= 1
                if usable:
                    self._idle.append(name)

    # -- background upkeep ---------------------------------------------------------

    def refill(self) -> int:
        """Create TAPs until `size` are idle; returns how many were created."""
        with self._lock:
            want = self.size - len(self._idle) - self._incoming
            if want <= 0:
                return 0
            self._incoming += want
        done = 0
        try:
            for _ in range(want):
                if self._closed:
                    break
                name = self._create_one()
                with self._lock:
                    self._reserved.discard(name)
                    self._incoming -= 1
                    done += 1
                    if not self._closed:
                        self._idle.append(name)
                        continue
                self._delete(name)  # closed while it was being made
        finally:
            with self._lock:
                self._incoming -= want - done
        return done

    async def arefill(self) -> int:
        """`refill` on a worker thread, for the daemon's event loop."""
        return await asyncio.to_thread(self.refill)

    def reclaim(self, in_use: set[str]) -> ReclaimReport:
        """Adopt leftover pool TAPs after a daemon restart.

        Devices named in `in_use` belong to VMs. So does any TAP a process holds open
        (a hypervisor whose record was lost): it is left alone, neither adopted nor
        deleted. Other `prefixN` TAPs become idle up to `size` when they have our
        owner and flags; the rest are deleted.
        """
        report = ReclaimReport()
        in_use = in_use | set(held_taps(self.netns))
        with self._lock:
            ours = {n for n in in_use if self.owns(n)}
            for name in ours & set(self._idle):
                self._idle.remove(name)  # the store knows better: a VM holds it
            self._busy |= ours
            report.in_use.extend(sorted(ours))
        found = list_taps(self.prefix, netns=self.netns)
        with self._lock:
            known = set(self._idle) | self._busy | self._reserved
            leftovers = [t for t in found if self.owns(t.name) and t.name not in known]
            room = self.size - len(self._idle) - self._incoming
            self._reserved |= {t.name for t in leftovers}
        try:
            for tap in leftovers:
                if room > 0 and tap.owner == self.owner and not tap.multi_queue:
                    try:
                        attach_tap(tap.name, self.bridge, netns=self.netns)
                    except NotFound:
                        continue  # vanished meanwhile
                    with self._lock:
                        closed = self._closed
                        if not closed:
                            self._idle.append(tap.name)
                    if not closed:
                        report.adopted.append(tap.name)
                        room -= 1
                        continue
                self._delete(tap.name)
                report.deleted.append(tap.name)
        finally:
            with self._lock:
                self._reserved -= {t.name for t in leftovers}
        return report

    def close(self) -> list[str]:
        """At daemon shutdown: stop pooling and delete the idle TAPs (busy ones stay with
        their VMs; a refill still running deletes what it makes). Returns the names."""
        with self._lock:
            self._closed = True
        return self.drain()

    def drain(self) -> list[str]:
        """Delete every idle TAP (busy ones stay with their VMs); returns their names."""
        with self._lock:
            names = list(self._idle)
            self._idle.clear()
            self._reserved |= set(names)
        try:
            for name in names:
                self._delete(name)
        finally:
            with self._lock:
                self._reserved -= set(names)
        return names

    # -- internals -----------------------------------------------------------------

    def _next_name(self) -> str:
        taken = set(self._idle) | self._busy | self._reserved | self._foreign
        i = 0
        while f"{self.prefix}{i}" in taken:
            i += 1
        return f"{self.prefix}{i}"

    def _create_one(self) -> str:
        """Create a TAP under a fresh name; the name stays reserved for the caller."""
        for _ in range(8):
            with self._lock:
                name = self._next_name()
                self._reserved.add(name)
            try:
                create_tap(name, self.bridge, owner_uid=self.owner, netns=self.netns)
            except Conflict:
                # Someone else's device (or a race with one): never touch it, skip the name.
                log.warning("TAP pool: `%s` exists but is not ours; skipping it", name)
                with self._lock:
                    self._reserved.discard(name)
                    self._foreign.add(name)
                continue
            except BaseException:
                with self._lock:
                    self._reserved.discard(name)
                raise
            with self._lock:
                self.stats.created += 1
            return name
        raise Conflict(
            f"could not find a free `{self.prefix}N` name for a new TAP",
            hint=f"delete stray `{self.prefix}*` devices (`ip link del ...`)",
        )

    def _delete(self, name: str) -> None:
        if delete_tap(name, netns=self.netns):
            with self._lock:
                self.stats.deleted += 1
