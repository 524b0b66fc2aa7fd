"""API routes (v1), one module per resource; `setup_routes` mounts them all."""

from __future__ import annotations

from banger.daemon import web
from banger.daemon.routes import core


def setup_routes(app: web.Application) -> None:
    core.setup(app)
    # Resource modules that need services register themselves if present.
    from banger.daemon.routes import agent, artifacts, dns, snapshots, vms

    artifacts.setup(app)
    vms.setup(app)
    snapshots.setup(app)
    agent.setup(app)
    dns.setup_routes(app)
