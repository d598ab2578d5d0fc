"""HttpxRegistry against a fake registry on httpx.MockTransport: auth flows and errors."""

from __future__ import annotations

import base64
import http.server
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agent.adapters.registry import HttpxRegistry
from agent.disks.auth import Credentials
from agent.disks.manifest import ACCEPT, digest_of
from agent.errors import FailedPrecondition, Unavailable
from agent.imageref import parse_reference

MANIFEST = b'{"schemaVersion": 2}'
BLOB = b"blob-bytes" * 1000
BLOB_DIGEST = digest_of(BLOB)
BASIC = "Basic " + base64.b64encode(b"alice:pw").decode()


@dataclass
class FakeServer:
    """Answers like a registry; ``auth`` is "", "bearer" or "basic"."""

    auth: str = ""
    status: int = 200
    realm: str = "https://auth.test/token"
    redirect: str = ""  # blobs: answered with a redirect to this URL
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/token":
            if request.headers.get("authorization") not in (None, BASIC):
                return httpx.Response(401)
            return httpx.Response(200, json={"token": "tok-123"})
        if request.url.host == "blobs.elsewhere.test":  # a blob store asking for a login
            challenge = 'Bearer realm="https://blobs.elsewhere.test/token",service="x"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if self.auth == "bearer" and request.headers.get("authorization") != "Bearer tok-123":
            challenge = (f'Bearer realm="{self.realm}",service="reg.test",'
                         'scope="repository:disks/guest:pull"')  # fmt: skip
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if self.redirect and "/blobs/" in request.url.path:
            return httpx.Response(307, headers={"Location": self.redirect})
        if self.auth == "basic" and request.headers.get("authorization") != BASIC:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        if self.status != 200:
            return httpx.Response(self.status, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        if "/manifests/" in request.url.path:
            return httpx.Response(
                200,
                content=MANIFEST,
                headers={"Content-Type": ACCEPT[0], "Docker-Content-Digest": digest_of(MANIFEST)},
            )
        return httpx.Response(200, content=BLOB)


def client(server: Callable[[httpx.Request], httpx.Response], **kw: object) -> HttpxRegistry:
    return HttpxRegistry(transport=httpx.MockTransport(server), **kw)  # type: ignore[arg-type]


REF = parse_reference("reg.test/disks/guest:v1")


def test_anonymous_pull_over_https_with_accept_headers() -> None:
    server = FakeServer()
    fetched = client(server).get_manifest(REF, "v1", ACCEPT)
    assert fetched.body == MANIFEST and fetched.digest_header == digest_of(MANIFEST)
    chunks: list[bytes] = []
    client(server).get_blob(REF, BLOB_DIGEST, chunks.append)
    assert b"".join(chunks) == BLOB
    first = server.requests[0]
    assert str(first.url) == "https://reg.test/v2/disks/guest/manifests/v1"
    assert all(t in first.headers["accept"] for t in ACCEPT)


def test_insecure_registries_use_plain_http() -> None:
    server = FakeServer()
    ref = parse_reference("192.0.2.1:5000/disks/guest:v1")
    client(server, insecure=["192.0.2.1:5000"]).get_manifest(ref, "v1", ACCEPT)
    assert str(server.requests[0].url) == "http://192.0.2.1:5000/v2/disks/guest/manifests/v1"


CREDS = Credentials({"reg.test": ("alice", "pw")}, realms={"reg.test": ("auth.test",)})


def test_bearer_token_flow_with_credentials_and_token_reuse() -> None:
    server = FakeServer(auth="bearer")
    registry = client(server, credentials=CREDS)
    registry.get_manifest(REF, "v1", ACCEPT)
    registry.get_blob(REF, BLOB_DIGEST, lambda chunk: None)
    paths = [r.url.path for r in server.requests]
    assert paths == ["/v2/disks/guest/manifests/v1", "/token", "/v2/disks/guest/manifests/v1",
                     f"/v2/disks/guest/blobs/{BLOB_DIGEST}"]  # fmt: skip
    token_request = server.requests[1]
    assert token_request.url.params["scope"] == "repository:disks/guest:pull"
    assert token_request.url.params["service"] == "reg.test"
    assert token_request.headers["authorization"] == BASIC


def test_anonymous_bearer_tokens_need_no_credentials() -> None:
    server = FakeServer(auth="bearer")
    client(server).get_manifest(REF, "v1", ACCEPT)
    assert "authorization" not in server.requests[1].headers


def test_basic_auth_from_the_credentials_file() -> None:
    server = FakeServer(auth="basic")
    client(server, credentials=Credentials({"reg.test": ("alice", "pw")})).get_manifest(
        REF, "v1", ACCEPT
    )
    assert server.requests[-1].headers["authorization"] == BASIC
    with pytest.raises(FailedPrecondition, match="needs credentials"):
        client(FakeServer(auth="basic")).get_manifest(REF, "v1", ACCEPT)


def test_wrong_credentials_are_denied_not_retried_forever() -> None:
    server = FakeServer(auth="basic")
    registry = client(server, credentials=Credentials({"reg.test": ("alice", "wrong")}))
    with pytest.raises(FailedPrecondition, match="access denied"):
        registry.get_manifest(REF, "v1", ACCEPT)
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [(404, FailedPrecondition, "not found.*MANIFEST_UNKNOWN"), (403, FailedPrecondition, "denied"),
     (400, FailedPrecondition, "HTTP 400"), (503, Unavailable, "HTTP 503"),
     (429, Unavailable, "HTTP 429")],
)  # fmt: skip
def test_registry_answers_map_to_agent_errors(status: int, error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        client(FakeServer(status=status)).get_manifest(REF, "v1", ACCEPT)


def test_an_unreachable_registry_is_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(Unavailable, match="connection refused"):
        client(refuse).get_blob(REF, BLOB_DIGEST, lambda chunk: None)


def test_oversized_manifests_are_refused() -> None:
    def huge(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * (5 * 1024 * 1024))

    with pytest.raises(FailedPrecondition, match="larger than"):
        client(huge).get_manifest(REF, "v1", ACCEPT)


def test_errors_from_the_sink_are_not_disguised() -> None:
    def sink(chunk: bytes) -> None:
        raise ValueError("digest mismatch")

    with pytest.raises(ValueError, match="digest mismatch"):
        client(FakeServer()).get_blob(REF, BLOB_DIGEST, sink)


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate (the CA bundle)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(MANIFEST)))
            self.end_headers()
            self.wfile.write(MANIFEST)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_https_registries_are_verified_against_the_ca_bundle(
    tls_registry: tuple[str, Path],
) -> None:
    address, cert = tls_registry
    ref = parse_reference(f"{address}/disks/guest:v1")
    fetched = HttpxRegistry(ca_bundle=str(cert)).get_manifest(ref, "v1", ACCEPT)
    assert fetched.body == MANIFEST
    with pytest.raises(FailedPrecondition, match="not trusted.*--registry-ca"):
        HttpxRegistry().get_manifest(ref, "v1", ACCEPT)


