"""The sshd banner probe of readiness against a local TCP server standing in for a
slow guest sshd."""

from __future__ import annotations

import asyncio

from banger.services import ssh


async def test_a_slow_banner_is_waited_for_on_one_connection() -> None:
    # A just-restored TCG guest's sshd child may take seconds to re-exec before it
    # sends its banner. Giving up and connecting again would start another sshd in the
    # guest for each attempt; the probe keeps its one connection instead.
    connections = 0

    async def slow_sshd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await asyncio.sleep(2.5)  # longer than the probe used to wait
        writer.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow_sshd, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert await ssh._sshd_banner("127.0.0.1", port)
    assert connections == 1


async def test_no_banner_is_no_sshd() -> None:
    async def not_sshd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_sshd, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert not await ssh._sshd_banner("127.0.0.1", port)
        server.close()
        await server.wait_closed()
    assert not await ssh._sshd_banner("127.0.0.1", port)  # refused: nothing listens
