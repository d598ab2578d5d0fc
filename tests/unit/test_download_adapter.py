"""HttpxDownloader: streams a body, follows redirects hop by hop, refuses the node itself and
non-public addresses, connects to the address it checked, has an overall deadline."""

from __future__ import annotations

import http.server
import ipaddress
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from agent.adapters.download import HttpxDownloader, is_own_address
from agent.errors import DeadlineExceeded, FailedPrecondition, Unavailable

ADDRESSES = {
    "files.test": ["192.0.2.10"],
    "local.test": ["127.0.0.1"],
    "meta.test": ["169.254.169.254"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "mapped-meta.test": ["::ffff:169.254.169.254"],
    "private.test": ["10.1.2.3"],
}


def serve(handler, **kwargs) -> HttpxDownloader:  # type: ignore[no-untyped-def]
    """A downloader answered by ``handler`` in-process; files.test's network is allowed."""
    return HttpxDownloader(
        resolve=lambda host: ADDRESSES[host],
        transport=httpx.MockTransport(handler),
        allow=["192.0.2.0/24"],
        **kwargs,
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


def test_the_checked_address_is_connected_to_with_the_name_in_host_and_sni() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"ok")

    fetch(serve(handler), "https://files.test:8443/d")
    assert str(seen[0].url) == "https://192.0.2.10:8443/d"
    assert seen[0].headers["host"] == "files.test:8443"
    assert seen[0].extensions["sni_hostname"] == "files.test"
    assert seen[0].headers["accept-encoding"] == "identity"


def test_redirects_are_followed_and_each_hop_checked() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["host"] == "files.test":
            return httpx.Response(302, headers={"location": "http://meta.test/latest"})
        return httpx.Response(200, content=b"secret")

    with pytest.raises(FailedPrecondition, match="link-local"):
        fetch(serve(handler), "http://files.test/d")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://local.test/metrics", "node itself"),
        ("http://mapped.test/metrics", "node itself"),
        ("http://[::ffff:127.0.0.1]:9100/metrics", "node itself"),
        ("http://[::1]/metrics", "node itself"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://mapped-meta.test/latest", "link-local"),
        ("http://[::ffff:169.254.169.254]/latest", "link-local"),
        ("http://private.test/d", "not a public address"),
        ("http://[fd00::1]/d", "not a public address"),
    ],
)
def test_the_node_metadata_and_private_addresses_are_refused(url: str, words: str) -> None:
    asked: list[httpx.Request] = []
    downloader = serve(lambda r: asked.append(r) or httpx.Response(200))  # type: ignore[func-returns-value]
    with pytest.raises(FailedPrecondition, match=words):
        fetch(downloader, url)
    assert asked == []


def test_an_allowed_network_opens_private_addresses_but_never_the_node() -> None:
    downloader = HttpxDownloader(
        resolve=lambda host: ADDRESSES[host],
        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=b"mirror")),
        allow=["10.0.0.0/8", "127.0.0.0/8"],
    )
    assert fetch(downloader, "http://private.test/d")[0] == b"mirror"
    with pytest.raises(FailedPrecondition, match="node itself"):
        fetch(downloader, "http://local.test/d")


def test_the_node_s_own_addresses_are_found_by_the_kernel() -> None:
    assert is_own_address(ipaddress.ip_address("127.0.0.1"))
    assert is_own_address(ipaddress.ip_address("::1"))
    assert not is_own_address(ipaddress.ip_address("192.0.2.10"))


def test_credentials_in_the_url_are_refused_without_repeating_them() -> None:
    with pytest.raises(FailedPrecondition, match="secretRef") as caught:
        fetch(serve(lambda r: httpx.Response(200)), "http://me:hunter2@files.test/d")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(("status", "error"), [(404, FailedPrecondition), (503, Unavailable)])
def test_errors_say_whether_a_retry_can_help(status: int, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"HTTP {status}"):
        fetch(serve(lambda r: httpx.Response(status)), "http://files.test/d")


# -- against a real server on loopback -------------------------------------------------------

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


@pytest.fixture
def loopback() -> Iterator[Callable[[Handler], int]]:
    """Starts a loopback HTTP server answering with a function; returns its port."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(answer: Handler) -> int:
        class Answer(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                answer(self)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def on_loopback(resolve: Callable[[str], list[str]], **kwargs: float) -> HttpxDownloader:
    """A downloader that may reach loopback: the node-itself check is what is left out."""
    return HttpxDownloader(
        resolve=resolve, allow=["127.0.0.0/8"], own_address=lambda ip: False, **kwargs
    )


def test_a_name_resolving_elsewhere_later_changes_nothing(loopback) -> None:  # type: ignore[no-untyped-def]
    hosts: list[str] = []

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        hosts.append(handler.headers["host"])
        handler.send_response(200)
        handler.send_header("content-length", "4")
        handler.end_headers()
        handler.wfile.write(b"disk")

    port = loopback(answer)
    answers = iter([["127.0.0.1"], ["169.254.169.254"]])  # a rebinding name
    data, _ = fetch(on_loopback(lambda host: next(answers)), f"http://rebind.test:{port}/d")
    assert data == b"disk"
    assert hosts == [f"rebind.test:{port}"]  # the checked address got the name's request


def test_a_trickling_server_meets_the_deadline(loopback) -> None:  # type: ignore[no-untyped-def]
    stop = threading.Event()

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("content-length", "1000000")
        handler.end_headers()
        while not stop.wait(0.2):  # a byte now and then, each read well within its timeout
            handler.wfile.write(b"x")
            handler.wfile.flush()

    port = loopback(answer)
    downloader = on_loopback(lambda host: ["127.0.0.1"], deadline=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(DeadlineExceeded, match=rf"slow.test:{port}/d.*1s \(--pull-timeout\)"):
            fetch(downloader, f"http://slow.test:{port}/d")
    finally:
        stop.set()
    assert time.monotonic() - started < 30  # not the per-read timeout's minute, nor forever


def test_a_forced_content_encoding_is_refused(loopback) -> None:  # type: ignore[no-untyped-def]
    asked: list[str] = []

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        asked.append(handler.headers.get("accept-encoding", ""))
        handler.send_response(200)
        handler.send_header("content-encoding", "gzip")
        handler.send_header("content-length", "3")
        handler.end_headers()
        handler.wfile.write(b"\x1f\x8b\x08")

    port = loopback(answer)
    with pytest.raises(FailedPrecondition, match="Content-Encoding 'gzip'"):
        fetch(on_loopback(lambda host: ["127.0.0.1"]), f"http://files.test:{port}/d")
    assert asked == ["identity"]
