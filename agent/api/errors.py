"""One table from the agent's errors to gRPC status codes, applied at the servicer boundary."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from agent.errors import (
    AgentError,
    AlreadyExists,
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidSpec,
    NotFound,
    ResourceExhausted,
    Unavailable,
    Unsupported,
)

__all__ = ["STATUS_CODES", "grpc_errors", "grpc_stream_errors"]

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[AgentError], grpc.StatusCode] = {
    InvalidSpec: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Conflict: grpc.StatusCode.ABORTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unsupported: grpc.StatusCode.UNIMPLEMENTED,
}

F = TypeVar("F", bound=Callable[..., Any])


def _code_for(exc: AgentError) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind]
    return grpc.StatusCode.INTERNAL


def grpc_errors(method: F) -> F:
    """Abort the call with the mapped status; anything unexpected is INTERNAL, logged once."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except AgentError as exc:
            context.abort(_code_for(exc), str(exc))
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}")

    return wrapper  # type: ignore[return-value]


def grpc_stream_errors(method: F) -> F:
    """grpc_errors for server-streaming methods (generators)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            yield from method(self, request, context)
        except AgentError as exc:
            context.abort(_code_for(exc), str(exc))
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}")

    return wrapper  # type: ignore[return-value]
