"""The guest agent through the daemon: `GET /v1/vms/{name}/health`, `/ports`, and
`/stream` (a WebSocket carrying exec and file-copy streams).

Whether a VM should have an agent is the image's business: a managed image's
image.json records `"agent": true` when the builder installed it. Images built
before that say nothing, which reads as "no agent": health then reports so plainly
instead of timing out. Registered images are unknown, so
the agent is simply tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from typing import Any

from banger.agent.client import AgentClient, AgentStream, AgentUnavailable
from banger.artifacts import images as image_lib
from banger.daemon import web
from banger.daemon.app import Daemon
from banger.daemon.routes.common import daemon_of, ok
from banger.daemon.web import WSMsgType
from banger.errors import BangerError, InvalidInput
from banger.vm import VMRecord, VMState

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


def apply_image_config(d: Daemon, image: str, spec: dict[str, Any]) -> None:
    """Run an exec the way docker exec runs one in a container of a pulled OCI image:
    with its Env (PATH included) under the caller's --env, in its WorkingDir (or /)
    unless -w says otherwise, and as its User unless -u does. Other images keep the
    agent's defaults (root, in its home)."""
    given = spec.get("env") or {}
    if not isinstance(given, dict):
        raise InvalidInput("an exec spec's env is an object of strings")
    info = image_lib.load_image(d.paths.images_dir, image)
    if info is None or info.oci is None:
        return
    env: dict[str, str] = {}
    for item in info.oci.env:
        key, sep, value = item.partition("=")
        if sep and key:
            env[key] = value
    spec["env"] = {**env, **given}
    spec["workdir"] = spec.get("workdir") or info.oci.workdir or "/"
    spec["user"] = spec.get("user") or info.oci.user or None


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
    if not vm.running:
        result.update(agent="stopped", detail=f"the VM is {vm.state.value}")
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
    ports = await AgentClient(_running_agent(d, vm)).ports()
    return ok({"name": vm.name, "ip": vm.ip, "ports": ports})


def setup(app: web.Application) -> None:
    app.add_routes(routes)


# -- streams: exec and file copies ------------------------------------------------------

STREAM_KINDS = ("exec", "tar-in", "tar-out")
CH_STDIN, CH_STDOUT, CH_STDERR = 0, 1, 2


def _running_agent(d: Daemon, vm: VMRecord) -> dict[str, Any] | None:
    if image_has_agent(d, vm.image) is False:
        raise AgentUnavailable(f"{vm.name} has no guest agent: {NO_AGENT}", hint=NO_AGENT_HINT)
    vm.require(VMState.RUNNING, action="its guest agent", hint=f"banger vm start {vm.name}")
    return agent_channel(vm)


@routes.get("/v1/vms/{name}/stream")
async def vm_stream(request: web.Request) -> web.StreamResponse:
    """A WebSocket carrying one guest stream (exec, tar-in, tar-out).

    The client's first message is the spec as JSON text ({"kind": "exec", "argv": [...],
    "stdin", "tty", "rows", "cols", "env", "workdir", "user", "timeout"} or {"kind":
    "tar-in"|"tar-out", "path"}). Then binary messages are data with a one-byte
    channel prefix (0 stdin, 1 stdout, 2 stderr; a lone 0 ends the input) and text
    messages are control: {"type": "resize"|"signal"} from the client, {"type":
    "opened"|"exit"|"error"} from the daemon. Closing the socket kills the stream.
    """
    d = daemon_of(request)
    vm = d.vms.get(request.match_info["name"])
    channel = _running_agent(d, vm)  # errors before the upgrade are plain HTTP errors
    client = AgentClient(channel)
    ws = web.WebSocketResponse(max_msg_size=4 << 20)
    await ws.prepare(request)
    try:
        first = await asyncio.wait_for(ws.receive(), 10)
        spec = json.loads(first.data) if first.type == WSMsgType.TEXT else None
        if not isinstance(spec, dict) or spec.get("kind") not in STREAM_KINDS:
            raise InvalidInput(f"a stream starts with a JSON spec whose kind is {STREAM_KINDS}")
        timeout = spec.pop("timeout", None)
        if spec["kind"] == "exec":
            apply_image_config(d, vm.image, spec)
        stream, info = await client.open(spec)
    except (BangerError, TimeoutError, ValueError) as exc:
        err = exc if isinstance(exc, BangerError) else InvalidInput(f"bad stream start: {exc}")
        await ws.send_str(json.dumps({"type": "error", "error": err.to_dict()}))
        await ws.close()
        return ws
    pump = asyncio.create_task(_relay_input(ws, stream))
    deadline = float(timeout) if timeout else None
    timed_out = False
    try:
        if "error" not in info:
            await ws.send_str(json.dumps({"type": "opened", **info}))
        while True:
            try:
                async with asyncio.timeout(deadline):
                    ev = await stream.next_event()
            except TimeoutError:
                timed_out, deadline = True, None
                await stream.signal(signal.SIGKILL)
                continue
            if ev.kind == "exit":
                result = dict(ev.info)
                if timed_out:
                    result.update(code=124, timed_out=True, error=f"timed out after {timeout}s")
                await ws.send_str(json.dumps({"type": "exit", **result}))
                break
            if ev.kind in ("stdout", "stderr"):
                prefix = CH_STDOUT if ev.kind == "stdout" else CH_STDERR
                await ws.send_bytes(bytes([prefix]) + ev.data)
                await stream.consumed(len(ev.data))
    except (ConnectionError, RuntimeError):
        pass  # the client went away
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump
        await stream.close()  # kills the guest process if it still runs
        await ws.close()
    return ws


async def _relay_input(ws: web.WebSocketResponse, stream: AgentStream) -> None:
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                data: bytes = msg.data
                if data[:1] == bytes([CH_STDIN]):
                    await stream.write(data[1:])
            elif msg.type == WSMsgType.TEXT:
                ctl = json.loads(msg.data)
                if ctl.get("type") == "resize":
                    await stream.resize(int(ctl["rows"]), int(ctl["cols"]))
                elif ctl.get("type") == "signal":
                    await stream.signal(int(ctl["signal"]))
                elif ctl.get("type") == "close":
                    break
    finally:  # however the client went (closed, reset, garbage), nothing keeps running
        await stream.close()
