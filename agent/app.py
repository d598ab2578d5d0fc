"""Composition root: build the agent from its settings (real adapters, services, gRPC
server), then serve it until SIGTERM."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.adapters.conntrack import ConntrackCli
from agent.adapters.download import HttpxDownloader
from agent.adapters.host import PsutilHostProbe
from agent.adapters.iso import PycdlibIso
from agent.adapters.libvirt import LibvirtHypervisor
from agent.adapters.libvirt_migration import LibvirtMigration
from agent.adapters.netlink import PyRoute2Links
from agent.adapters.nft import Nftables
from agent.adapters.postcopy import PostCopyProbe
from agent.adapters.probing import SocketProber
from agent.adapters.qemuimg import QemuImg
from agent.adapters.registry import HttpxRegistry
from agent.api.access import Access
from agent.api.authzfile import PolicyFile
from agent.api.migrations import MIGRATION_CALLS, MigrationApi
from agent.api.server import QUICK_CALL_THREADS, Server, create_server
from agent.api.servicer import NodeServicer, VirtualMachineServicer
from agent.api.tls import TlsFiles, reloading_credentials
from agent.client import TLSOptions
from agent.config import ConfigError, Settings, bridge_networks
from agent.disks.auth import Credentials, load_credentials
from agent.disks.cache import ImageCache
from agent.disks.containerdisk import ContainerDisks
from agent.disks.dvimport import DataVolumeImporter, ImportServices
from agent.disks.layers import LayerLimits
from agent.domain.capabilities import NodeSupport
from agent.domain.files import VMFiles, VolumeSupport, vm_folder_exists
from agent.domain.lifecycle import VMService
from agent.domain.probes import ProbeRunner
from agent.domain.pullstatus import PullStatusPublisher
from agent.domain.views import VMViews
from agent.domain.vmcache import VMCache
from agent.errors import InvalidSpec
from agent.metrics.setup import start_metrics
from agent.migration.records import MigrationBook
from agent.migration.service import Migrations
from agent.migration.source import OutgoingMigrations
from agent.migration.store import MigrationStore
from agent.migration.target import IncomingMigrations
from agent.network.dhcpd import DhcpServer
from agent.network.ipam import parse_pool
from agent.network.plan import NetworkConfig, resolv_conf_nameservers
from agent.network.ports import NetworkError
from agent.network.service import RoutedNetwork
from agent.peers import GrpcTargetAgents

__all__ = ["Agent", "access_control", "build_agent", "run", "server_credentials"]

log = logging.getLogger(__name__)


@dataclass
class Agent:
    """A built agent: what runs, and the pieces tests and tools look into."""

    settings: Settings
    hv: LibvirtHypervisor
    cache: VMCache
    service: VMService
    views: VMViews
    vm_servicer: VirtualMachineServicer
    server: Server
    network: RoutedNetwork | None = None
    dhcp: DhcpServer | None = None
    access: Access | None = None
    probes: ProbeRunner | None = None
    stop_metrics: Callable[[], None] = lambda: None
    migrations: Migrations | None = None

    def start(self) -> None:
        """Serve: VM network first (forwarding on), then gRPC, then the libvirt connection,
        whose first connect rebuilds the VMs and makes the agent ready."""
        if self.dhcp is not None and self.network is not None:
            self.dhcp.start()
            self.network.start()
        self.service.readiness.watch(self.server.set_serving)
        migrating = self.migrations.book.outgoing_progress if self.migrations else lambda: ()
        self.stop_metrics = start_metrics(
            self.settings,
            self.hv,
            self.service,
            PsutilHostProbe(),
            self.service.readiness,
            migrating,
        )
        if self.migrations is not None:
            self.migrations.recover()  # (before the first resync: it keeps what they hold)
        self.server.grpc_server.start()
        self.hv.open(wait=False)
        self.service.start_background(self.settings.resync_interval)
        if self.probes is not None:
            self.probes.start()

    def stop(self, grace: float | None) -> None:
        """Stop serving (in-flight calls get ``grace`` seconds); VMs and their plumbing stay."""
        self.server.set_serving(False)
        if self.probes is not None:
            self.probes.stop()
        self.server.stop(grace)
        self.service.stop_background()
        self.stop_metrics()
        self.hv.close()
        if self.network is not None and self.dhcp is not None:
            self.network.stop()
            self.dhcp.stop()


def _node_support() -> NodeSupport:
    """swtpm for TPMs, and an x86_64 OVMF build described for libvirt's firmware selection."""
    descriptors = Path("/usr/share/qemu/firmware").glob("*.json")
    return NodeSupport(
        swtpm=shutil.which("swtpm") is not None,
        uefi_firmware=any("x86_64" in d.name and "edk2" in d.name for d in descriptors),
    )


