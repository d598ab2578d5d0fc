"""HttpxRegistry: the OCI distribution API over httpx (the only module importing httpx).

HTTPS by default (the system CAs, or a CA bundle); plain HTTP only for registries listed as
insecure. Anonymous access first; on 401 the challenge decides: ``Bearer`` gets a token from
the realm (with basic credentials when the credentials file has some for the registry and
the realm is on the registry's own host or listed for it), ``Basic`` repeats the request with
them. A challenge from another origin after a redirect (a blob store) is not answered, and
nothing is sent to a plain-HTTP realm unless the registry is listed insecure. Tokens are kept
per registry and repository until a 401. The environment is not read (``trust_env=False``):
no proxies, no ``.netrc``.
"""

from __future__ import annotations

import base64
import contextlib
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence

import httpx

from agent.disks.auth import Challenge, Credentials, parse_challenge, token_params
from agent.disks.ports import FetchedManifest
from agent.errors import FailedPrecondition, Unavailable
from agent.imageref import ImageRef

__all__ = ["HttpxRegistry"]

_MAX_MANIFEST = 4 * 1024 * 1024
_MAX_TOKEN_RESPONSE = 1024 * 1024
_CHUNK = 1024 * 1024


class HttpxRegistry:
    """A RegistryClient (see ``agent.disks.ports``).

    Usage::

        client = HttpxRegistry(insecure=["192.0.2.1:5000"], credentials=Credentials())
        fetched = client.get_manifest(ref, ref.reference, ACCEPT)
        client.get_blob(ref, digest, out.write)
    """

    def __init__(
        self,
        *,
        insecure: Sequence[str] = (),
        ca_bundle: str = "",
        credentials: Credentials | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.insecure = set(insecure)
        self.credentials = credentials or Credentials()
        verify: ssl.SSLContext | bool = True
        if ca_bundle:
            verify = ssl.create_default_context(cafile=ca_bundle)
        self._client = httpx.Client(
            verify=verify,
            timeout=httpx.Timeout(timeout, connect=10.0),
            follow_redirects=True,  # blob stores redirect; httpx drops Authorization off-host
            trust_env=False,
            transport=transport,
        )
        self._tokens: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._client.close()

    def _url(self, image: ImageRef, kind: str, reference: str) -> str:
        scheme = "http" if image.registry in self.insecure else "https"
        return f"{scheme}://{image.api_host}/v2/{image.repository}/{kind}/{reference}"

    def get_manifest(
        self, image: ImageRef, reference: str, accept: Sequence[str]
    ) -> FetchedManifest:
        url = self._url(image, "manifests", reference)
        with self._open(image, url, {"Accept": ", ".join(accept)}, f"manifest {reference}") as r:
            body = _read_bounded(r, _MAX_MANIFEST, f"manifest {reference}")
            return FetchedManifest(
                body=body,
                content_type=r.headers.get("content-type", ""),
                digest_header=r.headers.get("docker-content-digest", ""),
            )

    def get_blob(self, image: ImageRef, digest: str, write: Callable[[bytes], None]) -> None:
        url = self._url(image, "blobs", digest)
        with self._open(image, url, {}, f"blob {digest}") as response:
            try:
                for chunk in response.iter_bytes(_CHUNK):
                    write(chunk)
            except httpx.HTTPError as exc:
                raise Unavailable(
                    f"registry {image.registry}: reading blob {digest}: {exc}"
                ) from exc

    @contextlib.contextmanager
    def _open(
        self, image: ImageRef, url: str, headers: dict[str, str], what: str
    ) -> Iterator[httpx.Response]:
        """A streamed GET answered 200, authenticating once on a 401."""
        key = (image.api_host, image.repository)
        for attempt in range(2):
            sent = dict(headers)
            with self._lock:
                token = self._tokens.get(key)
            if token:
                sent["Authorization"] = token
            try:
                with self._client.stream("GET", url, headers=sent) as response:
                    # A 401 from another origin (a redirect to a blob store) is that
                    # server's business: the registry's credentials are not for it.
                    same_origin = _origin(response.url) == _origin(httpx.URL(url))
                    if response.status_code == 401 and attempt == 0 and same_origin:
                        challenge = response.headers.get("www-authenticate", "")
                        response.read()
                        self._authenticate(image, challenge)
                        continue
                    _check(response, image, what)
                    yield response
                    return
            except httpx.HTTPError as exc:
                raise _transport_error(exc, f"registry {image.registry}: {what}") from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _authenticate(self, image: ImageRef, header: str) -> None:
        challenge = parse_challenge(header)
        creds = self.credentials.lookup(image.registry)
        key = (image.api_host, image.repository)
        if challenge.scheme == "basic":
            if creds is None:
                raise FailedPrecondition(
                    f"registry {image.registry} needs credentials and the credentials file "
                    "has none for it"
                )
            value = "Basic " + base64.b64encode(":".join(creds).encode()).decode()
        elif challenge.scheme == "bearer":
            value = f"Bearer {self._token(image, challenge, creds)}"
        else:
            raise FailedPrecondition(
                f"registry {image.registry} asks for {challenge.scheme or 'no'} authentication"
            )
        with self._lock:
            self._tokens[key] = value

    def _token(self, image: ImageRef, challenge: Challenge, creds: tuple[str, str] | None) -> str:
        try:
            realm, query = token_params(challenge, image.repository)
        except ValueError as exc:
            raise FailedPrecondition(f"registry {image.registry}: {exc}") from None
        where = httpx.URL(realm)
        if where.scheme != "https" and image.registry not in self.insecure:
            raise FailedPrecondition(
                f"registry {image.registry}: token realm {realm} is plain HTTP; nothing is "
                "sent there unless the registry is listed with --insecure-registry"
            )
        if creds is not None and not self.credentials.may_receive(
            image.registry, image.api_host, where.netloc.decode()
        ):
            creds = None  # ask for an anonymous token: the credentials stay with the registry
        try:
            with self._client.stream(
                "GET", realm, params=query, auth=httpx.BasicAuth(*creds) if creds else None
            ) as response:
                _check(response, image, "token")
                body = _read_bounded(response, _MAX_TOKEN_RESPONSE, "token")
        except httpx.HTTPError as exc:
            raise Unavailable(f"registry {image.registry}: token from {realm}: {exc}") from exc
        try:
            data = httpx.Response(200, content=body).json()
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise FailedPrecondition(f"registry {image.registry}: {realm} gave no token")
        return token


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _transport_error(exc: httpx.HTTPError, where: str) -> Exception:
    """Unavailable (retry), except for a certificate that will not become trusted by waiting."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return FailedPrecondition(
                f"{where}: the registry's TLS certificate is not trusted ({cause.verify_message});"
                " give its CA with --registry-ca"
            )
        cause = cause.__cause__ or cause.__context__
    return Unavailable(f"{where}: {exc}")


def _check(response: httpx.Response, image: ImageRef, what: str) -> None:
    status = response.status_code
    if status == 200:
        return
    response.read()
    detail = _error_detail(response)
    where = f"registry {image.registry}: {what} of {image.repository}"
    if status >= 500 or status == 429:
        raise Unavailable(f"{where}: HTTP {status}{detail}")
    if status in (401, 403):
        raise FailedPrecondition(f"{where}: access denied (HTTP {status}{detail})")
    if status == 404:
        raise FailedPrecondition(f"{where}: not found (HTTP 404{detail})")
    raise FailedPrecondition(f"{where}: HTTP {status}{detail}")


def _error_detail(response: httpx.Response) -> str:
    """The distribution spec's error codes, e.g. ``MANIFEST_UNKNOWN``."""
    try:
        errors = response.json().get("errors", [])
        codes = [str(e.get("code", "")) for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError):
        return ""
    return f", {', '.join(c for c in codes if c)}" if any(codes) else ""


def _read_bounded(response: httpx.Response, limit: int, what: str) -> bytes:
    data = bytearray()
    for chunk in response.iter_bytes(_CHUNK):
        data += chunk
        if len(data) > limit:
            raise FailedPrecondition(f"{what} is larger than {limit} bytes")
    return bytes(data)
