"""MetricsServer: /metrics (Prometheus text, or OpenMetrics when the Accept header asks for
it), /healthz (the process answers) and /readyz (the gRPC health's SERVING) over HTTP(S).

TLS uses the agent's certificate; with a client CA, a client must present a certificate
that chains to it. Requests run on their own threads, so a slow scrape never holds up a
probe; the scrape itself is bounded by the collector.
"""

from __future__ import annotations

import gzip
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from agent.metrics.exposition import Endpoint

__all__ = ["MetricsServer", "server_ssl_context"]

log = logging.getLogger(__name__)

_HANDSHAKE_TIMEOUT = 10.0
StartResponse = Callable[..., Any]


def server_ssl_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """TLS 1.2+ with the agent's certificate; with ``client_ca``, client certificates are
    required and must chain to it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Handler(WSGIRequestHandler):
    timeout = _HANDSHAKE_TIMEOUT  # a client that connects and says nothing is dropped

    def handle(self) -> None:
        try:
            if isinstance(self.connection, ssl.SSLSocket):
                # Here, on the request's thread: a slow or bad TLS client never stalls accept().
                self.connection.do_handshake()
            super().handle()
        except (ssl.SSLError, OSError) as exc:
            log.debug("metrics: %s: %s", self.client_address, exc)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: request from %s failed", client_address, exc_info=True)


class _Server6(_ThreadingServer):
    address_family = socket.AF_INET6


def _metrics(
    endpoint: Endpoint, environ: dict[str, Any], start_response: StartResponse
) -> list[bytes]:
    body, content_type = endpoint.render(environ.get("HTTP_ACCEPT", ""))
    headers = [("Content-Type", content_type)]
    if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
        body = gzip.compress(body, compresslevel=1)  # Prometheus asks for it; level 1 is cheap
        headers.append(("Content-Encoding", "gzip"))
    start_response("200 OK", headers)
    return [body]


def _app(endpoint: Endpoint, ready: Callable[[], bool]) -> Callable[..., Iterable[bytes]]:
    def text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [body.encode()]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return _metrics(endpoint, environ, start_response)
        if path == "/healthz":
            return text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            if ready():
                return text(start_response, "200 OK", "ok\n")
            return text(
                start_response,
                "503 Service Unavailable",
                "not ready: libvirt is not connected or the VM state is not rebuilt yet\n",
            )
        return text(start_response, "404 Not Found", "not found: try /metrics, /healthz, /readyz\n")

    return app


class MetricsServer:
    """Serves ``endpoint`` on ``host:port`` (port 0 picks one) until ``stop()``."""

    def __init__(
        self,
        endpoint: Endpoint,
        address: str,
        *,
        ready: Callable[[], bool],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        server_class = _Server6 if ":" in host else _ThreadingServer
        self._server = make_server(
            host, int(port), _app(endpoint, ready), server_class, handler_class=_Handler
        )
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.tls = ssl_context is not None
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("serving metrics on port %d (%s)", self.port, "https" if self.tls else "http")

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
