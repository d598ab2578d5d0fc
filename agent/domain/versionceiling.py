"""VersionCeiling: a resource version no earlier run of the agent reached, kept in a file.

Versions start at the agent's start time in microseconds; if the clock stepped back between
two runs, a version of the earlier run could fall in the new run's range and a watch resume
from it would be accepted. So each run also starts past the ceiling the file holds, and
raises the ceiling a block of versions ahead of the versions it hands out: one small write
per block, and no version of any run is ever handed out again.
"""

from __future__ import annotations

import logging
import os

__all__ = ["VERSION_BLOCK", "VersionCeiling"]

log = logging.getLogger(__name__)

# Versions reserved per write of the file.
VERSION_BLOCK = 1_000_000


class VersionCeiling:
    """The file ``path`` holds a version above every version handed out so far."""

    def __init__(self, path: str, block: int = VERSION_BLOCK) -> None:
        self.path = path
        self.block = block
        self.limit = 0  # versions below this one are reserved for this run

    def start(self, clock_version: int) -> int:
        """This run's first version: past the clock and past every earlier run's versions
        (reserved before it is returned: a failure to write is an error at start)."""
        start = max(clock_version, self._read())
        self._write(start + self.block)
        return start

    def handed_out(self, version: int) -> None:
        """``version`` is being handed out: reserve the next block before it is reached."""
        if version < self.limit:
            return
        try:
            self._write(version + self.block)
        except OSError:
            # Versions stay unique within this run; only a later run after the clock stepped
            # back could reuse them. The next version tries again.
            log.exception("cannot record resource versions in %s", self.path)

    def _read(self) -> int:
        try:
            with open(self.path) as handle:
                return int(handle.read().strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            log.warning("unreadable resource version ceiling %s: the clock alone", self.path)
            return 0

    def _write(self, limit: int) -> None:
        temporary = f"{self.path}.tmp"
        with open(temporary, "w") as handle:
            handle.write(f"{limit}\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        self.limit = limit
