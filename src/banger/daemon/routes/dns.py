"""The host resolver and `.vm`: `banger dns setup|status|teardown`."""

from __future__ import annotations

from banger.daemon import web
from banger.daemon.routes.common import daemon_of, ok

routes = web.RouteTableDef()


@routes.get("/v1/dns")
async def status(request: web.Request) -> web.Response:
    return ok(await daemon_of(request).host_dns.status())


@routes.post("/v1/dns/setup")
async def setup(request: web.Request) -> web.Response:
    return ok(await daemon_of(request).host_dns.setup())


@routes.post("/v1/dns/teardown")
async def teardown(request: web.Request) -> web.Response:
    return ok(await daemon_of(request).host_dns.teardown())


def setup_routes(app: web.Application) -> None:
    app.add_routes(routes)
