"""Composition root: build the real adapters, wire the services, serve until SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import threading

import grpc

from agent.adapters.host import PsutilHostProbe
from agent.adapters.libvirt import LibvirtHypervisor
from agent.adapters.qemuimg import QemuImg
from agent.api.server import Server, create_server
from agent.api.servicer import NodeServicer, VirtualMachineServicer
from agent.config import Settings
from agent.domain.files import VMFiles
from agent.domain.lifecycle import VMService
from agent.domain.registry import Registry
from agent.ports import DomainEvent
from agent.quantity import parse_quantity

__all__ = ["run"]

log = logging.getLogger(__name__)


def _virt_type(setting: str) -> str:
    if setting != "auto":
        return setting
    # KVM only when the device can be opened; broken KVM needs an explicit --virt-type qemu.
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return "kvm"
    except OSError:
        return "qemu"


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert:
        return None
    with open(settings.tls_cert, "rb") as cert, open(settings.tls_key, "rb") as key:
        pair = (key.read(), cert.read())
    client_ca = None
    if settings.tls_client_ca:
        with open(settings.tls_client_ca, "rb") as ca:
            client_ca = ca.read()
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def run(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT (or ``stop``); VMs keep running after it exits."""
    stop = stop or threading.Event()
    image_roots = settings.image_root or [os.path.join(settings.state_dir, "images")]
    os.makedirs(settings.state_dir, exist_ok=True)
    hv = LibvirtHypervisor(settings.libvirt_uri, qemu_run_dir=settings.qemu_run_dir)
    registry = Registry()
    service = VMService(
        hv,
        VMFiles(settings.state_dir, image_roots, QemuImg()),
        registry,
        node_name=settings.node_name,
        virt_type=_virt_type(settings.virt_type),
    )
    server = create_server(
        VirtualMachineServicer(service),
        NodeServicer(
            service, PsutilHostProbe(), reserved_memory=parse_quantity(settings.reserved_memory)
        ),
        listen=settings.listen,
        unix_socket=settings.unix_socket,
        credentials=_credentials(settings),
        reflection_enabled=settings.reflection,
    )
    _follow_health(hv, registry, server, service)
    server.grpc_server.start()
    log.info(
        "virt-agent serving",
        extra={"listen": ",".join(settings.listen), "unix_socket": settings.unix_socket},
    )
    hv.open(wait=False)  # the "connected" event triggers the first resync

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    log.info("stopping: finishing in-flight calls; VMs keep running")
    server.set_serving(False)
    server.grpc_server.stop(settings.shutdown_grace_seconds).wait()
    hv.close()
    return 0


def _follow_health(
    hv: LibvirtHypervisor, registry: Registry, server: Server, service: VMService
) -> None:
    """SERVING only while libvirt is connected and the registry was rebuilt from it."""

    def on_event(event: DomainEvent) -> None:
        if event.event == "disconnected":
            registry.synced.clear()
            server.set_serving(False)
            return
        service.on_event(event)
        if event.event == "connected":
            threading.Thread(target=wait_synced, name="health", daemon=True).start()

    def wait_synced() -> None:
        if registry.synced.wait(timeout=300) and hv.connected():
            server.set_serving(True)

    hv.subscribe(on_event)
