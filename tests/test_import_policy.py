"""Only the system layer, the engine-process module and the guest program run programs."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "banger"
# agent/guest.py is not host code: it is the program copied into guest images, whose
# job there includes running the commands `banger vm exec` asks for.
ALLOWED = ("system", "engines/process.py", "agent/guest.py")
FORBIDDEN_MODULES = {"subprocess", "pty"}
FORBIDDEN_CALLS = {("os", "system"), ("os", "popen"), ("os", "execv"), ("os", "execvp")}


def offenders(root: Path) -> list[str]:
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if any(rel == a or rel.startswith(a + "/") for a in ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and (node.value.id, node.attr) in FORBIDDEN_CALLS
            ):
                names = [f"{node.value.id}.{node.attr}"]
            found += [
                f"{rel}:{node.lineno} uses {n}" for n in names if n in FORBIDDEN_MODULES or "." in n
            ]
    return found


def test_subprocess_confined_to_system_and_engine_process() -> None:
    assert offenders(SRC) == []


def test_policy_catches_violations(tmp_path: Path) -> None:
    (tmp_path / "services").mkdir()
    (tmp_path / "system").mkdir()
    (tmp_path / "services" / "bad.py").write_text("import subprocess\nimport os\nos.system('x')\n")
    (tmp_path / "system" / "ok.py").write_text("import subprocess\n")
    found = offenders(tmp_path)
    assert found == ["services/bad.py:1 uses subprocess", "services/bad.py:3 uses os.system"]
