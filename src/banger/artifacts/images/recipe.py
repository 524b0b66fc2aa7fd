"""Image recipes: `artifacts/recipes/<name>/recipe.toml` plus the files it installs.

A recipe is data (packages, files, units, clean-up); `configure.py` applies it.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from banger.errors import BangerError, NotFound

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"

_UNIT = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.(service|timer|socket|target|mount|path)$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9.+-]+$")


def _abs_path(value: str) -> str:
    p = PurePosixPath(value)
    if not p.is_absolute() or ".." in p.parts or p == PurePosixPath("/"):
        raise ValueError(f"{value!r} must be an absolute path below / without '..'")
    return value


def _octal(value: str) -> str:
    if not re.fullmatch(r"0[0-7]{3}", value):
        raise ValueError(f"mode {value!r} must be four octal digits, e.g. '0644'")
    return value


AbsPath = Annotated[str, AfterValidator(_abs_path)]
Mode = Annotated[str, AfterValidator(_octal)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileEntry(_Strict):
    src: str
    dest: AbsPath
    mode: Mode = "0644"


class DirEntry(_Strict):
    path: AbsPath
    mode: Mode = "0755"


class SymlinkEntry(_Strict):
    path: AbsPath
    target: str


class Units(_Strict):
    enable: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()
    default_target: str = "multi-user.target"

    @field_validator("enable", "mask")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for unit in value:
            if not _UNIT.fullmatch(unit):
                raise ValueError(f"{unit!r} is not a systemd unit name")
        return value


class Cleanup(_Strict):
    remove: tuple[AbsPath, ...] = ()
    truncate: tuple[AbsPath, ...] = ()


class AgentHook(_Strict):
    enabled: bool = False
    path: AbsPath = "/usr/local/lib/banger/banger-agent"
    unit: str = "banger-agent.service"


class Tool(_Strict):
    """A program published on the npm registry as a package carrying a Linux x86-64
    binary, pinned by version and integrity hash, installed when the registry can be
    reached (and skipped, whole, when it cannot)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    package: str = Field(pattern=r"^(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*$")
    version: str = Field(pattern=r"^[0-9A-Za-z.+-]+$")
    integrity: str = Field(pattern=r"^sha512-[A-Za-z0-9+/]+={0,2}$")
    binary: str  # path of the executable inside the package (below `package/`)
    dest: AbsPath  # where it goes in the image (mode 0755)
    bashrc: str = ""  # a line appended to root's ~/.bashrc when installed
    enable: tuple[str, ...] = ()  # units (from files/) installed and enabled with it

    @field_validator("binary")
    @classmethod
    def _relative(cls, value: str) -> str:
        p = PurePosixPath(value)
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise ValueError(f"{value!r} must be a relative path inside the package")
        return value


class Recipe(_Strict):
    name: str
    suite: str
    components: tuple[str, ...] = ("main",)
    variant: str = "apt"
    hostname: str = "banger"
    packages: tuple[str, ...] = Field(min_length=1)
    dpkg_path_exclude: tuple[str, ...] = ()
    dpkg_path_include: tuple[str, ...] = ()
    files: tuple[FileEntry, ...] = ()
    dirs: tuple[DirEntry, ...] = ()
    symlinks: tuple[SymlinkEntry, ...] = ()
    units: Units = Units()
    cleanup: Cleanup = Cleanup()
    agent: AgentHook = AgentHook()
    tools: tuple[Tool, ...] = ()
    directory: Path  # where recipe.toml lives; file sources are under files/

    @field_validator("packages")
    @classmethod
    def _package_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pkg in value:
            if not _PACKAGE.fullmatch(pkg):
                raise ValueError(f"{pkg!r} is not a Debian package name")
        return value

    def source(self, entry: FileEntry) -> Path:
        return self.directory / "files" / entry.src


def load_recipe(name: str, recipes_dir: Path = RECIPES_DIR) -> Recipe:
    """Parse and check a recipe, including that every file it installs exists."""
    directory = recipes_dir / name
    path = directory / "recipe.toml"
    if "/" in name or name.startswith(".") or not path.is_file():
        raise NotFound(
            f"no image recipe named {name!r} (looked for {path})",
            hint="the image catalog names a recipe that is not installed; reinstall banger",
        )
    try:
        recipe = Recipe(directory=directory, **tomllib.loads(path.read_text()))
    except (ValidationError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise BangerError(f"image recipe {path} is invalid: {exc}", hint=f"fix {path}") from exc
    missing = [e.src for e in recipe.files if not recipe.source(e).is_file()]
    missing += [
        u for t in recipe.tools for u in t.enable if not (directory / "files" / u).is_file()
    ]
    if missing:
        raise BangerError(
            f"image recipe {name} lists files that do not exist: {', '.join(missing)}",
            hint=f"add them under {directory / 'files'} or fix {path}",
        )
    return recipe


def recipe_digest(recipe: Recipe) -> str:
    """A fingerprint of everything a build copies from banger into the image: the recipe,
    its files and the guest agent. An image built from another digest is outdated."""
    from banger.agent import GUEST_PROGRAM

    h = hashlib.sha256()
    sources = [recipe.directory / "recipe.toml"]
    sources += sorted(p for p in (recipe.directory / "files").rglob("*") if p.is_file())
    if recipe.agent.enabled:
        sources.append(GUEST_PROGRAM)
    for path in sources:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
