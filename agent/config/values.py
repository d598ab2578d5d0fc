"""Converting and checking one setting's value: each function raises ValueError saying why."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable

__all__ = [
    "each",
    "host_port",
    "ipv4",
    "not_negative",
    "one_of",
    "optional",
    "positive",
    "registry",
    "to_bool",
    "to_float",
    "to_int",
    "to_list",
    "to_str",
]

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_BOOLEANS = "true/false/1/0/yes/no/on/off"


def to_str(value: object) -> str:
    # YAML reads `1Gi` as text but `1073741824` as a number: say so rather than guess.
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text (quote it in YAML)")
    return value


def to_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not a whole number")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None


def to_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    # Only the usual spellings: anything else (a typo such as "ture") is an error, not False.
    text = str(value).lower() if isinstance(value, (str, int)) else ""
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"{value!r} is not one of {_BOOLEANS}")


def to_list(value: object) -> list[str]:
    if isinstance(value, str):  # environment variables: comma-separated
        return [item for item in value.split(",") if item]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError(f"{value!r} is not a list of text")


def one_of(allowed: tuple[str, ...]) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")

    return check


def each(check: Callable[[str], object]) -> Callable[[list[str]], None]:
    def check_all(values: list[str]) -> None:
        for value in values:
            check(value)

    return check_all


def not_negative(value: float) -> None:
    if value < 0:
        raise ValueError(f"{value} is negative")


def optional(check: Callable[[str], object]) -> Callable[[str], None]:
    """``check`` unless the value is empty (the setting's "not given")."""

    def check_given(value: str) -> None:
        if value:
            check(value)

    return check_given


def positive(value: int) -> None:
    if value < 1:
        raise ValueError(f"{value} is not 1 or more")


def ipv4(value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


def host_port(value: str) -> None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{value!r} is not host:port")


def registry(value: str) -> None:
    if not value or "/" in value or value != value.strip():
        raise ValueError(f"{value!r} is not host[:port]")
