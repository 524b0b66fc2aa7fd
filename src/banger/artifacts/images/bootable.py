"""Make an unpacked OCI root filesystem bootable as a banger VM, from the host.

Container images bring no kernel, often no init system, no SSH server and no Python.
Whatever an image has, it gets:

  /opt/banger/        a private Python (the host's interpreter, its standard library
                      and the shared libraries they need, with the ELF interpreter and
                      RPATH pointed here by patchelf), so banger's programs run in any
                      image, even one without a shell or a libc
  /opt/banger/banger-agent   the guest agent (banger/agent/guest.py)
  /opt/banger/image.json     the image's config (Env, WorkingDir, User, Entrypoint, Cmd)

Then, by what the image contains:

  systemd + sshd   boots like the golden image: the golden recipe is applied
                   (sshd config, first-boot host key, banger-net, fstab with /root on
                   the work disk, masks), and banger-agent.service runs the agent on
                   the private Python
  anything else    /sbin/banger-init (banger/agent/init.py) is PID 1 (`init=` on the
                   kernel command line): it mounts the API filesystems, configures
                   the network from ip=, starts the agent and the image's entrypoint.
                   Such a VM has no SSH server: `vm exec` works through the agent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.agent import GUEST_INIT, GUEST_PROGRAM
from banger.artifacts.images.configure import (
    RecipeApplyError,
    apply_recipe,
    enable_units,
    guest_path,
    install_file,
)
from banger.artifacts.images.recipe import Recipe, load_recipe
from banger.progress import Progress
from banger.system import run

PREFIX = "/opt/banger"
PYTHON = f"{PREFIX}/bin/python3"
AGENT = f"{PREFIX}/banger-agent"
CONFIG = f"{PREFIX}/image.json"
INIT = "/sbin/banger-init"
GOLDEN_RECIPE = "debian-bookworm"

# Standard-library parts banger's guest programs never import (and the 25 MB of
# static libraries in config-*): left out of the private Python.
_STDLIB_SKIP = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "distutils",
    "unittest",
    "site-packages",
    "dist-packages",
    "lib-dynload",
}
# Extension modules the agent and init need, or tarfile/json may load.
_DYNLOAD = ("_json", "_queue", "termios", "_ctypes", "_bz2", "_lzma", "_contextvars", "resource")
_LDD_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(/\S+)")


@dataclass(frozen=True)
class BootSetup:
    init: str  # "systemd" or "banger-init"
    ssh: bool  # an SSH server that banger configured
    cmdline: tuple[str, ...]  # extra kernel command-line fragments
    debian_family: bool  # /etc/os-release says Debian or Ubuntu (or like them)


def _exists(root: Path, path: str) -> bool:
    host = guest_path(root, path, follow_last=True)
    return host.is_file() and os.access(host, os.X_OK)


def has_systemd(root: Path) -> bool:
    init = guest_path(root, "/sbin/init", follow_last=True)
    if not init.is_file():
        return False
    return any(
        _exists(root, p) and init.samefile(guest_path(root, p, follow_last=True))
        for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")
    )


def has_sshd(root: Path) -> bool:
    return _exists(root, "/usr/sbin/sshd")


def os_release(root: Path) -> dict[str, str]:
    for p in ("/etc/os-release", "/usr/lib/os-release"):
        host = guest_path(root, p, follow_last=True)
        if host.is_file():
            out = {}
            for line in host.read_text(errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    out[key.strip()] = value.strip().strip("\"'")
            return out
    return {}


def is_debian_family(root: Path) -> bool:
    info = os_release(root)
    ids = {info.get("ID", "")} | set(info.get("ID_LIKE", "").split())
    return bool(ids & {"debian", "ubuntu"})


def _mkdir(path: Path, mode: int = 0o755) -> None:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    os.chown(path, 0, 0)
    os.chmod(path, mode)


def _needed_libs(binaries: list[Path]) -> dict[str, Path]:
    """soname -> host file of every shared library the binaries load (ldd)."""
    libs: dict[str, Path] = {}
    for binary in binaries:
        for line in run(["ldd", str(binary)]).out.splitlines():
            m = _LDD_LINE.match(line)
            if m:
                libs[m.group(1)] = Path(os.path.realpath(m.group(2)))
    return libs


def bundle_python(root: Path) -> str:
    """Install the host's Python 3 under root/opt/banger; returns its version."""
    exe = Path(
        os.path.realpath(shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3")
    )
    version = exe.name  # python3.11
    stdlib = Path("/usr/lib") / version
    dest = guest_path(root, PREFIX, follow_last=True)
    if dest.exists():
        shutil.rmtree(dest)
    for d in ("bin", "lib", f"lib/{version}", f"lib/{version}/lib-dynload"):
        _mkdir(dest / d)
    dynload = [
        m
        for name in _DYNLOAD
        for m in sorted((stdlib / "lib-dynload").glob(f"{name}.cpython-*.so"))
    ]
    for mod in dynload:
        shutil.copy2(mod, dest / "lib" / version / "lib-dynload" / mod.name)
    for soname, lib in _needed_libs([exe, *dynload]).items():
        shutil.copy2(lib, dest / "lib" / soname)
    loader = Path(os.path.realpath("/lib64/ld-linux-x86-64.so.2"))
    shutil.copy2(loader, dest / "lib" / "ld-linux-x86-64.so.2")
    shutil.copy2(exe, dest / "bin" / "python3")
    run(
        [
            "patchelf",
            "--set-interpreter",
            f"{PREFIX}/lib/ld-linux-x86-64.so.2",
            "--force-rpath",
            "--set-rpath",
            f"{PREFIX}/lib",
            str(dest / "bin" / "python3"),
        ]
    )

    def skip(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == stdlib
        out = {n for n in names if n.startswith("config-") or (top and n in _STDLIB_SKIP)}
        # Only the plain bytecode (sources keep their mtimes, so it stays valid).
        return out | {n for n in names if ".opt-" in n}

    shutil.copytree(stdlib, dest / "lib" / version, ignore=skip, dirs_exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(dest):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            os.lchown(p, 0, 0)
            if not os.path.islink(p):
                os.chmod(p, 0o755 if os.path.isdir(p) or os.access(p, os.X_OK) else 0o644)
    os.chmod(dest / "bin" / "python3", 0o755)
    return version


def _agent_unit(recipe: Recipe) -> str:
    src = (recipe.directory / "files" / recipe.agent.unit).read_text()
    return re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={PYTHON} -I -S {AGENT}", src)


def _systemd_setup(root: Path, progress: Progress) -> None:
    """The golden recipe's configuration, with the agent on the private Python."""
    recipe = load_recipe(GOLDEN_RECIPE)
    try:
        apply_recipe(root, recipe, progress)
    except RecipeApplyError as exc:
        raise RecipeApplyError(
            f"cannot boot this image with systemd as the golden image does: {exc.message}",
            hint=exc.hint,
        ) from exc
    unit = guest_path(root, f"/etc/systemd/system/{recipe.agent.unit}")
    unit.write_text(_agent_unit(recipe))
    # The agent file the recipe installed is not used (its python3 may be absent).
    agent_copy = guest_path(root, recipe.agent.path)
    if agent_copy.is_file():
        agent_copy.unlink()
    if not _has_net_tools(root):
        # banger-net is bash + ip; without them the unit runs banger-init --net-only.
        _install_init(root)
        net = guest_path(root, "/usr/local/sbin/banger-net")
        net.unlink()
        os.symlink(INIT, net)
        progress("configure", "no bash or ip in the image: banger-net is banger-init --net-only")
    for ssh_unit in ("ssh.service", "sshd.service"):
        for d in ("/lib/systemd/system", "/usr/lib/systemd/system"):
            if guest_path(root, f"{d}/{ssh_unit}").is_file():
                enable_units(root, (ssh_unit,))
                break
        else:
            continue
        break


def _has_net_tools(root: Path) -> bool:
    return _exists(root, "/bin/bash") and (
        _exists(root, "/sbin/ip") or _exists(root, "/usr/sbin/ip")
    )


def _install_init(root: Path) -> None:
    """/sbin/banger-init: init.py behind a #! line naming the private Python."""
    init = guest_path(root, INIT)
    _mkdir(init.parent)
    if init.is_symlink() or init.exists():
        init.unlink()
    init.write_text(f"#!{PYTHON} -IS\n{GUEST_INIT.read_text()}")
    os.chown(init, 0, 0)
    os.chmod(init, 0o755)


# Mount points and directories banger-init needs, made when the image lacks them.
_INIT_DIRS = (
    ("/proc", 0o555),
    ("/sys", 0o555),
    ("/dev", 0o755),
    ("/run", 0o755),
    ("/tmp", 0o1777),
    ("/root", 0o700),
    ("/etc", 0o755),
)


def _init_setup(root: Path) -> None:
    _install_init(root)
    for d, mode in _INIT_DIRS:
        host = guest_path(root, d, follow_last=True)
        if not host.exists() and not host.is_symlink():
            _mkdir(host, mode)


def make_bootable(root: Path, config: dict[str, Any], progress: Progress) -> BootSetup:
    """Install banger's pieces into the unpacked tree `root` (see the module doc)."""
    version = bundle_python(root)
    progress("bootable", f"private {version} in {PREFIX}")
    install_file(root, GUEST_PROGRAM, AGENT, 0o755)
    conf = guest_path(root, CONFIG)
    conf.write_text(json.dumps(config, indent=2) + "\n")
    os.chmod(conf, 0o644)
    debian = is_debian_family(root)
    if has_systemd(root) and has_sshd(root):
        _systemd_setup(root, progress)
        progress("bootable", "systemd and sshd: boots like the golden image")
        return BootSetup("systemd", True, (), debian)
    _init_setup(root)
    progress("bootable", f"no systemd with sshd: {INIT} starts the agent and the entrypoint")
    return BootSetup("banger-init", False, (f"init={INIT}",), debian)
