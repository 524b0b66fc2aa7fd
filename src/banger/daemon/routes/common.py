"""Helpers shared by the route modules."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from banger.daemon import web
from banger.daemon.app import Daemon
from banger.errors import BadRequest, InvalidInput

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
    """The request's JSON body as `model`: unknown fields and loose types refused."""
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        known = ", ".join(model.model_fields)
        if err["type"] == "extra_forbidden":
            raise InvalidInput(
                f"unknown request field `{field}`", hint=f"the fields are: {known}"
            ) from None
        if not field:
            raise BadRequest(
                f"bad request body: {err['msg']}", hint=f"send a JSON object with: {known}"
            ) from None
        raise InvalidInput(
            f"request field `{field}`: {err['msg']}",
            hint='send the JSON type the API documents (e.g. 2, not "2")',
        ) from None


_TRUE = ("1", "true", "yes")
_FALSE = ("", "0", "false", "no")


def flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "").lower()
    if value not in _TRUE + _FALSE:
        raise BadRequest(
            f"query parameter `{name}={request.query.get(name)}` is not a boolean",
            hint=f"use {name}=true or {name}=false",
        )
    return value in _TRUE


def int_param(request: web.Request, name: str, default: int, *, lo: int = 0, hi: int) -> int:
    """A whole-number query parameter in [lo, hi]; anything else is a 400."""
    text = request.query.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not lo <= int(text) <= hi:
        raise BadRequest(
            f"query parameter `{name}={text}` is not a whole number from {lo} to {hi}",
            hint=f"e.g. {name}={default}",
        )
    return int(text)
