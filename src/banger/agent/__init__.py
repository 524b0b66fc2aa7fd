"""banger-agent: the guest program (`guest.py`, stdlib only) and its host client.

`GUEST_PROGRAM` is the file the image builder copies into the guest. The host side
is `banger.agent.client.AgentClient`; it is not imported here so that the image
builder does not pull in the client's dependencies.
"""

from __future__ import annotations

from pathlib import Path

GUEST_PROGRAM = Path(__file__).resolve().with_name("guest.py")
# banger-init, PID 1 of images without an init system (OCI images); stdlib only too.
GUEST_INIT = Path(__file__).resolve().with_name("init.py")
VSOCK_PORT = 1024  # must match guest.VSOCK_PORT

__all__ = ["GUEST_INIT", "GUEST_PROGRAM", "VSOCK_PORT"]
