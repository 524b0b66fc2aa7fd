"""Which Debian mirror to build images from: the one the host's apt already uses.

banger never hard-codes a mirror. It reads the host's apt sources (one-line
`sources.list` / `*.list` files and deb822 `*.sources` files), keeps the entries that
serve the main Debian archive (component `main`, a plain release suite rather than
-security/-updates/-backports, and not another vendor's repository) and prefers the
one for the suite being built. The caller's `debian_mirror` (from config) overrides
all of this. The security archive lives at a different URI on most mirrors, so it is
looked up separately and is optional, like the -updates pocket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from banger.errors import BangerError, InvalidInput

ETC_APT = Path("/etc/apt")
APT_LISTS = Path("/var/lib/apt/lists")

_POCKETS = ("-security", "-updates", "-backports", "-proposed-updates", "-backports-sloppy")


class MirrorNotFound(BangerError):
    code = "mirror_not_found"
    http_status = 424


@dataclass(frozen=True)
class AptSource:
    """One apt source entry; a deb822 stanza may carry several URIs and suites."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str
    origin: str  # the file (and line) it came from, for messages
    enabled: bool = True


@dataclass(frozen=True)
class Mirror:
    uri: str
    suite: str
    source: str  # where the choice came from: a file, or "debian_mirror override"
    updates: bool = False  # the host also uses an -updates pocket of this mirror
    security_uri: str | None = None  # the host's <suite>-security archive, if any

    def apt_lines(self, components: tuple[str, ...] = ("main",)) -> list[str]:
        """sources.list lines: the suite, plus -updates and security where the host has them."""
        comps = " ".join(components)
        lines = [f"deb {self.uri} {self.suite} {comps}"]
        if self.updates:
            lines.append(f"deb {self.uri} {self.suite}-updates {comps}")
        if self.security_uri:
            lines.append(f"deb {self.security_uri} {self.suite}-security {comps}")
        return lines


def parse_one_line(text: str, origin: str) -> list[AptSource]:
    """Entries of a one-line-style file: `deb [opt=val ...] uri suite [component ...]`."""
    out: list[AptSource] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options = ""
        m = re.match(r"^(\S+)\s+\[([^\]]*)\]\s*(.*)$", line)
        if m:
            kind, options, rest = m.group(1), m.group(2), m.group(3)
            words = [kind, *rest.split()]
        else:
            words = line.split()
        if len(words) < 3 or words[0] not in ("deb", "deb-src"):
            continue
        opts = dict(o.split("=", 1) for o in options.split() if "=" in o)
        out.append(
            AptSource(
                types=(words[0],),
                uris=(words[1],),
                suites=(words[2],),
                components=tuple(words[3:]),
                signed_by=opts.get("signed-by", ""),
                origin=f"{origin}:{lineno}",
            )
        )
    return out


def parse_deb822(text: str, origin: str) -> list[AptSource]:
    """Entries of a deb822 `.sources` file (stanzas separated by blank lines)."""
    out: list[AptSource] = []
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue  # comments may sit anywhere, even between continuation lines
        if not raw.strip():
            if fields:
                stanzas.append(fields)
            fields, key = {}, ""
        elif raw[0] in " \t" and key:
            fields[key] += "\n" + raw.strip()
        elif ":" in raw:
            key, value = raw.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()
    for n, st in enumerate(stanzas, 1):
        out.append(
            AptSource(
                types=tuple(st.get("types", "").split()),
                uris=tuple(st.get("uris", "").split()),
                suites=tuple(st.get("suites", "").split()),
                components=tuple(st.get("components", "").split()),
                signed_by=st.get("signed-by", ""),
                origin=f"{origin} (stanza {n})",
                enabled=st.get("enabled", "yes").lower() not in ("no", "false", "0"),
            )
        )
    return out


def read_host_sources(etc_apt: Path = ETC_APT) -> list[AptSource]:
    """Every enabled source entry, in the order apt reads the files."""
    files: list[Path] = []
    if (etc_apt / "sources.list").is_file():
        files.append(etc_apt / "sources.list")
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    out: list[AptSource] = []
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue  # unreadable: apt would complain, we just skip it
        parse = parse_deb822 if path.suffix == ".sources" else parse_one_line
        out += [s for s in parse(text, str(path)) if s.enabled]
    return out