def build_agent(settings: Settings) -> Agent:
    """Everything the agent is made of, wired, nothing started (``Agent.start`` does that)."""
    max_streams, max_slow = settings.max_watch_streams, settings.max_mutating_calls
    access, credentials = access_control(settings), server_credentials(settings)
    os.makedirs(settings.state_dir, exist_ok=True)
    hv = LibvirtHypervisor(settings.libvirt_uri, qemu_run_dir=settings.qemu_run_dir)
    cache = VMCache(history_events=settings.watch_history, state_dir=settings.state_dir)
    networking = _network(settings)
    service = VMService(
        hv,
        _vm_files(settings, cache),
        cache,
        node_name=settings.node_name,
        virt_type=_virt_type(settings.virt_type),
        network=networking[0] if networking else None,
        support=_node_support(),
    )
    hv.subscribe(service)
    views = VMViews(cache, service.files)
    host = PsutilHostProbe()
    vm_servicer = VirtualMachineServicer(
        service, views, max_streams=max_streams, max_slow=max_slow, host=host
    )
    migrations = _migrations(settings, hv, service, networking)
    server = create_server(
        vm_servicer,
        NodeServicer(service, views, host, hv, reserved_memory=settings.reserved_memory),
        listen=settings.listen,
        unix_socket=settings.unix_socket,
        credentials=credentials,
        reflection_enabled=settings.reflection,
        access=access,
        migrations=MigrationApi(migrations, vm_servicer.streams),
        max_call_seconds=settings.max_call_seconds,
        # Long calls take at most their slots: the rest of the threads answer quick calls.
        max_workers=max_streams + max_slow + MIGRATION_CALLS + QUICK_CALL_THREADS,
        max_calls=settings.max_calls,
    )
    network, dhcp = networking if networking else (None, None)
    probes = ProbeRunner(service, SocketProber())
    service.steps.probe_ready = probes.ready
    return Agent(
        settings, hv, cache, service, views, vm_servicer, server, network, dhcp, access,
        probes, migrations=migrations,
    )  # fmt: skip


