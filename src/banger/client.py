"""Typed client for the daemon API: what the CLI and TUI use, and what users may import.

from banger.client import Client
with Client.connect() as c:
    for vm in c.list_vms(): print(vm.name, vm.state)
"""

from __future__ import annotations

import builtins
import json
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from banger.errors import BangerError, DaemonUnavailable, from_dict
from banger.paths import Paths, default_paths

if TYPE_CHECKING:
    import http.client

    from pydantic import BaseModel

    from banger.api.models import (
        VM,
        BuildImage,
        CreateVM,
        DoctorReport,
        Image,
        Kernel,
        KernelBuild,
        Operation,
        OperationEvent,
        PullOciImage,
        RegisterImage,
        SetVM,
        Snapshot,
        Status,
    )
    from banger.stream import ExecResult, GuestStream

# The API models (pydantic) are imported by the methods that build them, not here:
# `banger vm list` reads plain JSON (`vm_rows`) and never pays for pydantic.
M = TypeVar("M", bound="BaseModel")
EventCallback = Callable[["OperationEvent"], None]


def _unix_socket(path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2.0)  # connecting to a local socket is instant or broken
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    sock.settimeout(timeout)
    return sock


def _connection(path: str, timeout: float | None) -> http.client.HTTPConnection:
    """An `http.client` connection over the daemon's UNIX socket, for the calls that
    stream a response (operation events). Imported on use: http.client brings email
    and ssl, more than a `banger vm list` may spend."""
    import http.client

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = _unix_socket(path, self.timeout)

    return UnixConnection("bangerd", timeout=timeout)


class _BadResponse(Exception):
    """The daemon's answer is not a whole HTTP response."""


