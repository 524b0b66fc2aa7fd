"""The image catalog: `artifacts/catalog/images.toml`, shipped as package data.

Kept as data so adding an image is a reviewable TOML change (plus a recipe), not code.
Same shape as the kernel catalog: `catalog()` maps names to specs, one is the default.
"""

from __future__ import annotations

import functools
import tomllib
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from banger.errors import BangerError, NotFound
from banger.sizing import MIN_MEMORY_MIB

_CATALOG = "catalog/images.toml"


class ImageSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    kernel: str  # an entry of kernels.toml
    recipe: str  # a directory under artifacts/recipes/
    suite: str
    rootfs_size_mib: int = Field(ge=256)
    # The least memory a VM of it may have, and what needs it (recorded in image.json).
    min_memory_mib: int = Field(ge=MIN_MEMORY_MIB)
    min_memory_reason: str = Field(min_length=1)
    default: bool = False


def parse_catalog(text: str) -> dict[str, ImageSpec]:
    data = tomllib.loads(text)
    specs: dict[str, ImageSpec] = {}
    for name, entry in data.get("images", {}).items():
        try:
            specs[name] = ImageSpec(name=name, **entry)
        except (ValidationError, TypeError) as exc:
            raise BangerError(
                f"image catalog entry {name!r} is invalid: {exc}",
                hint=f"fix src/banger/artifacts/{_CATALOG}",
            ) from exc
    if sum(s.default for s in specs.values()) != 1:
        raise BangerError(
            "image catalog must mark exactly one entry `default = true`",
            hint=f"fix src/banger/artifacts/{_CATALOG}",
        )
    return specs


@functools.cache
def catalog() -> dict[str, ImageSpec]:
    return parse_catalog(resources.files("banger.artifacts").joinpath(_CATALOG).read_text())


def default_image() -> ImageSpec:
    return next(s for s in catalog().values() if s.default)


def get_spec(name: str) -> ImageSpec:
    specs = catalog()
    if name not in specs:
        raise NotFound(
            f"no image named {name!r} in the catalog",
            hint=f"catalog images: {', '.join(sorted(specs))}; "
            "to use your own rootfs, see `banger image register`",
        )
    return specs[name]
