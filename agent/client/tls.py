"""TLSOptions: the files of a client's TLS (or mutual TLS) channel to an agent."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["TLSOptions"]


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """Files for a TLS (or, with a client certificate, mutual TLS) channel.

    ``ca_file`` verifies the agent (system roots when None); ``cert_file`` and ``key_file``
    identify the client; ``server_name`` overrides the name checked in the agent's
    certificate (for an agent reached by IP address).
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Read the files and build channel credentials; OSError/ValueError when unusable."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )

    def channel_options(self) -> list[tuple[str, str]]:
        if not self.server_name:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None
