"""Parse OCI/Docker image references (``registry:5000/repo/name:tag@sha256:...``).

The grammar is the one of distribution/reference (what ``docker pull`` accepts): the first
path component is a registry when it holds a '.' or ':' or is ``localhost``; otherwise the
image is on Docker Hub, where single names live under ``library/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["DOCKER_HUB", "ImageRef", "BadReference", "parse_reference"]

DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_HOST = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)(?::[0-9]{1,5})?$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_MAX_NAME = 255


class BadReference(ValueError):
    """The text is not an image reference; the message says which part is wrong."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed image reference; ``tag`` is "latest" when neither tag nor digest is given.

    Usage::

        ref = parse_reference("192.0.2.1:5000/containerdisks/fedora:40")
        ref.registry, ref.repository, ref.tag   # '192.0.2.1:5000', 'containerdisks/fedora', '40'
    """

    registry: str
    repository: str
    tag: str = ""
    digest: str = ""
    # The reference as written (e.g. "nginx" for docker.io/library/nginx:latest): what a
    # spec stores and shows. Two spellings of one image are the same image.
    written: str = field(default="", compare=False)

    @property
    def reference(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest, else the tag."""
        return self.digest or self.tag

    @property
    def api_host(self) -> str:
        """The host (and port) serving the registry API."""
        return _DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> ImageRef:
    """Parse ``text`` into an ImageRef, or raise BadReference saying why not."""
    if not text or text != text.strip() or len(text) > 1024:
        raise BadReference("must be a non-empty image reference without spaces")
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST.match(digest):
        raise BadReference(f"digest {digest!r} is not sha256:<64 hex> or sha512:<128 hex>")
    registry, path = _split_registry(rest)
    path, tag = _split_tag(path)
    _check_repository(path)
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not tag and not digest:
        tag = "latest"
    return ImageRef(registry=registry, repository=path, tag=tag, digest=digest, written=text)


def _split_registry(rest: str) -> tuple[str, str]:
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.match(first):
            raise BadReference(f"registry {first!r} is not host[:port]")
        return first, remainder
    return DOCKER_HUB, rest


def _split_tag(path: str) -> tuple[str, str]:
    colon = path.rfind(":")
    if colon <= path.rfind("/"):
        return path, ""
    tag = path[colon + 1 :]
    if not _TAG.match(tag):
        raise BadReference(f"tag {tag!r} is not valid (letters, digits, '_', '.', '-')")
    return path[:colon], tag


def _check_repository(path: str) -> None:
    if not path:
        raise BadReference("names no repository")
    for component in path.split("/"):
        if not _COMPONENT.match(component):
            raise BadReference(
                f"repository component {component!r} must be lowercase letters and digits "
                "separated by '.', '_', '__' or '-'"
            )
    if len(path) > _MAX_NAME:
        raise BadReference(f"repository name is longer than {_MAX_NAME} characters")
