"""The daemon's HTTP/1.1 server on its UNIX socket: h11 parses and frames HTTP, wsproto
frames WebSockets; this module routes requests and runs the middlewares.

The API needs little of a web framework: routes with `{name}` and `{name:regex}`
parameters, JSON and streamed (NDJSON) responses, one WebSocket route and two
middlewares. aiohttp offered that at ~13 MB of the idle daemon's resident memory (its
package brings its HTTP client, TLS contexts and cookie handling along); h11 and
wsproto, both sans-IO, cost ~1.5 MB. The names follow aiohttp's (`Request`,
`Response`, `StreamResponse`, `WebSocketResponse`, `RouteTableDef`), so route code
reads as before.

Behaviour kept from aiohttp: request bodies up to 1 MiB (413 beyond), keep-alive,
chunked streamed responses, 404 and 405 raised inside the middlewares (the error
middleware turns them into JSON), handlers never cancelled because a client left,
and on shutdown in-flight requests get a short grace before they are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Generic, TypeVar, overload
from urllib.parse import parse_qsl, unquote

import h11
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.utilities import generate_accept_token

log = logging.getLogger("banger.server")

T = TypeVar("T")
MAX_BODY = 1 << 20  # the largest request body (aiohttp's default, which the API relied on)
READ_SIZE = 1 << 16
SHUTDOWN_GRACE = 3.0  # seconds in-flight requests get once the daemon stops


class HTTPException(Exception):
    """Raise from a handler (or the router) to answer with this status."""

    status = 500
    reason = "Internal Server Error"

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{self.status} {self.reason}")
        self.headers = headers or {}


class HTTPBadRequest(HTTPException):
    status, reason = 400, "Bad Request"


class HTTPNotFound(HTTPException):
    status, reason = 404, "Not Found"


class HTTPMethodNotAllowed(HTTPException):
    status, reason = 405, "Method Not Allowed"


class HTTPRequestEntityTooLarge(HTTPException):
    status, reason = 413, "Request Entity Too Large"


# -- the application and its routes ---------------------------------------------------


class AppKey(Generic[T]):
    """A typed key for `Application` state: `app[KEY]` has the key's type."""

    def __init__(self, name: str, t: type[T]) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<AppKey {self.name}>"


Handler = Callable[["Request"], Awaitable["StreamResponse"]]
Middleware = Callable[["Request", Handler], Awaitable["StreamResponse"]]

_PARAM = re.compile(r"\{(\w+)(?::([^{}]+))?\}")


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # the path with `{name}` for each parameter (its regex left out)
    handler: Handler
    pattern: re.Pattern[str]

    @classmethod
    def make(cls, method: str, path: str, handler: Handler) -> Route:
        regex, pos = "", 0
        for m in _PARAM.finditer(path):
            regex += re.escape(path[pos : m.start()]) + f"(?P<{m[1]}>{m[2] or '[^{}/]+'})"
            pos = m.end()
        regex += re.escape(path[pos:])
        template = _PARAM.sub(lambda m: "{" + m[1] + "}", path)
        return cls(method, template, handler, re.compile(regex))


class RouteTableDef:
    """Routes declared with decorators (`@routes.get("/v1/x/{name}")`)."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def _add(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(Route.make(method, path, handler))
            return handler

        return register

    def get(self, path: str) -> Callable[[Handler], Handler]:
        return self._add("GET", path)

    def post(self, path: str) -> Callable[[Handler], Handler]:
        return self._add("POST", path)

    def patch(self, path: str) -> Callable[[Handler], Handler]:
        return self._add("PATCH", path)

    def delete(self, path: str) -> Callable[[Handler], Handler]:
        return self._add("DELETE", path)


class Router:
    def __init__(self) -> None:
        self._routes: list[Route] = []

    def add(self, routes: Sequence[Route]) -> None:
        self._routes.extend(routes)

    def routes(self) -> list[Route]:
        return list(self._routes)

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The first route (in registration order) matching the method and path;
        405 when only other methods match the path, 404 when nothing does."""
        allowed: list[str] = []
        for route in self._routes:
            m = route.pattern.fullmatch(path)
            if m is None:
                continue
            if route.method == method:
                return route.handler, m.groupdict()
            allowed.append(route.method)
        if allowed:
            raise HTTPMethodNotAllowed({"Allow": ", ".join(sorted(set(allowed)))})
        raise HTTPNotFound()


