"""`banger kernel build`: compile a microVM kernel from Debian's linux-source package.

The source package is resolved and downloaded with the host's apt (apt verifies it
against the signed indexes; we re-check its SHA256). The config is `make tinyconfig`
plus banger's fragment (microvm.config) plus the user's, completed by `make
olddefconfig` and checked against `kconfig.REQUIRED` before anything compiles. The
result is an ELF vmlinux with everything built in: no modules, no initramfs.

Build cache (kept after success, failure and cancel; see README):

  cache_dir/<source>_<version>/
    src/         the unpacked kernel tree (complete once .banger-unpacked exists)
    obj/         `make O=obj` output: a rebuild recompiles only what changed
    cc-count     C files the last full build compiled (for progress)
  cache_dir/<source>_<version>.lock   one build per tree at a time (flock)

A successful build removes the trees of other versions of the same source package.
The kernel itself is published like a pulled one (atomic rename into kernels_dir).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import banger
from banger.artifacts import publish as pub
from banger.artifacts.kernels import apt, kconfig
from banger.artifacts.kernels.catalog import catalog
from banger.artifacts.kernels.elf import ElfError, check_complete
from banger.artifacts.kernels.info import (
    CONFIG,
    FRAGMENT_CONFIG,
    VMLINUX,
    KernelInfo,
    KernelManifest,
    digest_files,
    quick_check,
    write_manifest,
)
from banger.artifacts.kernels.pull import load_kernel
from banger.errors import BangerError, Conflict, InvalidInput, ToolMissing
from banger.progress import Progress, null_progress
from banger.system import find_tool, run_lines

DEFAULT_SOURCE = "linux-source-6.1"
DEFAULT_NAME = "micro-6.1"
ARCH = "x86_64"
# C files a full build of the repository fragment compiles (measured; the first
# build's progress uses it until the cache knows its own count).
EXPECTED_CC = 1500
NICE = 10  # a kernel build must not starve the VMs running beside it

_SOURCE = re.compile(r"^linux-source-[0-9]+\.[0-9]+$")
_TMP_PREFIX = "kernel-"  # shared with pull.py, so the daemon's sweep finds our leftovers
_UNPACKED = ".banger-unpacked"
_KBUILD_LINE = re.compile(r"^\s+([A-Z0-9_]+)\s+(\S+)")
_BUILD_TOOLS = ("make", "gcc", "bc", "flex", "bison", "tar", "xz")
_LIBELF_HEADER = Path("/usr/include/libelf.h")

# Progress fractions of the stages.
_COMPILE_FROM, _COMPILE_TO = 0.2, 0.96


class KernelBuildError(BangerError):
    code = "kernel_build"
    http_status = 422


@dataclass(frozen=True)
class BuildRequest:
    name: str = DEFAULT_NAME
    source: str = DEFAULT_SOURCE
    fragment: kconfig.Fragment | None = None  # the user's --config-fragment
    jobs: int = 0  # 0: one per CPU

    def fragments(self) -> list[kconfig.Fragment]:
        ours = [kconfig.repository_fragment()]
        return ours + ([self.fragment] if self.fragment is not None else [])


def check_request(req: BuildRequest) -> None:
    """Reject a bad request before any work (names, fragment syntax, host tools)."""
    if not pub.is_plain_name(req.name) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", req.name):
        raise InvalidInput(
            f"kernel name {req.name!r} is not valid",
            hint="use letters, digits, '.', '_' and '-' (e.g. --name micro)",
        )
    if req.name in catalog():
        raise InvalidInput(
            f"`{req.name}` is a catalog kernel's name; a built kernel needs its own",
            hint="pick another --name (e.g. --name micro)",
        )
    if not _SOURCE.fullmatch(req.source):
        raise InvalidInput(
            f"--source {req.source!r} is not a Debian kernel source package",
            hint=f"name a linux-source-X.Y package, e.g. --source {DEFAULT_SOURCE}",
        )
    if req.jobs < 0:
        raise InvalidInput(f"--jobs must be at least 1, got {req.jobs}")
    if req.fragment is not None:
        kconfig.check_fragment(req.fragment)
    missing = [t for t in _BUILD_TOOLS if find_tool(t) is None]
    if not _LIBELF_HEADER.exists():
        missing.append("libelf-dev")
    if missing:
        from banger.system import TOOLS

        pkgs = sorted({TOOLS[t].package if t in TOOLS else t for t in missing})
        raise ToolMissing(
            f"building a kernel needs {', '.join(missing)}, which this host lacks",
            hint=f"sudo apt-get install {' '.join(pkgs)} (or run scripts/setup.sh)",
        )


def build_kernel(
    req: BuildRequest,
    kernels_dir: Path,
    tmp_dir: Path,
    cache_dir: Path,
    progress: Progress = null_progress,
    apt_options: Sequence[str] = (),
) -> KernelInfo:
    """Build (or keep, when up to date) the kernel `req.name`; see the module doc."""
    check_request(req)
    fragments = req.fragments()
    digest = kconfig.fragments_digest(fragments)
    progress("resolve", f"resolving {req.source} with apt", 0.0)
    pkg = apt.candidate(req.source, apt_options)

    existing = load_kernel(kernels_dir, req.name)
    if existing is not None and existing.kind != "built":
        raise Conflict(
            f"kernel `{req.name}` was pulled from Debian, not built",
            hint="pick another --name, or `banger kernel rm` it first",
        )
    if existing is not None and _up_to_date(existing, pkg, digest):
        progress("finalize", f"{req.name} is up to date ({pkg.name} {pkg.version})", 1.0)
        return existing

    tree = cache_dir / f"{pkg.name}_{pkg.version}"
    kernels_dir.mkdir(parents=True, exist_ok=True)
    with (
        _locked(cache_dir, tree.name, progress),
        pub.work_dir(tmp_dir, f"{_TMP_PREFIX}build-{req.name}-") as work,
    ):
        src = _source_tree(pkg, tree, work, progress, apt_options)
        obj = tree / "obj"
        final = _configure(src, obj, fragments, progress)
        _compile(src, obj, tree, req.jobs or os.cpu_count() or 1, progress)
        out = _collect(req, pkg, obj, final, fragments, digest, work)
        progress("finalize", f"publishing {req.name}", 0.98)
        info = _publish(out, kernels_dir / req.name, work, digest)
    _prune_other_versions(cache_dir, pkg.name, tree.name)
    progress("finalize", f"{req.name} ready ({info.kernel_release} from {pkg.version})", 1.0)
    return info


def _up_to_date(info: KernelInfo, pkg: apt.DebPackage, digest: str) -> bool:
    return (
        info.package == pkg.name
        and info.version == pkg.version
        and info.fragment_sha256 == digest
        and not quick_check(info)
    )


@contextlib.contextmanager
def _locked(cache_dir: Path, tree: str, progress: Progress) -> Iterator[None]:
    """Hold the tree's build lock; wait (cancellably) while another build holds it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache_dir / f"{tree}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # progress raises if the build is cancelled meanwhile
                progress("queued", f"another build of {tree} is running; waiting for it")
                time.sleep(2.0)
        yield
    finally:
        os.close(fd)


