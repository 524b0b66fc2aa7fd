"""Apply a recipe to a bootstrapped root filesystem tree, from the host, without chroot.

Everything here edits files under `root` directly: units are enabled and masked with
the same symlinks `systemctl` would make, so no guest program has to run on the host.
Paths inside the tree are resolved as the guest would see them (absolute symlinks are
re-rooted at `root`), so a symlink in the image can never make us write to the host.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from banger.agent import GUEST_PROGRAM
from banger.artifacts import ext4
from banger.artifacts.images.recipe import Recipe
from banger.errors import BangerError
from banger.progress import Progress
from banger.system import run

_UNIT_DIRS = ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system")


class RecipeApplyError(BangerError):
    code = "recipe_apply"
    http_status = 500


def guest_path(root: Path, path: str, *, follow_last: bool = False) -> Path:
    """The host path of guest `path` under `root`, resolving symlinks the way the
    guest would (an absolute target restarts at `root`). Never escapes `root`."""
    parts = list(PurePosixPath(path).parts[1:])
    current = root
    hops = 0
    while parts:
        name = parts.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / name
        if candidate.is_symlink() and (parts or follow_last):
            hops += 1
            if hops > 40:
                raise RecipeApplyError(f"too many symlinks resolving {path} in {root}")
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                current = root
            parts = list(target.parts[1:] if target.is_absolute() else target.parts) + parts
            continue
        current = candidate
    return current


def _mkdirs(root: Path, path: str, mode: int = 0o755) -> Path:
    """Create guest directory `path` (and parents) owned by root; returns its host path."""
    host = guest_path(root, path, follow_last=True)
    if not host.is_dir():
        parent = str(PurePosixPath(path).parent)
        if parent != path:
            _mkdirs(root, parent)
        host.mkdir(mode=mode)
        os.chown(host, 0, 0)
        os.chmod(host, mode)  # mkdir's mode is filtered by the umask
    return host


def install_file(root: Path, src: Path, dest: str, mode: int) -> None:
    """Copy host file `src` to guest path `dest`, owned by root with `mode`, replacing
    what is there (a symlink itself, not its target); missing directories are made."""
    _mkdirs(root, str(PurePosixPath(dest).parent))
    host = guest_path(root, dest)
    if host.is_symlink() or host.exists():
        host.unlink()
    shutil.copyfile(src, host)
    os.chown(host, 0, 0)
    os.chmod(host, mode)


def install_files(root: Path, recipe: Recipe) -> None:
    for d in recipe.dirs:
        os.chmod(_mkdirs(root, d.path, int(d.mode, 8)), int(d.mode, 8))
    for entry in recipe.files:  # e.g. a resolv.conf symlink is replaced, not written through
        install_file(root, recipe.source(entry), entry.dest, int(entry.mode, 8))
    for link in recipe.symlinks:
        _mkdirs(root, str(PurePosixPath(link.path).parent))
        dest = guest_path(root, link.path)
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        os.symlink(link.target, dest)


def _find_unit(root: Path, unit: str) -> tuple[str, Path]:
    for d in _UNIT_DIRS:
        host = guest_path(root, f"/{d}/{unit}")
        if host.is_file() and not host.is_symlink():
            return f"/{d}/{unit}", host
    raise RecipeApplyError(
        f"unit {unit} is not in the image (looked in {', '.join(_UNIT_DIRS)})",
        hint="add the package or file that provides it to the recipe, or drop it from units",
    )


def _install_section(unit_file: Path) -> dict[str, list[str]]:
    """WantedBy=/RequiredBy= of a unit's [Install] section."""
    out: dict[str, list[str]] = {"wantedby": [], "requiredby": []}
    section = ""
    for raw in unit_file.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Install]" and "=" in line:
            key, value = line.split("=", 1)
            if key.strip().lower() in out:
                out[key.strip().lower()] += value.split()
    return out


def enable_units(root: Path, units: tuple[str, ...]) -> None:
    """`systemctl enable`, by symlink: <target>.wants/<unit> -> the unit file."""
    for unit in units:
        guest_unit, host_unit = _find_unit(root, unit)
        install = _install_section(host_unit)
        if not install["wantedby"] and not install["requiredby"]:
            raise RecipeApplyError(f"unit {unit} has no WantedBy=/RequiredBy= to enable it by")
        for kind, suffix in (("wantedby", "wants"), ("requiredby", "requires")):
            for target in install[kind]:
                d = _mkdirs(root, f"/etc/systemd/system/{target}.{suffix}")
                link = d / unit
                if link.is_symlink():
                    link.unlink()
                os.symlink(guest_unit, link)


def mask_units(root: Path, units: tuple[str, ...]) -> None:
    """`systemctl mask`, by symlink: /etc/systemd/system/<unit> -> /dev/null.

    Units that are not installed are masked too (harmless, and it keeps them off if a
    later package brings them). Links that enabled them are removed.
    """
    etc = _mkdirs(root, "/etc/systemd/system")
    for unit in units:
        link = etc / unit
        if link.exists() and not link.is_symlink():
            raise RecipeApplyError(
                f"cannot mask {unit}: /etc/systemd/system/{unit} is a real file",
                hint="drop it from the recipe's mask list or stop installing it",
            )
        if link.is_symlink():
            link.unlink()
        os.symlink("/dev/null", link)
        for wants in etc.glob(f"*.wants/{unit}"):
            wants.unlink()


def set_default_target(root: Path, target: str) -> None:
    guest_unit, _ = _find_unit(root, target)
    link = _mkdirs(root, "/etc/systemd/system") / "default.target"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(guest_unit, link)


