"""An agent on libvirt's test driver, served over a real gRPC channel."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.adapters.libvirt import LibvirtHypervisor
from agent.api._gen.virtagent.v1 import node_service_pb2_grpc, vm_service_pb2_grpc
from agent.api.server import Server
from agent.api.servicer import VirtualMachineServicer
from agent.app import build_agent
from agent.config import Settings
from agent.domain.lifecycle import VMService
from agent.migration.service import Migrations


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
    migrations: Migrations | None = None


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    """The daemon's own wiring (``build_agent``) on libvirt's test driver, on loopback."""
    with running_agent(tmp_path) as running:
        yield running


@contextlib.contextmanager
def running_agent(
    tmp_path: Path,
    *,
    max_streams: int = 4,
    max_slow: int = 4,
    max_calls: int = 256,
    **settings: Any,
) -> Iterator[Agent]:
    """An agent as the ``agent`` fixture makes it, with some settings (and limits) of its own."""
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
    config = Settings(
        libvirt_uri=f"test://{node_xml}",
        state_dir=str(state_dir),
        image_root=[str(image_root)],
        listen=["127.0.0.1:0"],
        insecure=True,
        unix_socket="",
        vm_network=False,
        virt_type="qemu",
        node_name="node-test",
        reserved_memory=0,
        max_watch_streams=max_streams,
        max_mutating_calls=max_slow,
        max_calls=max_calls,
        **settings,
    )
    built = build_agent(config)
    built.start()
    assert built.service.readiness.wait(10), "the agent never became ready"
    channel = grpc.insecure_channel(f"127.0.0.1:{built.server.ports[0]}")
    try:
        yield Agent(
            vms=vm_service_pb2_grpc.VirtualMachineServiceStub(channel),
            nodes=node_service_pb2_grpc.NodeServiceStub(channel),
            channel=channel,
            service=built.service,
            service_servicer=built.vm_servicer,
            hv=built.hv,
            server=built.server,
            image_root=image_root,
            state_dir=state_dir,
            migrations=built.migrations,
        )
    finally:
        channel.close()
        built.stop(None)
