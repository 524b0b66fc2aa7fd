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
from banger.engines.firecracker import ApiRequest, FirecrackerEngine, build_requests, instance_id
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