class Application:
    """Routes, middlewares (outermost first) and state (`app[KEY]`)."""

    def __init__(self, middlewares: Sequence[Middleware] = ()) -> None:
        self.middlewares = list(middlewares)
        self.router = Router()
        self._state: dict[Any, Any] = {}

    @overload
    def __getitem__(self, key: AppKey[T]) -> T: ...
    @overload
    def __getitem__(self, key: str) -> Any: ...
    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    @overload
    def __setitem__(self, key: AppKey[T], value: T) -> None: ...
    @overload
    def __setitem__(self, key: str, value: Any) -> None: ...
    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value

    def add_routes(self, table: RouteTableDef) -> None:
        self.router.add(table.routes)

    async def handle(self, request: Request) -> StreamResponse:
        """Route the request through the middlewares; HTTP errors become responses."""

        async def endpoint(req: Request) -> StreamResponse:
            handler, req.match_info = self.router.resolve(req.method, req.path)
            return await handler(req)

        handler: Handler = endpoint
        for mw in reversed(self.middlewares):
            handler = _wrap(mw, handler)
        try:
            return await handler(request)
        except HTTPException as exc:
            return Response(
                status=exc.status,
                text=f"{exc.status}: {exc.reason}",
                content_type="text/plain; charset=utf-8",
                headers=exc.headers,
            )


def _wrap(mw: Middleware, inner: Handler) -> Handler:
    async def handler(request: Request) -> StreamResponse:
        return await mw(request, inner)

    return handler


# -- requests and responses -------------------------------------------------------------


