"""Kernel artifacts: the catalog, bzImage -> vmlinux, module ordering, initramfs, pulls.

The daemon calls the functions re-exported here; the submodules are internals.
"""

from banger.artifacts.kernels.bzimage import Extracted, KernelImageError, extract_vmlinux
from banger.artifacts.kernels.catalog import KernelSpec, catalog, default_kernel, get_spec
from banger.artifacts.kernels.info import KernelInfo, KernelManifest
from banger.artifacts.kernels.pull import (
    is_outdated,
    list_kernels,
    load_kernel,
    pull_kernel,
    remove_kernel,
    sweep_tmp,
    verify_kernel,
)

__all__ = [
    "Extracted",
    "KernelImageError",
    "KernelInfo",
    "KernelManifest",
    "KernelSpec",
    "catalog",
    "default_kernel",
    "extract_vmlinux",
    "get_spec",
    "is_outdated",
    "list_kernels",
    "load_kernel",
    "pull_kernel",
    "remove_kernel",
    "sweep_tmp",
    "verify_kernel",
]
