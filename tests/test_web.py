"""The daemon's HTTP server (banger.daemon.web) at the socket level: what any HTTP/1.1
client may send it, including what a well-behaved client never does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from banger.daemon import web
from banger.daemon.server import errors
from tests.test_agent import serving

routes = web.RouteTableDef()


@routes.get("/v1/things/{name}")
async def get_thing(request: web.Request) -> web.Response:
    return web.json_response({"name": request.match_info["name"], "q": request.query})


@routes.post("/v1/things/{name}/{action:start|stop}")
async def act(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"action": request.match_info["action"], "len": len(body)})


@routes.get("/v1/lines")
async def lines(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    for i in range(3):
        await resp.write(json.dumps({"i": i}).encode() + b"\n")
    await resp.write_eof()
    return resp


@pytest.fixture
async def sock(tmp_path: Path) -> AsyncIterator[Path]:
    app = web.Application(middlewares=[errors])
    app.add_routes(routes)
    async with serving(app, tmp_path / "api.sock") as path:
        yield path


async def raw(sock: Path, data: bytes) -> bytes:
    """Send `data`, half-close, and read everything the server answers."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return answer


def client(sock: Path) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    return httpx.AsyncClient(transport=transport, base_url="http://bangerd")


async def test_routes_parameters_query_and_keep_alive(sock: Path) -> None:
    async with client(sock) as c:
        r = await c.get("/v1/things/a%20b", params={"x": "1"})
        assert r.json() == {"name": "a b", "q": {"x": "1"}}
        r = await c.post("/v1/things/a/stop", content=b"12345")
        assert r.json() == {"action": "stop", "len": 5}
        r = await c.post("/v1/things/a/jump")  # outside the parameter's alternatives
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_such_endpoint"
        r = await c.delete("/v1/things/a")
        assert r.status_code == 405 and r.headers["allow"] == "GET"
    # two requests on one connection, answered in order
    answer = await raw(
        sock,
        b"GET /v1/things/one HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /v1/things/two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert answer.count(b"HTTP/1.1 200") == 2
    assert answer.index(b'"one"') < answer.index(b'"two"')


async def test_streamed_lines_arrive_whole(sock: Path) -> None:
    async with client(sock) as c, c.stream("GET", "/v1/lines") as r:
        got = [json.loads(line) async for line in r.aiter_lines() if line]
    assert got == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_oversized_and_malformed_requests_are_refused(sock: Path) -> None:
    big = web.MAX_BODY + 1
    async with client(sock) as c:
        r = await c.post("/v1/things/a/start", content=b"x" * big)
        assert r.status_code == 413 and "over" in r.json()["error"]["message"]
        r = await c.post("/v1/things/a/start", content=b"x" * web.MAX_BODY)
        assert r.json()["len"] == web.MAX_BODY
    answer = await raw(sock, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"malformed HTTP request" in answer
    # a streamed answer ends its chunks before the connection closes
    answer = await raw(sock, b"GET /v1/lines HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"0\r\n\r\n")  # chunked end
