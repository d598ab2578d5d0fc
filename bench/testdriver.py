"""The agent daemon as its own process on libvirt's test driver, and its raw-libvirt twin,
for the density, RPC and footprint benchmarks (no root, no QEMU)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import libvirt
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.api._gen.virtagent.v1 import vm_pb2, vm_service_pb2_grpc
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from bench.harness import ROOT

NAMESPACE = "bench"
RAW_XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os></domain>"""


def vm_doc(name: str) -> vm_pb2.VirtualMachine:
    doc = {
        "metadata": {"namespace": NAMESPACE, "name": name},
        "spec": {
            "runStrategy": "Always",
            "template": {"spec": {"domain": {"memory": {"guest": "128Mi"}}}},
        },
    }
    return json_format.ParseDict(doc, vm_pb2.VirtualMachine())


class TestDriverAgent:
    """``python -m agent`` on a private test-driver node, serving on a unix socket."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="va-bench-"))
        self.dir.chmod(0o755)  # QEMU's user must reach the state folder
        (self.dir / "node.xml").write_text("<node/>")
        self.uri = f"test://{self.dir / 'node.xml'}"
        self.socket = self.dir / "agent.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None

    def start(self, timeout: float = 60.0) -> None:
        argv = [sys.executable, "-m", "agent", "--libvirt-uri", self.uri,
                "--unix-socket", str(self.socket), "--state-dir", str(self.dir / "state"),
                "--image-root", str(self.dir), "--insecure", "--no-vm-network",
                "--no-migration", "--virt-type", "qemu", "--node-name", "bench",
                "--reserved-memory", "0", "--log-level", "warning"]  # fmt: skip
        log = open(self.dir / "agent.log", "ab")  # noqa: SIM115 - the child's
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited: {(self.dir / 'agent.log').read_text()[-2000:]}")
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
        raise RuntimeError("the agent did not become SERVING")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"

    @property
    def vms(self) -> vm_service_pb2_grpc.VirtualMachineServiceStub:
        assert self.channel is not None
        return vm_service_pb2_grpc.VirtualMachineServiceStub(self.channel)

    def apply(self, name: str) -> Any:
        return self.vms.ApplyVirtualMachine(
            pb.ApplyVirtualMachineRequest(vm=vm_doc(name)), timeout=60
        )

    def get(self, name: str) -> Any:
        return self.vms.GetVirtualMachine(
            pb.GetVirtualMachineRequest(namespace=NAMESPACE, name=name), timeout=30
        )

    def list_all(self) -> Any:
        return self.vms.ListVirtualMachines(pb.ListVirtualMachinesRequest(), timeout=60)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TestDriverAgent:
        try:
            self.start()
        except BaseException:
            self.stop()  # its process (if any) and its folder
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RawTestDriver:
    """The baseline: libvirt-python on a test-driver node of its own, doing the same work."""

    def __init__(self) -> None:
        self.conn = libvirt.open("test:///default")
        for dom in self.conn.listAllDomains():  # the default node's own example domain
            if dom.isActive():
                dom.destroy()
            dom.undefine()

    def create(self, name: str) -> None:
        self.conn.defineXML(RAW_XML.format(name=f"{NAMESPACE}_{name}")).create()

    def get(self, name: str) -> str:
        dom = self.conn.lookupByName(f"{NAMESPACE}_{name}")
        dom.info()
        return str(dom.XMLDesc(0))

    def list_all(self) -> list[str]:
        return [str(d.XMLDesc(0)) for d in self.conn.listAllDomains()]

    def close(self) -> None:
        for dom in self.conn.listAllDomains():
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        self.conn.close()
