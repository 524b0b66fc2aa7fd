"""The guest agent through the daemon: `GET /v1/vms/{name}/health` and `/ports`.

Whether a VM should have an agent is the image's business: a managed image's
image.json records `"agent": true` when the builder installed it. Images built
before that say nothing, which reads as "no agent": health then reports so plainly
instead of timing out. Registered images are unknown, so
the agent is simply tried.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from banger.agent.client import AgentClient, AgentUnavailable
from banger.artifacts import images as image_lib
from banger.daemon.app import Daemon
from banger.daemon.routes.common import daemon_of, ok
from banger.errors import BangerError, Conflict
from banger.vm import VMRecord

routes = web.RouteTableDef()

NO_AGENT = "not in this image (it was built before banger-agent existed)"
NO_AGENT_HINT = (
    "`banger image pull IMAGE` rebuilds an outdated catalog image (so does the next "
    "`banger vm create`); VMs created from the new image have the agent"
)


def image_has_agent(d: Daemon, image: str) -> bool | None:
    """True/False from a managed image's image.json; None when unknown (registered)."""
    info = image_lib.load_image(d.paths.images_dir, image)
    return None if info is None else info.agent


def agent_channel(vm: VMRecord) -> dict[str, Any] | None:
    handle = vm.engine_handle
    if handle is None:
        return None
    channel = handle.extra.get("agent")
    return channel if isinstance(channel, dict) else None


@routes.get("/v1/vms/{name}/health")
async def vm_health(request: web.Request) -> web.Response:
    d = daemon_of(request)
    vm = d.vms.get(request.match_info["name"])
    result: dict[str, Any] = {
        "name": vm.name,
        "state": vm.state,
        "healthy": False,
        "agent": "",
        "detail": "",
        "transport": None,
        "healthz": None,
        "info": None,
    }
    expected = image_has_agent(d, vm.image)
    if expected is False:
        result.update(agent="absent", detail=NO_AGENT, hint=NO_AGENT_HINT)
        return ok(result)
    if vm.state != "running":
        result.update(agent="stopped", detail=f"the VM is {vm.state}")
        return ok(result)
    try:
        client = AgentClient(agent_channel(vm))
        result["transport"] = client.describe()
        t0 = time.monotonic()
        result["healthz"] = await client.healthz()
        result["latency_ms"] = round((time.monotonic() - t0) * 1000, 1)
        result["info"] = await client.info()
    except BangerError as exc:
        result.update(agent="unreachable", detail=exc.message, hint=exc.hint)
        return ok(result)
    result.update(healthy=True, agent="ok", detail="healthy")
    return ok(result)


@routes.get("/v1/vms/{name}/ports")
async def vm_ports(request: web.Request) -> web.Response:
    d = daemon_of(request)
    vm = d.vms.get(request.match_info["name"])
    if image_has_agent(d, vm.image) is False:
        raise AgentUnavailable(f"{vm.name} has no guest agent: {NO_AGENT}", hint=NO_AGENT_HINT)
    if vm.state != "running":
        raise Conflict(
            f"{vm.name} is {vm.state}; ports come from its running guest",
            hint=f"banger vm start {vm.name}",
        )
    ports = await AgentClient(agent_channel(vm)).ports()
    return ok({"name": vm.name, "ip": vm.ip, "ports": ports})


def setup(app: web.Application) -> None:
    app.add_routes(routes)
