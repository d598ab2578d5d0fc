"""Kubernetes equality-based label selectors: "app=web,tier!=db,env,!legacy"."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from agent.errors import InvalidSpec

__all__ = ["Requirement", "matches_selector", "parse_selector"]

_KEY = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One term: key=value, key!=value, key (exists) or !key (absent)."""

    key: str
    operator: str  # "=", "!=", "exists", "absent"
    value: str = ""


def parse_selector(selector: str, field: str = "label_selector") -> list[Requirement]:
    requirements = []
    for term in (t.strip() for t in selector.split(",")):
        if not term:
            continue
        if "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            requirement = Requirement(key, "!=", value)
        elif "=" in term:
            key, value = (part.strip() for part in term.split("=", 1))
            requirement = Requirement(key, "=", value.lstrip("="))
        elif term.startswith("!"):
            requirement = Requirement(term[1:].strip(), "absent")
        else:
            requirement = Requirement(term, "exists")
        if not _KEY.match(requirement.key):
            raise InvalidSpec(field, f"{requirement.key!r} in {selector!r} is not a label key")
        requirements.append(requirement)
    return requirements


def matches_selector(labels: Mapping[str, str], requirements: list[Requirement]) -> bool:
    for req in requirements:
        present = req.key in labels
        if req.operator == "=" and labels.get(req.key) != req.value:
            return False
        if req.operator == "!=" and present and labels[req.key] == req.value:
            return False
        if req.operator == "exists" and not present:
            return False
        if req.operator == "absent" and present:
            return False
    return True
