"""Real QEMU (TCG) for the start, guest-network and migration benchmarks: a node in a box
(tests/testbed), the agent daemon inside it, a raw libvirt-python connection to the same
libvirtd, and helpers shared by those benchmarks.

All networking stays inside the namespaces the test bed creates and deletes."""

from __future__ import annotations

import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import libvirt

from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from bench.harness import ROOT
from tests.system.agentproc import AgentProcess, guest_vm
from tests.testbed.nodebox import GuestImage, NodeBox, World, build_test_guest

CIDR = "10.250.0.0/16"
DNS = "192.0.2.53"  # handed to guests only; nothing answers there

# Run inside a node: GET http://<ip>/ until it answers; print CLOCK_MONOTONIC at the answer
# (one clock for all namespaces, so it compares with the benchmark's time.monotonic()).
POLLER = r"""
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        with socket.create_connection((sys.argv[1], 80), timeout=0.3) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/"):
                print(time.monotonic(), flush=True)
                sys.exit(0)
    except OSError:
        time.sleep(0.02)
sys.exit(1)
"""


def vm_doc(name: str, *, network: bool) -> dict[str, Any]:
    """The test guest (128 MiB, direct kernel boot); with a masquerade NIC when asked."""
    interfaces = [{"name": "default", "masquerade": {}}] if network else None
    return guest_vm(name, memory="128Mi", grace=0, interfaces=interfaces)


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(interval)
    raise TimeoutError(f"{what} within {timeout} s")


def is_running(conn: Any, domain: str) -> bool:
    try:
        return bool(conn.lookupByName(domain).isActive())
    except libvirt.libvirtError:
        return False


def is_gone(conn: Any, domain: str) -> bool:
    try:
        conn.lookupByName(domain)
    except libvirt.libvirtError:
        return True
    return False


def raw_xml(agent_xml: str, name: str, folder: Path, *, tap: str = "", mac: str = "") -> str:
    """The agent's domain XML for raw libvirt: another name, no UUID or metadata, the VM
    folder's files (console log) in ``folder``, and optionally another tap and MAC."""
    root = ET.fromstring(agent_xml)
    old_name = root.findtext("name") or ""
    root.find("name").text = name  # type: ignore[union-attr]
    for tag in ("uuid", "metadata"):
        for child in root.findall(tag):
            root.remove(child)
    for iface in root.iter("interface"):
        if tap:
            iface.find("target").set("dev", tap)  # type: ignore[union-attr]
        if mac:
            iface.find("mac").set("address", mac)  # type: ignore[union-attr]
    text = ET.tostring(root, encoding="unicode")
    # paths under the agent's folder of that VM (".../vms/<ns>_<name>/...") go to ``folder``
    return re.sub(rf"[^'\"<>]*/{re.escape(old_name)}(?=/)", str(folder), text)


@dataclass
class QemuNode:
    world: World
    node: NodeBox
    agent: AgentProcess
    guest: GuestImage
    conn: Any  # raw libvirt-python connection to the node's libvirtd

    def apply(self, doc: dict[str, Any]) -> Any:
        return self.agent.apply(doc, timeout=120)

    def delete(self, name: str) -> None:
        self.agent.vms.DeleteVirtualMachine(
            pb.DeleteVirtualMachineRequest(namespace="default", name=name, grace_period_seconds=0),
            timeout=120,
        )
        wait_until(lambda: is_gone(self.conn, f"default_{name}"), 60, f"{name} gone")

    def raw_folder(self, name: str) -> Path:
        folder = self.node.dir / "raw" / name
        folder.mkdir(parents=True, exist_ok=True)
        for path in (folder.parent, folder):
            path.chmod(0o777)  # QEMU's user writes the console log there
        return folder

    def destroy_raw(self, name: str) -> None:
        try:
            dom = self.conn.lookupByName(name)
        except libvirt.libvirtError:
            return
        persistent = dom.isPersistent()  # a transient domain is gone once destroyed
        if dom.isActive():
            dom.destroy()
        if persistent:
            dom.undefine()

    def spawn_poller(self, ip: str, timeout: float = 120) -> Any:
        import subprocess

        return self.node.spawn(
            [sys.executable, "-c", POLLER, ip, str(timeout)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )


@contextmanager
def qemu_node(extra_args: list[str] | None = None) -> Iterator[QemuNode]:
    """A world, node-a in it, and the agent inside (with the VM network); all torn down."""
    guest = build_test_guest(ROOT)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # lookups of gone domains
    world = World.start()
    try:
        node = NodeBox.start(world, name="node-a", index=1)
        args = ["--vm-cidr", CIDR, "--dns", DNS, "--log-level", "info", *(extra_args or [])]
        agent = AgentProcess(node=node, guest=guest, dir=node.dir / "agent", extra_args=args)
        agent.start(timeout=120)
        conn = libvirt.open(node.libvirt_uri)
        try:
            yield QemuNode(world, node, agent, guest, conn)
        finally:
            try:
                agent.delete_all()
            except grpc.RpcError as exc:
                print(f"  cleaning up VMs: {exc}", file=sys.stderr)
            agent.stop()
            conn.close()
    finally:
        world.stop()
