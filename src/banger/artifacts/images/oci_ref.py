"""OCI image references as `banger image pull` takes them, parsed without I/O.

  [REGISTRY/]NAME[:TAG][@sha256:DIGEST]   a registry image (docker:// may prefix it);
                                           REGISTRY is the first component when it has
                                           a '.' or a ':' or is `localhost`, else
                                           docker.io (and `library/` for one-part names)
  oci-archive:PATH[:TAG]                   an OCI layout in a tar file
  docker-archive:PATH[:NAME:TAG]           a `docker save` tar file
  oci:DIR[:TAG]                            an OCI layout directory

A plain word (no '/', ':' or '@') is a catalog name, never a reference: `is_catalog_name`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from banger.errors import InvalidInput

DEFAULT_REGISTRY = "docker.io"
ARCHIVE_TRANSPORTS = ("oci-archive", "docker-archive", "oci")

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_NAME_CHARS = re.compile(r"[^a-z0-9._-]+")
_EXAMPLE = "e.g. registry.example:5000/team/app:1, debian:bookworm or oci-archive:/path/app.tar"


@dataclass(frozen=True)
class OciRef:
    transport: str  # "docker", "oci-archive", "docker-archive" or "oci"
    registry: str = ""
    repository: str = ""  # path inside the registry
    tag: str = ""
    digest: str = ""
    path: str = ""  # archives and layout directories
    archive_ref: str = ""  # the part after PATH: in an archive reference

    @property
    def is_registry(self) -> bool:
        return self.transport == "docker"

    def skopeo(self) -> str:
        """The reference in skopeo's transport:details form."""
        if self.is_registry:
            ref = f"{self.registry}/{self.repository}"
            # containers/image refuses tag and digest together: the digest decides.
            ref += f"@{self.digest}" if self.digest else f":{self.tag}"
            return f"docker://{ref}"
        return f"{self.transport}:{self.path}" + (
            f":{self.archive_ref}" if self.archive_ref else ""
        )

    def __str__(self) -> str:
        if self.is_registry:
            return (
                f"{self.registry}/{self.repository}"
                + (f":{self.tag}" if self.tag else "")
                + (f"@{self.digest}" if self.digest else "")
            )
        return self.skopeo()

    def default_name(self) -> str:
        """The image name banger gives it: the repository path with '/' as '-'
        (127.0.0.1:5000/test/app:1 -> test-app), or the archive's file name."""
        if self.is_registry:
            base = self.repository.removeprefix("library/")
        else:
            inner = self.archive_ref.rsplit(":", 1)[0] if ":" in self.archive_ref else ""
            base = inner.rsplit("/", 1)[-1] if inner else self.path.rstrip("/").rsplit("/", 1)[-1]
            base = re.sub(r"\.(tar|tgz|tar\.gz|oci)$", "", base.lower())
        name = _NAME_CHARS.sub("-", base.replace("/", "-").lower()).strip("-._")[:63]
        return name or "image"


def is_catalog_name(ref: str) -> bool:
    return not any(c in ref for c in "/:@")


def _bad(ref: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"image reference {ref!r} is malformed: {why}", hint=f"write it as {_EXAMPLE}"
    )


def parse_reference(ref: str) -> OciRef:
    """Parse `ref` (see the module doc); InvalidInput naming the problem when malformed."""
    if not isinstance(ref, str) or not ref.strip():
        raise _bad(str(ref), "it is empty")
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise _bad(ref, "it contains white space")
    for transport in ARCHIVE_TRANSPORTS:
        if ref.startswith(transport + ":"):
            rest = ref[len(transport) + 1 :]
            path, sep, inner = rest.partition(":")
            if not path:
                raise _bad(ref, f"{transport}: needs a path")
            if not path.startswith("/"):
                raise _bad(ref, f"the {transport} path must be absolute")
            if sep and not inner:
                raise _bad(ref, "nothing after the ':' that follows the path")
            if inner and transport != "docker-archive" and not _TAG.fullmatch(inner):
                raise _bad(ref, f"{inner!r} is not a valid tag")
            return OciRef(transport, path=path, archive_ref=inner)
    rest = ref.removeprefix("docker://")
    if "://" in rest:
        raise _bad(ref, "only docker://, oci:, oci-archive: and docker-archive: are understood")
    digest = ""
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise _bad(ref, f"digest {digest!r} is not sha256: and 64 lower-case hex digits")
    registry = DEFAULT_REGISTRY
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.fullmatch(first):
            raise _bad(ref, f"{first!r} is not a valid registry host[:port]")
        registry, rest = first, remainder
    tag = ""
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise _bad(ref, f"tag {tag!r} has characters a tag cannot have")
    if not rest:
        raise _bad(ref, "the repository name is missing")
    if not _PATH.fullmatch(rest):
        raise _bad(
            ref,
            f"repository {rest!r} must be lower-case letters, digits and '.', '_', '-' "
            "between '/'-separated parts",
        )
    if registry == DEFAULT_REGISTRY and "/" not in rest:
        rest = f"library/{rest}"
    if not tag and not digest:
        tag = "latest"
    return OciRef("docker", registry=registry, repository=rest, tag=tag, digest=digest)
