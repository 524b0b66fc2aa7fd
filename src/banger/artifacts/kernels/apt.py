"""Resolve and download Debian kernel packages with the host's own apt.

We never name a mirror: apt-cache and apt-get read the host's sources and
keyrings, and `apt-get download` checks the .deb against the hashes in the
signed Release/Packages indexes. We re-check the SHA256 ourselves as well, since
it costs one hash and documents what was verified in the manifest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from banger.artifacts.kernels.catalog import KernelSpec
from banger.artifacts.manifest import sha256_file
from banger.errors import BangerError, CommandFailed, NotFound
from banger.progress import Progress, null_progress
from banger.system import run

_DOWNLOAD_TIMEOUT = 900.0
_UPDATE_HINT = "run `sudo apt-get update` so apt knows the current Debian kernel packages"


class AptError(BangerError):
    code = "apt"
    http_status = 502


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    arch: str
    size: int
    sha256: str


def _opts(apt_options: Sequence[str]) -> list[str]:
    out: list[str] = []
    for opt in apt_options:
        out += ["-o", opt]
    return out


def _stanza(package: str, apt_options: Sequence[str]) -> dict[str, str]:
    """The candidate version's record from `apt-cache show`."""
    res = run(["apt-cache", *_opts(apt_options), "show", "--no-all-versions", package], check=False)
    if res.returncode != 0 or not res.stdout.strip():
        raise NotFound(f"apt does not know the package {package}", hint=_UPDATE_HINT)
    fields: dict[str, str] = {}
    key = ""
    for line in res.out.splitlines():
        if not line.strip():
            break  # only the first stanza: the candidate
        if line[0].isspace() and key:
            fields[key] += "\n" + line.strip()
            continue
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def resolve(spec: KernelSpec, apt_options: Sequence[str] = ()) -> DebPackage:
    """Follow the catalog's metapackage to the concrete linux-image package."""
    meta = _stanza(spec.package, apt_options)
    pattern = re.compile(spec.package_pattern)
    target: tuple[str, str | None] | None = None
    for alternatives in meta.get("Depends", "").split(","):
        for dep in alternatives.split("|"):
            m = re.match(r"\s*([^\s(]+)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?", dep)
            if m and pattern.match(m.group(1)):
                target = (m.group(1), m.group(2))
                break
        if target:
            break
    if target is None:
        raise AptError(
            f"{spec.package} does not depend on a package matching {spec.package_pattern}",
            hint="the archive layout changed; update package_pattern in kernels.toml",
        )
    name, pinned = target
    info = _stanza(f"{name}={pinned}" if pinned else name, apt_options)
    try:
        return DebPackage(
            name=name,
            version=info["Version"],
            arch=info.get("Architecture", spec.arch),
            size=int(info.get("Size", "0")),
            sha256=info.get("SHA256", ""),
        )
    except (KeyError, ValueError) as exc:
        raise AptError(f"apt-cache gave an unreadable record for {name}: {exc}") from exc


def candidate(package: str, apt_options: Sequence[str] = ()) -> DebPackage:
    """The candidate version of `package` as apt sees it (e.g. linux-source-6.1)."""
    info = _stanza(package, apt_options)
    try:
        return DebPackage(
            name=info.get("Package", package),
            version=info["Version"],
            arch=info.get("Architecture", "all"),
            size=int(info.get("Size", "0")),
            sha256=info.get("SHA256", ""),
        )
    except (KeyError, ValueError) as exc:
        raise AptError(f"apt-cache gave an unreadable record for {package}: {exc}") from exc


def download(pkg: DebPackage, dest: Path, apt_options: Sequence[str] = ()) -> Path:
    """Download `pkg` into `dest` (apt verifies it), and return the .deb path."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        run(
            ["apt-get", *_opts(apt_options), "download", f"{pkg.name}={pkg.version}"],
            cwd=dest,
            timeout=_DOWNLOAD_TIMEOUT,
        )
    except CommandFailed as exc:
        raise AptError(
            f"apt-get could not download {pkg.name} {pkg.version}: {exc.message}",
            hint=_UPDATE_HINT + "; check that the host can reach its Debian mirror",
        ) from exc
    debs = sorted(dest.glob(f"{pkg.name}_*.deb"))
    if len(debs) != 1:
        raise AptError(f"apt-get download left {len(debs)} .deb files for {pkg.name} in {dest}")
    if pkg.sha256:
        digest = sha256_file(debs[0])
        if digest != pkg.sha256:
            raise AptError(
                f"{debs[0].name} has SHA256 {digest}, apt's index says {pkg.sha256}",
                hint=_UPDATE_HINT + ", then pull again",
            )
    return debs[0]


def unpack(
    pkg: DebPackage,
    work: Path,
    apt_options: Sequence[str] = (),
    progress: Progress = null_progress,
    at: tuple[float, float] = (0.0, 0.0),
) -> Path:
    """Download `pkg` (see `download`) and unpack it with dpkg-deb into `work/root`,
    which is returned; the .deb goes once unpacked. `at`: the progress fractions the
    download and the unpack are reported at."""
    progress("download", f"{pkg.name} {pkg.version} ({pkg.size / 1e6:.1f} MB)", at[0])
    deb = download(pkg, work / "deb", apt_options)
    progress("unpack", deb.name, at[1])
    root = work / "root"
    run(["dpkg-deb", "-x", str(deb), str(root)], timeout=600)
    deb.unlink()
    return root
