"""The gRPC interceptor that decides every call: who the caller is, and may it do this.

The caller's identity comes only from its transport: the unix socket (root-only, node-local)
is the control plane; on an mTLS port it is the names of the peer certificate the handshake
verified. Request fields and metadata never name the caller. List and Watch answers are
filtered to the namespaces the caller may see; any other call outside them is
PERMISSION_DENIED, logged with the identity and counted.

It also turns a request that does not decode into INVALID_ARGUMENT (grpc's own answer is
INTERNAL), so arbitrary bytes never look like an agent fault.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from agent.api.authz import CONTROL_PLANE_EVERYWHERE, Grant, Policy

__all__ = ["Access", "AccessInterceptor"]

log = logging.getLogger(__name__)

_VM = "/virtagent.v1.VirtualMachineService/"
_LIST = _VM + "ListVirtualMachines"
_WATCH = _VM + "WatchVirtualMachines"


class Access:
    """The grant of a call's caller, from its transport and the current rules."""

    def __init__(
        self,
        *,
        mtls: bool,
        policy: Callable[[], Policy] | None = None,
        names_of: Callable[[bytes], tuple[str, ...]] = lambda pem: (),
    ) -> None:
        self.mtls = mtls  # network callers present verified client certificates
        self.policy = policy  # None: every verified client is the control plane
        self.names_of = names_of
        self._lock = threading.Lock()
        self.denied: collections.Counter[str] = collections.Counter()  # by method

    def grant(self, context: grpc.ServicerContext) -> Grant:
        if context.peer().startswith("unix:"):
            return Grant("unix-socket", CONTROL_PLANE_EVERYWHERE)
        if not self.mtls:  # --insecure or server-only TLS: nobody is told apart
            return Grant("unauthenticated", CONTROL_PLANE_EVERYWHERE)
        pems = (context.auth_context() or {}).get("x509_pem_cert") or []
        if not pems:
            return Grant("(no certificate)", ())
        names = self.names_of(pems[0])
        if self.policy is None:
            return Grant(",".join(names), CONTROL_PLANE_EVERYWHERE)
        return self.policy().grant(names)

    def deny(self, context: grpc.ServicerContext, grant: Grant, method: str, why: str) -> None:
        with self._lock:
            self.denied[method] += 1
        log.warning(
            "call denied",
            extra={"identity": grant.identity, "method": method, "reason": why},
        )
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED, f"{grant.identity} may not call {method}{why}"
        )

    def denied_total(self) -> int:
        with self._lock:
            return sum(self.denied.values())


class _Undecodable:
    """A request whose bytes are no message of the method's type."""

    def __init__(self, error: str) -> None:
        self.error = error


def _safe(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, ValueError, TypeError) as exc:
            return _Undecodable(str(exc) or type(exc).__name__)

    return decode


def _namespace_of(request: Any) -> str | None:
    """The namespace a request acts in; None when it names none (migration ids, node calls)."""
    if request is None:
        return None
    fields = request.DESCRIPTOR.fields_by_name
    if "vm" in fields and request.DESCRIPTOR.name.startswith("Apply"):
        return str(request.vm.metadata.namespace)
    if "namespace" in fields:
        return str(request.namespace)
    return None


class AccessInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Wraps every method handler with the caller's authorization and safe decoding."""

    def __init__(self, access: Access) -> None:
        self.access = access

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=_safe(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(method, handler.unary_stream),
                request_deserializer=_safe(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:  # server reflection
            return grpc.stream_stream_rpc_method_handler(
                self._stream_stream(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no client-streaming methods are served

    def _check(self, method: str, request: Any, context: grpc.ServicerContext) -> Grant:
        """The caller's grant when it may make this call; aborts the call otherwise."""
        grant = self.access.grant(context)
        if not grant.allows(method, None):
            self.access.deny(context, grant, method, "")
        if isinstance(request, _Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: {request.error}")
        namespace = None if method in (_LIST, _WATCH) else _namespace_of(request)
        if namespace is not None and not grant.allows(method, namespace):
            self.access.deny(context, grant, method, f" in namespace {namespace!r}")
        return grant

    def _unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            grant = self._check(method, request, context)
            response = behavior(request, context)
            if method == _LIST and response is not None:
                visible = [vm for vm in response.vms if grant.allows(method, vm.metadata.namespace)]
                del response.vms[:]
                response.vms.extend(visible)
            return response

        return call

    def _unary_stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            grant = self._check(method, request, context)
            for response in behavior(request, context):
                if (
                    method == _WATCH
                    and response.HasField("vm")
                    and not grant.allows(method, response.vm.metadata.namespace)
                ):
                    continue
                yield response

        return call

    def _stream_stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def call(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            self._check(method, None, context)
            return behavior(requests, context)

        return call
