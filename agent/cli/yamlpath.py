"""Reading KubeVirt YAML at a known path: the error that names it, and typed accessors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "UNSUPPORTED",
    "ManifestError",
    "boolean",
    "join",
    "kind_of",
    "mapping",
    "only",
    "string",
]

UNSUPPORTED = "field is not supported by virt-agent"


class ManifestError(ValueError):
    """A manifest cannot be mapped; names the document (when several) and the YAML path."""

    def __init__(self, path: str, problem: str, *, document: int | None = None) -> None:
        where = f"{path}: " if path else ""
        prefix = f"document {document}: " if document is not None else ""
        super().__init__(f"{prefix}{where}{problem}")
        self.path = path
        self.problem = problem
        self.document = document


def string(value: Any, path: str) -> str:
    """A string; numbers are accepted and kept as written (quantities such as ``cpu: 2``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ManifestError(path, f"must be a string, not {kind_of(value)}")


def boolean(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ManifestError(path, f"must be true or false, not {kind_of(value)}")


def mapping(value: Any, path: str) -> Mapping[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ManifestError(path, f"must be a mapping, not {kind_of(value)}")
    return value


def only(node: Mapping[Any, Any], path: str, allowed: set[str] | frozenset[str]) -> None:
    for key in node:
        if key not in allowed:
            raise ManifestError(join(path, str(key)), UNSUPPORTED)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def kind_of(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return f"{name} ({value!r})" if kind in (str, bool) else name
    return f"{type(value).__name__} ({value!r})"
