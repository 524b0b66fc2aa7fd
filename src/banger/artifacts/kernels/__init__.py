"""Kernel artifacts: the catalog, bzImage -> vmlinux, module ordering, initramfs, pulls,
and builds from Debian's kernel source.

The daemon calls the functions re-exported here; the submodules are internals.
"""

from banger.artifacts.kernels.build import BuildRequest, build_kernel
from banger.artifacts.kernels.build import check_request as check_build_request
from banger.artifacts.kernels.bzimage import Extracted, KernelImageError, extract_vmlinux
from banger.artifacts.kernels.catalog import KernelSpec, catalog, default_kernel, get_spec
from banger.artifacts.kernels.info import KernelInfo, KernelManifest
from banger.artifacts.kernels.kconfig import Fragment, KernelConfigError
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
    "BuildRequest",
    "Extracted",
    "Fragment",
    "KernelConfigError",
    "KernelImageError",
    "KernelInfo",
    "KernelManifest",
    "KernelSpec",
    "build_kernel",
    "catalog",
    "check_build_request",
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
