"""Kernels and images."""

from __future__ import annotations

from banger.api.models import BuildImage, KernelBuild, PullOciImage, RegisterImage
from banger.daemon import web
from banger.daemon.routes.common import body, daemon_of, flag, ok

routes = web.RouteTableDef()


@routes.get("/v1/kernels")
async def list_kernels(request: web.Request) -> web.Response:
    return ok(daemon_of(request).artifacts.kernels())


@routes.post("/v1/kernels/build")
async def build_kernel(request: web.Request) -> web.Response:
    req = await body(request, KernelBuild)
    return ok(daemon_of(request).artifacts.build_kernel(req), status=202)


@routes.get("/v1/kernels/{name}")
async def get_kernel(request: web.Request) -> web.Response:
    return ok(daemon_of(request).artifacts.kernel(request.match_info["name"]))


@routes.post("/v1/kernels/{name}/pull")
async def pull_kernel(request: web.Request) -> web.Response:
    return ok(daemon_of(request).artifacts.pull_kernel(request.match_info["name"]), status=202)


@routes.delete("/v1/kernels/{name}")
async def remove_kernel(request: web.Request) -> web.Response:
    d = daemon_of(request)
    broken = d.artifacts.remove_kernel(request.match_info["name"], flag(request, "force"))
    return ok({"removed": request.match_info["name"], "broken": broken})


@routes.get("/v1/images")
async def list_images(request: web.Request) -> web.Response:
    return ok(daemon_of(request).artifacts.images())


@routes.post("/v1/images")
async def register_image(request: web.Request) -> web.Response:
    req = await body(request, RegisterImage)
    return ok(daemon_of(request).artifacts.register_image(req), status=201)


@routes.post("/v1/images/pull")
async def pull_oci_image(request: web.Request) -> web.Response:
    req = await body(request, PullOciImage)
    return ok(daemon_of(request).artifacts.pull_oci_image(req), status=202)


@routes.post("/v1/images/build")
async def build_image(request: web.Request) -> web.Response:
    """`image build`: bad input fails the request; the build is an operation."""
    req = await body(request, BuildImage)
    return ok(daemon_of(request).builds.start(req), status=202)


@routes.get("/v1/images/{name}")
async def get_image(request: web.Request) -> web.Response:
    return ok(daemon_of(request).artifacts.image(request.match_info["name"]))


@routes.post("/v1/images/{name}/pull")
async def pull_image(request: web.Request) -> web.Response:
    return ok(daemon_of(request).artifacts.pull_image(request.match_info["name"]), status=202)


@routes.post("/v1/images/{name}/promote")
async def promote_image(request: web.Request) -> web.Response:
    return ok(daemon_of(request).artifacts.promote_image(request.match_info["name"]), status=202)


@routes.delete("/v1/images/{name}")
async def remove_image(request: web.Request) -> web.Response:
    d = daemon_of(request)
    broken = d.artifacts.remove_image(request.match_info["name"], flag(request, "force"))
    return ok({"removed": request.match_info["name"], "broken": broken})


def setup(app: web.Application) -> None:
    app.add_routes(routes)
