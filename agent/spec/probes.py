"""Parsing and rendering of readinessProbe and livenessProbe (``agent.probe.Probe``)."""

from __future__ import annotations

from typing import Any

from agent.errors import InvalidSpec
from agent.probe import Probe
from agent.spec.reader import Node

__all__ = ["parse_probe", "render_probe"]

_NEEDS_GUEST_AGENT = "needs a guest agent, which virt-agent does not talk to yet"
_TIMES = {
    "initialDelaySeconds": ("initial_delay_seconds", 0, 0),
    "periodSeconds": ("period_seconds", 10, 1),
    "timeoutSeconds": ("timeout_seconds", 1, 1),
    "successThreshold": ("success_threshold", 1, 1),
    "failureThreshold": ("failure_threshold", 3, 1),
}
_MAX_SECONDS = 3600


def parse_probe(node: Node | None, *, liveness: bool) -> Probe | None:
    if node is None:
        return None
    for key in ("exec", "guestAgentPing"):
        if node.data.get(key) is not None:
            raise InvalidSpec(node.at(key), _NEEDS_GUEST_AGENT)
    node.allowed.update({"exec", "guestAgentPing"})
    tcp, http = node.child("tcpSocket"), node.child("httpGet")
    if (tcp is None) == (http is None):
        raise InvalidSpec(node.path, "needs exactly one of tcpSocket, httpGet")
    action = tcp or http
    assert action is not None
    port = action.get("port", int, 0)
    if not 1 <= port <= 65535:
        raise InvalidSpec(action.at("port"), "must be between 1 and 65535")
    if action.get("host", str, ""):
        raise InvalidSpec(action.at("host"), "must be empty: the guest's own address is probed")
    path = _http_path(http) if http is not None else "/"
    action.done()
    times: dict[str, int] = {}
    for key, (name, default, low) in _TIMES.items():
        times[name] = node.get(key, int, 0) or default
        if not low <= times[name] <= _MAX_SECONDS:
            raise InvalidSpec(node.at(key), f"must be between {low} and {_MAX_SECONDS}")
    if liveness and times["success_threshold"] != 1:
        raise InvalidSpec(node.at("successThreshold"), "must be 1 for a liveness probe")
    node.done()
    return Probe("tcpSocket" if tcp is not None else "httpGet", port, path, **times)


def _http_path(http: Node) -> str:
    path = http.get("path", str, "") or "/"
    if not path.startswith("/") or any(c.isspace() or ord(c) < 32 for c in path):
        raise InvalidSpec(http.at("path"), "must be an absolute path without spaces")
    if http.get("scheme", str, "HTTP") != "HTTP":
        raise InvalidSpec(http.at("scheme"), "only HTTP is probed")
    return path


def render_probe(probe: Probe) -> dict[str, Any]:
    action: dict[str, Any] = {"port": probe.port}
    if probe.action == "httpGet":
        action["path"] = probe.path
    return {
        probe.action: action,
        "initialDelaySeconds": probe.initial_delay_seconds,
        "periodSeconds": probe.period_seconds,
        "timeoutSeconds": probe.timeout_seconds,
        "successThreshold": probe.success_threshold,
        "failureThreshold": probe.failure_threshold,
    }
