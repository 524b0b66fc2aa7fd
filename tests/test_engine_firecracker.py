"""Firecracker engine units: request building, hybrid vsock, availability.

(The spec-conformance and end-to-end tests are in test_firecracker_contract.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from banger.engines.base import GuestConfig
from banger.engines.firecracker import (
    ApiClient,
    ApiRequest,
    FirecrackerEngine,
    build_requests,
    instance_id,
)
from banger.engines.firecracker_vsock import open_hybrid_vsock
from banger.engines.guest_config import build_guest_config
from banger.errors import CommandFailed, ToolMissing


def _config(tmp_path: Path, **kw: Any) -> GuestConfig:
    for name in ("vmlinux", "rootfs.ext4", "work.ext4"):
        (tmp_path / name).write_bytes(b"x")
    args: dict[str, Any] = dict(
        vm_id="vm/1",
        name="box",
        kernel=tmp_path / "vmlinux",
        initrd=None,
        rootfs=tmp_path / "rootfs.ext4",
        work_disk=tmp_path / "work.ext4",
        vcpus=1,
        memory_mib=256,
        run_dir=tmp_path / "run",
    )
    args.update(kw)
    return build_guest_config(**args)


def test_requests_in_boot_order(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    reqs = build_requests(cfg, log_path=tmp_path / "fc.log")
    assert reqs == [
        ApiRequest("PUT", "/logger", {"log_path": str(tmp_path / "fc.log"), "level": "Info"}),
        ApiRequest("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 256, "smt": False}),
        # No initrd: no initrd_path key at all (Firecracker rejects an empty path).
        ApiRequest(
            "PUT", "/boot-source", {"kernel_image_path": str(cfg.kernel), "boot_args": cfg.cmdline}
        ),
        ApiRequest(
            "PUT",
            "/drives/rootfs",
            {
                "drive_id": "rootfs",
                "path_on_host": str(cfg.drives[0].path),
                "is_root_device": True,
                "is_read_only": False,
            },
        ),
        ApiRequest(
            "PUT",
            "/drives/work",
            {
                "drive_id": "work",
                "path_on_host": str(cfg.drives[1].path),
                "is_root_device": False,
                "is_read_only": False,
            },
        ),
        ApiRequest("PUT", "/actions", {"action_type": "InstanceStart"}),
    ]


def test_vsock_and_no_logger(tmp_path: Path) -> None:
    cfg = _config(tmp_path, vsock_cid=5)
    reqs = build_requests(cfg)
    assert reqs[0].path == "/machine-config"
    assert (
        ApiRequest("PUT", "/vsock", {"guest_cid": 5, "uds_path": str(cfg.run_dir / "vsock.sock")})
        in reqs
    )


def test_instance_id() -> None:
    assert instance_id("vm/1_x") == "vm-1-x"
    assert len(instance_id("a" * 100)) == 64
    assert instance_id("") == "banger"


async def test_missing_binary(tmp_path: Path) -> None:
    engine = FirecrackerEngine(str(tmp_path / "firecracker"))
    avail = engine.availability()
    assert not avail.ok and "not installed" in avail.detail
    with pytest.raises(ToolMissing, match="Firecracker"):
        await engine.start(_config(tmp_path))


# -- hybrid vsock ---------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def uds(tmp_path: Path) -> AsyncIterator[Callable[[Handler], Awaitable[Path]]]:
    servers: list[asyncio.base_events.Server] = []

    async def serve(handler: Handler) -> Path:
        path = tmp_path / f"v{len(servers)}.sock"
        servers.append(await asyncio.start_unix_server(handler, str(path)))
        return path

    yield serve
    for s in servers:
        s.close()
        await s.wait_closed()


async def test_hybrid_vsock_handshake_then_raw_stream(
    uds: Callable[[Handler], Awaitable[Path]],
) -> None:
    async def firecracker(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        assert await r.readline() == b"CONNECT 1024\n"
        w.write(b"OK 1073741824\n")
        w.write(await r.readexactly(4))  # then a plain echo of the guest side
        await w.drain()
        w.close()

    reader, writer = await open_hybrid_vsock(await uds(firecracker), 1024)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    writer.close()


@pytest.mark.parametrize("reply", [b"", b"ERR no listener\n", b"OK\n"])
async def test_hybrid_vsock_refused(
    uds: Callable[[Handler], Awaitable[Path]], reply: bytes
) -> None:
    async def firecracker(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readline()
        w.write(reply)
        await w.drain()
        w.close()

    with pytest.raises(CommandFailed, match="refused"):
        await open_hybrid_vsock(await uds(firecracker), 52)


async def test_hybrid_vsock_no_socket(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match="cannot connect"):
        await open_hybrid_vsock(tmp_path / "none.sock", 52)
    with pytest.raises(ValueError):
        await open_hybrid_vsock(tmp_path / "none.sock", 0)


async def test_api_client_keeps_one_connection_and_reports_faults(
    uds: Callable[[Handler], Awaitable[Path]],
) -> None:
    """Requests go over one kept-alive connection; a refusal carries Firecracker's
    fault message; an answer that closes the connection makes the next request
    connect again."""
    connections: list[list[str]] = []

    async def firecracker(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen: list[str] = []
        connections.append(seen)
        while line := await r.readline():
            method, path, _ = line.decode().split(" ", 2)
            length = 0
            while (h := await r.readline()) not in (b"\r\n", b""):
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":")[1])
            body = await r.readexactly(length)
            seen.append(f"{method} {path} {body.decode()}")
            if path == "/machine-config":
                fault = b'{"fault_message": "vcpu_count must be at least 1"}'
                w.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(fault), fault))  # fmt: skip
            elif path == "/actions":
                w.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                await w.drain()
                w.close()
                return
            else:
                w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await w.drain()

    sock = await uds(firecracker)
    async with ApiClient(sock) as api:
        assert await api.connects()
        await api.send(ApiRequest("PUT", "/boot-source", {"kernel_image_path": "/k"}))
        with pytest.raises(CommandFailed, match=r"400.*vcpu_count must be at least 1"):
            await api.send(ApiRequest("PUT", "/machine-config", {"vcpu_count": 0}))
        await api.send(ApiRequest("PUT", "/actions", {"action_type": "InstanceStart"}))
        await api.send(ApiRequest("PATCH", "/vm", {"state": "Paused"}))
    assert connections == [
        [
            'PUT /boot-source {"kernel_image_path": "/k"}',
            'PUT /machine-config {"vcpu_count": 0}',
            'PUT /actions {"action_type": "InstanceStart"}',
        ],
        ['PATCH /vm {"state": "Paused"}'],
    ]


async def test_api_client_names_a_socket_that_answers_nothing(
    uds: Callable[[Handler], Awaitable[Path]],
) -> None:
    async def mute(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readline()
        w.close()

    async with ApiClient(await uds(mute)) as api:
        with pytest.raises(CommandFailed, match=r"PUT /boot-source failed: .*closed"):
            await api.send(ApiRequest("PUT", "/boot-source", {}))