def run(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT (or ``stop``); VMs keep running after it exits."""
    stop = stop or threading.Event()
    agent = build_agent(settings)
    agent.start()
    log.info(
        "virt-agent serving",
        extra={"listen": ",".join(settings.listen), "unix_socket": settings.unix_socket},
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    log.info("stopping: finishing in-flight calls; VMs keep running")
    agent.stop(settings.shutdown_grace_seconds)
    return 0


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
    """TLS for --listen from the settings, re-read from disk when the files change; with a
    client CA, clients must present a certificate that chains to it."""
    if not settings.tls_cert:
        return None
    return reloading_credentials(
        TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    )


def access_control(settings: Settings) -> Access:
    """Who may call what: the --authz-config rules for mTLS clients; the unix socket and
    (without rules) every verified client are the control plane."""
    mtls = bool(settings.tls_cert and settings.tls_client_ca)
    if settings.listen and not mtls:
        log.warning("no --tls-client-ca: whoever reaches --listen is control-plane everywhere")
    if not settings.authz_config:
        if mtls:
            log.warning(
                "no --authz-config: every client with a certificate from %s is control-plane "
                "for all namespaces",
                settings.tls_client_ca,
            )
        return Access(mtls=mtls, names_of=_certificate_reader(mtls))
    try:
        policy = PolicyFile(settings.authz_config)
    except InvalidSpec as exc:
        raise ConfigError(str(exc)) from None
    return Access(mtls=mtls, policy=policy, names_of=_certificate_reader(mtls))


def _certificate_reader(mtls: bool) -> Callable[[bytes], tuple[str, ...]]:
    """The names in a client certificate. Without mTLS there are none, and ``cryptography``
    (7 MiB of the agent's memory) is not loaded."""
    if not mtls:
        return lambda pem: ()
    from agent.adapters.x509 import certificate_names  # noqa: PLC0415

    return certificate_names


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
    cidr = settings.vm_cidr
    pool = parse_pool(settings.node_vm_pool, cidr) if settings.node_vm_pool else None
    if pool is None and settings.migration:
        log.warning(
            "no --node-vm-pool: this node hands out addresses from all of %s, so a guest "
            "migrating in may hold an address another node gave out; give each node its "
            "own pool (docs/networking.md)",
            cidr,
        )
    config = NetworkConfig(
        cidr=cidr,
        pool=pool,
        node_ports=settings.node_port_range,
        uplink=uplink,
        dns=dns,
        bridges=bridge_networks(settings),
        egress_deny=tuple(settings.egress_deny),
        egress_allow=tuple(settings.egress_allow),
    )
    dhcp = DhcpServer()
    network = RoutedNetwork(config, links, Nftables(), ConntrackCli(), dhcp)
    low, high = config.node_ports
    log.info(
        "VM network %s (pool %s) via %s (gateway %s, node ports %s-%s, dns %s)",
        config.cidr, pool or cidr, uplink, config.gateway, low, high, ",".join(dns) or "none",
    )  # fmt: skip
    return network, dhcp


def _data_volumes(
    settings: Settings, disks: ContainerDisks, publisher: PullStatusPublisher, secrets_dir: str
) -> DataVolumeImporter:
    """The importer of dataVolumeTemplates claims (under the first --claim-root)."""
    qemu, deadline = QemuImg(), settings.pull_timeout  # a copy (convert) is bounded: an hour
    services = ImportServices(
        images=qemu,
        converter=qemu,
        downloader=HttpxDownloader(deadline=deadline, allow=settings.import_allow_cidr),
        container_disks=disks,
        secrets_dir=secrets_dir,
        observer=publisher,
    )
    return DataVolumeImporter([os.path.abspath(r) for r in settings.claim_root], services)


def _vm_files(settings: Settings, vms: VMCache) -> VMFiles:
    """Per-VM files with every volume kind: container disks, NoCloud seeds, host disks."""
    credentials = Credentials()
    if settings.registry_config:
        with open(settings.registry_config) as handle:
            credentials = load_credentials(handle.read())
    client = HttpxRegistry(
        insecure=settings.insecure_registry, ca_bundle=settings.registry_ca, credentials=credentials
    )
    cache_dir = settings.image_cache_dir or os.path.join(settings.state_dir, "containerdisks")
    in_use = functools.partial(vm_folder_exists, settings.state_dir)
    limits = LayerLimits(max_bytes=settings.max_image_size, max_ratio=settings.max_image_ratio)
    cache = ImageCache(cache_dir, vm_exists=in_use)
    disks = ContainerDisks(
        client, cache, QemuImg(), limits=limits, pull_timeout=settings.pull_timeout
    )
    publisher = PullStatusPublisher(vms, node_name=settings.node_name)
    secrets_dir = settings.secrets_dir or os.path.join(settings.state_dir, "secrets")
    importer = _data_volumes(settings, disks, publisher, secrets_dir)
    support = VolumeSupport(
        container_disks=disks,
        iso=PycdlibIso(),
        host_disk_roots=tuple(os.path.abspath(root) for root in settings.host_disk_root),
        claim_roots=tuple(os.path.abspath(root) for root in settings.claim_root),
        secrets_dir=secrets_dir,
        pulls=publisher,
        data_volumes=importer,
    )
    disks.gc()  # entries whose VMs were deleted while the agent was down
    importer.sweep()  # imports an agent restart cut short: started again by the next Apply
    image_roots = settings.image_root or [os.path.join(settings.state_dir, "images")]
    return VMFiles(settings.state_dir, image_roots, QemuImg(), support)


def client_tls(settings: Settings) -> TLSOptions | None:
    """How this agent calls other agents: TLS with its own certificate as client certificate
    (trusting --tls-client-ca, else the system's roots) unless it serves plaintext."""
    if not settings.tls_cert:
        return None
    return TLSOptions(
        ca_file=settings.tls_client_ca or None,
        cert_file=settings.tls_cert,
        key_file=settings.tls_key,
    )


def _migration_address(settings: Settings, network: RoutedNetwork | None) -> str:
    if settings.migration_address:
        return settings.migration_address
    links = PyRoute2Links()
    uplink = network.config.uplink if network else settings.uplink
    uplink = uplink or links.default_route_interface() or ""
    address = links.ipv4_address(uplink) if uplink else None
    if not address and settings.migration:
        log.warning("no address for incoming migrations: set --migration-address")
    return address or ""


def _migrations(
    settings: Settings,
    hv: LibvirtHypervisor,
    service: VMService,
    networking: tuple[RoutedNetwork, DhcpServer] | None,
) -> Migrations:
    store = MigrationStore(os.path.join(settings.state_dir, "migrations"))
    book = MigrationBook(store=store)
    migrator = LibvirtMigration(hv)
    outgoing = OutgoingMigrations(
        service,
        migrator,
        GrpcTargetAgents(settings.node_name, client_tls(settings)),
        book,
        max_outbound=settings.max_outbound_migrations,
        enabled=settings.migration,
        tls=settings.migration_tls,
    )
    address = _migration_address(settings, networking[0] if networking else None)
    incoming = IncomingMigrations(
        service,
        migrator,
        book,
        address=address,
        max_inbound=settings.max_inbound_migrations,
        host=PsutilHostProbe(),
        reserved_memory=settings.reserved_memory,
        enabled=settings.migration and bool(address),
        tls=settings.migration_tls,
        post_copy_unsupported=PostCopyProbe(settings.qemu_user, lambda: hv.versions()[1]),
    )
    return Migrations(book, outgoing, incoming)
