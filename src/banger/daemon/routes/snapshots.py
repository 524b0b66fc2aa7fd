"""Named snapshots: taken from a VM (an operation), listed, shown and removed."""

from __future__ import annotations

from banger.api.models import TakeSnapshot
from banger.daemon import web
from banger.daemon.routes.common import body, daemon_of, ok
from banger.progress import Progress

routes = web.RouteTableDef()


@routes.post("/v1/vms/{name}/snapshot")
async def take(request: web.Request) -> web.Response:
    d = daemon_of(request)
    req = await body(request, TakeSnapshot)
    vm = d.vms.get(request.match_info["name"])

    async def work(progress: Progress) -> dict[str, str]:
        snap = await d.vms.snapshot(vm.id, req.name, progress)
        return {"name": snap.name, "id": snap.id, "vm": vm.name}

    return ok(d.ops.start("vm.snapshot", vm.name, work), status=202)


@routes.get("/v1/snapshots")
async def list_snapshots(request: web.Request) -> web.Response:
    d = daemon_of(request)
    return ok([s.to_api() for s in d.vms.snapshots.all() if s.state == "ready"])


@routes.get("/v1/snapshots/{name}")
async def show(request: web.Request) -> web.Response:
    return ok(daemon_of(request).vms.snapshots.get(request.match_info["name"]).to_api())


@routes.delete("/v1/snapshots/{name}")
async def remove(request: web.Request) -> web.Response:
    d = daemon_of(request)
    snap = d.vms.snapshots.get(request.match_info["name"])
    async with d.vms.lock(f"snapshot:{snap.id}"):
        return ok({"deleted": d.vms.delete_snapshot(snap.id)})


def setup(app: web.Application) -> None:
    app.add_routes(routes)
