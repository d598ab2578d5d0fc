"""Telling a full file system from other failures of making a VM's files."""

from __future__ import annotations

import errno

from agent.errors import FailedPrecondition

__all__ = ["disk_full"]


def disk_full(exc: BaseException | None) -> bool:
    """The error (or one it came from) says the file system is full: ENOSPC or EDQUOT from
    Python, or qemu-img's message for it."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, FailedPrecondition) and "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
