"""Fetching pinned packages from the npm registry the host is configured for.

Some tools a golden image ships (mise, opencode) are published on the npm registry as
packages carrying Linux x86-64 binaries. banger never names a registry itself: the
registry is `npm_registry` from banger's config, else what the host's npm says
(`npm config get registry`, which folds in every npmrc layer), else the `registry=`
line of the user's or the system's npmrc. A tarball is accepted only when its SHA-512
matches both the integrity hash the registry publishes for that version and the one
pinned in the recipe. Verified tarballs are cached by name, version and hash, so rebuilding an
image downloads nothing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.errors import BangerError
from banger.system import find_tool, run

DISABLED = ("off", "none", "false", "")
_REGISTRY_LINE = re.compile(r"^\s*registry\s*=\s*(\S+)\s*$", re.MULTILINE)
_CAFILE_LINE = re.compile(r"^\s*cafile\s*=\s*(\S+)\s*$", re.MULTILINE)


class NpmUnavailable(BangerError):
    """The registry cannot be used: not configured, unreachable, or serving other bytes."""

    code = "npm_unavailable"
    http_status = 502


@dataclass(frozen=True)
class Registry:
    url: str  # always ends with "/"
    source: str  # where the choice came from, for messages
    cafile: str | None = None


def _npm_env(key: str) -> str | None:
    """npm reads `npm_config_<key>` from the environment in any letter case."""
    want = f"npm_config_{key}"
    return next((v for k, v in os.environ.items() if k.lower() == want and v), None)


def _npmrc_files() -> list[Path]:
    files = []
    if user := _npm_env("userconfig"):
        files.append(Path(user))
    files.append(Path.home() / ".npmrc")
    files.append(Path("/etc/npmrc"))
    return files


def _from_npmrc() -> Registry | None:
    for path in _npmrc_files():
        try:
            text = path.read_text()
        except OSError:
            continue
        if m := _REGISTRY_LINE.search(text):
            ca = _CAFILE_LINE.search(text)
            return Registry(_slash(m.group(1)), str(path), ca.group(1) if ca else None)
    return None


def _slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def _check_url(url: str, source: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise NpmUnavailable(
            f"npm registry {url!r} (from {source}) is not an http(s):// URL",
            hint="set npm_registry in ~/.config/banger/config.toml to the registry's base URL, "
            'or to "off" to build images without npm-published tools',
        )
    return _slash(url)


def find_registry(override: str | None = None) -> Registry:
    """The registry to fetch from; raises NpmUnavailable (with the fix) when there is none."""
    if override is not None:
        if override.strip().lower() in DISABLED:
            raise NpmUnavailable(
                "npm-published tools are turned off (npm_registry = off)",
                hint="remove npm_registry from the config to use the host's npm registry",
            )
        return Registry(_check_url(override.strip(), "npm_registry"), "npm_registry")
    if env := _npm_env("registry"):
        return Registry(_check_url(env, "npm_config_registry"), "npm_config_registry")
    if find_tool("npm") is not None:
        res = run(["npm", "config", "get", "registry"], check=False, timeout=30)
        url = res.out.strip()
        if res.returncode == 0 and url and url != "undefined":
            ca = run(["npm", "config", "get", "cafile"], check=False, timeout=30).out.strip()
            cafile = ca if ca and ca not in ("null", "undefined") and Path(ca).is_file() else None
            return Registry(_check_url(url, "npm config"), "npm config", cafile)
    if (found := _from_npmrc()) is not None:
        return Registry(_check_url(found.url, found.source), found.source, found.cafile)
    raise NpmUnavailable(
        "no npm registry is configured on this host",
        hint="install npm (`apt-get install npm`), add `registry=URL` to ~/.npmrc, "
        "or set npm_registry in ~/.config/banger/config.toml",
    )


def sri_sha512(data_digest: bytes) -> str:
    """Subresource-integrity form of a SHA-512 digest, as npm publishes it."""
    return "sha512-" + base64.b64encode(data_digest).decode()


def _client(registry: Registry, timeout: float) -> Any:
    import ssl

    import httpx  # only image builds pay for it

    verify = ssl.create_default_context(cafile=registry.cafile) if registry.cafile else True
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
        verify=verify,
        follow_redirects=True,
        trust_env=True,
    )


def _version_url(registry: Registry, package: str, version: str) -> str:
    # Scoped names keep their "@" and encode the "/": @scope%2fname.
    name = urllib.parse.quote(package, safe="@")
    return f"{registry.url}{name}/{urllib.parse.quote(version, safe='')}"


def fetch_tarball(
    registry: Registry,
    package: str,
    version: str,
    integrity: str,
    cache_dir: Path,
    *,
    work_dir: Path,
    timeout: float = 60.0,
) -> Path:
    """The verified tarball of `package@version`, from the cache or the registry.

    `work_dir` holds the partial download. Raises NpmUnavailable, naming the package,
    when the registry cannot be reached, does not have that version, publishes another
    integrity hash than the pinned one, or serves bytes that do not match it.
    """
    import httpx

    if not integrity.startswith("sha512-"):
        raise BangerError(f"{package}@{version}: pinned integrity must be a sha512- hash")
    key = hashlib.sha256(f"{package}@{version} {integrity}".encode()).hexdigest()[:32]
    cached = cache_dir / f"{key}.tgz"
    if cached.is_file():
        return cached
    what = f"{package}@{version}"
    try:
        with _client(registry, timeout) as client:
            resp = client.get(_version_url(registry, package, version))
            if resp.status_code == 404:
                raise NpmUnavailable(
                    f"{what} is not on the npm registry {registry.url} ({registry.source})",
                    hint="check the pinned version in the image recipe",
                )
            resp.raise_for_status()
            dist = resp.json().get("dist") or {}
            published = dist.get("integrity")
            if published != integrity:
                raise NpmUnavailable(
                    f"{what}: the registry publishes integrity {published!r}, "
                    f"the recipe pins {integrity!r}",
                    hint="the registry serves a different package than the one pinned; "
                    "check npm_registry / the host's npm config",
                )
            tarball = str(dist.get("tarball") or "")
            if not tarball.startswith(("http://", "https://")):
                raise NpmUnavailable(f"{what}: the registry gave no tarball URL")
            cache_dir.mkdir(parents=True, exist_ok=True)
            # Downloads land in the build's work dir (swept if we die), then move.
            partial = work_dir / f"{key}.part"
            h = hashlib.sha512()
            try:
                with client.stream("GET", tarball) as stream, partial.open("wb") as f:
                    stream.raise_for_status()
                    for chunk in stream.iter_bytes(1 << 20):
                        h.update(chunk)
                        f.write(chunk)
                got = sri_sha512(h.digest())
                if got != integrity:
                    raise NpmUnavailable(
                        f"{what}: downloaded tarball has integrity {got}, expected {integrity}",
                        hint="the download was corrupted or tampered with; try again",
                    )
                shutil.move(partial, cached)
            finally:
                partial.unlink(missing_ok=True)
    except httpx.HTTPError as exc:
        if isinstance(exc, httpx.HTTPStatusError):
            reason = f"HTTP {exc.response.status_code} for {exc.request.url}"
        else:
            reason = " ".join(str(exc).split()) or type(exc).__name__
        raise NpmUnavailable(
            f"cannot fetch {what} from the npm registry {registry.url} "
            f"({registry.source}): {reason}",
            hint="check that this host reaches the registry (`npm view "
            f"{package} version`), or set npm_registry",
        ) from exc
    except ValueError as exc:  # a body that is not JSON
        raise NpmUnavailable(
            f"the npm registry {registry.url} answered {what} with something that is not JSON"
        ) from exc
    return cached
