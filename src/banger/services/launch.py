"""How a VM's engine gets going: boot its kernel (`ColdBoot`) or restore a saved
machine and give it the VM's identity (`Restore`).

The create path asks `Launcher.choose` once, before the disks are made: the
strategy says which root filesystem the `disks` capability clones (the image's,
or the one saved together with the state) and, after the capabilities attached
TAP, MAC, address and CID, starts the engine and settles the guest. Everything
else (capabilities, readiness, rollback) is the same for both.

A restored guest starts as a copy of another machine, so `Restore.settle` makes it
this VM: the work disk is resized to the VM's size (the guest still sees the size
the saved machine had), then the agent's `/identity` request applies the hostname,
MAC, address and route, DNS, a fresh machine-id, an SSH host key generated here
while the engine restored (and recorded in banger's known_hosts before sshd offers
it), the clock, the authorized key and `/root` from the VM's own work disk; it
answers once sshd listens with the new key. `ready` (after SSH answered) starts what
the golden boot held back, so those services do not slow down the first login.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from banger.agent.client import AgentClient, wait_healthy
from banger.capabilities.base import BootContributions
from banger.engines.base import Engine, EngineHandle, GuestConfig, OnSpawn
from banger.errors import BangerError
from banger.progress import Progress
from banger.services.ssh import generate_host_key, record_host_key
from banger.vm import VMRecord

if TYPE_CHECKING:
    from banger.engines.state import SavedState

log = logging.getLogger("banger.launch")

STALE_SUFFIX = ".stale"  # a resumed VM's saved state, on its way out
IDENTITY_TIMEOUT = 120.0  # the agent answers at once; systemctl under TCG is slow
CLOCK_TIMEOUT = 60.0  # a resumed agent answers at once; generous for a loaded host
WORK_DEVICE = "/dev/vdb"  # guest_config's drive order: rootfs vda, work vdb
# Keeps the VM off the network (True) or lets it on again (False): `Capability.hold`.
Hold = Callable[[bool], Awaitable[None]]
_cleanups: set[asyncio.Future[None]] = set()  # deletions nobody waits for


class ColdBoot:
    """Boot the kernel: the guest takes its identity from the command line."""

    stage = "boot"
    restored = False
    resumed = False
    settles_while_ready = False  # settle (here: nothing) before waiting for SSH
    sshd_listens = False  # sshd comes up during the boot: probe before each login

    def __init__(self, rootfs: Path) -> None:
        self.rootfs = rootfs

    async def start(self, engine: Engine, cfg: GuestConfig, on_spawn: OnSpawn) -> EngineHandle:
        return await engine.start(cfg, on_spawn=on_spawn)

    async def settle(
        self,
        vm: VMRecord,
        engine: Engine,
        handle: EngineHandle,
        boot: BootContributions,
        progress: Progress,
        timings: dict[str, float],
    ) -> None:
        return None

    async def ready(self, handle: EngineHandle) -> None:
        return None


@dataclass
class Identity:
    """What makes a restored guest this VM (besides what `boot` contributes)."""

    known_hosts: Path
    authorized_key: str
    mount_work: bool  # a golden snapshot has no /root yet; a fork has its own mounted


class Restore:
    """Restore `state` (saved together with `rootfs`), then apply the VM's identity."""

    stage = "restore"
    restored = True
    resumed = False
    settles_while_ready = False  # the identity comes before sshd can answer
    sshd_listens = True  # `/identity` answers once sshd listens with the VM's key

    def __init__(
        self,
        state: SavedState,
        rootfs: Path,
        identity: Identity,
        what: str,
        *,
        hold: Hold | None = None,
    ) -> None:
        self.state = state
        self.rootfs = rootfs
        self.identity = identity
        self.what = what  # "golden snapshot ..." / "snapshot s1", for logs and progress
        self._host_key: asyncio.Future[tuple[str, str]] | None = None
        self._held = False
        # A fork's guest has its source's MAC and address until `/identity`: given
        # `hold`, it stays off the network until then: on the host (the capabilities'
        # hold, its TAP down), which works on every engine, and its NIC links cut where
        # the engine can (`set_links`; Firecracker's API has no link switch).
        self.hold = hold

    @property
    def hold_nics(self) -> bool:
        return self.hold is not None

    async def start(self, engine: Engine, cfg: GuestConfig, on_spawn: OnSpawn) -> EngineHandle:
        # The guest's new host key is made while the engine restores.
        self._host_key = asyncio.ensure_future(generate_host_key())
        state = dataclasses.replace(self.state, hold_nics=True) if self.hold_nics else self.state
        try:
            if self.hold is not None:
                await self.hold(True)
            return await engine.start(cfg, on_spawn=on_spawn, restore=state)
        except BaseException:
            self._host_key.cancel()
            with contextlib.suppress(BaseException):
                await self._host_key
            raise

    async def settle(
        self,
        vm: VMRecord,
        engine: Engine,
        handle: EngineHandle,
        boot: BootContributions,
        progress: Progress,
        timings: dict[str, float],
    ) -> None:
        t = time.monotonic()
        progress("identity", vm.name)
        agent = handle.extra.get("agent")
        # The agent session (its HELLO round trip) is set up while the engine resizes
        # the work disk and the host key is recorded; `/identity` then takes it from
        # the pool (or joins the connect still under way).
        session = asyncio.ensure_future(open_session(agent))
        try:
            await engine.resize_drive(handle, "work", vm.work_bytes)
            log.debug("vm %s: work disk resized", vm.name)
            if self._host_key is None:
                self._host_key = asyncio.ensure_future(generate_host_key())
            private, public = await self._host_key
            hosts = [h for h in (vm.ip, vm.name, f"{vm.name}.vm") if h]
            record_host_key(self.identity.known_hosts, hosts, public)
            log.debug("vm %s: host key recorded", vm.name)
            body = identity_body(vm, boot, self.identity, private, public)
            body["time"] = time.time()
            body["hold"] = True  # what the golden boot held back waits for `ready`
            answer = await apply_identity(agent, body)
        finally:
            if not session.done():
                session.cancel()
            with contextlib.suppress(BaseException):
                await session
        self._held = bool(answer.get("held"))  # an older agent started it already
        log.info("vm %s: identity applied in the guest: %s", vm.name, answer.get("seconds"))
        if self.hold is not None:
            # Only now, with its own MAC and address, is the guest on the network.
            await engine.set_links(handle, [n.iface_id for n in boot.nics], True)
            await self.hold(False)
            log.debug("vm %s: links up", vm.name)
        timings["identity"] = time.monotonic() - t

    async def ready(self, handle: EngineHandle) -> None:
        """The VM answered on SSH: start what its golden boot held back (services
        that need /root), which would have competed with the first login."""
        if self._held:
            await AgentClient(handle.extra.get("agent"), timeout=IDENTITY_TIMEOUT).act(
                "/start-held", {}
            )


