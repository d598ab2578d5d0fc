"""HttpxDownloader: DataVolume images over HTTP(S) through httpx (a Downloader, see
``agent.disks.ports``).

The system CAs verify HTTPS; the environment is not read (no proxies, no ``.netrc``).
Redirects are followed by hand, at most five, so that every hop is checked: a VM's owner
must not read the node's own services, its neighbours or a cloud metadata service into a
disk. Each hop's name is resolved once, every address checked (an IPv4-mapped IPv6 address
as the IPv4 one), and the connection made to the checked address (the name goes in the
Host header and TLS SNI), so a name that resolves differently a moment later changes
nothing. Refused: unspecified and multicast addresses, the node's own (loopback, or any
address the kernel routes to the node itself), and any other non-public address unless it
is in an ``allow`` network (``--import-allow-cidr``). The body is asked for and taken
without content encoding (no decompression of unbounded size), and the whole download,
redirects included, has a deadline (``--pull-timeout``).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from urllib.parse import urljoin, urlsplit

import httpx

from agent.errors import DeadlineExceeded, FailedPrecondition, Unavailable

__all__ = ["HttpxDownloader", "is_own_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_MAX_REDIRECTS = 5
_CONNECT_TIMEOUT = 10.0


class HttpxDownloader:
    """Streams a URL's body to a writer.

    Usage::

        downloader = HttpxDownloader(deadline=1800, allow=["192.168.10.0/24"])
        downloader.download("https://example.org/disk.qcow2", out.write, progress=show)

    ``timeout`` bounds each read, ``deadline`` the whole download (seconds).
    """

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        deadline: float = 1800.0,
        allow: Sequence[str] = (),
        resolve: Callable[[str], list[str]] | None = None,
        own_address: Callable[[IPAddress], bool] | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = httpx.Client(
            follow_redirects=False,
            trust_env=False,
            transport=transport,
            headers={"accept-encoding": "identity"},
            # A pooled connection is keyed by address: never reuse one across names (SNI).
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self._timeout = timeout
        self._deadline = deadline
        self._allow = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allow)
        self._resolve = resolve or _addresses
        self._own_address = own_address or is_own_address
        self._clock = clock

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
        deadline = self._clock() + self._deadline
        for _ in range(_MAX_REDIRECTS + 1):
            request = self._request(url, self._checked_address(url), deadline)
            try:
                response = self._client.send(request, auth=auth, stream=True)
                try:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        auth = None  # credentials go to the URL written, not elsewhere
                        continue
                    _check_answer(response, url)
                    self._stream(response, url, write, progress, deadline)
                    return
                finally:
                    response.close()
            except httpx.HTTPError as exc:
                if self._clock() >= deadline:
                    raise self._late(url) from exc
                raise Unavailable(f"downloading {url}: {exc}") from exc
        raise FailedPrecondition(f"downloading {url}: more than {_MAX_REDIRECTS} redirects")

    def _request(self, url: str, address: str, deadline: float) -> httpx.Request:
        """A request to ``address`` for ``url``: the URL's name in Host and SNI."""
        left = deadline - self._clock()
        if left <= 0:
            raise self._late(url)
        original = httpx.URL(url)
        timeout = httpx.Timeout(min(self._timeout, left), connect=min(_CONNECT_TIMEOUT, left))
        return self._client.build_request(
            "GET",
            original.copy_with(host=address),
            headers={"host": original.netloc.decode("ascii")},
            extensions={"sni_hostname": original.host},
            timeout=timeout,
        )

    def _stream(
        self,
        response: httpx.Response,
        url: str,
        write: Callable[[bytes], None],
        progress: Callable[[int, int], None] | None,
        deadline: float,
    ) -> None:
        total = int(response.headers.get("content-length") or 0)
        done = 0
        for chunk in response.iter_bytes():  # each network read: the deadline is checked often
            if self._clock() >= deadline:
                raise self._late(url)
            write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        if progress is not None:
            progress(done, max(total, done))

    def _late(self, url: str) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"downloading {url}: not done within {self._deadline:.0f}s (--pull-timeout)"
        )

    def _checked_address(self, url: str) -> str:
        """The address to connect to for ``url``, once every address of its host passed."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FailedPrecondition(f"{url}: only http and https URLs are downloaded")
        if parts.username is not None or parts.password is not None:
            raise FailedPrecondition(
                f"{parts.scheme}://{parts.hostname}: credentials in the URL are refused "
                "(use secretRef)"
            )
        host = parts.hostname
        addresses = [_normal(a) for a in _literal(host) or self._resolve(host)]
        if not addresses:
            raise Unavailable(f"cannot resolve {host}: no address")
        for ip in addresses:
            problem = self._refusal(ip)
            if problem:
                raise FailedPrecondition(f"{url}: {host} is {ip}, {problem}: refused")
        return str(addresses[0])

    def _refusal(self, ip: IPAddress) -> str:
        if ip.is_unspecified or ip.is_multicast:
            return "an unspecified or multicast address"
        if self._own_address(ip):
            return "an address of the node itself"
        if any(ip in network for network in self._allow):
            return ""
        if ip.is_link_local:
            return "link-local (cloud metadata services)"
        if not ip.is_global:
            return "not a public address (allow its network with --import-allow-cidr)"
        return ""


def is_own_address(ip: IPAddress) -> bool:
    """Whether the kernel delivers traffic for ``ip`` to this node: loopback, or the source
    address it would pick to reach ``ip`` is ``ip`` itself (a UDP connect sends nothing)."""
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((str(ip), 9))
            source = probe.getsockname()[0]
    except OSError:
        return False  # no route: not the node, and the download fails anyway
    return _normal(str(source)) == ip


def _check_answer(response: httpx.Response, url: str) -> None:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if response.status_code == 200 and encoding not in ("", "identity"):
        raise FailedPrecondition(
            f"downloading {url}: the server sent Content-Encoding {encoding!r} although "
            "asked for none: refused"
        )
    if response.status_code == 200:
        return
    problem = f"downloading {url}: HTTP {response.status_code}"
    if response.status_code >= 500 or response.status_code == 429:
        raise Unavailable(problem)
    raise FailedPrecondition(problem)


def _normal(address: str) -> IPAddress:
    """An address without IPv6 scope; an IPv4-mapped IPv6 address as its IPv4 address."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _literal(host: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host.split("%")[0]))]
    except ValueError:
        return []


def _addresses(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise Unavailable(f"cannot resolve {host}: {exc}") from exc
    return [str(info[4][0]) for info in infos]
