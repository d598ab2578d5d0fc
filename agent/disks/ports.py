"""Ports of the disk layer: a registry to pull from, an ISO writer, a pull-progress observer.

Adapters: ``agent.adapters.registry.HttpxRegistry`` and ``agent.adapters.iso.PycdlibIso``;
``agent.domain.pullstatus.PullStatusPublisher`` observes pulls. Tests use fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agent.imageref import ImageRef
    from agent.models import VMSpec

__all__ = [
    "Downloader",
    "FetchedManifest",
    "ImageConverter",
    "IsoWriter",
    "PullObserver",
    "PullProgress",
    "RegistryClient",
]


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    """A manifest's bytes as served, its Content-Type and Docker-Content-Digest headers."""

    body: bytes
    content_type: str = ""
    digest_header: str = ""


class RegistryClient(Protocol):
    """Talks the OCI distribution API to registries, authenticating as needed.

    Errors: ``Unavailable`` when the registry cannot be reached or fails (5xx, 429,
    timeouts; retry), ``FailedPrecondition`` for answers that will not change by retrying
    (404, access denied, other 4xx).

    Usage::

        fetched = client.get_manifest(ref, ref.reference, ACCEPT)
        client.get_blob(ref, "sha256:...", writer.write)
    """

    def get_manifest(
        self, image: ImageRef, reference: str, accept: Sequence[str]
    ) -> FetchedManifest: ...

    def get_blob(self, image: ImageRef, digest: str, write: Callable[[bytes], None]) -> None: ...


class IsoWriter(Protocol):
    """Writes an ISO 9660 image (with Joliet and Rock Ridge names) holding ``files``."""

    def write_iso(self, path: str, volume_id: str, files: Mapping[str, bytes]) -> None: ...


@dataclass(frozen=True, slots=True)
class PullProgress:
    """How far the pull of one volume's image is: ``done_bytes`` of ``total_bytes``."""

    volume: str
    image: str
    done_bytes: int
    total_bytes: int


class PullObserver(Protocol):
    """Told about image pulls made for a VM, so that clients can see them."""

    def pulling(self, domain: str, spec: VMSpec, progress: PullProgress) -> None: ...
    def finished(self, domain: str, error: Exception | None) -> None: ...
    def forget(self, domain: str) -> None: ...


class Downloader(Protocol):
    """Streams the body of an HTTP(S) URL into ``write``, calling ``progress(done, total)``
    (total 0 when the server does not say). ``write`` may raise to stop the download; that
    error comes out as it is.

    Errors: ``Unavailable`` when the server cannot be reached or fails (5xx, timeouts),
    ``FailedPrecondition`` for answers that will not change by retrying (404, 401, ...).
    """

    def download(
        self,
        url: str,
        write: Callable[[bytes], None],
        *,
        auth: tuple[str, str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None: ...


class ImageConverter(Protocol):
    """Reads an image's virtual size and copies an image into a raw file (qemu-img)."""

    def virtual_size(self, path: str, fmt: str) -> int: ...
    def convert_to_raw(self, source: str, source_format: str, target: str) -> None: ...
