"""Fakes for the disk layer: an in-memory registry, an image tool, an ISO writer, images."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from agent.disks.manifest import OCI_INDEX, OCI_MANIFEST, digest_of
from agent.disks.ports import FetchedManifest, PullProgress
from agent.errors import FailedPrecondition
from agent.imageref import ImageRef
from agent.models import VMSpec
from agent.ports import ImageInfo


def layer(files: Mapping[str, bytes | str], *, gz: bool = True) -> bytes:
    """A tar layer; a str value makes a symlink to that target."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    data = buffer.getvalue()
    return gzip.compress(data, mtime=0) if gz else data


@dataclass
class FakeRegistry:
    """A RegistryClient serving blobs and manifests from dicts; records every call."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, bytes] = field(default_factory=dict)  # tag or digest → body
    calls: list[tuple[str, str]] = field(default_factory=list)
    tamper: set[str] = field(default_factory=set)  # digests served with a flipped byte

    def add_blob(self, data: bytes) -> str:
        digest = digest_of(data)
        self.blobs[digest] = data
        return digest

    def add_image(
        self, layers: Sequence[bytes], tag: str = "latest", media: str = OCI_MANIFEST
    ) -> str:
        """Push an image; returns its manifest digest."""
        config = self.add_blob(json.dumps({"architecture": "amd64", "os": "linux"}).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": media,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config, "size": len(self.blobs[config])},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                 "digest": self.add_blob(data), "size": len(data)}
                for data in layers
            ],
        }  # fmt: skip
        body = json.dumps(manifest).encode()
        digest = digest_of(body)
        self.manifests[digest] = body
        self.manifests[tag] = body
        return digest

    def add_index(self, platforms: dict[str, str], tag: str) -> str:
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": digest,
                 "size": len(self.manifests[digest]),
                 "platform": dict(zip(("os", "architecture"), platform.split("/"), strict=True))}
                for platform, digest in platforms.items()
            ],
        }  # fmt: skip
        body = json.dumps(index).encode()
        self.manifests[tag] = self.manifests[digest_of(body)] = body
        return digest_of(body)

    def get_manifest(
        self, image: ImageRef, reference: str, accept: Sequence[str]
    ) -> FetchedManifest:
        self.calls.append(("manifest", reference))
        if reference not in self.manifests:
            raise FailedPrecondition(f"manifest {reference}: not found (HTTP 404)")
        return FetchedManifest(self.manifests[reference], "application/json", "")

    def get_blob(self, image: ImageRef, digest: str, write: Callable[[bytes], None]) -> None:
        self.calls.append(("blob", digest))
        data = bytearray(self.blobs[digest])
        if digest in self.tamper:
            data[len(data) // 2] ^= 0xFF
        for start in range(0, len(data), 1000):
            write(bytes(data[start : start + 1000]))

    def blob_calls(self) -> int:
        return sum(1 for kind, _ in self.calls if kind == "blob")


class FakeImages:
    """An ImageTool writing small files instead of running qemu-img."""

    def __init__(self, fmt: str = "qcow2") -> None:
        self.fmt = fmt
        self.overlays: list[tuple[str, str, str]] = []

    def inspect(self, path: str) -> ImageInfo:
        assert os.path.isfile(path), path
        return ImageInfo(self.fmt)

    def create_overlay(self, base: str, base_format: str, path: str) -> None:
        self.overlays.append((base, base_format, path))
        with open(path, "w") as handle:
            handle.write(f"overlay of {base}\n")

    def create_blank(self, path: str, size_bytes: int, fmt: str = "qcow2") -> None:
        with open(path, "w") as handle:
            handle.write(f"blank {size_bytes}\n")


class FakeIso:
    """An IsoWriter keeping what it was asked to write (and writing a marker file)."""

    def __init__(self) -> None:
        self.written: dict[str, dict[str, bytes]] = {}
        self.labels: dict[str, str] = {}

    def write_iso(self, path: str, volume_id: str, files: Mapping[str, bytes]) -> None:
        self.written[path] = dict(files)
        self.labels[path] = volume_id
        with open(path, "wb") as handle:
            handle.write(b"iso")


@dataclass
class FakeObserver:
    """A PullObserver recording what it is told."""

    progress: list[PullProgress] = field(default_factory=list)
    ended: list[tuple[str, Exception | None]] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)

    def pulling(self, domain: str, spec: VMSpec, progress: PullProgress) -> None:
        self.progress.append(progress)

    def finished(self, domain: str, error: Exception | None) -> None:
        self.ended.append((domain, error))

    def forget(self, domain: str) -> None:
        self.forgotten.append(domain)


def sparse_layer(name: str, real_size: int, tail: bytes = b"QFI\xfb") -> bytes:
    """A gzip'd tar with one GNU sparse member: ``real_size`` bytes of holes and ``tail``.

    Python's tarfile reads such members but cannot write them; the header is made by hand
    (old GNU format: the sparse map and the real size live in the header).
    """
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = len(tail)  # what the archive stores
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[386:398] = tarfile.itn(real_size - len(tail), 12, tarfile.GNU_FORMAT)
    header[398:410] = tarfile.itn(len(tail), 12, tarfile.GNU_FORMAT)
    header[483:495] = tarfile.itn(real_size, 12, tarfile.GNU_FORMAT)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    padding = b"\0" * (-len(tail) % 512)
    return gzip.compress(bytes(header) + tail + padding + b"\0" * 1024, mtime=0)
