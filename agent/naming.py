"""How VMs are named on the node: libvirt domain names, ``namespace/name`` keys, the agent's
XML namespace. The bottom of the import graph: every layer may use it."""

from __future__ import annotations

import re

__all__ = [
    "DNS1123_LABEL",
    "DNS1123_SUBDOMAIN",
    "METADATA_KEY",
    "METADATA_URI",
    "domain_name",
    "parse_domain_name",
    "vm_key",
]

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Most Kubernetes object names (claims, DataVolumes): labels joined by dots, at most 253.
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# The XML namespace of the agent's element in a domain's <metadata> (and its usual prefix).
METADATA_URI = "https://virt-agent.io/xmlns/vm/v1"
METADATA_KEY = "va"


def domain_name(namespace: str, name: str) -> str:
    """The libvirt domain name of a VM; '_' cannot occur in DNS-1123 labels, so it splits back."""
    return f"{namespace}_{name}"


def vm_key(domain: str) -> str:
    """``namespace/name`` of a domain name: how people name a VM in messages."""
    namespace, _, name = domain.partition("_")
    return f"{namespace}/{name}"


def parse_domain_name(text: str) -> tuple[str, str] | None:
    """``(namespace, name)`` of a domain named by ``domain_name``; None for any other name."""
    namespace, sep, name = text.partition("_")
    if not sep or not all(len(p) <= 63 and DNS1123_LABEL.match(p) for p in (namespace, name)):
        return None
    return namespace, name
