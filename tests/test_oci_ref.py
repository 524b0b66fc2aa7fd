"""OCI references as `banger image pull` parses them (no I/O)."""

from __future__ import annotations

import pytest

from banger.artifacts.images.oci_ref import OciRef, is_catalog_name, parse_reference
from banger.errors import InvalidInput

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("ref", "registry", "repository", "tag", "digest", "skopeo", "name"),
    [
        ("127.0.0.1:5000/test/app:1", "127.0.0.1:5000", "test/app", "1", "",
         "docker://127.0.0.1:5000/test/app:1", "test-app"),
        ("debian:bookworm", "docker.io", "library/debian", "bookworm", "",
         "docker://docker.io/library/debian:bookworm", "debian"),
        ("alpine", "docker.io", "library/alpine", "latest", "",
         "docker://docker.io/library/alpine:latest", "alpine"),
        ("docker://quay.example/org/tool", "quay.example", "org/tool", "latest", "",
         "docker://quay.example/org/tool:latest", "org-tool"),
        (f"localhost/app@{DIGEST}", "localhost", "app", "", DIGEST,
         f"docker://localhost/app@{DIGEST}", "app"),
        # tag and digest: the digest decides what is fetched
        (f"reg.example:443/a/b/c:v1.2_x@{DIGEST}", "reg.example:443", "a/b/c", "v1.2_x", DIGEST,
         f"docker://reg.example:443/a/b/c@{DIGEST}", "a-b-c"),
        ("user/some.app__x", "docker.io", "user/some.app__x", "latest", "",
         "docker://docker.io/user/some.app__x:latest", "user-some.app__x"),
    ],
)  # fmt: skip
def test_registry_references(
    ref: str, registry: str, repository: str, tag: str, digest: str, skopeo: str, name: str
) -> None:
    r = parse_reference(ref)
    assert (r.transport, r.registry, r.repository, r.tag, r.digest) == (
        "docker",
        registry,
        repository,
        tag,
        digest,
    )
    assert r.skopeo() == skopeo
    assert r.default_name() == name


@pytest.mark.parametrize(
    ("ref", "expected", "name"),
    [
        ("oci-archive:/tmp/My App.tar", None, None),  # white space: refused below
        ("oci-archive:/srv/images/app.tar", OciRef("oci-archive", path="/srv/images/app.tar"),
         "app"),
        ("oci-archive:/srv/app.tar:v2", OciRef("oci-archive", path="/srv/app.tar",
         archive_ref="v2"), "app"),
        ("docker-archive:/srv/save.tar:team/web:3", OciRef("docker-archive", path="/srv/save.tar",
         archive_ref="team/web:3"), "web"),
        ("oci:/var/layouts/x:1", OciRef("oci", path="/var/layouts/x", archive_ref="1"), "x"),
    ],
)  # fmt: skip
def test_archive_references(ref: str, expected: OciRef | None, name: str | None) -> None:
    if expected is None:
        with pytest.raises(InvalidInput):
            parse_reference(ref)
        return
    r = parse_reference(ref)
    assert r == expected
    assert r.skopeo() == ref
    assert r.default_name() == name


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("", "empty"),
        ("Registry.example/App:1", "lower-case"),
        ("127.0.0.1:5000/test/app:", "tag ''"),
        ("127.0.0.1:5000/test/app:bad/tag", "lower-case"),
        ("app@sha256:1234", "digest"),
        ("app@md5:" + "a" * 32, "digest"),
        ("http://127.0.0.1:5000/app", "only docker://"),
        ("127.0.0.1:5000/", "missing"),
        ("reg..example/app", "registry host"),
        ("oci-archive:relative.tar", "absolute"),
        ("oci-archive:", "needs a path"),
        ("oci-archive:/x.tar:", "nothing after"),
        ("a b", "white space"),
        ("a//b", "lower-case"),
    ],
)
def test_malformed_references_say_why_and_how(ref: str, why: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_reference(ref)
    assert why in exc.value.message
    assert "\n" not in exc.value.message
    assert "write it as" in exc.value.hint


def test_catalog_names_are_plain_words() -> None:
    assert is_catalog_name("debian-bookworm")
    assert not is_catalog_name("debian:bookworm")
    assert not is_catalog_name("test/app")
    assert not is_catalog_name("oci-archive:/x.tar")
