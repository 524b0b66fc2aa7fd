"""The kernel catalog: `artifacts/catalog/kernels.toml`, shipped as package data.

Kept as data so adding a kernel or a module is a reviewable TOML change, not code.
"""

from __future__ import annotations

import functools
import re
import tomllib
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from banger.errors import BangerError, NotFound


class KernelSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    package: str = Field(pattern=r"^[a-z0-9][a-z0-9.+-]+$")
    package_pattern: str
    arch: str = "amd64"
    modules: tuple[str, ...]
    default: bool = False

    @field_validator("package_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"package_pattern is not a valid regex: {exc}") from exc
        return value


def _parse(text: str) -> dict[str, KernelSpec]:
    data = tomllib.loads(text)
    specs = {}
    for name, entry in data.get("kernels", {}).items():
        try:
            specs[name] = KernelSpec(name=name, **entry)
        except (ValidationError, TypeError) as exc:
            raise BangerError(
                f"kernel catalog entry {name!r} is invalid: {exc}",
                hint="fix src/banger/artifacts/catalog/kernels.toml",
            ) from exc
    if sum(s.default for s in specs.values()) != 1:
        raise BangerError(
            "kernel catalog must mark exactly one entry `default = true`",
            hint="fix src/banger/artifacts/catalog/kernels.toml",
        )
    return specs


@functools.cache
def catalog() -> dict[str, KernelSpec]:
    text = resources.files("banger.artifacts").joinpath("catalog/kernels.toml").read_text()
    return _parse(text)


def default_kernel() -> KernelSpec:
    return next(s for s in catalog().values() if s.default)


def get_spec(name: str) -> KernelSpec:
    specs = catalog()
    if name not in specs:
        raise NotFound(
            f"no kernel named {name!r} in the catalog",
            hint=f"choose one of: {', '.join(sorted(specs))}",
        )
    return specs[name]
