"""Server TLS whose key pair and client CA are read again from disk when they change."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import grpc

__all__ = ["TlsFiles", "reloading_credentials"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the server's certificate, its key and the client CA (empty: no mTLS) live."""

    cert: str
    key: str
    client_ca: str = ""

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        with open(self.cert, "rb") as cert, open(self.key, "rb") as key:
            pair = cert.read(), key.read()
        if not self.client_ca:
            return pair[0], pair[1], None
        with open(self.client_ca, "rb") as ca:
            return pair[0], pair[1], ca.read()


class _Reloader:
    """grpc's fetch callback: asked at every handshake, answers only when the files changed.

    Reading three small files per new connection is cheap (connections are long-lived) and
    catches every replacement, including a Secret update that swaps symlinks. A half-written
    or mismatched pair is grpc's to refuse; until it loads, grpc keeps serving the old one.
    """

    def __init__(self, files: TlsFiles, current: tuple[bytes, bytes, bytes | None]) -> None:
        self.files = files
        self.current = current
        self._lock = threading.Lock()

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            found = self.files.read()
        except OSError as exc:
            log.error("TLS files not reloaded, serving the previous ones: %s", exc)
            return None
        with self._lock:
            if found == self.current:
                return None
            self.current = found
        log.info("TLS certificate reloaded", extra={"cert": self.files.cert})
        return _configuration(found)


def _configuration(
    material: tuple[bytes, bytes, bytes | None],
) -> grpc.ServerCertificateConfiguration:
    cert, key, client_ca = material
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


def reloading_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials serving the files as they are now, and as they are at each later handshake."""
    initial = files.read()
    return grpc.dynamic_ssl_server_credentials(
        _configuration(initial),
        _Reloader(files, initial),
        require_client_authentication=bool(files.client_ca),
    )
