"""An agent on libvirt's test driver, served over a real gRPC channel."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from agent.adapters.host import PsutilHostProbe
from agent.adapters.libvirt import LibvirtHypervisor
from agent.adapters.qemuimg import QemuImg
from agent.api._gen.virtagent.v1 import node_service_pb2_grpc, vm_service_pb2_grpc
from agent.api.server import Server, create_server
from agent.api.servicer import NodeServicer, VirtualMachineServicer
from agent.domain.files import VMFiles
from agent.domain.lifecycle import VMService
from agent.domain.registry import Registry
from agent.ports import DomainEvent
from tests.testbed.wait import wait_for


@dataclass
class Agent:
    """What a test talks to: the stubs, plus the pieces behind them for inspection."""

    vms: vm_service_pb2_grpc.VirtualMachineServiceStub
    nodes: node_service_pb2_grpc.NodeServiceStub
    channel: grpc.Channel
    service: VMService
    service_servicer: VirtualMachineServicer
    hv: LibvirtHypervisor
    server: Server
    image_root: Path
    state_dir: Path


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    node_xml = tmp_path / "node.xml"
    node_xml.write_text("<node/>")
    image_root = tmp_path / "images"
    image_root.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(image_root / "base.qcow2"), "64M"],
        check=True,
    )
    (image_root / "vmlinuz").write_bytes(b"kernel")
    state_dir = tmp_path / "state"
    hv = LibvirtHypervisor(f"test://{node_xml}")
    registry = Registry()
    service = VMService(
        hv,
        VMFiles(str(state_dir), [str(image_root)], QemuImg()),
        registry,
        node_name="node-test",
        virt_type="qemu",
    )
    vm_servicer = VirtualMachineServicer(service, max_streams=4, max_slow=4)
    server = create_server(
        vm_servicer,
        NodeServicer(service, PsutilHostProbe(), reserved_memory=0),
        listen=["127.0.0.1:0"],
    )
    synced = threading.Event()

    def on_event(event: DomainEvent) -> None:
        service.on_event(event)

    hv.subscribe(on_event)
    server.grpc_server.start()
    hv.open()
    wait_for(registry.synced.is_set, timeout=10, message="registry never synced")
    synced.set()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.ports[0]}")
    try:
        yield Agent(
            vms=vm_service_pb2_grpc.VirtualMachineServiceStub(channel),
            nodes=node_service_pb2_grpc.NodeServiceStub(channel),
            channel=channel,
            service=service,
            service_servicer=vm_servicer,
            hv=hv,
            server=server,
            image_root=image_root,
            state_dir=state_dir,
        )
    finally:
        channel.close()
        server.grpc_server.stop(None)
        hv.close()
