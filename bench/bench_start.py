"""Start on real QEMU (TCG, node in a box): Apply (runStrategy Always) through gRPC until the
domain runs, without and with networking (tap + nft + DHCP ready), against the same domain
XML defined and started with raw libvirt-python."""

from __future__ import annotations

import time

import libvirt

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


def run(bench: Bench, quick: bool) -> None:
    rounds = 2 if quick else 7
    with qemu_node() as qn:
        qn.apply(vm_doc("template", network=False))
        wait_until(lambda: is_running(qn.conn, "default_template"), 60, "template running")
        template = qn.conn.lookupByName("default_template").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        qn.delete("template")
        agent_plain, agent_net, raw = [], [], []
        for r in range(rounds):  # interleaved, so that load changes hit all three alike
            raw_name = f"raw-{r}"
            raw.append(
                raw_start(qn, raw_xml(template, raw_name, qn.raw_folder(raw_name)), raw_name)
            )
            agent_plain.append(agent_start(qn, f"plain-{r}", network=False))
            agent_net.append(agent_start(qn, f"net-{r}", network=True))
    plain = bench.row("Apply+Start, no network", agent_plain, raw)
    net = bench.row("Apply+Start, masquerade NIC (tap+nft+DHCP)", agent_net, raw)
    ratio = plain["ratio"]
    overhead = net["agent"]["median"] - plain["agent"]["median"]
    bench.target("start ratio <= 1.10 without networking", f"{ratio:.2f}x", ratio <= 1.10)
    bench.target("networking overhead <= 50 ms", f"{overhead:.0f} ms", overhead <= 50)
    bench.note(
        f"{rounds} rounds, interleaved; timed from the call to libvirt reporting the domain "
        "active (polled every 5 ms on the raw connection); guest boot is not included"
    )
