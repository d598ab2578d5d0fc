"""The agent's error tree; every boundary translates into or out of these, once.

    AgentError
    ├── InvalidSpec          a request is wrong whatever the state (names the field at fault)
    ├── NotFound             the VM (or other object) does not exist
    ├── AlreadyExists        an object exists with a different identity (e.g. another uid)
    ├── FailedPrecondition   the object is in the wrong state for the request
    ├── Conflict             another operation on the same object is in flight
    ├── Unavailable          a dependency (libvirtd) cannot be reached right now; retry
    ├── Cancelled            the client gave up on the call; what it waited for was left
    ├── DeadlineExceeded     an operation did not finish within its bound
    ├── ResourceExhausted    a limit of the agent is reached (e.g. open watch streams)
    ├── OutOfRange           a position the agent no longer holds (a watch's old version)
    ├── Unsupported          a feature exists in the API but not in this agent (yet)
    └── PermissionDenied     the caller's identity may not make this call

The gRPC servicer maps each class to one status code (see ``agent.api.errors``).
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "AlreadyExists",
    "Cancelled",
    "Conflict",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidSpec",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unavailable",
    "Unsupported",
]


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class InvalidSpec(AgentError):
    """A request or spec is invalid; ``field`` is the path of the field at fault."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


class NotFound(AgentError):
    """The named object does not exist."""


class AlreadyExists(AgentError):
    """An object of that name exists but is a different object."""


class FailedPrecondition(AgentError):
    """The object is not in a state that allows the request."""


class Conflict(AgentError):
    """Another operation on the same object is in flight."""


class Unavailable(AgentError):
    """A dependency of the agent (libvirtd) is unreachable; the call may be retried."""


class Cancelled(AgentError):
    """The client gave up on the call; what it waited for was left as it was."""


class DeadlineExceeded(AgentError):
    """An operation did not finish within its bound."""


class ResourceExhausted(AgentError):
    """A limit of the agent is reached; retry later."""


class OutOfRange(AgentError):
    """A position outside what the agent holds (a watch resuming from a version it no
    longer keeps); start again from the beginning (list, then watch)."""


class Unsupported(AgentError):
    """The request asks for something this agent does not implement."""


class PermissionDenied(AgentError):
    """The caller's identity may not make this call (see ``agent.api.authz``)."""
