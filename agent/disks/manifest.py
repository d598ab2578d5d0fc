"""OCI and Docker v2 manifests: parse them, pick linux/amd64 from an index, verify digests.

Only what a container disk needs: image manifests (OCI, Docker schema 2) and indexes (OCI
index, Docker manifest list). Docker schema 1 is refused. Every blob is checked against the
digest (and size) its descriptor states while it streams, so nothing unverified is used.
See https://github.com/opencontainers/image-spec/blob/main/manifest.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACCEPT",
    "Descriptor",
    "DigestMismatch",
    "DigestWriter",
    "Index",
    "LAYER_TYPES",
    "Manifest",
    "ManifestError",
    "check_digest",
    "digest_of",
    "parse_manifest",
    "select_platform",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
# Layer media types this agent can unpack (tar, optionally gzip'd): tarfile reads both.
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
)
_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_MAX_LAYERS = 256


class ManifestError(ValueError):
    """A manifest is malformed or describes something this agent cannot use."""


class DigestMismatch(ManifestError):
    """Content does not match the digest (or size) that names it."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A pointer to content: its media type, digest and size (and platform, in an index)."""

    media_type: str
    digest: str
    size: int
    platform: str = ""  # "os/architecture[/variant]" for index entries


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest: a config blob and the layers, applied in order."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def total_size(self) -> int:
        return sum(layer.size for layer in self.layers)


@dataclass(frozen=True, slots=True)
class Index:
    """An image index (manifest list): one manifest per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]


def digest_of(data: bytes) -> str:
    """The sha256 digest of ``data`` in ``sha256:<hex>`` form."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(data: bytes, expected: str) -> None:
    """Raise DigestMismatch unless ``data`` has the digest ``expected`` (sha256 or sha512)."""
    writer = DigestWriter(expected, len(data))
    writer.write(data)
    writer.verify()


class DigestWriter:
    """Hashes a blob while it streams and checks it against its descriptor.

    Usage::

        writer = DigestWriter("sha256:ab12...", size=1234, sink=file.write)
        for chunk in response: writer.write(chunk)   # raises past the stated size
        writer.verify()                              # raises DigestMismatch
    """

    def __init__(self, expected: str, size: int | None = None, sink: Any = None) -> None:
        if not _DIGEST.match(expected):
            raise ManifestError(f"{expected!r} is not a sha256 or sha512 digest")
        algorithm, _, self.expected_hex = expected.partition(":")
        self.expected = expected
        self.size = size
        self.done = 0
        self._hash = hashlib.new(algorithm)
        self._sink = sink

    def write(self, chunk: bytes) -> None:
        self.done += len(chunk)
        if self.size is not None and self.done > self.size:
            # A registry that streams more than the descriptor says is never trusted further.
            raise DigestMismatch(f"{self.expected}: more than the expected {self.size} bytes")
        self._hash.update(chunk)
        if self._sink is not None:
            self._sink(chunk)

    def verify(self) -> None:
        if self.size is not None and self.done != self.size:
            raise DigestMismatch(f"{self.expected}: got {self.done} bytes, expected {self.size}")
        actual = self._hash.hexdigest()
        if actual != self.expected_hex:
            algorithm = self.expected.partition(":")[0]
            raise DigestMismatch(
                f"content has digest {algorithm}:{actual}, not the expected {self.expected}"
            )


def parse_manifest(body: bytes, content_type: str = "") -> Manifest | Index:
    """Parse a manifest or index; the ``mediaType`` field wins over the Content-Type."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError("manifest is not a JSON object")
    if data.get("schemaVersion") != 2:
        raise ManifestError(
            f"schemaVersion {data.get('schemaVersion')!r} is not supported (only 2)"
        )
    media_type = data.get("mediaType") or content_type.split(";")[0].strip()
    if not media_type:
        # OCI allows omitting mediaType; the shape tells the kind.
        media_type = OCI_INDEX if "manifests" in data else OCI_MANIFEST
    if media_type in (OCI_INDEX, DOCKER_LIST):
        entries = _list(data, "manifests")
        return Index(media_type, tuple(_descriptor(e, "manifests") for e in entries))
    if media_type in (OCI_MANIFEST, DOCKER_MANIFEST):
        if not isinstance(data.get("config"), dict):
            raise ManifestError("manifest has no config descriptor")
        layers = _list(data, "layers")
        if not layers:
            raise ManifestError("manifest has no layers")
        if len(layers) > _MAX_LAYERS:
            raise ManifestError(f"manifest has {len(layers)} layers, more than {_MAX_LAYERS}")
        return Manifest(
            media_type,
            _descriptor(data["config"], "config"),
            tuple(_descriptor(layer, "layers") for layer in layers),
        )
    raise ManifestError(f"media type {media_type!r} is not an OCI or Docker v2 manifest")


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise ManifestError(f"manifest field {key!r} is not a list")
    return value


def _descriptor(item: Any, where: str) -> Descriptor:
    if not isinstance(item, dict):
        raise ManifestError(f"an entry of {where} is not an object")
    digest, size = item.get("digest"), item.get("size")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ManifestError(f"an entry of {where} has no valid digest ({digest!r})")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{digest} in {where} has no valid size ({size!r})")
    platform = ""
    if isinstance(item.get("platform"), dict):
        p = item["platform"]
        parts = [str(p.get("os", "")), str(p.get("architecture", ""))]
        if p.get("variant"):
            parts.append(str(p["variant"]))
        platform = "/".join(parts)
    return Descriptor(str(item.get("mediaType", "")), digest, size, platform)


def select_platform(index: Index, os: str = "linux", architecture: str = "amd64") -> Descriptor:
    """The index entry for os/architecture (any variant), as a container runtime picks it."""
    wanted = f"{os}/{architecture}"
    for entry in index.manifests:
        if entry.platform == wanted or entry.platform.startswith(wanted + "/"):
            return entry
    offered = ", ".join(e.platform or "(no platform)" for e in index.manifests) or "nothing"
    raise ManifestError(f"the image index has no {wanted} manifest (it offers {offered})")
