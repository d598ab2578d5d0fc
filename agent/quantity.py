"""Kubernetes resource quantities ("256Mi", "1G", "1073741824") as byte counts."""

from __future__ import annotations

import decimal
import re

__all__ = ["format_bytes", "parse_cpu_quantity", "parse_quantity"]

_SUFFIXES = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}
_QUANTITY = re.compile(r"^([0-9]{1,30}(?:\.[0-9]{1,30})?)([kMGT]i?|Ki)?$")
_MAX_BYTES = 2**63 - 1  # what libvirt and the protobuf int64 fields can hold
_MAX_CPUS = 1_000_000


def parse_quantity(text: str) -> int:
    """Return the number of bytes in a quantity; raise ValueError naming what is wrong."""
    match = _QUANTITY.match(text.strip())
    if not match or (match.group(2) or "") not in _SUFFIXES:
        raise ValueError(f"{text[:40]!r} is not a quantity such as 512Mi, 1Gi or 1G")
    # Exact arithmetic: a float of a long number is inf, and int(inf) raises OverflowError.
    count = int(decimal.Decimal(match.group(1)) * _SUFFIXES[match.group(2) or ""])
    if count > _MAX_BYTES:
        raise ValueError(f"{text[:40]!r} is too large")
    return count


def format_bytes(count: int) -> str:
    """Render a byte count the way Kubernetes users write it (largest exact binary unit)."""
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        unit = _SUFFIXES[suffix]
        if count >= unit and count % unit == 0:
            return f"{count // unit}{suffix}"
    return str(count)


_CPU = re.compile(r"^([0-9]{1,30}(?:\.[0-9]{1,30})?)(m?)$")


def parse_cpu_quantity(text: str) -> float:
    """CPUs in a quantity such as "2", "1.5" or "500m"; raise ValueError when malformed."""
    match = _CPU.match(text.strip())
    if not match:
        raise ValueError(f"{text[:40]!r} is not a CPU quantity such as 2, 1.5 or 500m")
    value = float(match.group(1))
    value = value / 1000 if match.group(2) else value
    if value > _MAX_CPUS:
        raise ValueError(f"{text[:40]!r} is too large")
    return value
