"""Bounded polling helpers for tests: never wait forever, always say what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

__all__ = ["read_console", "wait_for", "wait_for_console"]


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.1,
    message: str | Callable[[], str] = "condition",
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `predicate` until it returns a truthy value, and return that value.

    Raises TimeoutError("timed out after N s waiting for <message>") when `timeout` seconds
    pass first. `message` may be a callable, evaluated only on timeout (to include the latest
    diagnostics). Exceptions of the types in `ignore` count as "not yet"; the last one is
    chained to the TimeoutError.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last_error = exc
        else:
            if value:
                return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            text = message() if callable(message) else message
            if last_error is not None:
                text = f"{text} (last error: {last_error!r})"
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {text}") from (
                last_error
            )
        time.sleep(min(interval, remaining))


def read_console(path: str | Path) -> str:
    """Return the text of a console log (undecodable bytes replaced); "" if it doesn't exist."""
    try:
        return Path(path).read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def wait_for_console(
    path: str | Path, marker: str, timeout: float, interval: float = 0.2, tail: int = 30
) -> str:
    """Wait until the file at `path` has a line containing `marker`; return that line.

    A guest's serial console log is the usual `path`. On timeout the TimeoutError carries the
    last `tail` lines of the file (or says that it does not exist), which is usually enough to
    see where the guest got stuck.
    """

    def find() -> str:
        for line in read_console(path).splitlines():
            if marker in line:
                return line.strip("\r\n") or marker
        return ""

    def describe() -> str:
        p = Path(path)
        if not p.exists():
            return f"{marker!r} in {p} (file does not exist)"
        lines = read_console(p).splitlines()[-tail:]
        body = "\n".join(f"    | {line}" for line in lines) or "    (empty)"
        return f"{marker!r} in {p}; last {len(lines)} lines:\n{body}"

    return wait_for(find, timeout, interval, describe)
