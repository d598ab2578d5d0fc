"""HttpxDownloader: DataVolume images over HTTP(S) through httpx (a Downloader, see
``agent.disks.ports``).

The system CAs verify HTTPS; the environment is not read (no proxies, no ``.netrc``).
Redirects are followed by hand, at most five, so that every hop is checked: an address of
the node itself (loopback, unspecified) or link-local (cloud metadata services) is refused,
since a VM's owner could otherwise read the node's own services into a disk.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

import httpx

from agent.errors import FailedPrecondition, Unavailable

__all__ = ["HttpxDownloader"]

_CHUNK = 1024 * 1024
_MAX_REDIRECTS = 5


class HttpxDownloader:
    """Streams a URL's body to a writer.

    Usage::

        downloader = HttpxDownloader()
        downloader.download("https://example.org/disk.qcow2", out.write, progress=show)
    """

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        resolve: Callable[[str], list[str]] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )
        self._resolve = resolve or _addresses

    def close(self) -> None:
        self._client.close()

    def download(
        self,
        url: str,
        write: Callable[[bytes], None],
        *,
        auth: tuple[str, str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        for _ in range(_MAX_REDIRECTS + 1):
            self._check_host(url)
            try:
                with self._client.stream("GET", url, auth=auth) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        auth = None  # credentials go to the URL written, not elsewhere
                        continue
                    _check_status(response, url)
                    total = int(response.headers.get("content-length") or 0)
                    done = 0
                    for chunk in response.iter_bytes(_CHUNK):
                        write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
                    if progress is not None:
                        progress(done, max(total, done))
                    return
            except httpx.HTTPError as exc:
                raise Unavailable(f"downloading {url}: {exc}") from exc
        raise FailedPrecondition(f"downloading {url}: more than {_MAX_REDIRECTS} redirects")

    def _check_host(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FailedPrecondition(f"{url}: only http and https URLs are downloaded")
        for address in self._resolve(parts.hostname):
            ip = ipaddress.ip_address(address.split("%")[0])
            if ip.is_loopback or ip.is_unspecified or ip.is_link_local:
                raise FailedPrecondition(
                    f"{url}: {parts.hostname} is the node itself or link-local ({ip}): refused"
                )


def _check_status(response: httpx.Response, url: str) -> None:
    if response.status_code == 200:
        return
    problem = f"downloading {url}: HTTP {response.status_code}"
    if response.status_code >= 500 or response.status_code == 429:
        raise Unavailable(problem)
    raise FailedPrecondition(problem)


def _addresses(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise Unavailable(f"cannot resolve {host}: {exc}") from exc
    return [str(info[4][0]) for info in infos]