class Resume:
    """Restore a suspended VM's own saved state: the same machine carries on, so it
    keeps its identity and uptime; only its clock, which stood still, is set.

    The guest runs on the VM's disks from the moment the engine has loaded the
    state, so that state is stale from then on and goes at once (a crash later must
    not restore it over newer disks): renamed out of the way (`STALE_SUFFIX`, a name
    nothing restores from), then deleted in the background. Deleting a GiB of
    memory image takes a loaded host a quarter second that SSH need not wait for."""

    stage = "restore"
    restored = True
    resumed = True
    # The clock is set while the daemon waits for sshd's answer: both wait on a guest
    # that re-translates every code path it runs after a restore (TCG).
    settles_while_ready = True
    sshd_listens = True  # it listened when the VM was suspended

    def __init__(self, state: SavedState) -> None:
        self.state = state
        self.rootfs = Path()  # the VM's own disks, made long ago

    async def start(self, engine: Engine, cfg: GuestConfig, on_spawn: OnSpawn) -> EngineHandle:
        handle = await engine.start(cfg, on_spawn=on_spawn, restore=self.state)
        stale = self.state.dir.with_name(self.state.dir.name + STALE_SUFFIX)
        if stale.exists():  # left by a daemon that died before deleting it
            await asyncio.to_thread(shutil.rmtree, stale, True)
        os.replace(self.state.dir, stale)
        task = asyncio.ensure_future(asyncio.to_thread(shutil.rmtree, stale, True))
        _cleanups.add(task)
        task.add_done_callback(_cleanups.discard)
        return handle

    async def settle(
        self,
        vm: VMRecord,
        engine: Engine,
        handle: EngineHandle,
        boot: BootContributions,
        progress: Progress,
        timings: dict[str, float],
    ) -> None:
        """The agent sets the clock from the host's (it stood still while saved). An
        image without an agent, or an agent too old for it, is logged, not fatal."""
        agent = handle.extra.get("agent")
        if agent is None:
            return
        t = time.monotonic()
        progress("clock", "")
        try:
            was = (await set_guest_clock(agent)).get("was_off_s")
            log.debug("vm %s: clock set", vm.name)
            log.info("vm %s: clock set from the host (was off by %ss)", vm.name, was)
        except BangerError as exc:
            log.warning("vm %s: could not set the clock after resume: %s", vm.name, exc)
        timings["clock"] = time.monotonic() - t

    async def ready(self, handle: EngineHandle) -> None:
        return None


async def open_session(agent: dict[str, Any] | None) -> None:
    """Connect the pooled agent session ahead of a request, if it can be done; the
    request itself reports what went wrong."""
    with contextlib.suppress(BangerError):
        await AgentClient(agent, timeout=IDENTITY_TIMEOUT).session()


async def apply_identity(agent: dict[str, Any] | None, body: dict[str, Any]) -> dict[str, Any]:
    """Have the guest agent take the identity in `body` (`/identity`)."""
    return await AgentClient(agent, timeout=IDENTITY_TIMEOUT).act("/identity", body)


async def set_guest_clock(agent: dict[str, Any]) -> dict[str, Any]:
    """Set the guest's clock to the host's through its agent (`/clock`), once the
    agent answers."""
    await wait_healthy(agent, CLOCK_TIMEOUT)
    return await AgentClient(agent, timeout=CLOCK_TIMEOUT).set_clock()


def identity_body(
    vm: VMRecord, boot: BootContributions, ident: Identity, private: str, public: str
) -> dict[str, Any]:
    search = next(
        (c.split("=", 1)[1] for c in boot.cmdline if c.startswith("banger.dns_search=")), None
    )
    assert vm.ip is not None and boot.gateway is not None
    mac = boot.nics[0].mac if boot.nics else vm.mac
    return {
        "hostname": vm.name,
        "machine_id": secrets.token_hex(16),
        "mac": mac,
        "ip": vm.ip,
        "prefix": boot.prefix or 24,
        "gateway": boot.gateway,
        "dns": [boot.dns] if boot.dns else [],
        "search": search,
        "host_key": private,
        "host_key_pub": public,
        "authorized_key": ident.authorized_key,
        "work_device": WORK_DEVICE if ident.mount_work else None,
        "work_bytes": vm.work_bytes,
    }


Launch = ColdBoot | Restore | Resume
