"""Dependencies point one way: cli → client → api; daemon → services → capabilities →
engines/net/artifacts → system/store. Any import against that order fails here."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "banger"

# Every module of the package belongs to one layer (by its first path component).
LAYER_OF = {
    "cli": "cli",
    "tui": "cli",
    "client": "client",
    "__init__": "client",  # re-exports banger.Client / AsyncClient / ExecResult (lazily)
    "aclient": "client",
    "stream": "client",  # exec/copy streams to the daemon (WebSocket)
    "mcp_server": "cli",  # `banger mcp`: a front end like the CLI
    "spawn": "client",  # starts a daemon on demand; used by the CLI, client and bangerd
    "api": "api",
    "daemon": "daemon",
    "services": "services",
    "capabilities": "capabilities",
    "vm": "model",
    "engines": "engines",
    "net": "net",
    "artifacts": "artifacts",
    "agent": "agent",
    "system": "system",
    "store": "store",
    # plain shared pieces: no behaviour, importable from anywhere
    "__main__": "cli",
    "errors": "base",
    "paths": "base",
    "units": "base",
    "sizing": "base",  # the VM sizing rules, shared by CLI, daemon and engines
    "engine_names": "base",  # the engine names: config, CLI, API, registry, doctor
    "progress": "base",
    "imagespec": "base",  # `image build` inputs: checked by the CLI and the daemon
    "config": "base",
}

# What each layer may import (besides itself). Read top to bottom: only downwards.
LOW = {"base", "api"}
MAY_IMPORT: dict[str, set[str]] = {
    "base": set(),
    "api": {"base"},
    "system": {"base"},
    "store": {"base"},
    "agent": {"base", "engines"},
    "engines": {"base", "system", "store"},
    "net": {"base", "system", "store"},
    "artifacts": {"base", "system", "store", "agent"},
    "model": LOW | {"engines", "store"},
    "capabilities": LOW | {"model", "engines", "net", "artifacts", "agent", "system", "store"},
    "services": LOW
    | {"capabilities", "model", "engines", "net", "artifacts", "agent", "system", "store"},
    "daemon": LOW
    | {"client", "services", "capabilities", "model", "engines", "net", "artifacts"}
    | {"agent", "system", "store"},
    "client": LOW | {"system"},
    "cli": LOW | {"client", "system"},
}

# The documented exceptions: `banger doctor` runs the host checks locally, so it
# works before a daemon can start; `vm cp` out of a VM extracts with the guest
# program's own archive checks (stdlib-only code), so both ends refuse the same things;
# the guest-config builder takes the `ip=` argument and the MAC from net's pure address
# arithmetic, the one place they are made (the bridge's MAC comes from there too).
EXCEPTIONS = {
    ("cli/doctor_cmd.py", "services.doctor"),
    ("stream.py", "agent.guest"),
    ("engines/guest_config.py", "net.addresses"),
}


def layer_of(rel: str) -> str:
    top = rel.split("/", 1)[0].removesuffix(".py")
    return LAYER_OF[top]


def violations(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        src = layer_of(rel)
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                parts = t.split(".")
                if parts[0] != "banger" or len(parts) < 2:
                    continue
                dst = LAYER_OF.get(parts[1])
                if dst is None:
                    found.append(f"{rel}:{node.lineno} imports {t}: unknown layer")
                elif (
                    dst != src
                    and dst not in MAY_IMPORT[src]
                    and (rel, ".".join(parts[1:3])) not in EXCEPTIONS
                ):
                    found.append(f"{rel}:{node.lineno} imports {t} ({src} → {dst})")
    return found


def test_every_layer_is_declared() -> None:
    tops = {p.name.removesuffix(".py") for p in SRC.iterdir() if not p.name.startswith("_")}
    tops -= {"py.typed"}
    assert tops <= set(LAYER_OF), f"add {sorted(tops - set(LAYER_OF))} to LAYER_OF"
    assert set(LAYER_OF.values()) == set(MAY_IMPORT)


def test_dependencies_point_one_way() -> None:
    assert violations(SRC) == []


def test_layering_catches_upward_imports(tmp_path: Path) -> None:
    for d in ("services", "capabilities", "cli", "daemon"):
        (tmp_path / d).mkdir()
    (tmp_path / "services" / "bad.py").write_text("from banger.daemon import testhooks\n")
    (tmp_path / "capabilities" / "bad.py").write_text("import banger.services.vms\n")
    (tmp_path / "cli" / "bad.py").write_text("from banger.services.ssh import forget_host\n")
    (tmp_path / "daemon" / "ok.py").write_text("from banger.services.vms import VMService\n")
    assert violations(tmp_path) == [
        "capabilities/bad.py:1 imports banger.services.vms (capabilities → services)",
        "cli/bad.py:1 imports banger.services.ssh (cli → services)",
        "services/bad.py:1 imports banger.daemon (services → daemon)",
    ]


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the package modules it imports, at module level or deferred inside a
    function (a deferred import still ties the two modules together); imports only
    for type checking do not count."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = ["banger", *path.relative_to(root).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    class Imports(ast.NodeVisitor):
        def __init__(self) -> None:
            self.found: set[str] = set()

        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for n in node.orelse:
                    self.visit(n)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            self.found |= {a.name for a in node.names if a.name in modules}

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module is None or node.level:
                return
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                self.found |= {sub} if sub in modules else {node.module} & set(modules)

    graph = {}
    for name, path in modules.items():
        v = Imports()
        v.visit(ast.parse(path.read_text(), str(path)))
        graph[name] = v.found - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    # E.g. the privileged network operations are one explicit table
    # (net/privileged.OPERATIONS) over their bodies in net/ops.py, not functions that
    # register themselves when bridge/tap/nat happen to be imported.
    assert cycles(import_graph(SRC)) == []


def test_cycle_check_sees_deferred_imports(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("import banger.b\n")
    (tmp_path / "b.py").write_text("def f() -> None:\n    from banger import a\n")
    (tmp_path / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import banger.a\n"
    )
    graph = import_graph(tmp_path)
    assert graph["banger.c"] == set()
    assert cycles(graph) == [["banger.a", "banger.b"]]
