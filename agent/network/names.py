"""Deterministic names and addresses of a VM's links: tap names, aliases, MACs, groups.

Everything here is a pure function of stable inputs (domain name, interface name, namespace),
so a restarted agent, or the target node of a migration, derives the same names again.
"""

from __future__ import annotations

import hashlib
import re
import zlib

__all__ = [
    "ALIAS_PREFIX",
    "IFNAMSIZ",
    "TAP_PREFIX",
    "alias_owner",
    "gateway_mac",
    "guest_mac",
    "namespace_group",
    "tap_alias",
    "tap_name",
]

IFNAMSIZ = 15  # Linux interface names: 15 characters plus the NUL
TAP_PREFIX = "va"
# IFLA_IFALIAS of every link the agent makes: how reconcile tells its links from others.
ALIAS_PREFIX = "virt-agent:"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# Interface groups 0 (the kernel's default) up to this are left to others.
_GROUP_BASE = 0x10000
_GROUP_SPAN = 0x7FFFFFFF - _GROUP_BASE


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


def tap_name(domain: str, interface: str, attempt: int = 0) -> str:
    """``va`` + 12 hex digits of a hash of the domain and interface: 14 characters.

    ``attempt`` > 0 gives another name for the (astronomically rare) collision.
    """
    salt = (str(attempt),) if attempt else ()
    name = TAP_PREFIX + _digest("tap", domain, interface, *salt).hex()[:12]
    assert len(name) <= IFNAMSIZ
    return name


def tap_alias(domain: str, interface: str) -> str:
    """The IFLA_IFALIAS marking a tap as the agent's: ``virt-agent:<domain>/<interface>``."""
    return f"{ALIAS_PREFIX}{domain}/{interface}"


def alias_owner(alias: str) -> tuple[str, str] | None:
    """``(domain, interface)`` from a tap alias; None for links that are not the agent's."""
    if not alias.startswith(ALIAS_PREFIX):
        return None
    domain, sep, interface = alias[len(ALIAS_PREFIX) :].rpartition("/")
    if not sep or not domain or not interface:
        return None
    return domain, interface


def guest_mac(uid: str, interface: str, attempt: int = 0) -> str:
    """A MAC in QEMU's 52:54:00 block from the VM's uid and interface name."""
    salt = (str(attempt),) if attempt else ()
    tail = _digest("mac", uid, interface, *salt)[:3]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def gateway_mac(guest: str) -> str:
    """The host side of a tap: the guest's MAC with first octet fe (local, unicast).

    Derived from the guest's MAC, so it is the same on every node: after a migration the
    guest's ARP entry for its gateway stays right. fe also keeps the tap from lending its
    address to a bridge it joins (a bridge takes the lowest port MAC), as libvirt does.
    """
    if not _MAC.match(guest):
        raise ValueError(f"{guest!r} is not a MAC address")
    return "fe" + guest[2:]


def namespace_group(namespace: str, attempt: int = 0) -> int:
    """The interface group (``meta iifgroup``) shared by the taps of one VM namespace.

    Isolation compares the groups of the input and output taps, so each namespace needs its
    own number; ``attempt`` > 0 probes for another one on a collision.
    """
    return _GROUP_BASE + (zlib.crc32(namespace.encode()) + attempt) % _GROUP_SPAN
