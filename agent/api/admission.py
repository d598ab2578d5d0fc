"""Admission control: at most so many calls in progress or waiting for a thread; one more is
answered RESOURCE_EXHAUSTED at once. Health checks are always let in (a refused liveness probe
restarts the agent: overload must not look like death)."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc

__all__ = ["AdmissionInterceptor", "CallPool"]

# Health checks (not health watches: those are streams that hold a thread each).
_ALWAYS_ADMITTED = "/grpc.health.v1.Health/Check"


class CallPool(futures.ThreadPoolExecutor):
    """The server's thread pool, counting the calls submitted to it and not yet done (those
    running and those waiting for a thread): the count grpc keeps for its own limit."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "grpc") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._count_lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        with self._count_lock:
            return self._in_flight

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        with self._count_lock:
            self._in_flight += 1
        future.add_done_callback(self._done)  # (runs at once if it is done already)
        return future

    def _done(self, _: futures.Future[Any]) -> None:
        with self._count_lock:
            self._in_flight -= 1


class AdmissionInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses a call when ``limit`` calls are in the pool already, health checks excepted.

    It runs as the call arrives, before the call takes a thread; the refusal itself takes one
    only for as long as it takes to answer.
    """

    def __init__(self, pool: CallPool, limit: int) -> None:
        self.pool = pool
        self.limit = limit

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or details.method == _ALWAYS_ADMITTED:
            return handler
        if self.pool.in_flight < self.limit:
            return handler
        return _refusal(
            handler,
            f"{self.limit} calls are in progress or waiting on this agent, its limit; retry later",
        )


def _refusal(handler: Any, message: str) -> Any:
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler  # (client streams: reflection only, cheap)
