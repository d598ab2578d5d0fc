"""A server-side deadline for unary calls: none holds a server thread past its bound, whatever
deadline (or none) the client set."""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc

__all__ = ["DeadlineInterceptor"]

log = logging.getLogger(__name__)


class DeadlineInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Cancels a unary call still running after ``seconds``: the client gets CANCELLED, and
    the agent's waits that watch the call (a graceful stop) end with it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior, method, bound = handler.unary_unary, details.method, self.seconds

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            def cut() -> None:
                log.warning("%s ran past the server's %gs deadline; cancelled", method, bound)
                context.cancel()

            timer = threading.Timer(bound, cut)
            timer.daemon = True
            timer.start()
            try:
                return behavior(request, context)
            finally:
                timer.cancel()

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
