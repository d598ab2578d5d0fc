"""MetricsInterceptor: every gRPC call counted by method and status code, and timed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

import agent.metrics.agent_metrics as agent_metrics

__all__ = ["MetricsInterceptor"]


def _code(context: grpc.ServicerContext, failed: bool) -> str:
    # A servicer that aborts sets the code and raises; one that raises anything else is
    # answered UNKNOWN by grpc.
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return "UNKNOWN" if failed else "OK"


def _unary(method: str, behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.monotonic()
        failed = True
        try:
            reply = behavior(request, context)
            failed = False
            return reply
        finally:
            agent_metrics.grpc_call(method, _code(context, failed), time.monotonic() - started)

    return handler


def _streaming(method: str, behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started = time.monotonic()
        failed = True
        try:
            yield from behavior(request, context)
            failed = False
        except GeneratorExit:  # the client went away: grpc says CANCELLED
            failed = False
            raise
        finally:
            code = "CANCELLED" if not failed and not context.is_active() else None
            agent_metrics.grpc_call(
                method, code or _code(context, failed), time.monotonic() - started
            )

    return handler


class MetricsInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Wraps unary-unary and unary-stream handlers (the agent has no client streaming)."""

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary(method, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_streaming(method, handler.unary_stream))
        return handler
