"""A stand-in `firecracker` for contract tests: the real API surface, no guest.

Run as `firecracker --api-sock PATH --id ID` (tests put a wrapper script named
`firecracker` on PATH that puts the repository root on sys.path). It serves HTTP
on the UNIX socket, validates every request against the published spec
(`fc_validator`) and answers 400 with a
`fault_message` for anything the spec rejects, as Firecracker does. It also
mimics the checks Firecracker makes before boot (files exist, kernel configured,
pre-boot-only resources refused after InstanceStart), prints a line on stdout
(the guest serial console) when "booted", and exits shortly after SendCtrlAltDel.

Environment: FAKE_FC_RECORD (JSON-lines file receiving every request and its
status), FAKE_FC_IGNORE_CTRL_ALT_DEL=1 (act like a guest that ignores it),
FAKE_FC_CRASH=1 (exit at once with an error, as Firecracker does without KVM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fc_validator import FirecrackerSpec, SpecViolation

SERIAL_BOOT_LINE = "fake-firecracker: guest serial console up"
SERIAL_CAD_LINE = "fake-firecracker: guest received ctrl-alt-del"


class FakeFirecracker:
    def __init__(self, vm_id: str, record: Path | None) -> None:
        self.spec = FirecrackerSpec()
        self.vm_id = vm_id
        self.record = record
        self.started = False
        self.config: dict[str, Any] = {}
        self.stop = asyncio.Event()

    def _log(self, entry: dict[str, Any]) -> None:
        if self.record is not None:
            with self.record.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._reply(request, None, 400, "invalid JSON body")
        try:
            op = self.spec.validate(request.method, request.path, body)
        except SpecViolation as exc:
            return self._reply(request, body, 400, str(exc))
        if request.method == "GET" and op.template == "/":
            state = "Running" if self.started else "Not started"
            info = {"app_name": "Firecracker", "id": self.vm_id, "state": state}
            self._log({"method": "GET", "path": "/", "body": None, "status": 200})
            return web.json_response({**info, "vmm_version": self.spec.version})
        fault = self._apply(op.template, body or {})
        return self._reply(request, body, 400 if fault else 204, fault)

    def _apply(self, template: str, body: dict[str, Any]) -> str | None:
        """Firecracker's own semantic checks, beyond the schema."""
        if template == "/actions":
            action = body["action_type"]
            if action == "InstanceStart":
                if self.started:
                    return "The requested operation is not supported after starting the microVM."
                if "/boot-source" not in self.config:
                    return "Cannot start microvm without kernel configuration."
                self.started = True
                print(SERIAL_BOOT_LINE, flush=True)
            elif action == "SendCtrlAltDel":
                if not self.started:
                    return "The requested operation is not supported before starting the microVM."
                print(SERIAL_CAD_LINE, flush=True)
                if os.environ.get("FAKE_FC_IGNORE_CTRL_ALT_DEL") != "1":
                    asyncio.get_running_loop().call_later(0.1, self.stop.set)
            return None
        if self.started:
            return "The requested operation is not supported after starting the microVM."
        for key in ("kernel_image_path", "initrd_path", "path_on_host", "log_path"):
            if key in body and not Path(body[key]).exists():
                return f"Cannot open {key} {body[key]}: No such file or directory (os error 2)"
        self.config[template] = body
        if template == "/logger":
            with open(body["log_path"], "a") as f:
                f.write(f"fake-firecracker {self.vm_id}: logger configured\n")
        return None

    def _reply(
        self, request: web.Request, body: Any, status: int, fault: str | None
    ) -> web.Response:
        self._log({"method": request.method, "path": request.path, "body": body, "status": status})
        if status == 204:
            return web.Response(status=204)
        return web.json_response({"fault_message": fault}, status=status)


async def serve(api_sock: Path, vm_id: str) -> None:
    record = os.environ.get("FAKE_FC_RECORD")
    fake = FakeFirecracker(vm_id, Path(record) if record else None)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(api_sock)).start()
    await fake.stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="firecracker")
    parser.add_argument("--api-sock")
    parser.add_argument("--id", default="anonymous-instance")
    parser.add_argument("--version", action="store_true")
    args = parser.parse_args()
    if args.version:
        print("Firecracker v1.16.1 (fake)")
        return
    if os.environ.get("FAKE_FC_CRASH") == "1":
        sys.exit("Error: KVM not accessible: Permission denied (os error 13)")
    print(f"Running Firecracker v1.16.1 (fake) id={args.id}", file=sys.stderr, flush=True)
    asyncio.run(serve(Path(args.api_sock), args.id))


if __name__ == "__main__":
    main()