def _source_tree(
    pkg: apt.DebPackage, tree: Path, work: Path, progress: Progress, apt_options: Sequence[str]
) -> Path:
    """The unpacked kernel tree for `pkg`, downloading and unpacking it if needed."""
    src = tree / "src"
    if (src / _UNPACKED).exists():
        progress("source", f"{pkg.name} {pkg.version} already unpacked", 0.1)
        return src
    root = apt.unpack(pkg, work, apt_options, progress, at=(0.02, 0.08))
    tarballs = sorted((root / "usr" / "src").glob("linux-source-*.tar.*"))
    if len(tarballs) != 1:
        raise KernelBuildError(
            f"{pkg.name} holds {len(tarballs)} usr/src/linux-source-*.tar.* files, expected one",
            hint="the package layout is unexpected; pick another --source",
        )
    staging = work / "src"
    staging.mkdir()
    progress("unpack", f"{tarballs[0].name} (about a minute)", 0.1)
    run_lines(
        ["tar", "-xf", str(tarballs[0]), "-C", str(staging)],
        lambda _line: None,
        on_idle=lambda: progress("unpack", tarballs[0].name),
    )
    tops = [p for p in staging.iterdir() if p.is_dir()]
    if len(tops) != 1 or not (tops[0] / "Makefile").is_file():
        raise KernelBuildError(f"{tarballs[0].name} does not hold one kernel source tree")
    (tops[0] / _UNPACKED).write_text(f"{pkg.name} {pkg.version} sha256={pkg.sha256}\n")
    tree.mkdir(parents=True, exist_ok=True)
    if src.exists():  # an unpack that never finished
        pub.remove_tree(src)
    pub.rename(tops[0], src)
    return src


def _make(src: Path, obj: Path, *targets: str, jobs: int = 1) -> list[str]:
    return ["make", "-C", str(src), f"O={obj}", f"ARCH={ARCH}", f"-j{jobs}", *targets]


def _configure(src: Path, obj: Path, fragments: list[kconfig.Fragment], progress: Progress) -> str:
    """Write obj/.config (tinyconfig + fragments + olddefconfig), check it, return it."""
    progress("configure", "tinyconfig + " + " + ".join(f.origin for f in fragments), 0.15)
    obj.mkdir(parents=True, exist_ok=True)
    _run_make(_make(src, obj, "tinyconfig"), "make tinyconfig", progress)
    config = obj / ".config"
    with open(config, "a") as f:
        for frag in fragments:
            f.write(f"\n# ---- {frag.origin}\n{frag.text}\n")
    _run_make(_make(src, obj, "olddefconfig"), "make olddefconfig", progress)
    final = config.read_text()
    kconfig.check_required(final, fragments)
    progress("configure", f"{len(kconfig.REQUIRED)} required options are built in", 0.19)
    return final


