"""Images: the catalog, recipe builds, managed storage, register and promote.

The daemon calls the functions re-exported here; the submodules are internals.
"""

from banger.artifacts.images.build import pull_image
from banger.artifacts.images.catalog import ImageSpec, catalog, default_image, get_spec
from banger.artifacts.images.info import (
    FileInfo,
    ImageInfo,
    ImageManifest,
    check_name,
    quick_check,
    verify,
)
from banger.artifacts.images.recipe import Recipe, load_recipe
from banger.artifacts.images.register import promote_image, register_image
from banger.artifacts.images.store import (
    intact_image,
    is_outdated,
    list_images,
    load_image,
    remove_image,
    sweep_tmp,
)

__all__ = [
    "FileInfo",
    "ImageInfo",
    "ImageManifest",
    "ImageSpec",
    "Recipe",
    "catalog",
    "check_name",
    "default_image",
    "get_spec",
    "intact_image",
    "is_outdated",
    "list_images",
    "load_image",
    "load_recipe",
    "promote_image",
    "pull_image",
    "quick_check",
    "register_image",
    "remove_image",
    "sweep_tmp",
    "verify",
]