# -- credentials stay with the registry --------------------------------------------------------


@pytest.mark.parametrize("realm", ["https://elsewhere.test/token", "https://auth.test.evil/token"])
def test_a_foreign_token_realm_gets_no_credentials(realm: str) -> None:
    server = FakeServer(auth="bearer", realm=realm)
    registry = client(server, credentials=Credentials({"reg.test": ("alice", "pw")}))
    registry.get_manifest(REF, "v1", ACCEPT)  # an anonymous token is still asked for
    token_request = server.requests[1]
    assert token_request.url.host != "reg.test"
    assert "authorization" not in token_request.headers


def test_a_realm_on_the_registrys_own_host_or_listed_gets_them() -> None:
    server = FakeServer(auth="bearer", realm="https://reg.test:8443/token")
    client(server, credentials=Credentials({"reg.test": ("alice", "pw")})).get_manifest(
        REF, "v1", ACCEPT
    )
    assert server.requests[1].headers["authorization"] == BASIC
    listed = FakeServer(auth="bearer")  # auth.test, listed for reg.test
    client(listed, credentials=CREDS).get_manifest(REF, "v1", ACCEPT)
    assert listed.requests[1].headers["authorization"] == BASIC


def test_credentials_never_go_over_plain_http_to_a_secure_registry() -> None:
    server = FakeServer(auth="bearer", realm="http://reg.test/token")
    registry = client(server, credentials=Credentials({"reg.test": ("alice", "pw")}))
    with pytest.raises(FailedPrecondition, match="plain HTTP"):
        registry.get_manifest(REF, "v1", ACCEPT)
    assert all(r.url.scheme == "https" for r in server.requests)
    insecure_ref = parse_reference("reg.test:5000/disks/guest:v1")
    plain = FakeServer(auth="bearer", realm="http://reg.test:5000/token")
    client(
        plain,
        insecure=["reg.test:5000"],
        credentials=Credentials({"reg.test:5000": ("alice", "pw")}),
    ).get_manifest(insecure_ref, "v1", ACCEPT)
    assert plain.requests[1].headers["authorization"] == BASIC  # listed insecure: allowed


def test_a_challenge_after_a_redirect_to_another_host_is_ignored() -> None:
    server = FakeServer(auth="bearer", redirect="https://blobs.elsewhere.test/b/1")
    registry = client(server, credentials=CREDS)
    with pytest.raises(FailedPrecondition, match="access denied"):
        registry.get_blob(REF, BLOB_DIGEST, lambda chunk: None)
    elsewhere = [r.url.path for r in server.requests if r.url.host == "blobs.elsewhere.test"]
    assert elsewhere == ["/b/1"]  # followed, but its challenge is not answered