def _run_make(argv: list[str], what: str, progress: Progress) -> None:
    res = run_lines(
        argv,
        lambda _line: None,
        on_idle=lambda: progress("configure", what),
        nice=NICE,
        check=False,
    )
    if res.returncode != 0:
        raise KernelBuildError(f"{what} failed: {_error_summary(res.out)}")


def _compile(src: Path, obj: Path, tree: Path, jobs: int, progress: Progress) -> None:
    counter = tree / "cc-count"
    try:
        expected = max(1, int(counter.read_text()))
    except (OSError, ValueError):
        expected = EXPECTED_CC
    full = not (obj / "vmlinux").exists()  # nothing built yet: every file compiles
    compiled = 0
    last = 0.0
    span = _COMPILE_TO - _COMPILE_FROM

    def on_line(line: str) -> None:
        nonlocal compiled, last
        m = _KBUILD_LINE.match(line)
        if m is None:
            return
        if m.group(1) == "CC":
            compiled += 1
        now = time.monotonic()
        if now - last >= 1.0:  # an event a second at most: the daemon logs each
            last = now
            frac = _COMPILE_FROM + span * min(compiled / expected, 0.99)
            progress("compile", f"CC {compiled}/~{expected}  {m.group(1)} {m.group(2)}", frac)

    def on_idle() -> None:
        progress("compile", f"CC {compiled}/~{expected}  (linking)")

    progress("compile", f"make -j{jobs} vmlinux (nice {NICE})", _COMPILE_FROM)
    env = dict(os.environ, KBUILD_BUILD_USER="banger", KBUILD_BUILD_HOST="banger")
    res = run_lines(
        _make(src, obj, "vmlinux", jobs=jobs),
        on_line,
        on_idle=on_idle,
        env=env,
        nice=NICE,
        check=False,
    )
    if res.returncode != 0:
        raise KernelBuildError(
            f"compiling the kernel failed: {_error_summary(res.out)}",
            hint="see the daemon log; the build tree stays in the cache so a retry resumes",
        )
    if full:  # remember the size of a full build for the next one's progress
        counter.write_text(f"{compiled}\n")
    progress("compile", f"compiled {compiled} C files", _COMPILE_TO)


def _error_summary(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() and not ln.startswith("make")]
    return " | ".join((errors or lines)[-3:]) or "no output"


def _collect(
    req: BuildRequest,
    pkg: apt.DebPackage,
    obj: Path,
    final: str,
    fragments: list[kconfig.Fragment],
    digest: str,
    work: Path,
) -> Path:
    vmlinux = obj / "vmlinux"
    try:
        with open(vmlinux, "rb") as f:
            check_complete(f.read())
    except (OSError, ElfError) as exc:
        raise KernelBuildError(f"the build did not produce a usable vmlinux: {exc}") from exc
    release = (obj / "include" / "config" / "kernel.release").read_text().strip()
    out = work / "kernel"
    out.mkdir()
    shutil.copyfile(vmlinux, out / VMLINUX)
    (out / CONFIG).write_text(final)
    (out / FRAGMENT_CONFIG).write_text(
        "".join(f"# ---- {f.origin}\n{f.text.rstrip()}\n" for f in fragments)
    )
    files = digest_files(out, [VMLINUX, CONFIG, FRAGMENT_CONFIG])
    manifest = KernelManifest(
        name=req.name,
        description=f"built from {pkg.name} {pkg.version} (tinyconfig + microvm.config"
        + (f" + {req.fragment.origin}" if req.fragment else "")
        + "), no initramfs",
        kind="built",
        package=pkg.name,
        version=pkg.version,
        arch=pkg.arch,
        deb_sha256=pkg.sha256,
        kernel_release=release,
        config_sha256=files[CONFIG].sha256,
        fragment_sha256=digest,
        files=files,
        created=datetime.now(UTC),
        banger_version=banger.__version__,
    )
    write_manifest(out, manifest)
    return out


def _publish(out: Path, dest: Path, work: Path, digest: str) -> KernelInfo:
    """Put the new kernel at `dest`, replacing an older build of the same name."""
    name = dest.name

    def ours() -> KernelInfo | None:
        info = load_kernel(dest.parent, name)
        ok = info is not None and info.fragment_sha256 == digest and not quick_check(info)
        return info if ok else None

    return pub.publish(out, dest, work, ours)


def _prune_other_versions(cache_dir: Path, source: str, keep: str) -> None:
    """Drop the build trees of other versions of `source` (one tree per package)."""
    for entry in cache_dir.glob(f"{source}_*"):
        if entry.name == keep or not entry.is_dir():
            continue
        lock = cache_dir / f"{entry.name}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # being built right now
        try:
            pub.remove_tree(entry)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
