"""Daemon status, config, doctor and operations."""

from __future__ import annotations

import asyncio
import json
import os
import time

from banger import API_VERSION, __version__
from banger.api.models import Operation, Status
from banger.daemon import testhooks, web
from banger.daemon.routes.common import daemon_of, int_param, ok
from banger.errors import BadRequest
from banger.progress import Progress
from banger.services.doctor import run_doctor

routes = web.RouteTableDef()

# VM service methods whose presence `GET /v1/status` reports as features.
OPTIONAL_VM_FEATURES = ("suspend", "snapshot", "exec")


@routes.get("/v1/status")
async def status(request: web.Request) -> web.Response:
    d = daemon_of(request)
    p = d.paths
    running = len(d.vms.repo.running())
    return ok(
        Status(
            version=__version__,
            api=API_VERSION,
            pid=os.getpid(),
            uptime_s=round(time.time() - d.started_at, 3),
            socket=str(p.socket),
            dirs={
                "config": str(p.config_dir),
                "state": str(p.state_dir),
                "data": str(p.data_dir),
                "runtime": str(p.runtime_dir),
                "log": str(p.daemon_log),
            },
            vms_running=running,
            features=[f for f in OPTIONAL_VM_FEATURES if callable(getattr(d.vms, f, None))],
        )
    )


@routes.post("/v1/shutdown")
async def shutdown(request: web.Request) -> web.Response:
    stop: asyncio.Event = request.app["stop_event"]
    asyncio.get_running_loop().call_later(0.05, stop.set)
    return ok({"stopping": True})


@routes.get("/v1/config")
async def config(request: web.Request) -> web.Response:
    d = daemon_of(request)
    return ok({"path": str(d.loaded.path), "values": d.loaded.explain()})


@routes.get("/v1/doctor")
async def doctor(request: web.Request) -> web.Response:
    d = daemon_of(request)
    report = await asyncio.to_thread(run_doctor, d.paths, d.config)
    return ok(report)


@routes.get("/v1/operations")
async def list_operations(request: web.Request) -> web.Response:
    return ok(daemon_of(request).ops.all())


@routes.get("/v1/operations/{op_id}")
async def get_operation(request: web.Request) -> web.Response:
    return ok(daemon_of(request).ops.get(request.match_info["op_id"]))


@routes.post("/v1/operations/{op_id}/cancel")
async def cancel_operation(request: web.Request) -> web.Response:
    return ok(daemon_of(request).ops.cancel(request.match_info["op_id"]))


@routes.get("/v1/operations/{op_id}/events")
async def operation_events(request: web.Request) -> web.StreamResponse:
    """NDJSON stream: one `{"event": …}` line per progress event, then
    `{"operation": …}` with the final state."""
    d = daemon_of(request)
    since = int_param(request, "since", 0, hi=2**31)
    events = d.ops.events(request.match_info["op_id"], since)
    first = await anext(events)  # raises NotFound before the stream starts
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)

    async def send(item: object) -> None:
        key = "operation" if isinstance(item, Operation) else "event"
        line = json.dumps({key: item.model_dump(mode="json")})  # type: ignore[attr-defined]
        await resp.write(line.encode() + b"\n")

    await send(first)
    async for item in events:
        await send(item)
    await resp.write_eof()
    return resp


@routes.post("/v1/debug/ticker")
async def debug_ticker(request: web.Request) -> web.Response:
    """A test-only operation that ticks N times; exercises progress and cancel."""
    if not testhooks.enabled():
        raise web.HTTPNotFound()
    d = daemon_of(request)
    ticks = int_param(request, "ticks", 5, hi=1000)
    try:
        interval = float(request.query.get("interval", "0.1"))
    except ValueError:
        interval = -1.0
    if not 0 <= interval <= 10:  # also refuses nan
        raise BadRequest("query parameter `interval` must be 0 to 10 seconds", hint="interval=0.1")

    async def work(progress: Progress) -> dict[str, int]:
        for i in range(ticks):
            progress("tick", f"{i + 1}/{ticks}", (i + 1) / ticks)
            await asyncio.sleep(interval)
        return {"ticks": ticks}

    return ok(d.ops.start("debug.ticker", "ticker", work), status=202)


@routes.post("/v1/debug/fail-at")
async def debug_fail_at(request: web.Request) -> web.Response:
    """Test-only: make creates fail right after the named stage (empty: never)."""
    if not testhooks.enabled():
        raise web.HTTPNotFound()
    testhooks.set_fail_at(request.query.get("stage"))
    return ok({"fail_at": request.query.get("stage") or None})


@routes.post("/v1/debug/crash-at")
async def debug_crash_at(request: web.Request) -> web.Response:
    """Test-only: SIGKILL the daemon when it reaches a named crash point (empty: clear)."""
    if not testhooks.enabled():
        raise web.HTTPNotFound()
    point = request.query.get("point") or None
    testhooks.set_crash_at(point)
    return ok({"crash_at": point})


def setup(app: web.Application) -> None:
    app.add_routes(routes)
