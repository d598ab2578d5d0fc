"""Time to guest network on real QEMU (TCG): from the start call to the guest's first HTTP
answer on its address, through the agent (masquerade NIC: tap, nft, the agent's DHCP)
against raw libvirt with a hand-made tap and dnsmasq, both inside the node's namespace."""

from __future__ import annotations

import subprocess
import time

import libvirt

from bench.harness import Bench
from bench.qemunode import QemuNode, is_running, qemu_node, raw_xml, vm_doc, wait_until

TITLE = "Start call -> the guest's first HTTP answer on its address (TCG guest boot included)"
BASELINE = "raw libvirt-python + a hand-made tap (10.251.0.1/24) + dnsmasq in the node's netns"
TAP, GATEWAY, GUEST_IP, MAC = "vbraw0", "10.251.0.1", "10.251.0.10", "52:54:00:be:ec:01"


def answered(poller: subprocess.Popen[bytes], started: float, timeout: float = 180) -> float:
    out, _ = poller.communicate(timeout=timeout)
    if poller.returncode != 0:
        raise RuntimeError("the guest never answered HTTP on its address")
    return float(out.decode().split()[0]) - started


def agent_round(qn: QemuNode, name: str) -> float:
    started = time.monotonic()
    vm = qn.apply(vm_doc(name, network=True))
    ips = list(vm.status.interfaces[0].ip_addresses) if vm.status.interfaces else []
    if not ips:
        ips = wait_until(
            lambda: list(qn.agent.get(name).status.interfaces[0].ip_addresses), 30, "an address"
        )
    took = answered(qn.spawn_poller(ips[0]), started)
    qn.delete(name)
    return took


def make_tap(qn: QemuNode, qemu_user: str) -> subprocess.Popen[bytes]:
    for argv in (
        ["ip", "tuntap", "add", "dev", TAP, "mode", "tap", "user", qemu_user],
        ["ip", "addr", "add", f"{GATEWAY}/24", "dev", TAP],
        ["ip", "link", "set", TAP, "up"],
    ):
        proc = qn.node.exec(argv)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    folder = qn.raw_folder("dnsmasq")
    return qn.node.spawn(
        ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
         f"--interface={TAP}", "--bind-interfaces", "--user=root", "--group=root",
         f"--dhcp-range={GUEST_IP},{GUEST_IP},255.255.255.0,1h", f"--dhcp-host={MAC},{GUEST_IP}",
         f"--dhcp-option=3,{GATEWAY}", "--dhcp-option=6", f"--dhcp-leasefile={folder / 'leases'}",
         f"--pid-file={folder / 'pid'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def raw_round(qn: QemuNode, xml: str, name: str) -> float:
    started = time.monotonic()
    dom = qn.conn.defineXML(xml)
    dom.create()
    took = answered(qn.spawn_poller(GUEST_IP), started)
    qn.destroy_raw(name)
    (qn.raw_folder("dnsmasq") / "leases").unlink(missing_ok=True)
    return took


def run(bench: Bench, quick: bool) -> None:
    rounds = 2 if quick else 5
    with qemu_node() as qn:
        qn.apply(vm_doc("template", network=True))
        wait_until(lambda: is_running(qn.conn, "default_template"), 60, "template running")
        dom = qn.conn.lookupByName("default_template")
        template = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        qemu_user = dom.XMLDesc(0).split("model='dac'", 1)[-1]
        qemu_user = qemu_user.split("<label>+", 1)[1].split(":", 1)[0] if "+" in qemu_user else "0"
        qn.delete("template")
        dnsmasq = make_tap(qn, qemu_user)
        try:
            agent, raw = [], []
            for r in range(rounds):
                name = f"rawnet-{r}"
                xml = raw_xml(template, name, qn.raw_folder(name), tap=TAP, mac=MAC)
                raw.append(raw_round(qn, xml, name))
                agent.append(agent_round(qn, f"net-{r}"))
        finally:
            dnsmasq.terminate()
            dnsmasq.wait(10)
    row = bench.row("start -> first HTTP answer from the guest", agent, raw, unit="s", scale=1.0)
    bench.note(
        f"{rounds} rounds, interleaved; includes the TCG guest's boot and DHCP "
        f"(agent/raw difference {row['agent']['median'] - row['baseline']['median']:+.2f} s)"
    )
