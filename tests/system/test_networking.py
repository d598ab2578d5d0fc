"""VM networking with the real agent, libvirtd, QEMU, nftables and guests (issue 4).

One world and one node of their own (the node's uplink MTU lowered to 1400, a host bridge
``vbr0`` with a dnsmasq of its own, two foreign nft tables made before the agent starts),
one agent, and three test guests booted once for the whole module:

    web    namespace team-a  2 vCPUs, publishes port 80 (node port allocated)
    peer   namespace team-a
    other  namespace team-b  plus a bridge-binding NIC on vbr0

Tests run in file order and share those guests; the last ones delete them.
"""

from __future__ import annotations

import concurrent.futures
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from agent.api._gen.virtagent.v1 import vm_pb2
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from tests.system.agentproc import AgentProcess
from tests.system.guest_exec import EXEC_USER_DATA, guest_exec, write_seed_iso
from tests.system.netbed import (
    BRIDGE,
    BRIDGE_GATEWAY,
    BRIDGE_NETWORK,
    CIDR,
    DNS,
    GATEWAY,
    TABLE,
    UPLINK_MTU,
    conntrack_lines,
    idle_vm,
    net_vm,
    nft_elements,
    nft_rule_count,
    nft_spoof_drops,
    node_get,
    run,
    write_idle_disk,
)
from tests.testbed.nodebox import GuestImage, NodeBox, World
from tests.testbed.wait import read_console, wait_for

READY = "VIRT-AGENT-READY"
BOOT_TIMEOUT = 150.0
FOREIGN_TABLES = """
table inet foreign_fw {
    set blocked {
        type ipv4_addr
        elements = { 203.0.113.7, 203.0.113.8 }
    }
    chain input {
        type filter hook input priority 10; policy accept;
        ip saddr @blocked drop
    }
}
table ip virt_agent {
    chain postrouting {
        type nat hook postrouting priority 50; policy accept;
        ip daddr 203.0.113.9 return
    }
}
"""
LEASE = re.compile(r"dhcp: leased (\S+) to (\S+) on (\S+), ([\d.]+) ms after its first request")


@dataclass
class Guest:
    name: str
    namespace: str
    mac: str = ""
    ip: str = ""
    tap: str = ""
    node_port: int = 0
    qemu_pid: int = 0


@dataclass
class Net:
    world: World
    node: NodeBox
    agent: AgentProcess
    web: Guest
    peer: Guest
    other: Guest
    foreign: str
    rules: dict[str, int] = field(default_factory=dict)

    def guests(self) -> list[Guest]:
        return [self.web, self.peer, self.other]


def status(agent: AgentProcess, guest: Guest) -> vm_pb2.VirtualMachine:
    return agent.get(guest.name, guest.namespace)


def console(agent: AgentProcess, guest: Guest) -> str:
    return read_console(agent.console_path(guest.name, guest.namespace))


def wait_ready(agent: AgentProcess, guest: Guest) -> None:
    wait_for(
        lambda: READY in console(agent, guest),
        BOOT_TIMEOUT,
        0.3,
        lambda: f"{guest.name} to boot:\n" + "\n".join(console(agent, guest).splitlines()[-20:]),
    )


def foreign_tables(node: NodeBox) -> str:
    return run(node, "nft", "list", "table", "inet", "foreign_fw") + run(
        node, "nft", "list", "table", "ip", "virt_agent"
    )


