"""Typed Python client for the agent's gRPC API (VirtualMachine-, Node- and MigrationService).

Every unary call has a deadline (the client's ``timeout`` bounds the call including its
retries). Calls are retried with exponential backoff and jitter when the agent answers
UNAVAILABLE and the call is idempotent: reads always are, and every mutating call carries a
``request_id`` (a UUID4 generated when none is given, reused across the retries) so that the
agent applies it at most once. Any other status is raised at once as ``AgentCallError``.

Usage::

    from agent.client import AgentClient, AgentCallError, TLSOptions

    tls = TLSOptions(ca_file="ca.pem", cert_file="client.pem", key_file="client-key.pem")
    with AgentClient("10.0.0.5:9090", tls=tls) as agent:
        agent.apply({"metadata": {"namespace": "default", "name": "web"}, "spec": {...}})
        vm = agent.start("default", "web")
        for event in agent.watch(namespace="default"):
            print(event.type, event.vm.metadata.name, event.vm.status.phase)
        try:
            agent.get("default", "gone")
        except AgentCallError as exc:
            print(exc.code, exc.message)

``target`` is ``host:port`` or ``unix:/path/to/socket``; without ``tls`` the channel is
plaintext (meant for the node-local unix socket).
"""

from __future__ import annotations

import builtins
import random
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import json_format

from agent import __version__
from agent.api._gen.virtagent.v1 import (
    migration_service_pb2_grpc,
    node_service_pb2,
    node_service_pb2_grpc,
    vm_pb2,
    vm_service_pb2,
    vm_service_pb2_grpc,
)
from agent.client.migrations import MigrationCalls
from agent.client.tls import TLSOptions
from agent.client.watch import resuming_watch
from agent.defaults import GRACE_PERIOD_SECONDS

__all__ = ["DEFAULT_GRACE_PERIOD_SECONDS", "AgentCallError", "AgentClient", "TLSOptions"]

# KubeVirt's and the agent's default terminationGracePeriodSeconds.
DEFAULT_GRACE_PERIOD_SECONDS = GRACE_PERIOD_SECONDS
_BACKOFF_BASE = 0.1
_BACKOFF_MAX = 2.0


class AgentCallError(Exception):
    """A call to the agent failed with a gRPC status (NOT_FOUND, UNAVAILABLE, ...)."""

    def __init__(self, code: grpc.StatusCode, message: str, target: str) -> None:
        super().__init__(code, message, target)
        self.code = code
        self.message = message
        self.target = target

    def __str__(self) -> str:
        return f"agent {self.target}: {self.code.name}: {self.message}"


