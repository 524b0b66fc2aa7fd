"""Kernel modules: read `depends=` from each module and compute a load order.

The initramfs uses busybox `insmod`, which loads exactly one file and knows
nothing of dependencies, so we resolve them here from the modules themselves
(their `.modinfo` ELF section) rather than trusting `modules.dep`, and we skip
anything listed in `modules.builtin` because it is already in the kernel.
"""

from __future__ import annotations

import gzip
import lzma
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

from banger.artifacts.kernels.elf import ElfError, section_bytes
from banger.errors import BangerError

_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


class ModuleError(BangerError):
    code = "kernel_modules"
    http_status = 422


def canonical(name: str) -> str:
    """Module names treat '-' and '_' alike (virtio-rng.ko is module virtio_rng)."""
    return name.replace("-", "_")


def _strip_suffix(filename: str) -> str | None:
    for suffix in _SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return None


def read_module(path: Path) -> bytes:
    """The raw ELF bytes of a module, decompressing .ko.xz/.ko.zst/.ko.gz."""
    data = path.read_bytes()
    name = path.name
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def modinfo(elf: bytes) -> dict[str, list[str]]:
    """Parse the `.modinfo` section: NUL-separated key=value strings (keys repeat)."""
    raw = section_bytes(elf, ".modinfo")
    if raw is None:
        raise ElfError("no .modinfo section")
    info: dict[str, list[str]] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def depends(elf: bytes) -> list[str]:
    values = modinfo(elf).get("depends", [])
    return [canonical(d) for v in values for d in v.split(",") if d]


@dataclass
class ModuleTree:
    """The modules of one kernel release: where each lives, and which are built in."""

    root: Path  # lib/modules/<release>
    paths: dict[str, Path]
    builtin: set[str]

    @classmethod
    def scan(cls, root: Path) -> ModuleTree:
        if not root.is_dir():
            raise ModuleError(
                f"kernel module directory {root} does not exist",
                hint="the kernel package looks incomplete; pull it again",
            )
        paths: dict[str, Path] = {}
        for path in sorted(root.rglob("*.ko*")):
            stem = _strip_suffix(path.name)
            if stem is not None and path.is_file():
                paths.setdefault(canonical(stem), path)
        builtin: set[str] = set()
        builtin_list = root / "modules.builtin"
        if builtin_list.is_file():
            for line in builtin_list.read_text().splitlines():
                stem = _strip_suffix(line.strip().rsplit("/", 1)[-1])
                if stem:
                    builtin.add(canonical(stem))
        return cls(root, paths, builtin)

    def depends_of(self, name: str) -> list[str]:
        path = self.paths[name]
        try:
            return depends(read_module(path))
        except (ElfError, lzma.LZMAError, zstandard.ZstdError, OSError) as exc:
            raise ModuleError(
                f"cannot read the dependencies of {path.name}: {exc}",
                hint="the kernel package looks damaged; pull it again",
            ) from exc

    def load_order(self, requested: Iterable[str]) -> list[str]:
        wanted = [canonical(n) for n in requested]
        graph: dict[str, list[str]] = {}
        pending = [n for n in wanted if n not in self.builtin]
        while pending:
            name = pending.pop()
            if name in graph or name in self.builtin:
                continue
            if name not in self.paths:
                raise ModuleError(
                    f"kernel module {name} is neither a module nor built in for {self.root.name}",
                    hint="fix the module list of this kernel in the catalog (kernels.toml)",
                )
            graph[name] = self.depends_of(name)
            pending.extend(graph[name])
        return load_order(wanted, graph, self.builtin)


def load_order(
    requested: Sequence[str], graph: Mapping[str, Sequence[str]], builtin: Iterable[str] = ()
) -> list[str]:
    """Dependencies-first order of `requested` and everything they pull in.

    Depth-first post-order, visiting in the order given, so the result is stable
    and keeps the catalog's order wherever dependencies allow. Built-in modules are
    dropped; a dependency cycle or an unknown module is an error.
    """
    skip = {canonical(b) for b in builtin}
    order: list[str] = []
    done: set[str] = set()
    active: list[str] = []

    def visit(name: str) -> None:
        if name in done or name in skip:
            return
        if name in active:
            cycle = " -> ".join([*active[active.index(name) :], name])
            raise ModuleError(
                f"kernel modules depend on each other in a cycle: {cycle}",
                hint="the module metadata is inconsistent; pull the kernel again",
            )
        if name not in graph:
            raise ModuleError(
                f"kernel module {name} is needed but was not found",
                hint="fix the module list of this kernel in the catalog (kernels.toml)",
            )
        active.append(name)
        for dep in graph[name]:
            visit(canonical(dep))
        active.pop()
        done.add(name)
        order.append(name)

    for name in requested:
        visit(canonical(name))
    return order
