"""`banger.AsyncClient`: the asyncio twin of `banger.Client`.

Each call runs the blocking client in a worker thread (`asyncio.to_thread`), so an
event loop can drive many VMs at once; the semantics are exactly `Client`'s.

    async with AsyncClient.connect() as c:
        vm = await c.create(image="debian-bookworm")
        r = await c.exec(vm.name, "uname -a")
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable
from pathlib import Path
from typing import Any

from banger.api.models import VM
from banger.client import Client
from banger.paths import Paths
from banger.stream import ExecResult


class AsyncClient:
    def __init__(self, client: Client) -> None:
        self.sync = client

    @classmethod
    def connect(cls, paths: Paths | None = None, *, autostart: bool = True) -> AsyncClient:
        return cls(Client.connect(paths, autostart=autostart))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sync.close()

    async def list(self) -> builtins.list[VM]:
        return await asyncio.to_thread(self.sync.list)

    async def get(self, name: str) -> VM:
        return await asyncio.to_thread(self.sync.get, name)

    async def create(
        self,
        name: str | None = None,
        image: str | None = None,
        *,
        vcpus: int | None = None,
        memory: str | None = None,
        nat: bool = False,
    ) -> VM:
        return await asyncio.to_thread(
            self.sync.create, name, image, vcpus=vcpus, memory=memory, nat=nat
        )

    async def start(self, name: str) -> VM:
        return await asyncio.to_thread(self.sync.start, name)

    async def stop(self, name: str, force: bool = False) -> VM:
        return await asyncio.to_thread(self.sync.stop, name, force)

    async def delete(self, name: str, force: bool = False) -> None:
        await asyncio.to_thread(self.sync.delete, name, force)

    async def exec(
        self,
        name: str,
        argv: builtins.list[str] | tuple[str, ...] | str,
        *,
        input: bytes | str | None = None,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> ExecResult:
        return await asyncio.to_thread(
            lambda: self.sync.exec(
                name,
                argv,
                input=input,
                env=env,
                workdir=workdir,
                user=user,
                timeout=timeout,
                check=check,
            )
        )

    async def read_file(self, name: str, path: str, limit: int | None = None) -> bytes:
        return await asyncio.to_thread(self.sync.read_file, name, path, limit)

    async def write_file(self, name: str, path: str, data: bytes | str, mode: int = 0o644) -> None:
        await asyncio.to_thread(self.sync.write_file, name, path, data, mode)

    async def copy_to(
        self,
        name: str,
        local: str | Path,
        remote: str,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.copy_to, name, local, remote, progress)

    async def copy_from(
        self,
        name: str,
        remote: str,
        local: str | Path,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, int]:
        return await asyncio.to_thread(self.sync.copy_from, name, remote, local, progress)

    async def ports(self, name: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.vm_ports, name)
