"""The image build's `tools` stage against a real HTTP npm registry on 127.0.0.1.

The registry serves what the npm registry serves for a version (`GET /<name>/<version>`
with `dist.integrity` and `dist.tarball`) and the tarballs, built here from small
trees with a `package/` prefix as `npm pack` makes them. Nothing leaves this machine.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from banger.artifacts.images.recipe import RECIPES_DIR, Recipe, Tool, load_recipe
from banger.artifacts.images.tools import install_tools
from banger.artifacts.npm import NpmUnavailable, find_registry
from banger.progress import null_progress
from banger.system import is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root (chown to root)")

UNIT = """[Unit]
Description=demo server

[Service]
ExecStart=/usr/local/bin/demo serve

[Install]
WantedBy=multi-user.target
"""


def tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@dataclass
class FakeRegistry:
    url: str
    packages: dict[tuple[str, str], bytes] = field(default_factory=dict)
    published: dict[tuple[str, str], str] = field(default_factory=dict)  # integrity override
    served: dict[tuple[str, str], bytes] = field(default_factory=dict)  # bytes override
    requests: list[str] = field(default_factory=list)

    def add(self, name: str, version: str, files: dict[str, bytes]) -> str:
        data = tarball(files)
        self.packages[(name, version)] = data
        return sri(data)


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    state = FakeRegistry("")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = urllib.parse.unquote(self.path)
            state.requests.append(path)
            if path.startswith("/-/"):
                name, _, version = path[3:].rpartition("/")
                key = (name, version)
                body = state.served.get(key) or state.packages.get(key)
                ctype = "application/octet-stream"
            else:
                name, _, version = path[1:].rpartition("/")
                data = state.packages.get((name, version))
                body = None
                if data is not None:
                    integrity = state.published.get((name, version), sri(data))
                    body = json.dumps(
                        {
                            "name": name,
                            "version": version,
                            "dist": {
                                "integrity": integrity,
                                "tarball": f"{state.url}-/{name}/{version}",
                            },
                        }
                    ).encode()
                ctype = "application/json"
            if body is None:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def recipe_with(tmp_path: Path, *tools: Tool) -> Recipe:
    d = tmp_path / "recipe"
    (d / "files").mkdir(parents=True, exist_ok=True)
    (d / "files" / "demo-server.service").write_text(UNIT)
    return Recipe(directory=d, name="t", suite="bookworm", packages=("systemd",), tools=tools)


def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "root").mkdir(parents=True, mode=0o700)
    (root / "root/.bashrc").write_text("# bashrc\n")
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    return root


def demo_tool(integrity: str, **kw: object) -> Tool:
    fields: dict[str, object] = {
        "name": "demo",
        "package": "@acme/demo-linux-x64",
        "version": "1.2.3",
        "integrity": integrity,
        "binary": "bin/demo",
        "dest": "/usr/local/bin/demo",
        "bashrc": 'eval "$(demo activate bash)"',
        "enable": ("demo-server.service",),
    }
    fields.update(kw)
    return Tool.model_validate(fields)


def test_installs_binary_activation_and_service(registry: FakeRegistry, tmp_path: Path) -> None:
    binary = b"#!/bin/sh\necho demo 1.2.3\n"
    integrity = registry.add("@acme/demo-linux-x64", "1.2.3", {"bin/demo": binary})
    recipe = recipe_with(tmp_path, demo_tool(integrity))
    root, work, cache = tree(tmp_path), tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    lines: list[str] = []

    result = install_tools(
        root,
        recipe,
        cache,
        work,
        lambda s, d="", f=None: lines.append(d),
        registry_override=registry.url,
    )
    assert result["demo"].installed and result["demo"].version == "1.2.3"
    dest = root / "usr/local/bin/demo"
    assert dest.read_bytes() == binary
    st = dest.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o755, 0, 0)
    assert 'eval "$(demo activate bash)"' in (root / "root/.bashrc").read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/demo-server.service"
    assert os.readlink(wants) == "/etc/systemd/system/demo-server.service"
    assert (root / "etc/systemd/system/demo-server.service").read_text() == UNIT
    assert any(registry.url in line for line in lines)  # says where it came from
    assert list(work.iterdir()) == []  # nothing staged is left behind

    # A rebuild takes the verified tarball from the cache: no registry request.
    before = len(registry.requests)
    again = install_tools(
        tree(tmp_path / "2"),
        recipe,
        cache,
        work,
        null_progress,
        registry_override=registry.url,
    )
    assert again["demo"].installed and len(registry.requests) == before


def assert_not_installed(root: Path) -> None:
    assert not (root / "usr/local/bin/demo").exists()
    assert (root / "root/.bashrc").read_text() == "# bashrc\n"
    assert not (root / "etc/systemd/system/demo-server.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants").exists()


def test_unreachable_registry_skips_the_tool_whole(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path, demo_tool(sri(b"x")))
    root, work = tree(tmp_path), tmp_path / "work"
    work.mkdir()
    lines: list[str] = []
    # Port 9 (discard) on loopback: nothing listens, the connection is refused.
    result = install_tools(
        root,
        recipe,
        tmp_path / "cache",
        work,
        lambda s, d="", f=None: lines.append(d),
        registry_override="http://127.0.0.1:9/",
    )
    info = result["demo"]
    assert not info.installed
    assert "cannot fetch @acme/demo-linux-x64@1.2.3" in info.skipped
    assert "127.0.0.1:9" in info.skipped
    assert any(line.startswith("skipping demo:") for line in lines)
    assert_not_installed(root)


def test_turned_off_skips_with_the_reason(tmp_path: Path) -> None:
    recipe = recipe_with(tmp_path, demo_tool(sri(b"x")))
    root = tree(tmp_path)
    result = install_tools(
        root, recipe, tmp_path / "c", tmp_path, null_progress, registry_override="off"
    )
    assert not result["demo"].installed and "npm_registry = off" in result["demo"].skipped
    assert_not_installed(root)


def test_a_registry_publishing_another_hash_is_refused(
    registry: FakeRegistry, tmp_path: Path
) -> None:
    pinned = registry.add("@acme/demo-linux-x64", "1.2.3", {"bin/demo": b"good"})
    registry.published[("@acme/demo-linux-x64", "1.2.3")] = sri(b"something else")
    root, work = tree(tmp_path), tmp_path / "work"
    work.mkdir()
    result = install_tools(
        root,
        recipe_with(tmp_path, demo_tool(pinned)),
        tmp_path / "c",
        work,
        null_progress,
        registry_override=registry.url,
    )
    assert not result["demo"].installed
    assert "the recipe pins" in result["demo"].skipped
    assert_not_installed(root)


def test_tampered_bytes_are_refused_and_not_cached(registry: FakeRegistry, tmp_path: Path) -> None:
    pinned = registry.add("@acme/demo-linux-x64", "1.2.3", {"bin/demo": b"good"})
    registry.served[("@acme/demo-linux-x64", "1.2.3")] = tarball({"bin/demo": b"evil"})
    root, work, cache = tree(tmp_path), tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    result = install_tools(
        root,
        recipe_with(tmp_path, demo_tool(pinned)),
        cache,
        work,
        null_progress,
        registry_override=registry.url,
    )
    assert not result["demo"].installed
    assert "downloaded tarball has integrity" in result["demo"].skipped
    assert_not_installed(root)
    assert not cache.exists() or list(cache.iterdir()) == []
    assert list(work.iterdir()) == []


def test_a_missing_version_or_binary_is_named(registry: FakeRegistry, tmp_path: Path) -> None:
    pinned = registry.add("@acme/demo-linux-x64", "1.2.3", {"README.md": b"no binary"})
    work = tmp_path / "work"
    work.mkdir()
    recipe = recipe_with(
        tmp_path, demo_tool(pinned), demo_tool(pinned, name="gone", version="9.9.9")
    )
    root = tree(tmp_path)
    result = install_tools(
        root, recipe, tmp_path / "c", work, null_progress, registry_override=registry.url
    )
    assert "has no package/bin/demo" in result["demo"].skipped
    assert "@acme/demo-linux-x64@9.9.9 is not on the npm registry" in result["gone"].skipped
    assert_not_installed(root)


def test_registry_comes_from_the_hosts_npm_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.lower().startswith("npm_config_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no npm binary
    monkeypatch.setenv("HOME", str(tmp_path))
    npmrc = tmp_path / "npmrc"
    npmrc.write_text("fund=false\nregistry = http://127.0.0.1:4873\ncafile=/x/ca.pem\n")
    monkeypatch.setenv("NPM_CONFIG_USERCONFIG", str(npmrc))
    found = find_registry()
    assert (found.url, found.source, found.cafile) == (
        "http://127.0.0.1:4873/",
        str(npmrc),
        "/x/ca.pem",
    )

    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:4874/")
    assert find_registry().url == "http://127.0.0.1:4874/"
    assert find_registry("http://127.0.0.1:4875").source == "npm_registry"

    monkeypatch.delenv("npm_config_registry")
    monkeypatch.delenv("NPM_CONFIG_USERCONFIG")
    if not Path("/etc/npmrc").exists():
        with pytest.raises(NpmUnavailable, match="no npm registry is configured") as exc:
            find_registry()
        assert "npm_registry" in exc.value.hint
    with pytest.raises(NpmUnavailable, match="not an http"):
        find_registry("ftp://127.0.0.1/")


def test_the_golden_recipe_pins_mise_and_opencode_with_its_server() -> None:
    recipe = load_recipe("debian-bookworm")
    tools = {t.name: t for t in recipe.tools}
    assert set(tools) == {"mise", "opencode"}
    for t in tools.values():
        assert t.integrity.startswith("sha512-") and t.dest.startswith("/usr/local/bin/")
    assert "mise activate bash" in tools["mise"].bashrc
    unit = (RECIPES_DIR / "debian-bookworm/files/opencode-server.service").read_text()
    assert tools["opencode"].enable == ("opencode-server.service",)
    assert "--hostname 0.0.0.0 --port 4096" in unit and "WantedBy=multi-user.target" in unit
