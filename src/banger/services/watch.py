"""Notice, within a second, when a VM's hypervisor process ends.

VM processes are not the daemon's children (they outlive it), so there is no
SIGCHLD. A pidfd (`os.pidfd_open`) works for any process: it becomes readable
when the process exits, and the event loop watches it like a socket. Where the
kernel has no pidfd_open, a poll every half second does the same job.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import suppress

from banger.engines import process
from banger.engines.base import EngineHandle

log = logging.getLogger("banger.watch")

OnExit = Callable[[], Awaitable[None]]
POLL = 0.5


class EngineWatcher:
    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._polls: dict[str, asyncio.Task[None]] = {}
        self._handlers: set[asyncio.Task[None]] = set()

    def watch(
        self,
        key: str,
        handle: EngineHandle,
        on_exit: OnExit,
        is_running: Callable[[], bool] | None = None,
    ) -> None:
        """Call `on_exit` once the process behind `handle` has ended (at once if it
        already has). Replaces an earlier watch under `key`. `is_running` is the
        engine's own liveness check, polled where no pidfd can be had."""
        self.unwatch(key)
        loop = asyncio.get_running_loop()
        alive = is_running or (lambda: process.is_alive(handle.pid, handle.start_time))
        try:
            fd = process.open_pidfd(handle.pid, handle.start_time)
        except OSError:
            fd = None
        if fd is None:
            if alive():  # no pidfd here, or not a host process: poll the engine
                self._polls[key] = loop.create_task(self._poll(key, alive, on_exit))
            else:
                self._fire(key, on_exit)
            return
        self._fds[key] = fd
        loop.add_reader(fd, self._fire, key, on_exit)

    def unwatch(self, key: str) -> None:
        fd = self._fds.pop(key, None)
        if fd is not None:
            with suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
        task = self._polls.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def watching(self) -> set[str]:
        return set(self._fds) | set(self._polls)

    def _fire(self, key: str, on_exit: OnExit) -> None:
        self.unwatch(key)
        task = asyncio.get_running_loop().create_task(self._run(key, on_exit))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _run(self, key: str, on_exit: OnExit) -> None:
        try:
            await on_exit()
        except Exception:
            log.exception("handling the exit of %s failed", key)

    async def _poll(self, key: str, alive: Callable[[], bool], on_exit: OnExit) -> None:
        while alive():
            await asyncio.sleep(POLL)
        self._polls.pop(key, None)
        self._fire(key, on_exit)

    async def close(self) -> None:
        for key in list(self.watching()):
            self.unwatch(key)
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
