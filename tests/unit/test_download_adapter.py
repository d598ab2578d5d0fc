"""HttpxDownloader: streams a body, follows redirects hop by hop, refuses the node itself."""

from __future__ import annotations

import httpx
import pytest

from agent.adapters.download import HttpxDownloader
from agent.errors import FailedPrecondition, Unavailable

ADDRESSES = {
    "files.test": ["192.0.2.10"],
    "local.test": ["127.0.0.1"],
    "meta.test": ["169.254.169.254"],
}


def serve(handler) -> HttpxDownloader:  # type: ignore[no-untyped-def]
    return HttpxDownloader(
        resolve=lambda host: ADDRESSES[host], transport=httpx.MockTransport(handler)
    )


def fetch(downloader: HttpxDownloader, url: str) -> tuple[bytes, list[tuple[int, int]]]:
    chunks: list[bytes] = []
    seen: list[tuple[int, int]] = []
    downloader.download(url, chunks.append, progress=lambda d, t: seen.append((d, t)))
    return b"".join(chunks), seen


def test_a_body_is_streamed_with_progress() -> None:
    body = b"x" * 3000
    data, seen = fetch(serve(lambda r: httpx.Response(200, content=body)), "http://files.test/d")
    assert data == body
    assert seen[-1] == (3000, 3000)


def test_redirects_are_followed_and_each_hop_checked() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "files.test":
            return httpx.Response(302, headers={"location": "http://meta.test/latest"})
        return httpx.Response(200, content=b"secret")

    with pytest.raises(FailedPrecondition, match="link-local"):
        fetch(serve(handler), "http://files.test/d")


def test_the_node_itself_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="node itself"):
        fetch(serve(lambda r: httpx.Response(200)), "http://local.test/metrics")


@pytest.mark.parametrize(("status", "error"), [(404, FailedPrecondition), (503, Unavailable)])
def test_errors_say_whether_a_retry_can_help(status: int, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"HTTP {status}"):
        fetch(serve(lambda r: httpx.Response(status)), "http://files.test/d")
