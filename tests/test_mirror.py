"""Debian mirror discovery from apt sources written by the test (never the host's)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from banger.artifacts.mirror import (
    MirrorNotFound,
    discover_mirror,
    parse_deb822,
    parse_one_line,
)
from banger.errors import InvalidInput

DEBIAN_KEY = "/usr/share/keyrings/debian-archive-keyring.gpg"

DEB822 = f"""\
Types: deb deb-src
# a comment between fields
URIs: http://mirror.example.org/debian/
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: {DEBIAN_KEY}

Types: deb
URIs: http://mirror.example.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: {DEBIAN_KEY}

Types: deb
URIs: http://disabled.example.org/debian
Suites: bookworm
Components: main
Enabled: no
"""

ONE_LINE = f"""\
# the host's classic sources.list
deb [arch=amd64 signed-by={DEBIAN_KEY}] http://ftp.example.net/debian bookworm main contrib
deb-src http://src.example.net/debian bookworm main
deb http://security.example.net/debian-security bookworm-security main  # trailing comment
"""

THIRD_PARTY = """\
Types: deb
URIs: https://vendor.example.com/apt
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/vendor.gpg
"""


def apt_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    etc = tmp_path / "etc-apt"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (etc / name).write_text(text)
    return etc


def lists_dir(tmp_path: Path, releases: dict[str, str] | None = None) -> Path:
    d = tmp_path / "lists"
    d.mkdir(exist_ok=True)
    for name, origin in (releases or {}).items():
        (d / name).write_text(f"Origin: {origin}\nLabel: {origin}\nSuite: stable\n\nbody\n")
    return d


def test_parse_deb822_stanzas_comments_and_enabled() -> None:
    entries = parse_deb822(DEB822, "x.sources")
    assert [e.uris for e in entries] == [
        ("http://mirror.example.org/debian/",),
        ("http://mirror.example.org/debian-security",),
        ("http://disabled.example.org/debian",),
    ]
    assert entries[0].types == ("deb", "deb-src")
    assert entries[0].suites == ("bookworm", "bookworm-updates")
    assert entries[0].signed_by == DEBIAN_KEY
    assert [e.enabled for e in entries] == [True, True, False]


def test_parse_one_line_with_options_and_comments() -> None:
    entries = parse_one_line(ONE_LINE, "sources.list")
    assert len(entries) == 3
    first = entries[0]
    assert first.types == ("deb",)
    assert first.uris == ("http://ftp.example.net/debian",)
    assert first.suites == ("bookworm",)
    assert first.components == ("main", "contrib")
    assert first.signed_by.endswith("debian-archive-keyring.gpg")
    assert first.origin == "sources.list:2"
    assert entries[2].components == ("main",)


def test_deb822_host_layout(tmp_path: Path) -> None:
    etc = apt_dir(tmp_path, {"sources.list.d/debian.sources": DEB822})
    m = discover_mirror("bookworm", etc_apt=etc, lists_dir=lists_dir(tmp_path))
    assert m.uri == "http://mirror.example.org/debian"  # trailing slash dropped
    assert m.suite == "bookworm"
    assert m.security_uri == "http://mirror.example.org/debian-security"
    assert m.source.endswith("debian.sources (stanza 1)")
    assert m.apt_lines() == [
        "deb http://mirror.example.org/debian bookworm main",
        "deb http://mirror.example.org/debian bookworm-updates main",
        "deb http://mirror.example.org/debian-security bookworm-security main",
    ]


def test_one_line_host_layout(tmp_path: Path) -> None:
    etc = apt_dir(tmp_path, {"sources.list": ONE_LINE})
    m = discover_mirror("bookworm", etc_apt=etc, lists_dir=lists_dir(tmp_path))
    assert m.uri == "http://ftp.example.net/debian"  # deb-src entries are not mirrors
    assert m.security_uri == "http://security.example.net/debian-security"
    assert not m.updates  # the host has no bookworm-updates line: neither do we
    assert m.apt_lines(("main", "contrib")) == [
        "deb http://ftp.example.net/debian bookworm main contrib",
        "deb http://security.example.net/debian-security bookworm-security main contrib",
    ]


def test_third_party_repo_with_the_same_suite_loses(tmp_path: Path) -> None:
    etc = apt_dir(
        tmp_path,
        {"sources.list.d/vendor.sources": THIRD_PARTY, "sources.list": ONE_LINE},
    )
    m = discover_mirror("bookworm", etc_apt=etc, lists_dir=lists_dir(tmp_path))
    assert m.uri == "http://ftp.example.net/debian"


def test_release_origin_in_apt_lists_decides(tmp_path: Path) -> None:
    # Without key or path hints, the Release files apt downloaded tell what is Debian.
    sources = (
        "deb http://a.example.com/repo bookworm main\n"
        "deb http://b.example.com/pub/linux bookworm main\n"
    )
    etc = apt_dir(tmp_path, {"sources.list": sources})
    lists = lists_dir(
        tmp_path,
        {
            "a.example.com_repo_dists_bookworm_InRelease": "Vendor",
            "b.example.com_pub_linux_dists_bookworm_InRelease": "Debian",
        },
    )
    assert discover_mirror("bookworm", etc_apt=etc, lists_dir=lists).uri == (
        "http://b.example.com/pub/linux"
    )


def test_other_suite_gives_the_mirror_for_the_target_suite(tmp_path: Path) -> None:
    # A trixie host still says where its Debian mirror is; the suite comes from the recipe.
    text = DEB822.replace("bookworm", "trixie")
    etc = apt_dir(tmp_path, {"sources.list.d/debian.sources": text})
    m = discover_mirror("bookworm", etc_apt=etc, lists_dir=lists_dir(tmp_path))
    assert (m.uri, m.suite) == ("http://mirror.example.org/debian", "bookworm")
    assert m.updates  # the host uses trixie-updates from it, so it has pockets
    assert m.security_uri is None  # only trixie-security is configured


def test_non_debian_host_needs_the_override(tmp_path: Path) -> None:
    ubuntu = "deb http://archive.example.com/ubuntu jammy main restricted\n"
    etc = apt_dir(tmp_path, {"sources.list": ubuntu})
    with pytest.raises(MirrorNotFound) as err:
        discover_mirror("bookworm", etc_apt=etc, lists_dir=lists_dir(tmp_path))
    assert "debian_mirror" in err.value.hint


def test_no_sources_at_all(tmp_path: Path) -> None:
    with pytest.raises(MirrorNotFound):
        discover_mirror("bookworm", etc_apt=tmp_path / "nope", lists_dir=tmp_path)


def test_override_wins_and_is_validated(tmp_path: Path) -> None:
    etc = apt_dir(tmp_path, {"sources.list.d/debian.sources": DEB822})
    m = discover_mirror(
        "bookworm",
        override="https://local.example/debian/",
        etc_apt=etc,
        lists_dir=lists_dir(tmp_path),
    )
    assert (m.uri, m.source) == ("https://local.example/debian", "debian_mirror override")
    # Taken literally: a local mirror may have no -updates or security to offer.
    assert m.apt_lines() == ["deb https://local.example/debian bookworm main"]
    with pytest.raises(InvalidInput):
        discover_mirror("bookworm", override="mirror.example.org/debian", etc_apt=etc)


def test_host_sources_parse_without_error() -> None:
    # Whatever this host has, reading it must not crash (the result may be an error).
    with contextlib.suppress(MirrorNotFound):
        discover_mirror("bookworm")
