"""Start on real QEMU (TCG, node in a box): Apply (runStrategy Always) through gRPC until the
domain runs, without and with networking (tap + nft + DHCP ready), against the same domain
XML defined and started with raw libvirt-python; and, to tell the agent's own networking
cost from libvirt's and QEMU's, the NIC's domain XML started raw on a hand-made tap."""

from __future__ import annotations

import time

import libvirt

from bench.bench_guestnet import MAC, TAP
from bench.harness import Bench
from bench.qemunode import QemuNode, is_running, qemu_node, raw_xml, vm_doc, wait_until

TITLE = "Apply+Start until the domain runs, real QEMU (TCG), without and with networking"
BASELINE = "the agent's domain XML (no NIC) defined and started with raw libvirt-python"


def agent_start(qn: QemuNode, name: str, *, network: bool) -> float:
    started = time.perf_counter()
    qn.apply(vm_doc(name, network=network))
    wait_until(lambda: is_running(qn.conn, f"default_{name}"), 60, f"{name} running")
    took = time.perf_counter() - started
    qn.delete(name)
    return took


def raw_start(qn: QemuNode, xml: str, name: str) -> float:
    started = time.perf_counter()
    dom = qn.conn.defineXML(xml)
    dom.create()
    wait_until(lambda: is_running(qn.conn, name), 60, f"{name} running")
    took = time.perf_counter() - started
    qn.destroy_raw(name)
    return took


def templates(qn: QemuNode) -> tuple[str, str, str]:
    """The agent's domain XML without and with a NIC, and the user QEMU runs as."""
    found = []
    for network in (False, True):
        name = f"template-{'net' if network else 'plain'}"
        qn.apply(vm_doc(name, network=network))
        wait_until(lambda n=name: is_running(qn.conn, f"default_{n}"), 60, f"{name} running")
        dom = qn.conn.lookupByName(f"default_{name}")
        found.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        label = dom.XMLDesc(0).split("model='dac'", 1)[-1]
        qemu_user = label.split("<label>+", 1)[1].split(":", 1)[0] if "+" in label else "0"
        qn.delete(name)
    return found[0], found[1], qemu_user


def make_tap(qn: QemuNode, qemu_user: str) -> None:
    """A persistent tap in the node's namespace for the raw NIC start (nothing behind it)."""
    for argv in (
        ["ip", "tuntap", "add", "dev", TAP, "mode", "tap", "user", qemu_user],
        ["ip", "link", "set", TAP, "up"],
    ):
        proc = qn.node.exec(argv)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


def run(bench: Bench, quick: bool) -> None:
    rounds = 2 if quick else 7
    with qemu_node() as qn:
        plain_xml, net_xml, qemu_user = templates(qn)
        make_tap(qn, qemu_user)
        agent_plain, agent_net, raw, raw_nic = [], [], [], []
        for r in range(rounds):  # interleaved, so that load changes hit all four alike
            name = f"raw-{r}"
            raw.append(raw_start(qn, raw_xml(plain_xml, name, qn.raw_folder(name)), name))
            name = f"rawnic-{r}"
            xml = raw_xml(net_xml, name, qn.raw_folder(name), tap=TAP, mac=MAC)
            raw_nic.append(raw_start(qn, xml, name))
            agent_plain.append(agent_start(qn, f"plain-{r}", network=False))
            agent_net.append(agent_start(qn, f"net-{r}", network=True))
    plain = bench.row("Apply+Start, no network", agent_plain, raw)
    net = bench.row("Apply+Start, masquerade NIC (tap+nft+DHCP)", agent_net, raw)
    nic = bench.row("Apply+Start, masquerade NIC, vs raw with that NIC", agent_net, raw_nic)
    ratio = plain["ratio"]
    overhead = net["agent"]["median"] - plain["agent"]["median"]
    qemu_nic = nic["baseline"]["median"] - plain["baseline"]["median"]
    bench.target("start ratio <= 1.10 without networking", f"{ratio:.2f}x", ratio <= 1.10)
    bench.target("networking overhead <= 50 ms", f"{overhead:.0f} ms", overhead <= 50)
    bench.note(
        f"{rounds} rounds, interleaved; timed from the call to libvirt reporting the domain "
        "active (polled every 5 ms on the raw connection); guest boot is not included"
    )
    bench.note(
        f"the NIC itself (raw libvirt, same XML on a hand-made tap) costs libvirt+QEMU "
        f"{qemu_nic:.0f} ms of the {overhead:.0f} ms networking overhead; the agent's own "
        f"share: {overhead - qemu_nic:.0f} ms"
    )
