"""Peer-credential check for the API socket (SO_PEERCRED)."""

from __future__ import annotations

import os
import socket
import struct


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def peer_allowed(uid: int) -> bool:
    """The daemon's own user and root may talk to it; nobody else."""
    return uid in (os.getuid(), 0)