def start_bridge_dhcp(node: NodeBox) -> subprocess.Popen[bytes]:
    """vbr0 with its own DHCP server (no router, no DNS): the "host bridge" network."""
    for argv in (
        ["ip", "link", "add", BRIDGE, "type", "bridge"],
        ["ip", "addr", "add", f"{BRIDGE_GATEWAY}/24", "dev", BRIDGE],
        ["ip", "link", "set", BRIDGE, "up"],
    ):
        run(node, *argv)
    folder = node.dir / "dnsmasq"
    folder.mkdir()
    with open(folder / "log", "ab") as log:
        return node.spawn(
            [
                "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                f"--interface={BRIDGE}", "--bind-interfaces", "--user=root", "--group=root",
                "--dhcp-range=198.51.100.50,198.51.100.99,255.255.255.0,1h",
                "--dhcp-option=3", "--dhcp-option=6", "--log-dhcp", "--log-facility=-",
                f"--dhcp-leasefile={folder / 'leases'}", f"--pid-file={folder / 'pid'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


@pytest.fixture(scope="module")
def net(test_guest: GuestImage) -> Iterator[Net]:
    world = World.start()
    try:
        node = NodeBox.start(world, "node-a", 1)
        run(node, "ip", "link", "set", node.uplink, "mtu", str(UPLINK_MTU))
        run(node, "nft", "-f", "-", input=FOREIGN_TABLES)
        dnsmasq = start_bridge_dhcp(node)
        images = node.dir / "images"
        images.mkdir(mode=0o755)
        write_seed_iso(
            images / "seed.iso",
            {"meta-data": b"instance-id: net-test\n", "user-data": EXEC_USER_DATA.encode()},
        )
        write_idle_disk(images / "idle.img")
        for path in images.iterdir():
            path.chmod(0o644)
        agent = AgentProcess(
            node=node,
            guest=test_guest,
            dir=node.dir / "agent",
            extra_args=[
                "--image-root",
                str(images),
                "--vm-cidr",
                CIDR,
                "--dns",
                DNS,
                "--bridge-network",
                f"{BRIDGE_NETWORK}={BRIDGE}",
                "--resync-interval",  # a table deleted by hand comes back within seconds
                "2",
            ],  # fmt: skip
        )
        net = Net(
            world=world,
            node=node,
            agent=agent,
            web=Guest("web", "team-a"),
            peer=Guest("peer", "team-a"),
            other=Guest("other", "team-b"),
            foreign=foreign_tables(node),
        )
        agent.start()
        try:
            net.rules["none"] = nft_rule_count(node)
            agent.apply(
                net_vm(
                    "web", "team-a", seed="seed.iso", cores=2, ports=[{"name": "http", "port": 80}]
                )
            )
            net.rules["one"] = nft_rule_count(node)
            agent.apply(net_vm("peer", "team-a", seed="seed.iso"))
            agent.apply(net_vm("other", "team-b", seed="seed.iso", bridge_mac="52:54:00:be:e0:01"))
            for guest in net.guests():
                wait_ready(agent, guest)
                vm = status(agent, guest)
                nic = vm.status.interfaces[0]
                guest.mac, guest.tap, guest.ip = nic.mac, nic.tap_name, nic.ip_addresses[0]
                guest.qemu_pid = vm.status.qemu_pid
                if nic.published_ports:
                    guest.node_port = nic.published_ports[0].node_port
            yield net
        finally:
            agent.stop()
            dnsmasq.terminate()
            dnsmasq.wait(10)
    finally:
        world.stop()


# -- 1. taps and DHCP -----------------------------------------------------------------------


def test_each_nic_is_a_tap_handed_to_libvirt_unmanaged(net: Net) -> None:
    web = net.web
    assert re.fullmatch(r"va[0-9a-f]{12}", web.tap)
    xml = net.node.virsh("dumpxml", "team-a_web")
    assert re.search(
        rf"<interface type='ethernet'>.*?<target dev='{web.tap}' managed='no'/>", xml, re.S
    )
    link = run(net.node, "ip", "-d", "link", "show", web.tap)
    assert f"mtu {UPLINK_MTU}" in link  # the uplink's MTU
    assert "multi_queue" in link  # web has 2 vCPUs
    assert "multi_queue" not in run(net.node, "ip", "-d", "link", "show", net.peer.tap)


def test_vm_status_reports_mac_ip_tap_and_published_ports(net: Net) -> None:
    nic = status(net.agent, net.web).status.interfaces[0]
    assert nic.name == "default" and re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", nic.mac)
    assert list(nic.ip_addresses) == [net.web.ip] and nic.tap_name == net.web.tap
    assert [(p.name, p.port, p.protocol) for p in nic.published_ports] == [("http", 80, "TCP")]
    assert 24000 <= nic.published_ports[0].node_port <= 24999  # allocated from the range
    clash = net_vm(
        "clash", "team-b", seed="seed.iso", ports=[{"port": 80, "nodePort": net.web.node_port}]
    )
    with pytest.raises(grpc.RpcError) as info:
        net.agent.apply(clash)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert "interfaces[0].ports[0].nodePort" in details and "team-a/web" in details


def test_guest_gets_its_lease_from_the_vm_cidr_within_a_second(net: Net) -> None:
    leases = {}
    for line in net.agent.log_path.read_text().splitlines():
        found = LEASE.search(line)
        if found:
            leases[found.group(2)] = (found.group(1), float(found.group(4)) / 1000)
    for guest in net.guests():
        assert guest.ip.startswith("10.250.") and guest.ip != GATEWAY
        assert f"VIRT-AGENT-NIC eth0 {guest.mac} {guest.ip}/16" in console(net.agent, guest)
        ip, waited = leases[guest.mac]
        assert ip == guest.ip
        assert waited < 1.0, f"{guest.name} waited {waited:.3f} s for its lease"


def test_dhcp_hands_out_gateway_dns_mtu_and_host_name(net: Net) -> None:
    result = guest_exec(
        net.node,
        net.web.ip,
        "ip route; cat /etc/resolv.conf; cat /sys/class/net/eth0/mtu; hostname",
    )
    assert result.ok, result.output
    assert f"default via {GATEWAY} dev eth0" in result.output
    assert f"nameserver {DNS}" in result.output
    assert f"\n{UPLINK_MTU}\n" in result.output
    assert result.output.rstrip().endswith("web")


# -- 3. egress -------------------------------------------------------------------------------


def test_egress_is_masqueraded_to_the_node_uplink_address(net: Net) -> None:
    result = guest_exec(net.node, net.web.ip, f"wget -q -O - {net.world.http_url}")
    assert result.ok, result.output
    assert f"client={net.node.uplink_ip}" in result.output


def test_guests_cannot_reach_cloud_metadata(net: Net) -> None:
    # The world plays the cloud: an HTTP server at the metadata address, which the node
    # reaches; the guests must not (they would read the node's credentials).
    metadata = "169.254.169.254"
    world_addr = ["ip", "-n", net.world.netns, "addr"]
    subprocess.run([*world_addr, "add", f"{metadata}/32", "dev", net.world.bridge], check=True)
    server = subprocess.Popen(
        ["ip", "netns", "exec", net.world.netns, sys.executable, "-m", "http.server",
         "--bind", metadata, "80"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: node_get(net.node, metadata, 80, timeout=2), 20, 0.3, "metadata server")
        result = guest_exec(net.node, net.web.ip, f"timeout 5 wget -q -O - http://{metadata}/")
        assert not result.ok, result.output
        assert guest_exec(net.node, net.web.ip, f"wget -q -O - {net.world.http_url}").ok
    finally:
        server.terminate()
        server.wait(10)
        subprocess.run([*world_addr, "del", f"{metadata}/32", "dev", net.world.bridge], check=True)


# -- 4. published ports ----------------------------------------------------------------------


def test_published_port_reaches_the_guest_from_the_world_and_the_node(net: Net) -> None:
    web = net.web
    assert "hostname=web" in net.world.http_get(net.node.uplink_ip, web.node_port)
    assert "hostname=web" in (node_get(net.node, net.node.uplink_ip, web.node_port) or "")


def test_published_port_hairpins_for_guests(net: Net) -> None:
    url = f"http://{net.node.uplink_ip}:{net.web.node_port}/"
    for guest in (net.peer, net.web):  # another guest, and the guest itself
        result = guest_exec(net.node, guest.ip, f"timeout 10 wget -q -O - {url}")
        assert result.ok and "hostname=web" in result.output, (guest.name, result.output)


def test_undeclared_ports_are_not_reachable_from_outside(net: Net) -> None:
    web = net.web
    assert guest_exec(
        net.node, web.ip, "httpd -p 8081 -h /var/www"
    ).ok  # a guest port not published
    with pytest.raises(Exception, match="GET"):
        net.world.http_get(net.node.uplink_ip, web.node_port + 1, timeout=3)
    # Even a world that routes the VM network to the node gets nowhere but published ports.
    world_ns = ["ip", "-n", net.world.netns, "route"]
    subprocess.run([*world_ns, "add", CIDR, "via", net.node.uplink_ip], check=True)
    try:
        for port in (80, 8081):
            with pytest.raises(Exception, match="GET"):
                net.world.http_get(web.ip, port, timeout=3)
    finally:
        subprocess.run([*world_ns, "del", CIDR, "via", net.node.uplink_ip], check=True)
    assert "hostname=web" in (node_get(net.node, web.ip, 8081) or "")  # the guest does listen


# -- 5. isolation and anti-spoofing ----------------------------------------------------------


def test_same_namespace_vms_reach_each_other_other_namespaces_do_not(net: Net) -> None:
    fetch = "timeout 3 wget -q -O - http://{}/"
    ok = guest_exec(net.node, net.peer.ip, fetch.format(net.web.ip))
    assert ok.ok and "hostname=web" in ok.output, ok.output
    back = guest_exec(net.node, net.web.ip, fetch.format(net.peer.ip))
    assert back.ok and "hostname=peer" in back.output, back.output
    for target in (net.web, net.peer):
        denied = guest_exec(net.node, net.other.ip, fetch.format(target.ip))
        assert not denied.ok, f"team-b reached {target.name}: {denied.output}"
        ping = guest_exec(net.node, net.other.ip, f"ping -c 1 -W 2 {target.ip}")
        assert not ping.ok, ping.output
        reverse = guest_exec(net.node, target.ip, fetch.format(net.other.ip))
        assert not reverse.ok, f"{target.name} reached team-b: {reverse.output}"


def test_forged_source_ip_or_mac_gets_nothing_through(net: Net) -> None:
    world = net.world.ip
    ping = f"ping -c 1 -W 2 {world}"
    assert guest_exec(net.node, net.peer.ip, ping).ok  # the honest guest gets through
    before = nft_spoof_drops(net.node)
    forged_ip = guest_exec(
        net.node,
        net.peer.ip,
        f"ip addr add {net.web.ip}/32 dev eth0; ping -c 2 -W 2 -I {net.web.ip} {world}; "
        f"rc=$?; ip addr del {net.web.ip}/32 dev eth0; exit $rc",
    )
    assert not forged_ip.ok, forged_ip.output
    after_ip = nft_spoof_drops(net.node)
    assert after_ip >= before + 2  # both echo requests died at the node's door
    forged_mac = guest_exec(
        net.node,
        net.peer.ip,
        f"ip link set eth0 address 52:54:00:66:66:66; ping -c 2 -W 2 {world}; "
        f"rc=$?; ip link set eth0 address {net.peer.mac}; exit $rc",
    )
    assert not forged_mac.ok, forged_mac.output
    assert nft_spoof_drops(net.node) >= after_ip + 2
    assert guest_exec(net.node, net.peer.ip, ping).ok  # and works again once honest


# -- 8. bridge binding -----------------------------------------------------------------------


def test_bridge_nic_joins_the_host_bridge_and_gets_its_traffic(net: Net) -> None:
    other = net.other
    nic = status(net.agent, other).status.interfaces[1]
    assert nic.mac == "52:54:00:be:e0:01" and not nic.ip_addresses
    ports = run(net.node, "ip", "-o", "link", "show", "master", BRIDGE)
    assert f" {nic.tap_name}:" in ports
    found = re.search(
        rf"VIRT-AGENT-NIC eth1 {nic.mac} (198\.51\.100\.\d+)/24", console(net.agent, other)
    )
    assert found, console(net.agent, other)  # a lease from the bridge's own DHCP server
    assert "hostname=other" in (node_get(net.node, found.group(1)) or "")
    elements = str(nft_elements(net.node))
    assert nic.tap_name not in elements and nic.mac not in elements  # no NAT for it
    assert nic.mac not in net.agent.log_path.read_text()  # the agent gave it no lease


def test_missing_bridge_is_refused_naming_the_field(net: Net) -> None:
    doc = net_vm("lost", "team-b", seed="seed.iso", bridge_mac="52:54:00:be:e0:02")
    for name in ("nobr0", BRIDGE):  # a host link by its own name is not a bridge network
        doc["spec"]["template"]["spec"]["networks"][1]["multus"]["networkName"] = name
        with pytest.raises(grpc.RpcError) as info:
            net.agent.apply(doc)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.template.spec.networks[1].multus.networkName" in info.value.details()
        assert f"{name!r} is not a bridge network" in info.value.details()


# -- 6. nftables: repair, size, cleanup ------------------------------------------------------


def test_resyncs_of_a_healthy_node_repair_nothing(net: Net) -> None:
    """Routed, multi-queue and bridge taps measure as planned: no pass rewrites anything."""
    passes = net.agent.log_path.read_text().count("resync pass:")
    wait_for(
        lambda: net.agent.log_path.read_text().count("resync pass:") >= passes + 2,
        30,
        0.5,
        "two resync passes",
    )
    log = net.agent.log_path.read_text()
    assert "resync pass: 3 running vms measured, 0 repairs" in log
    assert "repaired:" not in log


def test_a_table_deleted_by_hand_comes_back_without_restarting_vms(net: Net) -> None:
    run(net.node, "nft", "delete", "table", "inet", TABLE)
    wait_for(lambda: nft_rule_count(net.node) == net.rules["one"], 30, 0.5, "the table to be back")
    assert "hostname=web" in net.world.http_get(net.node.uplink_ip, net.web.node_port)
    for guest in net.guests():
        assert status(net.agent, guest).status.qemu_pid == guest.qemu_pid


def test_agent_start_repairs_the_table_and_removes_leftovers(net: Net) -> None:
    net.agent.stop()
    stray = "va0123456789ab"  # as if left by a VM deleted while the agent was down
    try:
        run(net.node, "nft", "delete", "table", "inet", TABLE)
        run(net.node, "ip", "tuntap", "add", "dev", stray, "mode", "tap")
        run(net.node, "ip", "link", "set", stray, "alias", "virt-agent:team-z_gone/default", "up")
        run(net.node, "ip", "route", "add", "10.250.9.9/32", "dev", stray)
    finally:
        net.agent.start()
    assert nft_rule_count(net.node) == net.rules["one"]
    assert stray not in run(net.node, "ip", "-o", "link", "show")
    assert "hostname=web" in net.world.http_get(net.node.uplink_ip, net.web.node_port)
    for guest in net.guests():
        assert status(net.agent, guest).status.qemu_pid == guest.qemu_pid


def test_rule_count_is_the_same_with_1_and_50_vms(net: Net, tmp_path: Path) -> None:
    assert net.rules["none"] == net.rules["one"] == nft_rule_count(net.node) > 0
    names = [f"idle-{i:02d}" for i in range(47)]  # with web, peer and other: 50 VMs
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda n: net.agent.apply(idle_vm(n, "bulk", disk="idle.img"), timeout=120), names
            )
        )
    try:
        assert len(net.agent.vms.ListVirtualMachines(pb.ListVirtualMachinesRequest()).vms) == 50
        elements = nft_elements(net.node)
        assert len(elements["taps"]) == 50 and len(elements["guest_sources"]) == 50
        assert len(elements["fwd_addr"]) == len(elements["fwd_port"]) == 48
        assert len(elements["same_namespace"]) == 3  # team-a, team-b, bulk
        assert nft_rule_count(net.node) == net.rules["one"]
    finally:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda n: net.agent.vms.DeleteVirtualMachine(
                        pb.DeleteVirtualMachineRequest(
                            namespace="bulk", name=n, grace_period_seconds=0
                        ),
                        timeout=120,
                    ),
                    names,
                )
            )
    elements = nft_elements(net.node)
    assert len(elements["taps"]) == 3 and len(elements["same_namespace"]) == 2


