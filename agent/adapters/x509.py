"""Names in an X.509 certificate (subject CNs and SANs), read with ``cryptography``."""

from __future__ import annotations

import functools

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = ["certificate_names"]


@functools.lru_cache(maxsize=256)  # one parse per client certificate, not per call
def certificate_names(pem: bytes) -> tuple[str, ...]:
    """``DNS:…``, ``URI:…``, ``IP:…`` for each SAN, then ``CN:…`` for each subject CN.

    The kind prefix keeps a CN spelled like a SAN (``CN=DNS:control-plane``) from ever
    matching a SAN rule. An unreadable certificate has no names.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return ()
    names: list[str] = []
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    names += [f"DNS:{value.lower()}" for value in sans.get_values_for_type(x509.DNSName)]
    names += [f"URI:{value}" for value in sans.get_values_for_type(x509.UniformResourceIdentifier)]
    names += [f"IP:{value}" for value in sans.get_values_for_type(x509.IPAddress)]
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        names.append(f"CN:{value.decode() if isinstance(value, bytes) else value}")
    return tuple(names)
