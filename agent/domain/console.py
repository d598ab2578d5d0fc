"""A VM's serial console log, read from its file: the last lines, then what follows."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

__all__ = ["read_console"]

_CHUNK = 64 * 1024


def read_console(
    path: str,
    *,
    tail_lines: int,
    follow: bool,
    keep_going: Callable[[], bool],
    wait: Callable[[], None],
) -> Iterator[bytes]:
    """Chunks of the log: from its last ``tail_lines`` lines (0: all of it), then, when
    ``follow``, what is written later, for as long as ``keep_going()`` holds (it may raise,
    e.g. NotFound once the VM is deleted); ``wait()`` paces the polling."""
    offset = _tail_offset(path, tail_lines)
    while True:
        for after, chunk in _read_from(path, offset):
            offset = after  # where the next read resumes
            yield chunk
        if not follow or not keep_going():
            return
        wait()


def _tail_offset(path: str, lines: int) -> int:
    """Byte offset where the last ``lines`` lines start (0: the whole file)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return 0
    if lines == 0:
        return 0
    with open(path, "rb") as handle:
        block, found, position = 8192, 0, size
        while position > 0:
            step = min(block, position)
            position -= step
            handle.seek(position)
            data = handle.read(step)
            for index in range(len(data) - 1, -1, -1):
                if data[index] == 0x0A and position + index < size - 1:
                    found += 1
                    if found == lines:
                        return position + index + 1
    return 0


def _read_from(path: str, offset: int) -> Iterator[tuple[int, bytes]]:
    """Chunks of the log from ``offset``, each with the offset after it; read as they are sent."""
    try:
        # O_NOFOLLOW: the log lives in a folder QEMU's user can write; never follow a swap.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    with os.fdopen(fd, "rb") as handle:
        if os.fstat(handle.fileno()).st_size < offset:
            offset = 0  # the log was truncated (new boot): start over
        handle.seek(offset)
        while chunk := handle.read(_CHUNK):
            offset += len(chunk)
            yield offset, chunk
