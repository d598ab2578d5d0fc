"""Remembers recent request ids so that a repeated mutating call has no second effect."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from agent.errors import InvalidSpec

__all__ = ["MAX_REQUEST_ID", "RequestLog"]

_MISSING = object()
MAX_REQUEST_ID = 128  # a UUID is 36; kept for ten minutes, so bounded


class RequestLog:
    """A bounded, time-limited map of request id → (verb, vm, result).

    Kept in memory: after an agent restart a repeated request is executed again, which is
    safe because every verb is idempotent on the VM's state (start of a running VM, stop of
    a stopped one...); only a repeated hard restart would act twice.
    """

    def __init__(self, *, size: int = 4096, ttl: float = 600.0) -> None:
        self._entries: OrderedDict[str, tuple[float, str, str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size
        self._ttl = ttl

    def recall(self, request_id: str, verb: str, vm: str) -> Any:
        """The stored result of this request, or MISSING; a reused id for another call fails."""
        if not request_id:
            return _MISSING
        if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
            raise InvalidSpec(
                "request_id", f"must be at most {MAX_REQUEST_ID} printable characters"
            )
        with self._lock:
            self._expire()
            entry = self._entries.get(request_id)
        if entry is None:
            return _MISSING
        _, old_verb, old_vm, result = entry
        if (old_verb, old_vm) != (verb, vm):
            raise InvalidSpec(
                "request_id", f"{request_id} was already used for {old_verb} {old_vm}"
            )
        return result

    def remember(self, request_id: str, verb: str, vm: str, result: Any) -> None:
        if not request_id or len(request_id) > MAX_REQUEST_ID:
            return
        with self._lock:
            self._entries[request_id] = (time.monotonic(), verb, vm, result)
            self._entries.move_to_end(request_id)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self._ttl
        while self._entries:
            key, (stamp, *_rest) = next(iter(self._entries.items()))
            if stamp >= cutoff:
                return
            del self._entries[key]

    @staticmethod
    def missing(value: Any) -> bool:
        return value is _MISSING
