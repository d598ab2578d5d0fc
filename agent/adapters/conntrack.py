"""ConntrackCli: forgets tracked connections through the ``conntrack`` tool.

A deleted VM's address is given to the next VM; connections tracked for the old one (NAT
bindings above all) must not carry over, so every entry with the address on either side of
either direction is deleted.
"""

from __future__ import annotations

import re
import subprocess

from agent.network.ports import NetworkError

__all__ = ["ConntrackCli"]

_TIMEOUT = 30.0
_DELETED = re.compile(r"(\d+) flow entries have been deleted")
# orig source, orig destination, reply source, reply destination
_DIRECTIONS = ("--orig-src", "--orig-dst", "--reply-src", "--reply-dst")


class ConntrackCli:
    """Runs ``conntrack -D`` in the agent's network namespace."""

    def __init__(self, binary: str = "conntrack") -> None:
        self.binary = binary

    def forget(self, address: str) -> int:
        """Delete every entry with ``address``; returns how many there were."""
        deleted = 0
        for direction in _DIRECTIONS:
            argv = [self.binary, "-D", "-f", "ipv4", direction, address]
            try:
                proc = subprocess.run(
                    argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise NetworkError(f"running {self.binary}: {exc}") from exc
            found = _DELETED.search(proc.stderr + proc.stdout)
            # exit status 1 with "0 flow entries" just means there was nothing to delete
            if proc.returncode not in (0, 1) or (proc.returncode == 1 and not found):
                raise NetworkError(f"conntrack -D {direction} {address}: {proc.stderr.strip()}")
            deleted += int(found.group(1)) if found else 0
        return deleted
