"""Host-initiated connections over Firecracker's hybrid vsock.

Firecracker exposes the guest's vsock as a UNIX socket on the host: connect to
it, send `CONNECT <port>\\n`, and Firecracker answers `OK <host port>\\n` once the
guest side accepted (the number is the host-side port Firecracker assigned, not
the guest port). After that line the stream is the raw guest connection.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from banger.errors import CommandFailed


async def open_hybrid_vsock(
    uds_path: Path, port: int, timeout: float = 5.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to guest vsock `port`; raises `CommandFailed` if the guest refuses."""
    if not 0 < port < 2**32:
        raise ValueError(f"invalid vsock port {port}")
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(uds_path)), timeout
        )
    except (OSError, TimeoutError) as exc:
        raise CommandFailed(f"cannot connect to vsock socket {uds_path}: {exc}") from exc
    try:
        writer.write(f"CONNECT {port}\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError) as exc:
        writer.close()
        raise CommandFailed(f"vsock handshake for port {port} failed: {exc!r}") from exc
    words = line.decode(errors="replace").split()
    if len(words) != 2 or words[0] != "OK" or not words[1].isdigit():
        writer.close()
        # Firecracker closes the connection without a reply when nothing listens.
        got = line.decode(errors="replace").strip() or "connection closed"
        raise CommandFailed(f"guest vsock port {port} refused the connection ({got})")
    return reader, writer
