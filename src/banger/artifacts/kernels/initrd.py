"""Build the gzip'd newc initramfs: busybox, the ordered modules and `/init`.

Layout inside the archive:
  /init                              the template from banger.artifacts.initramfs
  /bin/busybox + applet symlinks     from the host's busybox-static
  /lib/modules/<release>/<mod>.ko    uncompressed, so busybox insmod can load them
  /etc/banger/modules                module names, one per line, in load order
  /dev/console, /dev/null            so PID 1 has a console before devtmpfs is up
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

from banger.artifacts.initramfs import init_script
from banger.artifacts.kernels.cpio import CpioWriter
from banger.artifacts.kernels.elf import ElfError, is_static
from banger.artifacts.kernels.modules import ModuleTree, read_module
from banger.errors import BangerError
from banger.system import require_tool, run

_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "newroot")


class InitramfsError(BangerError):
    code = "initramfs"
    http_status = 500


def host_busybox() -> tuple[Path, list[str]]:
    """The host's static busybox and its applet paths (e.g. 'sbin/insmod').

    A dynamically linked busybox would die in the initramfs for lack of libc, so
    it is refused with a hint naming the package that has the static one.
    """
    path = Path(require_tool("busybox")).resolve()
    try:
        static = is_static(path.read_bytes())
    except (ElfError, OSError) as exc:
        raise InitramfsError(f"cannot read {path}: {exc}") from exc
    if not static:
        raise InitramfsError(
            f"{path} is dynamically linked and cannot run inside the initramfs",
            hint="install the Debian package `busybox-static` (sudo apt-get install "
            "busybox-static)",
        )
    listing = run([str(path), "--list-full"]).out.split()
    applets = [a.strip("/") for a in listing if a.strip("/")]
    return path, applets


def build_initramfs(
    out: Path,
    tree: ModuleTree,
    order: Sequence[str],
    busybox: Path,
    applets: Sequence[str],
) -> None:
    release = tree.root.name
    with out.open("wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
        cpio = CpioWriter(gz)
        for d in _DIRS:
            cpio.dir(d)
        cpio.chardev("dev/console", 5, 1, 0o600)
        cpio.chardev("dev/null", 1, 3, 0o666)
        cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
        # /init's "#!/bin/sh" needs bin/sh even if the applet list were to lack it.
        for applet in sorted({*applets, "bin/sh"} - {"bin/busybox"}):
            cpio.symlink(applet, "/bin/busybox")
        for name in order:
            cpio.file(f"lib/modules/{release}/{name}.ko", read_module(tree.paths[name]))
        cpio.file("etc/banger/modules", "".join(f"{n}\n" for n in order).encode())
        cpio.file("init", init_script(), 0o755)
        cpio.close()