class Request:
    def __init__(
        self,
        app: Application,
        conn: _Connection,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        path, _, qs = target.partition("?")
        self.app = app
        self.method = method
        self.path = unquote(path)
        self.headers = headers  # names in lower case
        self.query: dict[str, str] = {}
        for key, value in parse_qsl(qs, keep_blank_values=True):
            self.query.setdefault(key, value)  # the first value, as aiohttp's .get() gave
        self.match_info: dict[str, str] = {}
        self._conn = conn
        self._body = body

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        return self._conn.writer.transport

    async def read(self) -> bytes:
        return self._body


class StreamResponse:
    """A response whose body is written in pieces after `prepare()` (chunked)."""

    def __init__(self, *, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = dict(headers or {})
        self._conn: _Connection | None = None
        self._done = False

    @property
    def prepared(self) -> bool:
        return self._conn is not None

    async def prepare(self, request: Request) -> None:
        self._conn = request._conn
        await self._conn.send(h11.Response(status_code=self.status, headers=_h(self.headers)))

    async def write(self, data: bytes) -> None:
        assert self._conn is not None, "prepare() the response first"
        await self._conn.send(h11.Data(data=data))

    async def write_eof(self) -> None:
        if self._conn is not None and not self._done:
            self._done = True
            await self._conn.send(h11.EndOfMessage())


class Response(StreamResponse):
    """A whole response (with a Content-Length)."""

    def __init__(
        self,
        *,
        status: int = 200,
        body: bytes = b"",
        text: str | None = None,
        content_type: str = "application/octet-stream",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status=status, headers=headers)
        self.body = text.encode() if text is not None else body
        self.headers["Content-Type"] = content_type
        self.headers["Content-Length"] = str(len(self.body))

    async def prepare(self, request: Request) -> None:
        await super().prepare(request)
        if self.body:
            await self.write(self.body)
        await self.write_eof()


def json_response(
    data: Any, *, status: int = 200, dumps: Callable[[Any], str] = json.dumps
) -> Response:
    return Response(status=status, text=dumps(data), content_type="application/json; charset=utf-8")


def _h(headers: dict[str, str]) -> list[tuple[str, str]]:
    return list(headers.items())


# -- WebSockets -------------------------------------------------------------------------


class WSMsgType(IntEnum):
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    CLOSED = 257
    ERROR = 258


@dataclass(frozen=True)
class WSMessage:
    type: WSMsgType
    data: Any = None
    extra: Any = None


class WebSocketResponse(StreamResponse):
    """The server side of a WebSocket: `prepare()` upgrades the request's connection;
    then `receive()` (or `async for`) one whole message at a time, `send_str`,
    `send_bytes` and `close`. Pings are answered while receiving. One task receives,
    any task may send."""

    def __init__(self, *, max_msg_size: int = 4 << 20) -> None:
        super().__init__(status=101)
        self.max_msg_size = max_msg_size
        self._ws = WSConnection(ConnectionType.SERVER)
        self._events: deque[Any] = deque()
        self._parts: list[Any] = []
        self._size = 0
        self._closed = False

    async def prepare(self, request: Request) -> None:
        h = request.headers
        if (
            "websocket" not in h.get("upgrade", "").lower()
            or h.get("sec-websocket-version") != "13"
            or not h.get("sec-websocket-key")
        ):
            raise HTTPBadRequest()
        self._conn = request._conn
        accept = generate_accept_token(h["sec-websocket-key"].encode()).decode()
        rest = await self._conn.switch_protocol(
            [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)]
        )
        if rest:
            self._ws.receive_data(rest)
            self._events.extend(self._ws.events())

    async def _send(self, event: Any) -> None:
        assert self._conn is not None, "prepare() the WebSocket first"
        if self._ws.state is not ConnectionState.OPEN and not isinstance(event, CloseConnection):
            raise ConnectionResetError("the WebSocket is closing")
        await self._conn.write(self._ws.send(event))

    async def send_str(self, data: str) -> None:
        await self._send(TextMessage(data=data))

    async def send_bytes(self, data: bytes) -> None:
        await self._send(BytesMessage(data=data))

    async def receive(self) -> WSMessage:
        assert self._conn is not None, "prepare() the WebSocket first"
        while True:
            while self._events:
                ev = self._events.popleft()
                if isinstance(ev, Message):
                    self._parts.append(ev.data)
                    self._size += len(ev.data)
                    if self._size > self.max_msg_size:
                        await self.close(code=1009)
                        return WSMessage(WSMsgType.ERROR, ValueError("message too big"))
                    if not ev.message_finished:
                        continue
                    text = isinstance(ev, TextMessage)
                    data = ("" if text else b"").join(self._parts)
                    self._parts, self._size = [], 0
                    return WSMessage(WSMsgType.TEXT if text else WSMsgType.BINARY, data)
                if isinstance(ev, Ping):
                    with contextlib.suppress(ConnectionError):
                        await self._send(ev.response())
                elif isinstance(ev, CloseConnection):
                    if self._ws.state is ConnectionState.REMOTE_CLOSING:
                        with contextlib.suppress(ConnectionError):
                            await self._send(ev.response())
                    self._closed = True
                    return WSMessage(WSMsgType.CLOSE, ev.code, ev.reason)
            if self._closed:
                return WSMessage(WSMsgType.CLOSED)
            try:
                data = await self._conn.reader.read(READ_SIZE)
            except ConnectionError:  # reset: the peer died with our data unread
                data = b""
            if not data:
                self._closed = True
                return WSMessage(WSMsgType.CLOSED)
            try:
                self._ws.receive_data(data)
                self._events.extend(self._ws.events())
            except Exception as exc:  # a protocol error: the peer is not speaking WebSocket
                self._closed = True
                return WSMessage(WSMsgType.ERROR, exc)

    def __aiter__(self) -> AsyncIterator[WSMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[WSMessage]:
        while (msg := await self.receive()).type in (WSMsgType.TEXT, WSMsgType.BINARY):
            yield msg

    async def close(self, code: int = 1000) -> None:
        """Send the closing frame (once); the connection ends when the handler returns."""
        if self._conn is not None and self._ws.state is ConnectionState.OPEN:
            with contextlib.suppress(ConnectionError):
                await self._send(CloseConnection(code=code))
        self._closed = True


# -- connections and the server ------------------------------------------------------------


class _Connection:
    """One client connection: requests one after the other (keep-alive) until the
    client closes, asks to close, or the connection is upgraded to a WebSocket."""

    def __init__(
        self, app: Application, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.app = app
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER)
        self.busy = False  # a request is being handled (not waiting for the next one)
        self.closing = False  # the server stops: no further request on this connection

    async def write(self, data: bytes) -> None:
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def send(self, event: Any) -> None:
        await self.write(self.h11.send(event) or b"")

    async def _next_event(self) -> Any:
        while True:
            ev = self.h11.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            self.h11.receive_data(await self.reader.read(READ_SIZE))

    async def switch_protocol(self, headers: list[tuple[str, str]]) -> bytes:
        """Answer 101 and leave HTTP; returns the bytes the client sent beyond it."""
        await self.send(h11.InformationalResponse(status_code=101, headers=headers))
        return self.h11.trailing_data[0]

    async def serve(self) -> None:
        try:
            while not self.closing:
                ev = await self._next_event()
                if not isinstance(ev, h11.Request):
                    return  # ConnectionClosed (or PAUSED): nothing more to answer
                self.busy = True
                if not await self._one(ev):
                    return
                self.busy = False
                if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                    return  # a close was asked for, or the request body was not read
                self.h11.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            await self._refuse(exc)
        except (ConnectionError, h11.LocalProtocolError):
            pass  # the client went away mid-answer
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def _refuse(self, exc: h11.RemoteProtocolError) -> None:
        """A request h11 cannot parse: 400 if no answer has started yet."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = json.dumps(
            {
                "error": {
                    "code": "bad_request",
                    "message": f"malformed HTTP request: {exc}",
                    "hint": "send HTTP/1.1 with a JSON body",
                }
            }
        ).encode()
        status = exc.error_status_hint
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        with contextlib.suppress(Exception):
            await self.send(h11.Response(status_code=status, headers=headers))
            await self.send(h11.Data(data=body))
            await self.send(h11.EndOfMessage())

    async def _read_body(self, ev: h11.Request) -> bytes | None:
        """The whole body; None when it is over MAX_BODY (then it is not read)."""
        length = dict(ev.headers).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            return None
        if self.h11.they_are_waiting_for_100_continue:  # curl does for large bodies
            await self.send(h11.InformationalResponse(status_code=100, headers=[]))
        body = bytearray()
        while True:
            part = await self._next_event()
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > MAX_BODY:
                    return None
            elif isinstance(part, h11.EndOfMessage):
                return bytes(body)
            else:
                raise ConnectionResetError("the client closed mid-request")

    async def _one(self, ev: h11.Request) -> bool:
        """Answer one request; False when the connection is done afterwards."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in ev.headers}
        body = await self._read_body(ev)
        target = ev.target.decode("latin-1")
        request = Request(self.app, self, ev.method.decode("ascii"), target, headers, body or b"")
        if body is None:
            resp: StreamResponse = json_response(
                {
                    "error": {
                        "code": "invalid_input",
                        "message": f"the request body is over {MAX_BODY} bytes",
                        "hint": "send a smaller request",
                    }
                },
                status=HTTPRequestEntityTooLarge.status,
            )
        else:
            try:
                resp = await self.app.handle(request)
            except Exception:
                log.exception("unhandled error in %s %s", request.method, request.path)
                resp = json_response(
                    {"error": {"code": "internal", "message": "internal error", "hint": ""}},
                    status=500,
                )
        if isinstance(resp, WebSocketResponse) and resp.prepared:
            return False  # the connection was the WebSocket's
        if not resp.prepared:
            await resp.prepare(request)
        await resp.write_eof()
        return True


class Server:
    """Serves an Application on a listening socket until `cleanup()`."""

    def __init__(self, app: Application) -> None:
        self.app = app
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], _Connection] = {}

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(self._accept, sock=sock)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(self.app, reader, writer)
        self._conns[task] = conn
        try:
            await conn.serve()
        finally:
            self._conns.pop(task, None)

    def connections(self) -> Iterator[_Connection]:
        return iter(list(self._conns.values()))

    async def cleanup(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop listening; idle connections close now, requests being answered get
        `grace` seconds, then they are cancelled."""
        if self._server is not None:
            self._server.close()
        for task, conn in list(self._conns.items()):
            conn.closing = True
            if not conn.busy:
                task.cancel()
        if busy := list(self._conns):
            _, pending = await asyncio.wait(busy, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:  # a handler's own cleanup (its finally) gets as long again
                _, stuck = await asyncio.wait(pending, timeout=grace)
                for task in stuck:
                    log.warning("a request handler did not finish on shutdown: %s", task)
        if self._server is not None:
            await self._server.wait_closed()


async def serve(app: Application, sock: socket.socket) -> Server:
    server = Server(app)
    await server.start(sock)
    return server
