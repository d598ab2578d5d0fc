"""An agent on libvirt's test driver with mTLS and authz rules, wired as virt-agent wires it."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.api._gen.virtagent.v1 import (
    migration_service_pb2_grpc,
    node_service_pb2_grpc,
    vm_service_pb2_grpc,
)
from agent.api.access import Access
from agent.app import build_agent
from agent.config import Settings
from tests.api.certs import CertificateAuthority, KeyPair


@dataclass
class Stubs:
    """One client's view of the agent."""

    channel: grpc.Channel
    vms: vm_service_pb2_grpc.VirtualMachineServiceStub
    nodes: node_service_pb2_grpc.NodeServiceStub
    migrations: migration_service_pb2_grpc.MigrationServiceStub

    @classmethod
    def over(cls, channel: grpc.Channel) -> Stubs:
        return cls(
            channel=channel,
            vms=vm_service_pb2_grpc.VirtualMachineServiceStub(channel),
            nodes=node_service_pb2_grpc.NodeServiceStub(channel),
            migrations=migration_service_pb2_grpc.MigrationServiceStub(channel),
        )


@dataclass
class SecureAgent:
    """The agent, its files on disk (TLS, rules) and a way to connect as any identity."""

    ca: CertificateAuthority
    files: Path
    port: int
    unix_socket: str
    access: Access
    _channels: list[grpc.Channel]

    def client(self, pair: KeyPair | None, trust: bytes | None = None) -> Stubs:
        """Stubs over a new TLS channel presenting ``pair`` (None: no client certificate)."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=trust or self.ca.pem,
            private_key=pair.key if pair else None,
            certificate_chain=pair.cert if pair else None,
        )
        channel = grpc.secure_channel(f"127.0.0.1:{self.port}", credentials)
        self._channels.append(channel)
        return Stubs.over(channel)

    def local(self) -> Stubs:
        channel = grpc.insecure_channel(f"unix:{self.unix_socket}")
        self._channels.append(channel)
        return Stubs.over(channel)

    def write(self, name: str, data: bytes | str) -> None:
        """Replace a file the way Kubernetes does: a new file renamed over the old one."""
        target = self.files / name
        temporary = target.with_suffix(".new")
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(temporary, target)


@contextmanager
def secure_agent(rules: str | None) -> Iterator[SecureAgent]:
    """An agent on 127.0.0.1 with mTLS; ``rules`` is the --authz-config file (None: none)."""
    # A short folder: the unix socket's path must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="authz-", dir="/tmp"))
    try:
        yield from _serve(root, rules)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _serve(root: Path, rules: str | None) -> Iterator[SecureAgent]:
    ca = CertificateAuthority()
    server_pair = ca.issue("virt-agent", "DNS:localhost", "IP:127.0.0.1", server=True)
    (root / "tls.crt").write_bytes(server_pair.cert)
    (root / "tls.key").write_bytes(server_pair.key)
    (root / "ca.crt").write_bytes(ca.pem)
    if rules is not None:
        (root / "authz.yaml").write_text(rules)
    (root / "node.xml").write_text("<node/>")
    (root / "images").mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(root / "images" / "base.qcow2"), "64M"],
        check=True,
    )
    settings = Settings(
        libvirt_uri=f"test://{root / 'node.xml'}",
        state_dir=str(root / "state"),
        image_root=[str(root / "images")],
        listen=["127.0.0.1:0"],
        unix_socket=str(root / "agent.sock"),
        tls_cert=str(root / "tls.crt"),
        tls_key=str(root / "tls.key"),
        tls_client_ca=str(root / "ca.crt"),
        authz_config=str(root / "authz.yaml") if rules is not None else "",
        vm_network=False,
        virt_type="qemu",
        node_name="node-test",
        reserved_memory=0,
    )
    built = build_agent(dataclasses.replace(settings, max_watch_streams=4, max_mutating_calls=4))
    assert built.access is not None
    built.start()
    assert built.service.readiness.wait(10), "the agent never became ready"
    agent = SecureAgent(
        ca=ca,
        files=root,
        port=built.server.ports[0],
        unix_socket=settings.unix_socket,
        access=built.access,
        _channels=[],
    )
    try:
        yield agent
    finally:
        for channel in agent._channels:
            channel.close()
        built.stop(None)
