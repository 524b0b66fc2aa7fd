"""Helpers shared by the route modules."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from banger.daemon.app import Daemon
from banger.errors import InvalidInput

DAEMON_KEY = web.AppKey("daemon", Daemon)
M = TypeVar("M", bound=BaseModel)


def daemon_of(request: web.Request) -> Daemon:
    return request.app[DAEMON_KEY]


def ok(data: Any, status: int = 200) -> web.Response:
    if isinstance(data, BaseModel):
        payload: Any = data.model_dump(mode="json")
    elif isinstance(data, list):
        payload = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    else:
        payload = data
    return web.json_response(payload, status=status, dumps=json.dumps)


async def body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise InvalidInput(f"request field `{field}`: {err['msg']}") from exc


def flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")
