"""Find the disk file in an image's layers (tar, optionally gzip'd), as KubeVirt builds them.

A containerdisk holds one image file under ``/disk/`` (or at the ``path`` the volume names).
Layers apply in order: a later layer replaces a file, and whiteouts (``.wh.<name>``,
``.wh..wh..opq``) delete. Nothing from a layer is written anywhere but into files this module
names itself, so hostile tar member names cannot escape; links are never followed.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import IO, BinaryIO

__all__ = ["DEFAULT_LIMITS", "DiskSearch", "LayerError", "LayerLimits"]

DISK_DIR = "disk"
_CHUNK = 1024 * 1024
_HOLE = 64 * 1024  # zero runs this long (and aligned) become holes
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


class LayerError(ValueError):
    """A layer cannot be read, or the image holds no usable disk file."""


@dataclass(frozen=True, slots=True)
class LayerLimits:
    """How big a disk file a layer may expand to.

    ``max_bytes`` caps the disk file's size; ``max_ratio`` caps its size over the layer's
    compressed size (0: no ratio check). Deflate expands at most 1032:1, so a gzip'd file of
    real data stays under the default; only tar's sparse maps (holes declared in a header)
    go beyond, and a sparse raw image needs the ratio raised or turned off.
    """

    max_bytes: int = 64 << 30
    max_ratio: int = 1100


DEFAULT_LIMITS = LayerLimits()


def _normalise(name: str) -> str | None:
    """A member name as an image path without leading '/' or './'; None if it has '..'."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


@dataclass
class DiskSearch:
    """Collects disk candidates across layers; ``result()`` names the one file to use.

    Usage::

        search = DiskSearch(workdir, wanted="")      # "" = the single file under /disk/
        for blob in layer_files: search.apply_layer(blob)
        path = search.result()
    """

    workdir: str
    wanted: str = ""  # an image path such as "disk/fedora.qcow2"; "" = the file in /disk/
    limits: LayerLimits = DEFAULT_LIMITS
    # image path → extracted file, or "" for a non-regular entry (link, device, ...)
    found: dict[str, str] = field(default_factory=dict)
    _counter: int = 0

    def __post_init__(self) -> None:
        wanted = _normalise(self.wanted) if self.wanted else ""
        if wanted is None:
            raise LayerError(f"path {self.wanted!r} must not contain '..'")
        self.wanted = wanted

    def _candidate(self, path: str) -> bool:
        if self.wanted:
            return path == self.wanted
        return posixpath.dirname(path) == DISK_DIR

    def apply_layer(self, blob_path: str) -> None:
        """Read one layer blob (already digest-verified) and update the candidates."""
        compressed = max(os.path.getsize(blob_path), 1)
        try:
            with tarfile.open(blob_path, mode="r|*") as tar:
                for member in tar:
                    self._member(tar, member, compressed)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise LayerError(f"layer is not a readable tar (gzip'd or plain): {exc}") from None

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, compressed: int) -> None:
        path = _normalise(member.name)
        if path is None:
            return  # never ours to use; a '..' name cannot name a disk
        directory, base = posixpath.split(path)
        if base == _OPAQUE:
            for known in [p for p in self.found if posixpath.dirname(p) == directory]:
                self._drop(known)
            return
        if base.startswith(_WHITEOUT):
            self._drop(posixpath.join(directory, base[len(_WHITEOUT) :]))
            return
        if not self._candidate(path):
            return
        self._drop(path)
        if not member.isreg():
            self.found[path] = ""  # refused if chosen: a link could point anywhere
            return
        self._check_size(path, member.size, compressed)
        source = tar.extractfile(member)
        if source is None:
            self.found[path] = ""
            return
        self._counter += 1
        target = os.path.join(self.workdir, f"candidate-{self._counter}")
        with source, open(target, "xb") as out:
            _copy_sparse(source, out, member.size)
        self.found[path] = target

    def _check_size(self, path: str, size: int, compressed: int) -> None:
        """Refuse before writing: a header can declare any size (a 100-byte layer, 1 PiB)."""
        limits = self.limits
        if size > limits.max_bytes:
            raise LayerError(
                f"/{path} is {size} bytes, more than the node allows ({limits.max_bytes} "
                "bytes, --max-image-size)"
            )
        if limits.max_ratio and size > compressed * limits.max_ratio:
            raise LayerError(
                f"/{path} expands to {size} bytes from a {compressed}-byte layer, more than "
                f"{limits.max_ratio} times its size (--max-image-ratio)"
            )

    def _drop(self, path: str) -> None:
        previous = self.found.pop(path, None)
        if previous:
            os.unlink(previous)

    def result(self) -> str:
        """The extracted disk file; LayerError when there is none, several, or a link."""
        if self.wanted:
            if self.wanted not in self.found:
                raise LayerError(f"the image has no file /{self.wanted}")
            chosen = self.wanted
        else:
            names = sorted(self.found)
            if not names:
                raise LayerError(f"the image has no file in /{DISK_DIR}/ (not a containerdisk?)")
            if len(names) > 1:
                listed = ", ".join(f"/{n}" for n in names)
                raise LayerError(f"the image has several files in /{DISK_DIR}/ ({listed}); "
                                 "name one with containerDisk.path")  # fmt: skip
            chosen = names[0]
        if not self.found[chosen]:
            raise LayerError(f"/{chosen} in the image is not a regular file (a link?)")
        return self.found[chosen]


def _copy_sparse(source: IO[bytes], out: BinaryIO, size: int) -> None:
    """Copy ``size`` bytes, leaving runs of zeros as holes (tar's sparse maps included)."""
    while chunk := source.read(_CHUNK):
        view = memoryview(chunk)
        for start in range(0, len(chunk), _HOLE):
            block = view[start : start + _HOLE]
            if chunk.count(0, start, start + _HOLE) == len(block):
                out.seek(len(block), os.SEEK_CUR)
            else:
                out.write(block)
    out.truncate(size)
