"""Images: the catalog, recipe builds, managed storage, register and promote.

The daemon calls the functions re-exported here; the submodules are internals.
"""

from banger.artifacts.images.build import pull_image
from banger.artifacts.images.catalog import ImageSpec, catalog, default_image, get_spec
from banger.artifacts.images.info import (
    FileInfo,
    ImageInfo,
    ImageManifest,
    OciInfo,
    check_name,
    memory_floor,
    quick_check,
    verify,
)
from banger.artifacts.images.oci import WORK_PREFIX as OCI_WORK_PREFIX
from banger.artifacts.images.oci import OciPullError, pull_oci_image
from banger.artifacts.images.oci_ref import OciRef, is_catalog_name, parse_reference
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
    "OCI_WORK_PREFIX",
    "FileInfo",
    "ImageInfo",
    "ImageManifest",
    "ImageSpec",
    "OciInfo",
    "OciPullError",
    "OciRef",
    "Recipe",
    "catalog",
    "check_name",
    "default_image",
    "get_spec",
    "intact_image",
    "is_catalog_name",
    "is_outdated",
    "list_images",
    "load_image",
    "load_recipe",
    "memory_floor",
    "parse_reference",
    "promote_image",
    "pull_image",
    "pull_oci_image",
    "quick_check",
    "register_image",
    "remove_image",
    "sweep_tmp",
    "verify",
]
