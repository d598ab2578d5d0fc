"""NftCli: nftables through ``nft -j`` (the only module that talks to nftables).

Each ``apply`` is one ``nft -j -f -`` run, and nft runs a file as one transaction: all of it
or none of it. The commands are JSON data built by ``agent.network.ruleset``; nothing is
ever formatted into rule text. (The venv's Python cannot import Debian's python3-nftables,
so the CLI is used rather than libnftables.)
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import agent.metrics.agent_metrics as agent_metrics
from agent.network.ports import NetworkError

__all__ = ["NftCli"]

_TIMEOUT = 30.0


class NftCli:
    """Runs the ``nft`` binary of the agent's network namespace."""

    def __init__(self, binary: str = "nft") -> None:
        self.binary = binary

    def apply(self, commands: list[dict[str, Any]]) -> None:
        if not commands:
            return
        document = json.dumps({"nftables": commands})
        proc = self._run(["-j", "-f", "-"], document)
        agent_metrics.nft_transaction(proc.returncode == 0)
        if proc.returncode != 0:
            raise NetworkError(f"nft transaction failed: {_errors(proc.stderr)}")

    def list_table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        """The table's objects as ``nft -j list table`` gives them; None if it does not exist."""
        proc = self._run(["-j", "list", "table", family, name], None)
        if proc.returncode != 0:
            if "No such file or directory" in proc.stderr:
                return None
            raise NetworkError(f"listing nft table {family} {name}: {_errors(proc.stderr)}")
        try:
            items = json.loads(proc.stdout)["nftables"]
        except (ValueError, KeyError, TypeError) as exc:
            raise NetworkError(f"nft printed unreadable JSON: {exc}") from exc
        return [item for item in items if "metainfo" not in item]

    def _run(self, args: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.binary, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NetworkError(f"running {self.binary}: {exc}") from exc


def _errors(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if "Error" in line]
    return "; ".join(dict.fromkeys(lines)) or stderr.strip() or "no error text"
