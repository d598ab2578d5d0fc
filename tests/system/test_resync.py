"""The periodic resync with the real agent, QEMU, nftables and netlink (issue 14).

A world and a node of their own, one agent resyncing every 2 s and one test guest ``web``
publishing port 80. Everything deleted by hand is deleted inside the node's network
namespace only. Tests run in file order and share the guest.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent.api._gen.virtagent.v1 import vm_pb2
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from tests.system.agentproc import AgentProcess
from tests.system.guest_exec import EXEC_USER_DATA, write_seed_iso
from tests.system.netbed import CIDR, TABLE, net_vm, nft_rule_count, run
from tests.testbed.nodebox import GuestImage, NodeBox, World
from tests.testbed.wait import wait_for

READY = "VIRT-AGENT-READY"
BOOT_TIMEOUT = 150.0
METRICS_PORT = 9464
RESYNC_SECONDS = 2
REPAIR_TIMEOUT = 30.0  # many resync intervals, on a loaded machine


@dataclass
class Box:
    world: World
    node: NodeBox
    agent: AgentProcess
    ip: str = ""
    tap: str = ""
    mac: str = ""
    node_port: int = 0
    qemu_pid: int = 0
    rules: int = 0

    def page(self) -> str:
        """The guest's page through its published port, from the world."""
        return self.world.http_get(self.node.uplink_ip, self.node_port, timeout=3)

    def metrics(self) -> str:
        return self.world.http_get(self.node.uplink_ip, METRICS_PORT, path="/metrics")

    def repaired(self, kind: str) -> float:
        found = re.search(
            rf'^virt_agent_resync_repairs_total\{{kind="{kind}"\}} (\S+)$', self.metrics(), re.M
        )
        assert found, f"no virt_agent_resync_repairs_total for {kind}"
        return float(found.group(1))

    def nft_writes(self) -> float:
        found = re.search(
            r'^virt_agent_nft_transactions_total\{outcome="success"\} (\S+)$',
            self.metrics(),
            re.M,
        )
        return float(found.group(1)) if found else 0.0

    def passes(self) -> int:
        return self.agent.log_path.read_text().count("resync pass:")

    def web(self) -> vm_pb2.VirtualMachine:
        return self.agent.get("web", "team-a")

    def route(self) -> str:
        return run(self.node, "ip", "route", "show", f"{self.ip}/32")

    def wait_ready(self, count: int = 1) -> None:
        def booted() -> bool:
            return self.agent.console("web", "team-a").count(READY) >= count

        wait_for(booted, BOOT_TIMEOUT, 0.3, lambda: "web to boot:\n" + self.agent.log_tail())


@pytest.fixture(scope="module")
def box(test_guest: GuestImage) -> Iterator[Box]:
    world = World.start()
    try:
        node = NodeBox.start(world, "node-a", 1)
        images = node.dir / "images"
        images.mkdir(mode=0o755)
        write_seed_iso(
            images / "seed.iso",
            {"meta-data": b"instance-id: resync-test\n", "user-data": EXEC_USER_DATA.encode()},
        )
        (images / "seed.iso").chmod(0o644)
        agent = AgentProcess(
            node=node,
            guest=test_guest,
            dir=node.dir / "agent",
            extra_args=[
                "--image-root", str(images), "--vm-cidr", CIDR,
                "--resync-interval", str(RESYNC_SECONDS),
                "--metrics-listen", f"{node.uplink_ip}:{METRICS_PORT}", "--metrics-insecure",
            ],
        )  # fmt: skip
        box = Box(world, node, agent)
        agent.start()
        try:
            agent.apply(net_vm("web", "team-a", seed="seed.iso", ports=[{"port": 80}]))
            box.wait_ready()
            vm = box.web()
            nic = vm.status.interfaces[0]
            box.ip, box.tap, box.mac = nic.ip_addresses[0], nic.tap_name, nic.mac
            box.node_port, box.qemu_pid = nic.published_ports[0].node_port, vm.status.qemu_pid
            box.rules = nft_rule_count(node)
            wait_for(
                lambda: "hostname=web" in box.page(), 60, 0.5, "web's page", ignore=(Exception,)
            )
            yield box
        finally:
            agent.stop()
    finally:
        world.stop()


