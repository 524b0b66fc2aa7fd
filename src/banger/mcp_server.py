"""`banger mcp`: a Model Context Protocol server over stdio for coding agents.

Built on the official `mcp` package (imported only when this runs, so the CLI starts
fast). Every tool talks to the banger daemon through `banger.Client`; commands and
files go through the guest agent, so no SSH keys or network route are involved.
Output is bounded: a tool never returns more than `max_output` bytes of a command's
output or a file, and says how much it left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from banger import __version__
from banger.client import Client
from banger.errors import BangerError

T = TypeVar("T")

DEFAULT_MAX_OUTPUT = 32 << 10
DEFAULT_TIMEOUT = 120.0

INSTRUCTIONS = """\
banger runs Linux microVMs on this machine. Create a VM with vm_create (Debian by
default), then run commands with vm_exec and move files with vm_read_file /
vm_write_file. VMs persist until vm_delete. Commands run as root in /root unless told
otherwise; output is truncated beyond max_output bytes (the result says so)."""


class Bounded:
    """Keeps the first `limit` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += data[:room]
        self.dropped += max(0, len(data) - max(room, 0))

    def text(self) -> str:
        out = self.kept.decode(errors="replace")
        if self.dropped:
            out += f"\n[truncated: {self.dropped} more bytes not shown]"
        return out


def _vm_summary(vm: Any) -> dict[str, Any]:
    return {
        "name": vm.name,
        "state": vm.state,
        "ip": vm.ip,
        "dns": f"{vm.name}.vm",
        "image": vm.image,
        "vcpus": vm.vcpus,
        "memory_mib": vm.memory_mib,
    }


def build_server(client: Client, max_output: int = DEFAULT_MAX_OUTPUT) -> Any:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("banger", instructions=INSTRUCTIONS, version=__version__)

    async def run(fn: Callable[..., T], *args: Any) -> T:
        """A blocking client call in a thread; banger's errors become tool errors the
        model can read (message and hint)."""
        try:
            return await asyncio.to_thread(fn, *args)
        except BangerError as exc:
            raise ToolError(
                f"{exc.message}" + (f" (hint: {exc.hint})" if exc.hint else "")
            ) from exc

    def blocking_exec(
        name: str,
        argv: list[str],
        stdin: str | None,
        workdir: str | None,
        env: dict[str, str] | None,
        user: str | None,
        timeout: float,
        limit: int = max_output,
    ) -> dict[str, Any]:
        out, err = Bounded(limit), Bounded(limit)
        info: dict[str, Any] = {}
        with client.exec_stream(
            name,
            argv,
            stdin=stdin is not None,
            env=env,
            workdir=workdir,
            user=user,
            timeout=timeout,
        ) as s:
            if stdin is not None:
                s.write(stdin.encode())
                s.close_stdin()
            for ev in s.events():
                if ev.kind == "stdout":
                    out.add(ev.data)
                elif ev.kind == "stderr":
                    err.add(ev.data)
                else:
                    info = ev.info
        result: dict[str, Any] = {
            "exit_code": int(info.get("code", 255)),
            "stdout": out.text(),
            "stderr": err.text(),
        }
        if info.get("timed_out"):
            result["note"] = f"killed after the {timeout:g}s timeout"
        elif info.get("error"):
            result["error"] = info["error"]
        return result

    @server.tool()
    async def vm_list() -> list[dict[str, Any]]:
        """List the VMs: name, state, IP address, image, size."""
        return [_vm_summary(v) for v in await run(client.list)]

    @server.tool()
    async def vm_create(
        image: str | None = None,
        name: str | None = None,
        vcpus: int | None = None,
        memory: str | None = None,
        nat: bool = False,
    ) -> dict[str, Any]:
        """Create and boot a VM from an image (default debian-bookworm) and wait until
        it is ready. `memory` like "1G", at least the image's minimum (256M for
        debian-bookworm); `nat` gives it internet access. Returns its
        name, which the other tools take."""
        vm = await run(lambda: client.create(name, image, vcpus=vcpus, memory=memory, nat=nat))
        return _vm_summary(vm)

    @server.tool()
    async def vm_exec(
        name: str,
        command: str,
        stdin: str | None = None,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> dict[str, Any]:
        """Run a shell command (`sh -c COMMAND`) in VM `name` and return its exit code,
        stdout and stderr (each truncated beyond the server's output limit). The
        command is killed after `timeout` seconds."""
        return await run(
            blocking_exec, name, ["sh", "-c", command], stdin, workdir, env, user, timeout
        )

    @server.tool()
    async def vm_read_file(name: str, path: str, max_bytes: int | None = None) -> str:
        """Read a text file from VM `name` (a relative path is under /root). Long files
        are truncated to `max_bytes` (default: the server's output limit)."""
        limit = min(max_bytes or max_output, max_output)
        script = 'stat -L -c %s -- "$1" && exec head -c "$2" -- "$1"'
        # As root, like vm_write_file (and `vm cp`): an OCI image's User applies to
        # commands, and must not hide a file the model has just written.
        r = await run(
            blocking_exec, name, ["sh", "-c", script, "sh", path, str(limit)], None,
            "/root", None, "root", 60.0, limit + 32,
        )  # fmt: skip
        if r["exit_code"] != 0:
            raise ToolError(r.get("error") or r["stderr"].strip() or f"cannot read {path}")
        size_line, _, text = r["stdout"].partition("\n")
        size = int(size_line) if size_line.isdigit() else 0
        if size > limit:
            text += f"\n[truncated: showing {limit} of {size} bytes]"
        return str(text)

    @server.tool()
    async def vm_write_file(name: str, path: str, content: str, mode: str = "644") -> str:
        """Create or replace a file in VM `name` with `content` (parent directories are
        created; `mode` in octal, e.g. "755" for a script)."""
        await run(client.write_file, name, path, content, int(mode, 8))
        return f"wrote {len(content.encode())} bytes to {name}:{path}"

    @server.tool()
    async def vm_ports(name: str) -> list[dict[str, Any]]:
        """TCP ports listening in VM `name`, with the process behind each; reach them
        at NAME.vm:PORT from this machine."""
        data = await run(client.vm_ports, name)
        return list(data.get("ports", []))

    @server.tool()
    async def vm_delete(name: str) -> str:
        """Delete VM `name` and its disks (it is stopped first)."""
        await run(client.delete, name, True)
        return f"deleted {name}"

    return server


def serve(max_output: int = DEFAULT_MAX_OUTPUT) -> None:
    """Run the server on stdin/stdout until the client hangs up."""
    server = build_server(Client.connect(), max_output)
    server.run("stdio")
