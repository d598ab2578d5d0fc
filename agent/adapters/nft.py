"""Nftables: nftables through libnftables, in process (the only module that talks to nftables).

Each ``apply`` is one run of a JSON document, and nftables runs a document as one
transaction: all of it or none of it. The commands are JSON data built by
``agent.network.ruleset``; nothing is ever formatted into rule text.

libnftables is called through ``ctypes`` (the venv's Python cannot import Debian's
python3-nftables, which is the same ``ctypes`` binding): a VM's plug adds its elements in
~0.2 ms, where running the ``nft`` binary cost a fork and exec (3-10 ms on a loaded node).
Without the library the ``nft -j -f -`` CLI does the same work (``NftCli``).
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import threading
from typing import Any

import agent.metrics.agent_metrics as agent_metrics
from agent.network.ports import NetworkError

__all__ = ["NftCli", "NftLib", "Nftables", "default_runner"]

_TIMEOUT = 30.0
_LIBRARY = "libnftables.so.1"
_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON
_MISSING = "No such file or directory"


class NftLib:
    """libnftables of the agent's network namespace; one fresh context per call (a context
    caches the ruleset, and a fresh one costs ~10 us), one call at a time."""

    def __init__(self, library: str = _LIBRARY) -> None:
        self._lib = ctypes.CDLL(library, use_errno=True)  # OSError when absent
        lib = self._lib
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lock = threading.Lock()

    def run(self, text: str) -> tuple[bool, str, str]:
        """Run ``text`` (JSON or nft syntax; JSON output): (ok, stdout, stderr)."""
        with self._lock:
            ctx = self._lib.nft_ctx_new(0)
            if not ctx:
                raise NetworkError("libnftables could not make a context")
            try:
                self._lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON)
                self._lib.nft_ctx_buffer_output(ctx)
                self._lib.nft_ctx_buffer_error(ctx)
                code = self._lib.nft_run_cmd_from_buffer(ctx, text.encode())
                out = self._lib.nft_ctx_get_output_buffer(ctx) or b""
                err = self._lib.nft_ctx_get_error_buffer(ctx) or b""
            finally:
                self._lib.nft_ctx_free(ctx)
        return code == 0, out.decode(errors="replace"), err.decode(errors="replace")


class NftCli:
    """The ``nft`` binary, for nodes without libnftables."""

    def __init__(self, binary: str = "nft") -> None:
        self.binary = binary

    def run(self, text: str) -> tuple[bool, str, str]:
        try:
            proc = subprocess.run(
                [self.binary, "-j", "-f", "-"],
                input=text,
                capture_output=True,
                text=True,
                timeout=_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NetworkError(f"running {self.binary}: {exc}") from exc
        return proc.returncode == 0, proc.stdout, proc.stderr


class Nftables:
    """The Firewall port: transactions and listings of one table, through ``runner``
    (default: libnftables when it loads, else the ``nft`` binary)."""

    def __init__(self, runner: NftLib | NftCli | None = None) -> None:
        self._runner = runner if runner is not None else default_runner()

    def apply(self, commands: list[dict[str, Any]]) -> None:
        if not commands:
            return
        ok, _, stderr = self._runner.run(json.dumps({"nftables": commands}))
        agent_metrics.nft_transaction(ok)
        if not ok:
            raise NetworkError(f"nft transaction failed: {_errors(stderr)}")

    def list_table(self, family: str, name: str) -> list[dict[str, Any]] | None:
        """The table's objects as ``nft -j list table`` gives them; None if it does not exist."""
        command = {"list": {"table": {"family": family, "name": name}}}
        ok, stdout, stderr = self._runner.run(json.dumps({"nftables": [command]}))
        if not ok:
            if _MISSING in stderr:
                return None
            raise NetworkError(f"listing nft table {family} {name}: {_errors(stderr)}")
        try:
            items = json.loads(stdout)["nftables"]
        except (ValueError, KeyError, TypeError) as exc:
            raise NetworkError(f"nft printed unreadable JSON: {exc}") from exc
        return [item for item in items if "metainfo" not in item]


def default_runner(library: str = _LIBRARY) -> NftLib | NftCli:
    """libnftables when it loads, else the ``nft`` binary."""
    try:
        return NftLib(library)
    except OSError:
        return NftCli()


def _errors(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if "Error" in line]
    return "; ".join(dict.fromkeys(lines)) or stderr.strip() or "no error text"
