"""An agent for fuzzing: libvirt's test driver, every volume kind, a VM network on fakes.

Container disks come from an empty in-memory registry and the network's links and nftables
are the stateful fakes of the unit tests, so nothing leaves the machine; everything else
(spec parsing, files, qemu-img, ISO writing, libvirt, gRPC) is the real thing.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.adapters.host import PsutilHostProbe
from agent.adapters.iso import PycdlibIso
from agent.adapters.libvirt import LibvirtHypervisor
from agent.adapters.qemuimg import QemuImg
from agent.api._gen.virtagent.v1 import vm_service_pb2_grpc
from agent.api.server import create_server
from agent.api.servicer import NodeServicer, VirtualMachineServicer
from agent.disks.cache import ImageCache
from agent.disks.containerdisk import ContainerDisks
from agent.domain.files import VMFiles, VolumeSupport, vm_folder_exists
from agent.domain.lifecycle import VMService
from agent.domain.views import VMViews
from agent.domain.vmcache import VMCache
from agent.network.plan import NetworkConfig
from agent.network.service import RoutedNetwork
from tests.unit.disk_fakes import FakeRegistry
from tests.unit.network_fakes import FakeConntrack, FakeDhcp, FakeFirewall, FakeLinks


@dataclass
class FuzzAgent:
    """The served agent and everything a rejected spec could leave behind."""

    channel: grpc.Channel
    vms: vm_service_pb2_grpc.VirtualMachineServiceStub
    hv: LibvirtHypervisor
    network: RoutedNetwork
    links: FakeLinks
    root: Path

    def domains(self) -> list[str]:
        return sorted(info.name for info in self.hv.list_domains())

    def leftovers(self) -> dict[str, object]:
        """What exists besides the agent's empty starting state (empty: nothing)."""
        found: dict[str, object] = {
            "domains": self.domains(),
            "vm folders": _listing(self.root / "state" / "vms"),
            "cache files": _files(self.root / "cache"),
            "host disks": _listing(self.root / "hostdisks"),
            "taps": sorted(self.links.taps_made),
            "allocations": sorted(self.network.ledger.claims()),
        }
        return {what: items for what, items in found.items() if items}


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def _files(folder: Path) -> list[str]:
    return sorted(str(path) for path in folder.rglob("*") if not path.is_dir())


@contextmanager
def fuzz_agent() -> Iterator[FuzzAgent]:
    root = Path(tempfile.mkdtemp(prefix="fuzz-", dir="/tmp"))
    try:
        yield from _serve(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _serve(root: Path) -> Iterator[FuzzAgent]:
    (root / "node.xml").write_text("<node/>")
    images = root / "images"
    images.mkdir()
    (root / "hostdisks").mkdir()
    (root / "secrets" / "default" / "seed").mkdir(parents=True)
    (root / "secrets" / "default" / "seed" / "userdata").write_text("#cloud-config\n")
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(images / "base.qcow2"), "64M"],
        check=True,
    )
    (images / "vmlinuz").write_bytes(b"kernel")
    hv = LibvirtHypervisor(f"test://{root / 'node.xml'}")
    registry = VMCache()
    in_use = functools.partial(vm_folder_exists, str(root / "state"))
    support = VolumeSupport(
        container_disks=ContainerDisks(
            FakeRegistry(), ImageCache(str(root / "cache"), vm_exists=in_use), QemuImg()
        ),
        iso=PycdlibIso(),
        host_disk_roots=(str(root / "hostdisks"),),
        secrets_dir=str(root / "secrets"),
    )
    files = VMFiles(str(root / "state"), [str(images)], QemuImg(), support)
    links = FakeLinks()
    network = RoutedNetwork(
        NetworkConfig(
            cidr=ipaddress.IPv4Network("10.250.0.0/24"), node_ports=(30000, 30099), uplink="eth0"
        ),
        links, FakeFirewall(), FakeConntrack(), FakeDhcp(),
        ready_timeout=5,
    )  # fmt: skip
    network.start()
    service = VMService(
        hv, files, registry, node_name="node-fuzz", virt_type="qemu", network=network
    )
    hv.subscribe(service)
    views = VMViews(registry, service.files)
    server = create_server(
        VirtualMachineServicer(service, views),
        NodeServicer(service, views, PsutilHostProbe(), hv, reserved_memory=0),
        listen=["127.0.0.1:0"],
    )
    server.grpc_server.start()
    hv.open()
    assert service.readiness.wait(10), "the agent never became ready"
    channel = grpc.insecure_channel(f"127.0.0.1:{server.ports[0]}")
    try:
        yield FuzzAgent(
            channel=channel,
            vms=vm_service_pb2_grpc.VirtualMachineServiceStub(channel),
            hv=hv,
            network=network,
            links=links,
            root=root,
        )
    finally:
        channel.close()
        server.grpc_server.stop(None)
        hv.close()
        network.stop()
