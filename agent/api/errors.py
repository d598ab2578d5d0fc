"""One table from the agent's errors to gRPC status codes, applied at the servicer boundary."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from agent.errors import (
    AgentError,
    AlreadyExists,
    Cancelled,
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidSpec,
    NotFound,
    OutOfRange,
    PermissionDenied,
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
    OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Cancelled: grpc.StatusCode.CANCELLED,
}

F = TypeVar("F", bound=Callable[..., Any])


def _code_for(exc: AgentError) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind]
    return grpc.StatusCode.INTERNAL


@contextlib.contextmanager
def _status_of_errors(context: grpc.ServicerContext, method: str) -> Iterator[None]:
    """Abort the call with the mapped status; anything unexpected is INTERNAL, logged once."""
    try:
        yield
    except AgentError as exc:
        context.abort(_code_for(exc), str(exc))
    except Exception:
        if context.code() not in (None, grpc.StatusCode.OK):
            raise  # grpc's own abort: the status is set already
        log.exception("unexpected error in %s", method)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")


def grpc_errors(method: F) -> F:
    """Unary servicer methods: errors become gRPC statuses through STATUS_CODES."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with _status_of_errors(context, method.__name__):
            return method(self, request, context)

    return wrapper  # type: ignore[return-value]


def grpc_stream_errors(method: F) -> F:
    """Server-streaming servicer methods (generators): the same, for errors mid-stream too."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with _status_of_errors(context, method.__name__):
            yield from method(self, request, context)

    return wrapper  # type: ignore[return-value]
