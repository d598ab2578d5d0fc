"""Bounds on every client-sized part of a VM spec: each one is memory the agent keeps (the
registry, watch buffers, domain metadata), so none is unbounded."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from agent.errors import InvalidSpec
from agent.models import CPU, VMSpec
from agent.quantity import format_bytes, parse_cpu_quantity, parse_quantity

__all__ = [
    "MAX_DISKS",
    "MAX_INPUTS",
    "MAX_INTERFACES",
    "MAX_KERNEL_ARGS",
    "MAX_LABELS",
    "MAX_PORTS",
    "MAX_USER_DATA_BYTES",
    "check_capacity",
    "check_labels",
]

MAX_LABELS = 64
MAX_DISKS = 64  # disks, and volumes
MAX_INTERFACES = 16  # interfaces, and networks
MAX_PORTS = 64  # published ports of one interface
MAX_INPUTS = 8  # tablets, keyboards...
MAX_USER_DATA_BYTES = 64 * 1024  # cloud-init userData and networkData, each (decoded)
MAX_KERNEL_ARGS = 4096

# Kubernetes' label syntax: an optional DNS-subdomain prefix (<= 253) and a name (<= 63);
# values are at most 63 characters of the same alphabet as names, or empty.
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_PREFIX = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def check_labels(labels: Mapping[str, object], field: str = "metadata.labels") -> None:
    """Raise InvalidSpec naming the label at fault (or the map, when there are too many)."""
    if len(labels) > MAX_LABELS:
        raise InvalidSpec(field, f"has {len(labels)} labels; at most {MAX_LABELS} are allowed")
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        # The field is the map: a key may hold any character, a field path may not.
        if not _NAME.match(name) or (prefix and not _PREFIX.match(prefix)):
            raise InvalidSpec(
                field,
                f"{key[:80]!r} is not a label key (an optional DNS prefix and '/', then at "
                "most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric)",
            )
        if not isinstance(value, str):
            raise InvalidSpec(f"{field}.{key}", "must be a string")
        if value and not _NAME.match(value):
            raise InvalidSpec(
                field,
                f"the value of {key!r}, {value[:80]!r}, is not a label value (at most 63 "
                "letters, digits, '-', '_' or '.', starting and ending alphanumeric)",
            )


def check_capacity(spec: VMSpec, cpus: int, memory_bytes: int) -> None:
    """Refuse a VM that asks for more vCPUs or memory than the node has, naming the field."""
    domain = "spec.template.spec.domain"
    if spec.memory_bytes > memory_bytes:
        from_requests = spec.resource_requests.get("memory")
        field = "resources.requests.memory" if from_requests else "memory.guest"
        if from_requests and parse_quantity(from_requests) != spec.memory_bytes:
            field = "memory.guest"
        raise InvalidSpec(
            f"{domain}.{field}",
            f"{format_bytes(spec.memory_bytes)} is more than this node has "
            f"({format_bytes(memory_bytes)})",
        )
    if spec.cpu.vcpus > cpus:
        sized_by = spec.resource_limits.get("cpu") or spec.resource_requests.get("cpu")
        which = "limits" if "cpu" in spec.resource_limits else "requests"
        field = f"resources.{which}.cpu" if sized_by and spec.cpu == _sized(sized_by) else "cpu"
        raise InvalidSpec(
            f"{domain}.{field}", f"{spec.cpu.vcpus} vCPUs is more than this node has ({cpus})"
        )


def _sized(quantity: str) -> CPU:
    return CPU(sockets=max(1, math.ceil(parse_cpu_quantity(quantity))))
