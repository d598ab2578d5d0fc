"""List pagination as Google's API design guide describes it (AIP-158): page_size, an opaque
page_token, next_page_token empty on the last page.

A page holds at most page_size items and is also cut by bytes, so that no response comes
near gRPC's message cap however large the specs are. The token names the last item sent
(items are in key order) and the filter it was for: a token with another filter is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from agent.errors import InvalidSpec

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "PAGE_BYTES", "one_page"]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
PAGE_BYTES = 2 * 1024 * 1024  # half of gRPC's default 4 MiB message cap


class _Message(Protocol):
    def ByteSize(self) -> int: ...  # noqa: N802 - protobuf's name


T = TypeVar("T")
M = TypeVar("M", bound=_Message)


def one_page(
    items: Sequence[T],
    *,
    key: Callable[[T], tuple[str, ...]],
    convert: Callable[[T], M],
    page_size: int,
    page_token: str,
    filters: tuple[str, ...],
    max_bytes: int = PAGE_BYTES,
) -> tuple[list[M], str]:
    """The page of ``items`` (sorted by ``key``) that the request asks for, and the token of
    the next page ("" when this is the last)."""
    if page_size < 0:
        raise InvalidSpec("page_size", "must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    fingerprint = hashlib.sha256("\0".join(filters).encode()).hexdigest()[:16]
    after = _decode(page_token, fingerprint) if page_token else None
    remaining = [item for item in items if after is None or list(key(item)) > after]
    page: list[M] = []
    used = 0
    for item in remaining[:size]:
        message = convert(item)
        used += message.ByteSize()
        if page and used > max_bytes:
            break
        page.append(message)
    if len(page) == len(remaining):
        return page, ""
    last = list(key(remaining[len(page) - 1]))
    return page, _encode({"after": last, "filter": fingerprint})


def _encode(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def _decode(token: str, fingerprint: str) -> list[str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        after, made_for = data["after"], data["filter"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise InvalidSpec("page_token", "is not a token this agent gave out") from None
    if made_for != fingerprint:
        raise InvalidSpec("page_token", "was given for another namespace or label_selector")
    if not isinstance(after, list) or not all(isinstance(part, str) for part in after):
        raise InvalidSpec("page_token", "is not a token this agent gave out")
    return after
