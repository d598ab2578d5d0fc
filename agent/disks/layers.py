"""Find the disk file in an image's layers (tar, optionally gzip'd), as KubeVirt builds them.

A containerdisk holds one image file under ``/disk/`` (or at the ``path`` the volume names).
Layers apply in order: a later layer replaces a file, and whiteouts (``.wh.<name>``,
``.wh..wh..opq``) delete. Nothing from a layer is written anywhere but into files this module
names itself, so hostile tar member names cannot escape; links are never followed.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
from dataclasses import dataclass, field

__all__ = ["DiskSearch", "LayerError"]

DISK_DIR = "disk"
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


class LayerError(ValueError):
    """A layer cannot be read, or the image holds no usable disk file."""


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
        try:
            with tarfile.open(blob_path, mode="r|*") as tar:
                for member in tar:
                    self._member(tar, member)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise LayerError(f"layer is not a readable tar (gzip'd or plain): {exc}") from None

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
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
        source = tar.extractfile(member)
        if source is None:
            self.found[path] = ""
            return
        self._counter += 1
        target = os.path.join(self.workdir, f"candidate-{self._counter}")
        with source, open(target, "xb") as out:
            shutil.copyfileobj(source, out, 1024 * 1024)
        self.found[path] = target

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