class AgentClient(MigrationCalls):
    """A connection to one agent; methods mirror the RPCs and return the proto messages
    (the MigrationService's come from ``MigrationCalls``).

    ``retries`` is how many times an idempotent call is repeated after UNAVAILABLE.
    ``sleep`` is injectable so that tests do not wait out the backoff.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 30.0,
        tls: TLSOptions | None = None,
        retries: int = 4,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._retries = retries
        self._sleep = sleep
        options = [("grpc.primary_user_agent", f"virt-agent-client/{__version__}")]
        if tls is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            options += tls.channel_options()
            self._channel = grpc.secure_channel(target, tls.credentials(), options=options)
        self._vms = vm_service_pb2_grpc.VirtualMachineServiceStub(self._channel)
        self._node = node_service_pb2_grpc.NodeServiceStub(self._channel)
        self._migrations = migration_service_pb2_grpc.MigrationServiceStub(self._channel)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # Declarative state.

    def apply(
        self,
        vm: vm_pb2.VirtualMachine | Mapping[str, Any],
        *,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> vm_service_pb2.ApplyVirtualMachineResponse:
        """Create or update a VM; a dict is read as the JSON mapping (json_format.ParseError).

        The agent answers once the VM's disks are ready, so an Apply that pulls or imports
        images needs a ``timeout`` longer than the client's usual one."""
        if not isinstance(vm, vm_pb2.VirtualMachine):
            vm = json_format.ParseDict(dict(vm), vm_pb2.VirtualMachine())
        request = vm_service_pb2.ApplyVirtualMachineRequest(
            vm=vm, request_id=request_id or _new_id()
        )
        response: vm_service_pb2.ApplyVirtualMachineResponse = self._unary(
            self._vms.ApplyVirtualMachine, request, timeout=timeout
        )
        return response

    def get(self, namespace: str, name: str) -> vm_pb2.VirtualMachine:
        request = vm_service_pb2.GetVirtualMachineRequest(namespace=namespace, name=name)
        response: vm_service_pb2.GetVirtualMachineResponse = self._unary(
            self._vms.GetVirtualMachine, request
        )
        return response.vm

    def list(
        self, namespace: str = "", label_selector: str = ""
    ) -> builtins.list[vm_pb2.VirtualMachine]:
        """VMs of one namespace (all namespaces when empty) matching the label selector;
        every page of them (the agent sends at most a page per call)."""
        vms: builtins.list[vm_pb2.VirtualMachine] = []
        token = ""
        while True:
            request = vm_service_pb2.ListVirtualMachinesRequest(
                namespace=namespace, label_selector=label_selector, page_token=token
            )
            response: vm_service_pb2.ListVirtualMachinesResponse = self._unary(
                self._vms.ListVirtualMachines, request
            )
            vms += response.vms
            token = response.next_page_token
            if not token:
                return vms

    def watch(
        self,
        namespace: str = "",
        label_selector: str = "",
        *,
        timeout: float | None = None,
        resource_version: int = 0,
        resume: bool = True,
    ) -> Generator[vm_service_pb2.WatchVirtualMachinesResponse, None, None]:
        """A snapshot (ADDED events, then SYNCED), then every change; endless unless timeout.

        From ``resource_version``: the changes after it instead of the snapshot. With
        ``resume`` a lost stream resumes by itself, re-listing when the agent cannot resume
        (``agent.client.watch``). The call starts on the first ``next()``; closing the
        iterator cancels it; a ``timeout`` ends it with DEADLINE_EXCEEDED.
        """

        def request(version: int) -> vm_service_pb2.WatchVirtualMachinesRequest:
            return vm_service_pb2.WatchVirtualMachinesRequest(
                namespace=namespace, label_selector=label_selector, resource_version=version
            )

        rpc = self._vms.WatchVirtualMachines
        if not resume:
            return self._stream(rpc, request(resource_version), timeout=timeout)
        return resuming_watch(
            lambda version, remaining: rpc(request(version), timeout=remaining),
            since=resource_version,
            timeout=timeout,
            backoff=self._backoff,
            sleep=self._sleep,
            error=self._error,
        )

    # Imperative verbs.

    def start(
        self, namespace: str, name: str, *, request_id: str | None = None
    ) -> vm_pb2.VirtualMachine:
        request = vm_service_pb2.StartVirtualMachineRequest(
            namespace=namespace, name=name, request_id=request_id or _new_id()
        )
        response: vm_service_pb2.StartVirtualMachineResponse = self._unary(
            self._vms.StartVirtualMachine, request
        )
        return response.vm

    def stop(
        self,
        namespace: str,
        name: str,
        *,
        grace_period_seconds: int | None = None,
        force: bool = False,
        request_id: str | None = None,
    ) -> vm_pb2.VirtualMachine:
        """Shut the VM down and return it stopped.

        The agent answers once the guest is off, so the deadline is the client's timeout
        plus the grace period: the given one, or else the VM's own (read with ``get``).
        """
        request = vm_service_pb2.StopVirtualMachineRequest(
            namespace=namespace, name=name, force=force, request_id=request_id or _new_id()
        )
        if grace_period_seconds is not None:
            request.grace_period_seconds = grace_period_seconds
        budget = self._shutdown_budget(namespace, name, grace_period_seconds, force=force)
        response: vm_service_pb2.StopVirtualMachineResponse = self._unary(
            self._vms.StopVirtualMachine, request, timeout=budget
        )
        return response.vm

    def restart(
        self, namespace: str, name: str, *, hard: bool = False, request_id: str | None = None
    ) -> vm_pb2.VirtualMachine:
        """Reboot the guest (ACPI) or, with ``hard``, power-cycle it and apply a pending spec."""
        request = vm_service_pb2.RestartVirtualMachineRequest(
            namespace=namespace, name=name, hard=hard, request_id=request_id or _new_id()
        )
        response: vm_service_pb2.RestartVirtualMachineResponse = self._unary(
            self._vms.RestartVirtualMachine, request
        )
        return response.vm

    def pause(
        self, namespace: str, name: str, *, request_id: str | None = None
    ) -> vm_pb2.VirtualMachine:
        request = vm_service_pb2.PauseVirtualMachineRequest(
            namespace=namespace, name=name, request_id=request_id or _new_id()
        )
        response: vm_service_pb2.PauseVirtualMachineResponse = self._unary(
            self._vms.PauseVirtualMachine, request
        )
        return response.vm

    def resume(
        self, namespace: str, name: str, *, request_id: str | None = None
    ) -> vm_pb2.VirtualMachine:
        request = vm_service_pb2.ResumeVirtualMachineRequest(
            namespace=namespace, name=name, request_id=request_id or _new_id()
        )
        response: vm_service_pb2.ResumeVirtualMachineResponse = self._unary(
            self._vms.ResumeVirtualMachine, request
        )
        return response.vm

    def delete(
        self,
        namespace: str,
        name: str,
        *,
        grace_period_seconds: int | None = None,
        request_id: str | None = None,
    ) -> None:
        """Stop the VM (like ``stop``, same deadline rule) and remove it."""
        request = vm_service_pb2.DeleteVirtualMachineRequest(
            namespace=namespace, name=name, request_id=request_id or _new_id()
        )
        if grace_period_seconds is not None:
            request.grace_period_seconds = grace_period_seconds
        budget = self._shutdown_budget(namespace, name, grace_period_seconds, force=False)
        self._unary(self._vms.DeleteVirtualMachine, request, timeout=budget)

    def console_log(
        self, namespace: str, name: str, *, tail_lines: int = 0, follow: bool = False
    ) -> Generator[bytes, None, None]:
        """Chunks of serial console output; with ``follow`` the stream has no deadline."""
        request = vm_service_pb2.GetConsoleLogRequest(
            namespace=namespace, name=name, tail_lines=tail_lines, follow=follow
        )
        timeout = None if follow else self.timeout
        stream = self._stream(self._vms.GetConsoleLog, request, timeout=timeout)
        try:
            for chunk in stream:
                yield chunk.data
        finally:
            stream.close()  # cancels the call when the caller stops early

    def node(self) -> node_service_pb2.Node:
        response: node_service_pb2.GetNodeResponse = self._unary(
            self._node.GetNode, node_service_pb2.GetNodeRequest()
        )
        return response.node

    # Calling.

    def _shutdown_budget(
        self, namespace: str, name: str, grace: int | None, *, force: bool
    ) -> float:
        if force:
            return self.timeout
        if grace is None:
            try:
                spec = self.get(namespace, name).spec.template.spec
            except AgentCallError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
                return self.timeout  # the call itself will report NOT_FOUND
            has_grace = spec.HasField("termination_grace_period_seconds")
            grace = spec.termination_grace_period_seconds if has_grace else None
        if grace is None:
            grace = DEFAULT_GRACE_PERIOD_SECONDS
        return self.timeout + grace

    def _unary(self, rpc: Any, request: Any, *, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        attempt = 0
        while True:
            try:
                return rpc(request, timeout=max(deadline - time.monotonic(), 0.0))
            except grpc.RpcError as exc:
                delay = self._backoff(attempt)
                retry = exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < self._retries
                if not retry or time.monotonic() + delay >= deadline:
                    raise self._error(exc) from exc
            self._sleep(delay)
            attempt += 1

    def _stream(
        self, rpc: Any, request: Any, *, timeout: float | None
    ) -> Generator[Any, None, None]:
        """Retry UNAVAILABLE only before the first message: later, events may be lost."""
        attempt = 0
        while True:
            call = rpc(request, timeout=timeout)
            received = False
            try:
                for item in call:
                    received = True
                    yield item
                return
            except grpc.RpcError as exc:
                retry = exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < self._retries
                if received or not retry:
                    raise self._error(exc) from exc
            finally:
                call.cancel()
            self._sleep(self._backoff(attempt))
            attempt += 1

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        ceiling: float = min(_BACKOFF_MAX, _BACKOFF_BASE * 2**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _error(self, exc: Any) -> AgentCallError:
        code = exc.code()
        message = exc.details() or code.name.lower().replace("_", " ")
        return AgentCallError(code, message, self.target)


def _new_id() -> str:
    return str(uuid.uuid4())