def _globbed(root: Path, pattern: str) -> Iterator[Path]:
    parent = guest_path(root, str(PurePosixPath(pattern).parent), follow_last=True)
    yield from (
        Path(p)
        for p in sorted(glob.glob(glob.escape(str(parent)) + "/" + PurePosixPath(pattern).name))
    )


def cleanup(root: Path, recipe: Recipe) -> None:
    for pattern in recipe.cleanup.remove:
        for p in _globbed(root, pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    for path in recipe.cleanup.truncate:
        host = guest_path(root, path)
        if host.is_symlink():
            host.unlink()
        with open(host, "w"):
            pass


def set_hostname(root: Path, recipe: Recipe) -> None:
    """/etc/hostname: the default name, used when the kernel command line gives none."""
    host = guest_path(root, "/etc/hostname")
    if host.is_symlink():
        host.unlink()
    host.write_text(recipe.hostname + "\n")
    os.chmod(host, 0o644)  # whatever the daemon's umask


def install_guest_agent(root: Path, recipe: Recipe, progress: Progress) -> bool:
    """Install banger-agent (SPEC §1) and enable its unit; True when installed.

    The program is banger's own `banger/agent/guest.py` (stdlib only), copied to
    recipe.agent.path with mode 0755; the unit comes from the recipe's files/ and
    goes to /etc/systemd/system, enabled by its [Install] section.
    """
    if not recipe.agent.enabled:
        progress("configure", "guest agent: disabled by the recipe")
        return False
    unit_src = recipe.directory / "files" / recipe.agent.unit
    if not GUEST_PROGRAM.is_file() or not unit_src.is_file():
        missing = GUEST_PROGRAM if not GUEST_PROGRAM.is_file() else unit_src
        raise RecipeApplyError(
            f"cannot install the guest agent: {missing} is missing",
            hint="reinstall banger, or set [agent] enabled = false in the recipe",
        )
    for src, dest, mode in (
        (GUEST_PROGRAM, recipe.agent.path, 0o755),
        (unit_src, f"/etc/systemd/system/{recipe.agent.unit}", 0o644),
    ):
        install_file(root, src, dest, mode)
    enable_units(root, (recipe.agent.unit,))
    progress("configure", f"guest agent: {recipe.agent.path} ({recipe.agent.unit} enabled)")
    return True


def apply_recipe(root: Path, recipe: Recipe, progress: Progress) -> bool:
    """Everything `configure` does to a freshly bootstrapped tree; True when the
    guest agent was installed."""
    install_files(root, recipe)
    set_hostname(root, recipe)
    enable_units(root, recipe.units.enable)
    mask_units(root, recipe.units.mask)
    set_default_target(root, recipe.units.default_target)
    agent = install_guest_agent(root, recipe, progress)
    cleanup(root, recipe)
    return agent


# dpkg-query's format for packages.manifest (the status says which are installed).
DPKG_QUERY_FORMAT = "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n"


def packages_manifest(dpkg_query_out: str) -> list[str]:
    """ "name<TAB>version<TAB>arch" of the installed packages in `dpkg-query -W
    -f=DPKG_QUERY_FORMAT` output, sorted."""
    return sorted(
        "\t".join(cols[1:])
        for cols in (line.split("\t") for line in dpkg_query_out.splitlines())
        if len(cols) == 4 and cols[0].startswith("ii")
    )


def write_packages_manifest(root: Path, out: Path) -> int:
    """ "name<TAB>version<TAB>arch" of every installed package, sorted; returns the count."""
    res = run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", f"-f={DPKG_QUERY_FORMAT}"])
    rows = packages_manifest(res.out)
    out.write_text("".join(f"{r}\n" for r in rows))
    return len(rows)


def split_work_seed(root: Path, seed: Path) -> None:
    """Move the tree's /root contents into `seed`, leaving /root an empty mount point."""
    home = guest_path(root, "/root", follow_last=True)
    seed.mkdir(mode=0o700)
    for entry in sorted(home.iterdir()):
        os.rename(entry, seed / entry.name)
    os.chmod(home, 0o700)
    os.chmod(seed, 0o700)


# The images' filesystem labels (the guest mounts by device, not by label).
ROOTFS_LABEL = "banger-root"
WORK_LABEL = "banger-work"
MiB = ext4.MiB


def mkfs_work_seed(root: Path, seed: Path, dest: Path, progress: Progress, at: float = 0.0) -> None:
    """Move the tree's /root into `seed` (`split_work_seed`) and make the image's
    work-seed `dest` of it: sparse, half as large again as its contents plus 64 MiB,
    at least 128 MiB."""
    split_work_seed(root, seed)
    size = max(128 * MiB, ext4.round_up(ext4.tree_size(seed) * 3 // 2 + 64 * MiB, 16 * MiB))
    progress("work-seed", f"{dest.name} ({size // MiB} MiB, sparse)", at)
    ext4.mkfs_from_dir(seed, dest, size, WORK_LABEL, root_mode=0o700)


def mkfs_rootfs(root: Path, dest: Path, floor: int, progress: Progress, at: float = 0.0) -> None:
    """Make the image's rootfs `dest` of the tree: half as large again as its contents
    plus 256 MiB, at least `floor` bytes (sparse)."""
    used = ext4.tree_size(root)
    size = max(floor, ext4.round_up(used * 3 // 2 + 256 * MiB, 64 * MiB))
    progress("mkfs", f"{dest.name} ({size // MiB} MiB, {used // MiB} MiB used)", at)
    ext4.mkfs_from_dir(root, dest, size, ROOTFS_LABEL)
