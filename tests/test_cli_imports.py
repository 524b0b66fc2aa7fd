"""The CLI's import budget: the quick commands load only what they use.

`banger vm list` has to answer in well under 150 ms, and most of that is Python
importing things. Each case runs the real CLI (`python -X importtime -m banger.cli`)
against a stand-in daemon on a UNIX socket that answers the routes these commands
call with real `api.models.VM` JSON, and reads from the import log which modules
were loaded. A heavy import added at the top of a module on these paths fails here.
"""

from __future__ import annotations

import json
import os
import re
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from banger.api.models import VM, PublishedPort
from banger.paths import default_paths

# Never on the quick paths: validation models, the daemon's HTTP stack, the TUI, the
# other HTTP clients and what they pull in.
HEAVY = {"pydantic", "pydantic_core", "httpx", "aiohttp", "textual", "pyroute2", "http.client"}
HEAVY |= {"email", "ssl", "concurrent.futures", "banger.api", "banger.services", "banger.daemon"}
HEAVY |= {"rich"}  # `vm list` draws its table itself (cli/output.print_table)


def _vm(i: int) -> dict[str, object]:
    ports = [
        PublishedPort(
            proto="tcp", host_addr="0.0.0.0", host_port=8080, guest_port=80, spec="8080:80"
        )
    ]
    return VM(
        id=f"{i:012x}",
        name=f"box-{i}",
        state="running" if i == 0 else "stopped",
        image="debian-bookworm",
        kernel="debian-6.1",
        engine="qemu",
        vcpus=2,
        memory_mib=1024,
        disk_bytes=4 << 30,
        work_bytes=2 << 30,
        nat=False,
        ip=f"172.30.0.{2 + i}",
        mac="02:00:00:00:00:01",
        tap=None,
        created_at=1.0,
        started_at=2.0 if i == 0 else None,
        ports=ports if i == 0 else [],
    ).model_dump(mode="json")


class _Daemon(BaseHTTPRequestHandler):
    vms = [_vm(i) for i in range(10)]

    def do_GET(self) -> None:
        by_name = {v["name"]: v for v in self.vms}
        name = self.path.removeprefix("/v1/vms/")
        if self.path == "/v1/vms":
            self._send(200, self.vms)
        elif name in by_name:
            self._send(200, by_name[name])
        else:
            self._send(404, {"error": {"code": "not_found", "message": f"no VM named `{name}`"}})

    def _send(self, status: int, doc: object) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = Path(str(tmp_path_factory.mktemp("h")))
    old = os.environ.get("BANGER_HOME")
    os.environ["BANGER_HOME"] = str(home)
    try:
        sock = default_paths().socket
    finally:
        if old is None:
            del os.environ["BANGER_HOME"]
        else:
            os.environ["BANGER_HOME"] = old
    sock.parent.mkdir(parents=True)
    server = _Server(str(sock), _Daemon)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield home
    finally:
        server.shutdown()
        server.server_close()


def run(home: Path, *args: str) -> tuple[str, set[str]]:
    """Run the CLI; its stdout and every module it imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BANGER_")}
    env.update(BANGER_HOME=str(home), COLUMNS="120")
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "banger.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    found = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", res.stderr, re.M)
    assert "banger.cli.main" in found, "no import log: is -X importtime still honoured?"
    return res.stdout, set(found)


def heavy(modules: set[str], allowed: frozenset[str] = frozenset()) -> set[str]:
    return {m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY - allowed)}


def test_vm_list_loads_no_models_and_no_http_stack(home: Path) -> None:
    out, modules = run(home, "vm", "list")
    assert "box-0" in out and "running" in out and "box-9" in out
    assert heavy(modules) == set()


def test_json_output(home: Path) -> None:
    out, modules = run(home, "vm", "list", "--json")
    assert json.loads(out) == _Daemon.vms  # exactly the daemon's JSON
    assert heavy(modules) == set()
    out, modules = run(home, "vm", "show", "box-0", "--json")
    assert json.loads(out) == _Daemon.vms[0]
    assert heavy(modules) == set()


def test_vm_show_reads_plain_json(home: Path) -> None:
    out, modules = run(home, "vm", "show", "box-0")
    assert re.search(r"^state\s+running$", out, re.M)
    assert re.search(r"^ports\s+\*:8080/tcp -> 80$", out, re.M)
    assert heavy(modules) == set()


def test_help_and_version_import_no_command(home: Path) -> None:
    for args in (["--help"], ["--version"]):
        out, modules = run(home, *args)
        assert heavy(modules) == set()
        commands = {m for m in modules if m.startswith("banger.cli.")}
        assert commands <= {"banger.cli.__main__", "banger.cli.main", "banger.cli.output"}
        assert "banger.client" not in modules
    out, _ = run(home, "--help")
    assert "vm        Create, run and manage microVMs." in out


def test_help_summaries_match_the_commands() -> None:
    """`banger --help` lists the commands from `LazyGroup.summary`: it must say what
    each command's own help says, at any terminal width."""
    import click

    from banger.cli.main import LazyGroup, cli

    assert isinstance(cli, LazyGroup)
    ctx = click.Context(cli)
    assert set(cli.summary) == set(cli.list_commands(ctx))
    for name in cli.summary:
        cmd = cli.get_command(ctx, name)
        assert cmd is not None
        for limit in (30, 45, 80, 200):
            assert cli.summary_for(name, limit) == cmd.get_short_help_str(limit), name


def test_the_budget_check_catches_a_heavy_import() -> None:
    found = heavy({"banger.cli.main", "pydantic.main", "rich.table", "richer"})
    assert found == {"pydantic.main", "rich.table"}
    assert heavy({"http.client", "http.server"}) == {"http.client"}


def test_the_table_is_drawn_like_richs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`print_table` replaces rich's Table on the `vm list` path: same drawing when the
    table fits, cells cut with `…` when it does not, no colour off a terminal."""
    from rich.console import Console
    from rich.table import Table

    from banger.cli.output import print_table

    headers = ["name", "state", "ip", "image"]
    rows = [["box-0", "running", "172.30.0.2", "debian-bookworm"], ["b", "stopped", "-", "x"]]
    monkeypatch.setenv("COLUMNS", "100")
    print_table(headers, [[r[0], (r[1], "green"), *r[2:]] for r in rows])
    ours = capsys.readouterr().out
    table = Table(*headers)
    for r in rows:
        table.add_row(*r)
    console = Console(width=100, force_terminal=False, color_system=None)
    with console.capture() as cap:
        console.print(table)
    assert ours == cap.get()

    monkeypatch.setenv("COLUMNS", "30")
    print_table(headers, rows)  # type: ignore[arg-type]
    narrow = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 30 for line in narrow) and "…" in narrow[3]

    # Piped (no terminal, no COLUMNS): every cell whole, e.g. for `| grep`.
    monkeypatch.delenv("COLUMNS")
    long = [["a-rather-long-vm-name-" + "x" * 40, "running", "172.30.0.2", "i" * 60]]
    print_table(headers, long)  # type: ignore[arg-type]
    piped = capsys.readouterr().out
    assert "…" not in piped and long[0][0] in piped and long[0][3] in piped


def test_rich_tables_are_not_cut_when_piped() -> None:
    """`banger kernel list | cat` shows whole names, not rich's 80-column cut."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    script = (
        "from banger.cli.output import out; from rich.table import Table; "
        "t = Table('name', 'value'); t.add_row('n' * 70, 'v' * 70); out.print(t)"
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert "…" not in res.stdout and "n" * 70 in res.stdout and "v" * 70 in res.stdout
