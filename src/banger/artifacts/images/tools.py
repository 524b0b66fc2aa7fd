"""The `tools` stage of an image build: npm-published programs (mise, opencode).

Each tool of the recipe is fetched on the host (banger.artifacts.npm: the host's npm
registry, integrity-checked), its binary is put in place atomically, root's bash gets
its activation line, and its units are installed and enabled. A tool either is fully
installed or is not in the image at all: when the registry cannot be reached the build
goes on without it and the manifest says why.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from banger.artifacts.images.configure import _mkdirs, enable_units, guest_path
from banger.artifacts.images.info import ToolInfo
from banger.artifacts.images.recipe import Recipe, Tool
from banger.artifacts.npm import NpmUnavailable, Registry, fetch_tarball, find_registry
from banger.errors import BangerError
from banger.progress import Progress


def install_tools(
    root: Path,
    recipe: Recipe,
    cache_dir: Path,
    work: Path,
    progress: Progress,
    *,
    registry_override: str | None = None,
) -> dict[str, ToolInfo]:
    """Install every tool of `recipe` into the tree at `root`; returns what happened."""
    if not recipe.tools:
        return {}
    names = ", ".join(t.name for t in recipe.tools)
    try:
        registry = find_registry(registry_override)
    except NpmUnavailable as exc:
        progress("tools", f"skipping {names}: {exc.message}")
        return {t.name: _skipped(t, exc.message) for t in recipe.tools}
    progress("tools", f"{names} from {registry.url} ({registry.source})")
    return {
        t.name: _install_one(root, recipe, t, registry, cache_dir, work, progress)
        for t in recipe.tools
    }


def _skipped(tool: Tool, reason: str) -> ToolInfo:
    return ToolInfo(package=tool.package, version=tool.version, installed=False, skipped=reason)


def _install_one(
    root: Path,
    recipe: Recipe,
    tool: Tool,
    registry: Registry,
    cache_dir: Path,
    work: Path,
    progress: Progress,
) -> ToolInfo:
    try:
        tarball = fetch_tarball(
            registry, tool.package, tool.version, tool.integrity, cache_dir, work_dir=work
        )
        staged = _extract_binary(tarball, tool, work)
    except BangerError as exc:
        progress("tools", f"skipping {tool.name}: {exc.message}")
        return _skipped(tool, exc.message)
    dest = guest_path(root, tool.dest)
    _mkdirs(root, str(PurePosixPath(tool.dest).parent))
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    shutil.move(staged, dest)
    os.chown(dest, 0, 0)
    os.chmod(dest, 0o755)
    if tool.bashrc:
        bashrc = guest_path(root, "/root/.bashrc")
        with bashrc.open("a") as f:
            f.write(f"\n# {tool.name}, installed by banger's image recipe\n{tool.bashrc}\n")
    for unit in tool.enable:
        _mkdirs(root, "/etc/systemd/system")
        host_unit = guest_path(root, f"/etc/systemd/system/{unit}")
        if host_unit.is_symlink() or host_unit.exists():
            host_unit.unlink()
        shutil.copyfile(recipe.directory / "files" / unit, host_unit)
        os.chown(host_unit, 0, 0)
        os.chmod(host_unit, 0o644)
    enable_units(root, tool.enable)
    enabled = f", {' '.join(tool.enable)} enabled" if tool.enable else ""
    progress("tools", f"{tool.name} {tool.version} -> {tool.dest}{enabled}")
    return ToolInfo(package=tool.package, version=tool.version, installed=True)


def _extract_binary(tarball: Path, tool: Tool, work: Path) -> Path:
    """The tool's executable out of its npm tarball (members live under `package/`)."""
    member_name = f"package/{tool.binary}"
    staged = work / f"tool-{tool.name}"
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            try:
                member = tar.getmember(member_name)
            except KeyError:
                raise BangerError(
                    f"{tool.package}@{tool.version} has no {member_name}",
                    hint="fix `binary` of the tool in the image recipe",
                ) from None
            if not member.isfile():
                raise BangerError(f"{tool.package}@{tool.version}: {member_name} is not a file")
            src = tar.extractfile(member)
            assert src is not None
            with src, staged.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, OSError, EOFError) as exc:
        staged.unlink(missing_ok=True)
        raise BangerError(f"cannot unpack {tarball.name}: {exc}") from exc
    return staged