def test_delete_leaves_no_tap_route_element_or_conntrack_entry(net: Net) -> None:
    web = net.web
    assert node_get(net.node, net.node.uplink_ip, web.node_port)  # tracked connections to it
    assert guest_exec(net.node, web.ip, f"wget -q -O /dev/null {net.world.http_url}").ok
    assert conntrack_lines(net.node, web.ip)
    net.agent.vms.DeleteVirtualMachine(
        pb.DeleteVirtualMachineRequest(namespace="team-a", name="web", grace_period_seconds=0),
        timeout=60,
    )
    assert web.tap not in run(net.node, "ip", "-o", "link", "show")
    routes = run(net.node, "ip", "route", "show", "table", "all")
    assert not re.search(rf"(^|\s){re.escape(web.ip)}(\s|$)", routes, re.M), routes
    elements = nft_elements(net.node)
    assert web.tap not in elements["taps"]
    assert not [e for e in elements["guest_sources"] if web.tap in e["concat"]]
    assert not [e for e in elements["fwd_addr"] if e[1] == web.ip]
    assert not [e for e in elements["fwd_port"] if e[0]["concat"][1] == web.node_port]
    assert conntrack_lines(net.node, web.ip) == []


def test_foreign_tables_are_byte_for_byte_unchanged(net: Net) -> None:
    net.agent.delete_all()
    assert foreign_tables(net.node) == net.foreign
    assert nft_elements(net.node)["taps"] == []
    assert not [
        line for line in run(net.node, "ip", "-o", "link", "show").splitlines() if ": va" in line
    ]
