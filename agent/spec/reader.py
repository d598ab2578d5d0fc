"""Reading KubeVirt-shaped dicts at a known path: typed fields, one-ofs, unknown keys refused."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from agent.errors import InvalidSpec
from agent.naming import DNS1123_LABEL
from agent.quantity import parse_quantity

__all__ = [
    "Node",
    "check_text",
    "choice",
    "one_of",
    "quantity",
    "relative_path",
    "validate_name",
]

T = TypeVar("T")

# Characters XML 1.0 cannot carry: spec text ends up in the domain XML and its metadata.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
MAX_TEXT = 4096  # any text field, unless it says otherwise


def check_text(field: str, value: str, max_length: int = MAX_TEXT) -> str:
    """Refuse text longer than ``max_length``, control characters (other than tab and
    newlines) and non-characters."""
    if len(value) > max_length:
        raise InvalidSpec(field, f"is longer than {max_length} characters")
    bad = _NOT_XML.search(value)
    if bad is not None:
        raise InvalidSpec(field, f"must not hold the character U+{ord(bad.group()):04X}")
    return value


def validate_name(field: str, value: str) -> str:
    """Check a Kubernetes object name (DNS-1123 label, at most 63 characters)."""
    if not value:
        raise InvalidSpec(field, "is required")
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        raise InvalidSpec(
            field,
            f"{value!r} is not a DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)",
        )
    return value


class Node:
    """A dict being read at a known path; remembers which keys were used."""

    def __init__(self, path: str, data: Any) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise InvalidSpec(path, f"must be an object, not {type(data).__name__}")
        self.path = path
        self.data: Mapping[str, Any] = data
        self.allowed: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type[T], default: T, *, max_length: int = MAX_TEXT) -> T:
        """The value at ``key`` of type ``kind``; text is at most ``max_length`` characters
        of what XML can carry (every spec ends up in the domain XML's metadata)."""
        self.allowed.add(key)
        value = self.data.get(key)
        if value is None:
            return default
        if kind is int and isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,19}", value):
            value = int(value)  # the protobuf JSON mapping writes int64 as a string
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise InvalidSpec(self.at(key), f"must be {kind.__name__}, not {str(value)[:40]!r}")
        if isinstance(value, str):
            check_text(self.at(key), value, max_length)
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise InvalidSpec(self.at(key), "is out of range")
        return value

    def child(self, key: str) -> Node | None:
        self.allowed.add(key)
        if key not in self.data:
            return None
        return Node(self.at(key), self.data[key])

    def items(self, key: str, limit: int) -> list[Node]:
        """The list at ``key``, of at most ``limit`` items."""
        self.allowed.add(key)
        value = self.data.get(key) or []
        if not isinstance(value, list):
            raise InvalidSpec(self.at(key), "must be a list")
        if len(value) > limit:
            raise InvalidSpec(self.at(key), f"has {len(value)} items; at most {limit} allowed")
        return [Node(f"{self.at(key)}[{i}]", item) for i, item in enumerate(value)]

    def done(self) -> None:
        """Reject every key that was not read: unsupported fields are errors, not no-ops."""
        for key in self.data:
            if key not in self.allowed:
                raise InvalidSpec(self.at(key), "is not supported by this agent")


def one_of(node: Node, choices: Mapping[str, Callable[[Node], T]]) -> T | None:
    present = [key for key in choices if key in node.data]
    node.allowed.update(choices)
    if len(present) > 1:
        raise InvalidSpec(node.path, f"set only one of {', '.join(present)}")
    if not present:
        return None
    child = node.child(present[0])
    assert child is not None
    result = choices[present[0]](child)
    child.done()
    return result


def quantity(node: Node, key: str) -> int | None:
    text = node.get(key, str, "")
    if not text:
        return None
    try:
        return parse_quantity(text)
    except ValueError as exc:
        raise InvalidSpec(node.at(key), str(exc)) from None


def choice(node: Node, key: str, allowed: tuple[str, ...], default: str) -> str:
    value = node.get(key, str, "") or default
    if value not in allowed:
        raise InvalidSpec(node.at(key), f"{value!r} is not one of {', '.join(allowed)}")
    return value


def relative_path(node: Node, key: str, *, required: bool = True) -> str:
    """A client path: no '..' and no NUL here; roots and symlinks are checked when the
    agent resolves it on the node (``agent.paths``)."""
    value = node.get(key, str, "")
    if not value:
        if required:
            raise InvalidSpec(node.at(key), "is required")
        return ""
    parts = value.split("/")
    if ".." in parts or "\x00" in value:
        raise InvalidSpec(node.at(key), f"{value!r} must not contain '..'")
    return value
