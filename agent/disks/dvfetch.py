"""Getting a DataVolume's data onto the node: HTTP downloads (checksum, size limit), gzip and
xz decompression with a limit, and the first bytes of a file (to tell its format)."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
from collections.abc import Callable
from typing import BinaryIO

from agent.errors import FailedPrecondition

__all__ = ["CHUNK", "TooLarge", "LimitedWriter", "read_header", "unpack"]

CHUNK = 1024 * 1024


class TooLarge(FailedPrecondition):
    """More bytes than the DataVolume may hold."""


class LimitedWriter:
    """Writes a download to ``handle``, hashing it and refusing more than ``limit`` bytes."""

    def __init__(self, handle: BinaryIO, limit: int, checksum: str = "") -> None:
        self.handle = handle
        self.limit = limit
        self.written = 0
        algorithm, _, self.expected = checksum.partition(":")
        self.hash = hashlib.new(algorithm) if checksum else None

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.written > self.limit:
            raise TooLarge(f"the download is larger than {self.limit} bytes (the size limit)")
        if self.hash is not None:
            self.hash.update(chunk)
        self.handle.write(chunk)

    def check(self) -> None:
        """Raise unless the bytes written match the checksum (when one was given)."""
        if self.hash is None:
            return
        got = self.hash.hexdigest()
        if got != self.expected.lower():
            raise FailedPrecondition(
                f"checksum mismatch: the download is {self.hash.name}:{got}, "
                f"the template says {self.hash.name}:{self.expected}"
            )


def read_header(path: str, size: int = 512) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


def unpack(source: str, fmt: str, target: str, limit: int, chunk: int = CHUNK) -> None:
    """Decompress ``source`` (gzip or xz) into ``target``, at most ``limit`` bytes (a small
    file may expand to anything)."""
    opener: Callable[[str], BinaryIO] = gzip.open if fmt == "gzip" else lzma.open  # type: ignore[assignment]
    written = 0
    try:
        with opener(source) as packed, open(target, "wb") as out:
            while data := packed.read(chunk):
                written += len(data)
                if written > limit:
                    raise TooLarge(f"the image expands to more than {limit} bytes (the size limit)")
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except (OSError, EOFError, lzma.LZMAError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the disk, not the data: handled by the caller
        raise FailedPrecondition(f"the {fmt} data is damaged: {exc}") from exc