def _release_origin(uri: str, suite: str, lists_dir: Path) -> str | None:
    """The `Origin:` of the Release file apt downloaded for uri+suite, if it has one.

    apt names list files after the URI without its scheme, '/' replaced by '_'.
    """
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    base = (host + parts.path).rstrip("/").replace("/", "_")
    for name in (f"{base}_dists_{suite}_InRelease", f"{base}_dists_{suite}_Release"):
        try:
            with open(lists_dir / name, errors="replace") as f:
                for line in f:
                    if line.startswith("Origin:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip():
                        break
        except OSError:
            continue
    return None


def _debian_score(src: AptSource, uri: str, suite: str, lists_dir: Path) -> int | None:
    """How sure we are that uri serves the Debian archive; None when it surely does not."""
    origin = _release_origin(uri, suite, lists_dir)
    if origin is not None:
        return 10 if origin == "Debian" else None
    score = 0
    if "debian-archive-keyring" in src.signed_by:
        score += 2
    if urlsplit(uri).path.rstrip("/").endswith("/debian"):
        score += 1
    if src.signed_by and "debian" not in src.signed_by:
        score -= 2  # another vendor's key: a third-party repository
    return score


def _usable(uri: str) -> bool:
    return uri.split(":", 1)[0] in ("http", "https", "file", "mirror+http", "mirror+https")


def _pick(
    sources: list[AptSource], want: str, lists_dir: Path, *, any_release: bool
) -> tuple[str, str] | None:
    """(uri, origin) of the best binary `main` entry for suite `want`, or None."""
    # (exact suite, Debian score, earlier file first) ranks the candidates.
    candidates: list[tuple[tuple[bool, int, int], str, str]] = []
    for src in sources:
        if "deb" not in src.types or "main" not in src.components:
            continue
        for suite in src.suites:
            exact = suite == want
            release = "/" not in suite and not suite.endswith(_POCKETS)
            if not (exact or (any_release and release)):
                continue
            for uri in src.uris:
                if not _usable(uri):
                    continue
                score = _debian_score(src, uri, suite, lists_dir)
                # Another suite only says where the mirror is; demand evidence it is Debian.
                if score is None or (not exact and score < 1):
                    continue
                candidates.append(((exact, score, -len(candidates)), uri, src.origin))
    if not candidates:
        return None
    _, uri, origin = max(candidates, key=lambda c: c[0])
    return uri, origin


def check_mirror_uri(uri: str) -> str:
    """Validate a user-supplied mirror URI and normalise away a trailing slash."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https", "file") or not (parts.netloc or parts.path):
        raise InvalidInput(
            f"debian_mirror {uri!r} is not an http(s):// or file:// URL",
            hint="set debian_mirror to the base URL of a Debian archive mirror "
            "(the directory that contains dists/ and pool/)",
        )
    return uri.rstrip("/")


def _has_updates(sources: list[AptSource], uri: str) -> bool:
    return any(
        "deb" in s.types
        and uri in (u.rstrip("/") for u in s.uris)
        and any(x.endswith("-updates") for x in s.suites)
        for s in sources
    )


def discover_mirror(
    suite: str,
    *,
    override: str | None = None,
    etc_apt: Path = ETC_APT,
    lists_dir: Path = APT_LISTS,
) -> Mirror:
    """The Debian mirror to build `suite` from: `override`, else the host's apt sources.

    With the host's sources, the -updates pocket and the security archive are used when
    the host uses them too. An override is taken literally: only that mirror's `suite`
    (a local or partial mirror may carry nothing else, and apt would fail on it).
    """
    if override:
        return Mirror(check_mirror_uri(override), suite, "debian_mirror override")
    sources = read_host_sources(etc_apt)
    sec = _pick(sources, f"{suite}-security", lists_dir, any_release=False)
    security_uri = sec[0].rstrip("/") if sec else None
    found = _pick(sources, suite, lists_dir, any_release=True)
    if found is None:
        raise MirrorNotFound(
            f"no Debian archive mirror found in the host's apt sources ({etc_apt}/sources.list, "
            f"{etc_apt}/sources.list.d/) to build {suite} from",
            hint="set debian_mirror in ~/.config/banger/config.toml to a Debian mirror URL, "
            "or add a Debian 'main' entry to the host's apt sources",
        )
    uri, origin = found
    uri = uri.rstrip("/")
    return Mirror(uri, suite, origin, _has_updates(sources, uri), security_uri)