def test_a_resync_with_nothing_off_writes_nothing(box: Box) -> None:
    before = {kind: box.repaired(kind) for kind in ("nft_table", "route", "tap", "sysctl")}
    writes, passes = box.nft_writes(), box.passes()
    wait_for(lambda: box.passes() >= passes + 3, REPAIR_TIMEOUT, 0.5, "three resync passes")
    assert {kind: box.repaired(kind) for kind in before} == before
    assert box.nft_writes() == writes
    assert "repaired:" not in box.agent.log_path.read_text()


def test_a_deleted_table_and_guest_route_are_restored_and_the_guest_answers(box: Box) -> None:
    before = box.repaired("route"), box.repaired("nft_table")
    run(box.node, "ip", "route", "del", f"{box.ip}/32", "dev", box.tap)
    run(box.node, "nft", "delete", "table", "inet", TABLE)
    wait_for(lambda: box.ip in box.route(), REPAIR_TIMEOUT, 0.3, "the guest's route to be back")
    assert f"dev {box.tap}" in box.route()
    wait_for(lambda: nft_rule_count(box.node) == box.rules, REPAIR_TIMEOUT, 0.3, "the table")
    assert "hostname=web" in box.page()
    assert box.repaired("route") == before[0] + 1
    assert box.repaired("nft_table") == before[1] + 1
    log = box.agent.log_path.read_text()
    assert f"repaired: route {box.tap} of vm team-a/web" in log
    assert "repaired: nft_table virt_agent (missing)" in log
    assert box.web().status.qemu_pid == box.qemu_pid  # nothing restarted


def test_a_deleted_neighbour_entry_and_proxy_arp_come_back(box: Box) -> None:
    before = box.repaired("neighbour"), box.repaired("sysctl")
    run(box.node, "ip", "neigh", "del", box.ip, "dev", box.tap)
    run(box.node, "sysctl", "-qw", f"net.ipv4.conf.{box.tap}.proxy_arp=0")

    def restored() -> bool:
        neigh = run(box.node, "ip", "neigh", "show", box.ip, "dev", box.tap)
        proxy = run(box.node, "sysctl", "-n", f"net.ipv4.conf.{box.tap}.proxy_arp")
        return "PERMANENT" in neigh and box.mac in neigh and proxy.strip() == "1"

    wait_for(restored, REPAIR_TIMEOUT, 0.3, "the neighbour entry and proxy_arp")
    assert (box.repaired("neighbour"), box.repaired("sysctl")) == (before[0] + 1, before[1] + 1)
    assert "hostname=web" in box.page()


def test_a_tap_deleted_under_the_guest_marks_it_network_broken_until_restarted(
    box: Box,
) -> None:
    """The README's promise: the VM shows NetworkBroken naming the tap; a hard restart
    plugs a new tap into a new QEMU and the guest answers again."""
    run(box.node, "ip", "link", "del", box.tap)

    def broken() -> vm_pb2.Condition | None:
        found = [c for c in box.web().status.conditions if c.type == "NetworkBroken"]
        return found[0] if found else None

    condition = wait_for(broken, REPAIR_TIMEOUT, 0.3, "the NetworkBroken condition")
    assert condition.status == "True" and condition.reason == "TapDeleted"
    assert box.tap in condition.message and "restart --hard" in condition.message
    assert box.web().status.phase == vm_pb2.PHASE_RUNNING  # the guest itself still runs
    assert box.tap in run(box.node, "ip", "-o", "link", "show")  # made again, with no carrier
    request = pb.RestartVirtualMachineRequest(namespace="team-a", name="web", hard=True)
    box.agent.vms.RestartVirtualMachine(request, timeout=60)
    box.wait_ready(count=2)
    wait_for(lambda: "hostname=web" in box.page(), 60, 0.5, "web's page", ignore=(Exception,))
    assert broken() is None
    assert box.web().status.qemu_pid != box.qemu_pid
