"""Who may call what: client identities → roles and namespaces (the ``--authz-config`` rules).

Pure rules, no gRPC: a caller is known by the names of its verified certificate
(``DNS:…``, ``URI:…``, ``IP:…``, ``CN:…``); every rule whose ``identity`` glob matches one of
them grants its role within its namespaces. A caller matching no rule may call nothing.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import InvalidSpec

__all__ = [
    "ALL_NAMESPACES",
    "CONTROL_PLANE_EVERYWHERE",
    "Grant",
    "Policy",
    "Role",
    "Rule",
    "parse_policy",
]

ALL_NAMESPACES = ("*",)
_VM = "/virtagent.v1.VirtualMachineService/"
_ALWAYS = ("/grpc.health.v1.Health/",)  # any caller a rule knows may ask for health
_NAME_KINDS = ("DNS:", "URI:", "IP:", "CN:")


class Role(enum.Enum):
    """What a caller may do; the namespaces a rule names bound it further."""

    CONTROL_PLANE = "control-plane"  # every call of the agent's services
    PEER = "peer"  # another agent: the migration calls, nothing else
    READER = "reader"  # reads: get, list, watch, node facts, console log


# Method prefixes (a service ends with "/") each role may call.
_ROLE_METHODS: dict[Role, tuple[str, ...]] = {
    Role.CONTROL_PLANE: (
        _VM,
        "/virtagent.v1.NodeService/",
        "/virtagent.v1.MigrationService/",
        "/grpc.reflection.v1alpha.ServerReflection/",
        "/grpc.reflection.v1.ServerReflection/",
    ),
    Role.PEER: ("/virtagent.v1.MigrationService/",),
    Role.READER: (
        _VM + "GetVirtualMachine",
        _VM + "ListVirtualMachines",
        _VM + "WatchVirtualMachines",
        _VM + "GetConsoleLog",
        "/virtagent.v1.NodeService/GetNode",
    ),
}


def _method_allowed(role: Role, method: str) -> bool:
    return any(
        method.startswith(prefix) if prefix.endswith("/") else method == prefix
        for prefix in _ROLE_METHODS[role] + _ALWAYS
    )


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``rules:`` entry: callers whose names match ``identity`` get ``role``."""

    identity: str
    role: Role
    namespaces: tuple[str, ...] = ALL_NAMESPACES

    def matches(self, names: Iterable[str]) -> bool:
        pattern = self.identity
        if pattern.startswith("DNS:"):
            pattern = "DNS:" + pattern[4:].lower()  # DNS names compare case-insensitively
        return any(fnmatch.fnmatchcase(name, pattern) for name in names)

    def covers(self, namespace: str) -> bool:
        return any(fnmatch.fnmatchcase(namespace, allowed) for allowed in self.namespaces)


@dataclass(frozen=True, slots=True)
class Grant:
    """The rules a caller matched: what it may call, in which namespaces."""

    identity: str  # the caller's names, for logs
    rules: tuple[Rule, ...]

    def allows(self, method: str, namespace: str | None) -> bool:
        """May the caller call ``method``; ``namespace`` None when the call names none."""
        return any(
            _method_allowed(rule.role, method) and (namespace is None or rule.covers(namespace))
            for rule in self.rules
        )


CONTROL_PLANE_EVERYWHERE = (Rule(identity="*", role=Role.CONTROL_PLANE),)


@dataclass(frozen=True, slots=True)
class Policy:
    """Every rule, in file order."""

    rules: tuple[Rule, ...]

    def grant(self, names: Sequence[str]) -> Grant:
        identity = ",".join(names) or "(no names)"
        return Grant(identity, tuple(rule for rule in self.rules if rule.matches(names)))


def parse_policy(document: Any) -> Policy:
    """The rules of a loaded YAML document; a wrong entry raises InvalidSpec naming it."""
    if not isinstance(document, Mapping) or not isinstance(document.get("rules"), list):
        raise InvalidSpec("rules", "the file must be a mapping with a list under 'rules'")
    return Policy(tuple(_rule(f"rules[{i}]", item) for i, item in enumerate(document["rules"])))


def _rule(where: str, item: Any) -> Rule:
    if not isinstance(item, Mapping):
        raise InvalidSpec(where, "must be a mapping with identity, role and namespaces")
    unknown = set(item) - {"identity", "role", "namespaces"}
    if unknown:
        raise InvalidSpec(f"{where}.{sorted(unknown)[0]}", "unknown key")
    identity = item.get("identity")
    if not isinstance(identity, str) or not identity.startswith(_NAME_KINDS):
        raise InvalidSpec(
            f"{where}.identity", "must be a string starting with DNS:, URI:, IP: or CN:"
        )
    try:
        role = Role(item.get("role"))
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise InvalidSpec(f"{where}.role", f"must be one of {choices}") from None
    namespaces = item.get("namespaces", list(ALL_NAMESPACES))
    if (
        not isinstance(namespaces, list)
        or not namespaces
        or not all(isinstance(n, str) and n for n in namespaces)
    ):
        raise InvalidSpec(f"{where}.namespaces", "must be a non-empty list of namespace names")
    return Rule(identity=identity, role=role, namespaces=tuple(namespaces))