def _exchange(path: str, timeout: float | None, request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request with `Connection: close` and its whole response: status and
    body. The plain JSON calls need no more than this, and it needs only `socket`."""
    with _unix_socket(path, timeout) as sock:
        sock.sendall(request)
        chunks: list[bytes] = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if not sep or len(status_line) < 2 or not status_line[1].isdigit():
        raise _BadResponse(f"no HTTP response ({len(head) + len(body)} bytes)")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if len(body) < length:
            raise _BadResponse(f"the response ended after {len(body)} of {length} bytes")
        body = body[:length]
    return int(status_line[1]), body


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    while True:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            raise _BadResponse("a chunked response ended early")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            return b"".join(out)
        if len(rest) < size + 2:
            raise _BadResponse("a chunked response ended early")
        out.append(rest[:size])
        data = rest[size + 2 :]


class Client:
    def __init__(self, paths: Paths, timeout: float = 60.0) -> None:
        self.paths = paths
        self.timeout = timeout
        self.started_daemon_pid: int | None = None

    @classmethod
    def connect(cls, paths: Paths | None = None, *, autostart: bool = True) -> Client:
        """A client for a running daemon; starts one when `autostart` and none answers."""
        from banger.spawn import socket_answers, start_detached

        paths = paths or default_paths()
        if not socket_answers(paths):
            if not autostart:
                raise DaemonUnavailable(
                    f"the banger daemon is not running (no answer on {paths.socket})",
                    hint="start it with `banger daemon start`",
                )
            from banger.paths import ensure_dirs

            ensure_dirs(paths)
            client = cls(paths)
            client.started_daemon_pid = start_detached(paths)
            return client
        return cls(paths)

    def close(self) -> None:
        return None  # one connection per request: nothing is held open

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------

    @staticmethod
    def _target(path: str, params: dict[str, Any] | None) -> str:
        # Names in the path are the user's words: a space, `?`, `#`, `%` or a non-ASCII
        # letter must reach the daemon as that name, not break the request line.
        path = urllib.parse.quote(path, safe="/")
        if not params:
            return path
        query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
        return f"{path}?{urllib.parse.urlencode(query)}"

    def _lost(self, exc: Exception) -> DaemonUnavailable:
        return DaemonUnavailable(
            f"lost contact with the banger daemon ({exc})",
            hint=f"check `banger daemon status`; the log is {self.paths.daemon_log}",
        )

    def _open(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        timeout: float | None = -1.0,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A request whose response is read as it comes (see `stream`)."""
        import http.client

        conn = _connection(str(self.paths.socket), self.timeout if timeout == -1.0 else timeout)
        try:
            conn.request(method, self._target(path, params))
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._lost(exc) from exc

    @staticmethod
    def _raise_for(status: int, data: bytes) -> None:
        try:
            err = json.loads(data)["error"]
        except (ValueError, KeyError, TypeError):
            raise BangerError(f"daemon answered {status}: {data[:200]!r}") from None
        raise from_dict(err)

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {self._target(path, params)} HTTP/1.1\r\nHost: bangerd\r\n"
        head += "Connection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        try:
            status, answer = _exchange(
                str(self.paths.socket), self.timeout, (head + "\r\n").encode() + data
            )
        except (OSError, _BadResponse) as exc:
            raise self._lost(exc) from exc
        if status >= 400:
            self._raise_for(status, answer)
        return json.loads(answer)

    def _get(self, path: str, model: type[M], **kw: Any) -> M:
        return model.model_validate(self._request("GET", path, **kw))

    def _list(self, path: str, model: type[M]) -> list[M]:
        return [model.model_validate(x) for x in self._request("GET", path)]

    def _op(self, method: str, path: str, **kw: Any) -> Operation:
        from banger.api.models import Operation

        return Operation.model_validate(self._request(method, path, **kw))

    # -- daemon --------------------------------------------------------------------

    def status(self) -> Status:
        from banger.api.models import Status

        return self._get("/v1/status", Status)

    def shutdown(self) -> None:
        self._request("POST", "/v1/shutdown")

    def config(self) -> dict[str, Any]:
        return dict(self._request("GET", "/v1/config"))

    def doctor(self) -> DoctorReport:
        from banger.api.models import DoctorReport

        return self._get("/v1/doctor", DoctorReport)

    # -- operations ----------------------------------------------------------------

    def operation(self, op_id: str) -> Operation:
        from banger.api.models import Operation

        return self._get(f"/v1/operations/{op_id}", Operation)

    def operations(self) -> list[Operation]:
        from banger.api.models import Operation

        return self._list("/v1/operations", Operation)

    def cancel(self, op_id: str) -> Operation:
        return self._op("POST", f"/v1/operations/{op_id}/cancel")

    def stream(self, op_id: str, since: int = 0) -> Iterator[OperationEvent | Operation]:
        import http.client

        from banger.api.models import Operation, OperationEvent

        conn, resp = self._open(
            "GET", f"/v1/operations/{op_id}/events", {"since": since}, timeout=None
        )
        try:
            if resp.status >= 400:
                self._raise_for(resp.status, resp.read())
            for line in resp:
                if not line.strip():
                    continue
                item = json.loads(line)
                if "event" in item:
                    yield OperationEvent.model_validate(item["event"])
                else:
                    yield Operation.model_validate(item["operation"])
        except (OSError, http.client.HTTPException) as exc:
            raise DaemonUnavailable(
                f"lost contact with the banger daemon while following operation {op_id}",
                hint="the work may still be running: `banger daemon status`",
            ) from exc
        finally:
            conn.close()

    def wait(self, op: Operation, on_event: EventCallback | None = None) -> Operation:
        """Follow an operation to the end; raise its error if it failed."""
        from banger.api.models import OperationEvent

        final = None
        for item in self.stream(op.id):
            if isinstance(item, OperationEvent):
                if on_event:
                    on_event(item)
            else:
                final = item
        if final is None:  # the stream ended without the operation's outcome
            raise DaemonUnavailable(
                f"lost contact with the banger daemon during {op.kind} {op.target}",
                hint="the daemon stopped before the operation finished: `banger daemon status`",
            )
        if final.state != "succeeded":
            err = final.error
            if err is None:
                raise BangerError(f"{final.kind} {final.target} ended {final.state}")
            raise from_dict(err.model_dump())
        return final

    # -- kernels and images --------------------------------------------------------

    def kernels(self) -> list[Kernel]:
        from banger.api.models import Kernel

        return self._list("/v1/kernels", Kernel)

    def kernel(self, name: str) -> Kernel:
        from banger.api.models import Kernel

        return self._get(f"/v1/kernels/{name}", Kernel)

    def pull_kernel(self, name: str) -> Operation:
        return self._op("POST", f"/v1/kernels/{name}/pull")

    def build_kernel(self, req: KernelBuild) -> Operation:
        return self._op("POST", "/v1/kernels/build", body=req.model_dump(mode="json"))

    def remove_kernel(self, name: str, force: bool = False) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/v1/kernels/{name}", params={"force": force}))

    def images(self) -> list[Image]:
        from banger.api.models import Image

        return self._list("/v1/images", Image)

    def image(self, name: str) -> Image:
        from banger.api.models import Image

        return self._get(f"/v1/images/{name}", Image)

    def pull_image(self, name: str) -> Operation:
        return self._op("POST", f"/v1/images/{name}/pull")

    def remove_image(self, name: str, force: bool = False) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/v1/images/{name}", params={"force": force}))

    def register_image(self, req: RegisterImage) -> Image:
        from banger.api.models import Image

        return Image.model_validate(
            self._request("POST", "/v1/images", body=req.model_dump(mode="json"))
        )

    def pull_oci_image(self, req: PullOciImage) -> Operation:
        return self._op("POST", "/v1/images/pull", body=req.model_dump(mode="json"))

    def build_image(self, req: BuildImage) -> Operation:
        """Start `image build` (host paths in `req` must be absolute)."""
        return self._op("POST", "/v1/images/build", body=req.model_dump())

    def promote_image(self, name: str) -> Operation:
        return self._op("POST", f"/v1/images/{name}/promote")

    # -- VMs -----------------------------------------------------------------------

    def vm_rows(self) -> builtins.list[dict[str, Any]]:
        """Every VM as the daemon sends it: JSON objects with the fields of
        `api.models.VM`, not validated into models. For a listing that has to be
        quick (`banger vm list` never imports pydantic); `vms()` is the typed form."""
        rows = self._request("GET", "/v1/vms")
        assert isinstance(rows, builtins.list)
        return rows

    def vm_row(self, name: str) -> dict[str, Any]:
        """One VM as the daemon sends it (see `vm_rows`); `vm()` is the typed form."""
        return dict(self._request("GET", f"/v1/vms/{name}"))

    def vms(self) -> list[VM]:
        from banger.api.models import VM

        return self._list("/v1/vms", VM)

    def vm(self, name: str) -> VM:
        from banger.api.models import VM

        return self._get(f"/v1/vms/{name}", VM)

    def create_vm(self, req: CreateVM) -> Operation:
        return self._op("POST", "/v1/vms", body=req.model_dump(mode="json"))

    def vm_action(self, name: str, action: str, **params: Any) -> Operation:
        return self._op("POST", f"/v1/vms/{name}/{action}", params=params)

    def take_snapshot(self, name: str, as_name: str | None = None) -> Operation:
        """Start snapshotting VM `name` (running or suspended) as `as_name`."""
        return self._op("POST", f"/v1/vms/{name}/snapshot", body={"name": as_name})

    def snapshots(self) -> builtins.list[Snapshot]:
        from banger.api.models import Snapshot

        return self._list("/v1/snapshots", Snapshot)

    def snapshot(self, name: str) -> Snapshot:
        from banger.api.models import Snapshot

        return self._get(f"/v1/snapshots/{name}", Snapshot)

    def delete_snapshot(self, name: str) -> str:
        return str(self._request("DELETE", f"/v1/snapshots/{name}")["deleted"])

    def delete_vm(self, name: str, force: bool = False) -> Operation:
        return self._op("DELETE", f"/v1/vms/{name}", params={"force": force})

    def set_vm(self, name: str, req: SetVM) -> VM:
        from banger.api.models import VM

        return VM.model_validate(
            self._request("PATCH", f"/v1/vms/{name}", body=req.model_dump(exclude_none=True))
        )

    def publish(self, name: str, specs: list[str], *, remove: bool = False) -> VM:
        """Publish (or with `remove`, unpublish) ports of a VM; live when it runs."""
        from banger.api.models import VM

        action = "unpublish" if remove else "publish"
        return VM.model_validate(
            self._request("POST", f"/v1/vms/{name}/{action}", body={"specs": specs})
        )

    def dns(self, action: str = "status") -> dict[str, Any]:
        """Host resolver integration: "status", "setup" or "teardown"."""
        if action == "status":
            return dict(self._request("GET", "/v1/dns"))
        return dict(self._request("POST", f"/v1/dns/{action}"))

    def ssh_info(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/vms/{name}/ssh"))

    def console_log(self, name: str) -> str:
        """Path of the VM's serial console log (on this host; it may not exist yet)."""
        return str(self._request("GET", f"/v1/vms/{name}/logs")["path"])

    # -- guest agent -----------------------------------------------------------------

    def vm_health(self, name: str) -> dict[str, Any]:
        """The agent's view of a VM: `healthy`, `agent` (ok/absent/stopped/unreachable),
        `detail`, and the agent's /healthz and /info answers when it is up."""
        return dict(self._request("GET", f"/v1/vms/{name}/health"))

    def vm_ports(self, name: str) -> dict[str, Any]:
        """Listening TCP ports in the guest: {"name", "ip", "ports": [...]}."""
        return dict(self._request("GET", f"/v1/vms/{name}/ports"))

    # -- VMs, the short way ------------------------------------------------------------

    def list(self) -> list[VM]:
        """Every VM."""
        return self.vms()

    def get(self, name: str) -> VM:
        """One VM by name (NotFound when there is none)."""
        return self.vm(name)

    def create(
        self,
        name: str | None = None,
        image: str | None = None,
        *,
        vcpus: int | None = None,
        memory: str | None = None,
        nat: bool = False,
        on_event: EventCallback | None = None,
    ) -> VM:
        """Create and boot a VM; returns it running (the image is pulled if needed)."""
        from banger.api.models import CreateVM

        req = CreateVM(name=name, image=image, vcpus=vcpus, memory=memory, nat=nat)
        final = self.wait(self.create_vm(req), on_event)
        return self.vm(str(final.result["name"]))

    def start(self, name: str, *, cold: bool = False) -> VM:
        """Start a VM; a suspended one resumes where it was (`cold`: discard its saved
        state and boot)."""
        self.wait(self.vm_action(name, "start", cold=cold))
        return self.vm(name)

    def suspend(self, name: str) -> VM:
        """Save a running VM's memory and device state beside its disks and end its
        process; `start` resumes it."""
        self.wait(self.vm_action(name, "suspend"))
        return self.vm(name)

    def stop(self, name: str, force: bool = False) -> VM:
        self.wait(self.vm_action(name, "stop", force=force))
        return self.vm(name)

    def delete(self, name: str, force: bool = False) -> None:
        """Delete a VM and its disks (force: even while running)."""
        self.wait(self.delete_vm(name, force=force))

    # -- exec and files (through the guest agent; no SSH involved) ----------------------

    def open_stream(self, name: str, spec: dict[str, Any]) -> GuestStream:
        """A raw guest stream; see `banger.stream` (exec_stream is the friendly form)."""
        from banger.stream import GuestStream

        return GuestStream(self.paths.socket, name, spec)

    def exec_stream(
        self,
        name: str,
        argv: builtins.list[str] | tuple[str, ...],
        *,
        stdin: bool = False,
        tty: bool = False,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> GuestStream:
        """Start a command and stream it: iterate `.events()` (stdout/stderr chunks in
        order, then exit), `.write()` input when `stdin`, `.resize()`, `.signal()`.
        Use it as a context manager: closing it kills the command if still running."""
        from banger.stream import exec_spec

        spec = exec_spec(
            argv, stdin=stdin, tty=tty, env=env, workdir=workdir, user=user, timeout=timeout
        )
        return self.open_stream(name, spec)

    def exec(
        self,
        name: str,
        argv: builtins.list[str] | tuple[str, ...] | str,
        *,
        input: bytes | str | None = None,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> ExecResult:
        """Run a command in the VM and wait for it: exit code, stdout, stderr.

        `argv` as a string runs through `sh -c`. `check` raises when the exit code is
        not 0. `timeout` kills the command after that many seconds (exit code 124)."""
        from banger.stream import collect

        if isinstance(argv, str):
            argv = ["sh", "-c", argv]
        data = input.encode() if isinstance(input, str) else input
        with self.exec_stream(
            name,
            argv,
            stdin=data is not None,
            env=env,
            workdir=workdir,
            user=user,
            timeout=timeout,
        ) as s:
            result = collect(s, data)
        if check and result.exit_code != 0:
            detail = result.error or result.stderr.decode(errors="replace").strip()[-500:]
            raise BangerError(f"`{' '.join(argv)}` in {name} exited {result.exit_code}: {detail}")
        return result

    def copy_to(
        self,
        name: str,
        local: str | Path,
        remote: str,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Copy a local file or directory into the VM (like `cp -a`): into `remote`
        when it is a directory, else as `remote`. Returns {"files", "dirs", "bytes"}.
        `on_total` gets the bytes to send, `progress` the bytes sent so far."""
        from banger.stream import _check, send_tree, tree_size

        src = Path(local)
        if not src.exists() and not src.is_symlink():
            raise BangerError(f"{src} does not exist", hint="check the local path")
        real = src.resolve() if src.is_symlink() else src
        arcname = src.resolve().name or "root"
        if on_total:
            on_total(tree_size(str(real)))
        with self.open_stream(name, {"kind": "tar-in", "path": _abs(remote)}) as s:
            info = send_tree(s, real, arcname, progress) if "error" not in s.opened else {}
            if not info:
                info = next(ev.info for ev in s.events() if ev.kind == "exit")
        return _check(info, f"copy into {name}:{remote} failed")

    def copy_from(
        self,
        name: str,
        remote: str,
        local: str | Path,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> dict[str, int]:
        """Copy a file or directory out of the VM to `local` (into it when it is a
        directory). Ownership is kept when running as root."""
        from banger.stream import _check, local_extract

        with self.open_stream(name, {"kind": "tar-out", "path": _abs(remote)}) as s:
            if on_total and "total" in s.opened:
                on_total(int(s.opened["total"]))
            info, stats = local_extract(s, Path(local), progress)
        _check(info, f"copy from {name}:{remote} failed")
        return stats

    def read_file(self, name: str, path: str, limit: int | None = None) -> bytes:
        """The contents of a file in the VM (`limit`: refuse larger files)."""
        from banger.stream import untar_one

        with self.open_stream(name, {"kind": "tar-out", "path": _abs(path)}) as s:
            return untar_one(s, limit)

    def write_file(self, name: str, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Create or replace a file in the VM (parent directories are created)."""
        import posixpath

        from banger.stream import _check, collect, tar_bytes

        path = _abs(path)
        raw = data.encode() if isinstance(data, str) else data
        archive = tar_bytes(posixpath.basename(path), raw, mode)
        spec = {"kind": "tar-in", "path": path, "exact": True}
        with self.open_stream(name, spec) as s:
            result = collect(s, archive)
        _check({"code": result.exit_code, "error": result.error}, f"write to {name}:{path} failed")


def _abs(path: str) -> str:
    """Guest paths: relative ones are relative to /root (the default user's home)."""
    return path if path.startswith("/") else f"/root/{path}"
