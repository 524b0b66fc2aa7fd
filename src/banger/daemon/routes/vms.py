"""VM lifecycle. Mutations run as operations; reads answer at once."""

from __future__ import annotations

from banger.api.models import VM, CreateVM, PublishedPort, PublishPorts, SetVM
from banger.daemon import web
from banger.daemon.app import Daemon
from banger.daemon.routes.common import body, daemon_of, flag, ok
from banger.errors import BangerError
from banger.net.nat import PortRule
from banger.progress import Progress
from banger.vm import VMRecord

routes = web.RouteTableDef()


def _port(r: PortRule) -> PublishedPort:
    return PublishedPort(
        proto="udp" if r.proto == "udp" else "tcp",
        host_addr=r.host_addr,
        host_port=r.host_port,
        guest_port=r.guest_port,
        spec=str(r),
    )


def _api(d: Daemon, vm: VMRecord, ports: list[PortRule] | None = None) -> VM:
    api = vm.to_api(str(d.vms.vm_dir(vm)))
    rules = d.publish.rules_for(vm.id) if ports is None else ports
    return api.model_copy(update={"ports": [_port(r) for r in rules]})


def _vm_json(request: web.Request, name: str) -> web.Response:
    d = daemon_of(request)
    return ok(_api(d, d.vms.get(name)))


@routes.get("/v1/vms")
async def list_vms(request: web.Request) -> web.Response:
    d = daemon_of(request)
    ports = d.publish.all_rules()
    # banger's own work VMs (image builds) are not the user's: not listed.
    return ok([_api(d, vm, ports.get(vm.id, [])) for vm in d.vms.all() if not vm.purpose])


@routes.post("/v1/vms")
async def create_vm(request: web.Request) -> web.Response:
    d = daemon_of(request)
    req = await body(request, CreateVM)
    # Validate before starting the operation, so bad input fails the request itself.
    probe = d.vms.new_record(req)
    req = req.model_copy(update={"name": probe.name})

    async def work(progress: Progress) -> dict[str, str]:
        vm = await d.vms.create(req, progress)
        return {"name": vm.name, "id": vm.id, "ip": vm.ip or ""}

    return ok(d.ops.start("vm.create", probe.name, work, key=f"vm:{probe.name}"), status=202)


@routes.get("/v1/vms/{name}")
async def get_vm(request: web.Request) -> web.Response:
    return _vm_json(request, request.match_info["name"])


@routes.patch("/v1/vms/{name}")
async def set_vm(request: web.Request) -> web.Response:
    d = daemon_of(request)
    req = await body(request, SetVM)
    vm = await d.vms.update(request.match_info["name"], req)
    return ok(_api(d, vm))


@routes.post("/v1/vms/{name}/{action:publish|unpublish}")
async def publish(request: web.Request) -> web.Response:
    """Add or remove published ports; live on a running VM. Answers the VM."""
    d = daemon_of(request)
    req = await body(request, PublishPorts)
    vm = d.vms.get(request.match_info["name"])
    async with d.vms.lock(vm.id):
        vm = d.vms.get(vm.id)  # its state now, under the lock a stop or delete takes
        if request.match_info["action"] == "publish":
            await d.publish.publish(vm, req.specs)
        else:
            await d.publish.unpublish(vm, req.specs)
    return ok(_api(d, vm))


@routes.post("/v1/vms/{name}/{action:start|stop|restart|suspend}")
async def vm_action(request: web.Request) -> web.Response:
    d = daemon_of(request)
    force = flag(request, "force")
    cold = flag(request, "cold")
    vm = d.vms.get(request.match_info["name"])
    action = request.match_info["action"]

    async def work(progress: Progress) -> dict[str, str]:
        if action == "start":
            rec = await d.vms.start(vm.id, progress, cold=cold)
        elif action == "stop":
            rec = await d.vms.stop(vm.id, progress, force=force)
        elif action == "suspend":
            rec = await d.vms.suspend(vm.id, progress)
        else:
            rec = await d.vms.restart(vm.id, progress)
        return {"name": rec.name, "state": rec.state}

    return ok(d.ops.start(f"vm.{action}", vm.name, work), status=202)


@routes.delete("/v1/vms/{name}")
async def delete_vm(request: web.Request) -> web.Response:
    d = daemon_of(request)
    force = flag(request, "force")
    vm = d.vms.get(request.match_info["name"])
    d.vms.check_deletable(vm, force)  # refuse in the request, not in the operation

    async def work(progress: Progress) -> dict[str, str]:
        return {"deleted": await d.vms.delete(vm.id, progress, force=force)}

    return ok(d.ops.start("vm.delete", vm.name, work), status=202)


@routes.get("/v1/vms/{name}/ssh")
async def ssh_info(request: web.Request) -> web.Response:
    d = daemon_of(request)
    vm = d.vms.get(request.match_info["name"])
    try:
        has_ssh = bool(d.artifacts.image(vm.image).info.get("ssh", True))
    except BangerError:
        has_ssh = True  # its image is gone: the VM's own disk may still run sshd
    return ok(
        {
            "name": vm.name,
            "image": vm.image,
            "ssh": has_ssh,
            "state": vm.state,
            "ip": vm.ip,
            "user": "root",
            "key": str(d.vms.ssh_key),
            "known_hosts": str(d.paths.known_hosts),
        }
    )


@routes.get("/v1/vms/{name}/logs")
async def logs(request: web.Request) -> web.Response:
    d = daemon_of(request)
    vm = d.vms.get(request.match_info["name"])
    return ok({"path": str(d.vms.vm_dir(vm) / "console.log")})


def setup(app: web.Application) -> None:
    app.add_routes(routes)
