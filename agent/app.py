"""Composition root: build the real adapters, wire the services, serve until SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import threading

import grpc

from agent.adapters.conntrack import ConntrackCli
from agent.adapters.host import PsutilHostProbe
from agent.adapters.iso import PycdlibIso
from agent.adapters.libvirt import LibvirtHypervisor
from agent.adapters.netlink import PyRoute2Links
from agent.adapters.nft import NftCli
from agent.adapters.qemuimg import QemuImg
from agent.adapters.registry import HttpxRegistry
from agent.api.server import Server, create_server
from agent.api.servicer import NodeServicer, VirtualMachineServicer
from agent.config import Settings
from agent.disks.auth import Credentials, load_credentials
from agent.disks.cache import ImageCache
from agent.disks.containerdisk import ContainerDisks
from agent.domain.files import VMFiles, VolumeSupport
from agent.domain.lifecycle import VMService
from agent.domain.pullstatus import PullStatusPublisher
from agent.domain.registry import Registry
from agent.network.dhcpd import DhcpServer
from agent.network.plan import NetworkConfig, resolv_conf_nameservers
from agent.network.ports import NetworkError
from agent.network.service import RoutedNetwork
from agent.ports import DomainEvent

__all__ = ["run", "server_credentials"]

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


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS for --listen from the settings; with a client CA, clients must present a certificate."""
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


def _network(settings: Settings) -> tuple[RoutedNetwork, DhcpServer] | None:
    """The node's VM network (taps, nftables, DHCP), or None with ``--no-vm-network``."""
    if not settings.vm_network:
        return None
    links = PyRoute2Links()
    uplink = settings.uplink or links.default_route_interface()
    if not uplink:
        raise NetworkError("uplink: there is no default route; name the uplink with --uplink")
    dns = tuple(settings.dns)
    if not dns:
        try:
            with open("/etc/resolv.conf") as handle:
                dns = resolv_conf_nameservers(handle.read())
        except OSError:
            dns = ()
    config = NetworkConfig(
        cidr=settings.vm_cidr,
        node_ports=settings.node_port_range,
        uplink=uplink,
        dns=dns,
    )
    dhcp = DhcpServer()
    network = RoutedNetwork(config, links, NftCli(), ConntrackCli(), dhcp)
    low, high = config.node_ports
    log.info(
        "VM network %s via %s (gateway %s, node ports %s-%s, dns %s)",
        config.cidr, uplink, config.gateway, low, high, ",".join(dns) or "none",
    )  # fmt: skip
    return network, dhcp


def _vm_files(settings: Settings, image_roots: list[str], registry: Registry) -> VMFiles:
    """Per-VM files with every volume kind: container disks, NoCloud seeds, host disks."""
    credentials = Credentials()
    if settings.registry_config:
        with open(settings.registry_config) as handle:
            credentials = load_credentials(handle.read())
    client = HttpxRegistry(
        insecure=settings.insecure_registry, ca_bundle=settings.registry_ca, credentials=credentials
    )
    files = VMFiles(settings.state_dir, image_roots, QemuImg())
    cache_dir = settings.image_cache_dir or os.path.join(settings.state_dir, "containerdisks")
    disks = ContainerDisks(client, ImageCache(cache_dir, vm_exists=files.vm_exists), QemuImg())
    files.support = VolumeSupport(
        container_disks=disks,
        iso=PycdlibIso(),
        host_disk_roots=tuple(os.path.abspath(root) for root in settings.host_disk_root),
        secrets_dir=settings.secrets_dir or os.path.join(settings.state_dir, "secrets"),
        pulls=PullStatusPublisher(registry, node_name=settings.node_name),
    )
    disks.gc()  # entries whose VMs were deleted while the agent was down
    return files


def run(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT (or ``stop``); VMs keep running after it exits."""
    stop = stop or threading.Event()
    image_roots = settings.image_root or [os.path.join(settings.state_dir, "images")]
    os.makedirs(settings.state_dir, exist_ok=True)
    hv = LibvirtHypervisor(settings.libvirt_uri, qemu_run_dir=settings.qemu_run_dir)
    registry = Registry()
    networking = _network(settings)
    if networking is not None:
        networking[1].start()
        networking[0].start()
    service = VMService(
        hv,
        _vm_files(settings, image_roots, registry),
        registry,
        node_name=settings.node_name,
        virt_type=_virt_type(settings.virt_type),
        network=networking[0] if networking else None,
    )
    server = create_server(
        VirtualMachineServicer(service),
        NodeServicer(service, PsutilHostProbe(), reserved_memory=settings.reserved_memory),
        listen=settings.listen,
        unix_socket=settings.unix_socket,
        credentials=server_credentials(settings),
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
    if networking is not None:  # taps and nft stay: running VMs keep their network
        networking[0].stop()
        networking[1].stop()
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
