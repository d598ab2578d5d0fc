"""Live migration between two nodes in a box: total time and downtime of the same booted TCG
guest moved through the agents (MigrateVirtualMachine, watched to the end) against raw
``migrateToURI3`` (peer-to-peer, the agent's flags) between the same two libvirtds."""

from __future__ import annotations

import time
from typing import Any

import libvirt

from agent.api._gen.virtagent.v1 import migration_service_pb2 as mpb
from agent.client import AgentClient
from bench.harness import ROOT, Bench
from bench.qemunode import CIDR, DNS, is_running, raw_xml, vm_doc, wait_until
from tests.system.agentproc import AgentProcess
from tests.testbed.nodebox import NodeBox, TwoNodes, build_test_guest

TITLE = "live migration of a booted 128 MiB TCG guest: total time and downtime"
BASELINE = "raw migrateToURI3 (LIVE|PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE) between the same nodes"
PORT = 7443
POOLS = {"node-a": "10.250.1.0/24", "node-b": "10.250.2.0/24"}
READY = "VIRT-AGENT-READY"
FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
)


def start_agent(node: NodeBox, guest: Any) -> AgentProcess:
    args = ["--listen", f"{node.uplink_ip}:{PORT}", "--insecure", "--vm-cidr", CIDR]
    args += ["--node-vm-pool", POOLS[node.name], "--dns", DNS, "--log-level", "info"]
    agent = AgentProcess(node=node, guest=guest, dir=node.dir / "agent", extra_args=args)
    agent.start(timeout=120)
    return agent


def agent_move(src: AgentProcess, dst: AgentProcess, name: str) -> tuple[float, float]:
    with AgentClient(f"unix:{src.socket}", timeout=60) as client:
        started = time.perf_counter()
        migration = client.migrate("default", name, f"{dst.node.uplink_ip}:{PORT}")
        final = list(client.watch_migration(migration.id, timeout=300))[-1]
        took = time.perf_counter() - started
    if final.state != mpb.MIGRATION_STATE_SUCCEEDED:
        raise RuntimeError(f"agent migration ended {final.state}: {final.message}")
    return took, float(final.downtime_ms)


def raw_move(src: Any, dst: Any, dst_node: NodeBox, name: str) -> tuple[float, float]:
    params = {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{dst_node.uplink_ip}"}
    dom = src.lookupByName(name)
    started = time.perf_counter()
    dom.migrateToURI3(dst_node.tcp_uri, params, FLAGS)
    took = time.perf_counter() - started
    stats = dst.lookupByName(name).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    return took, float(stats.get("downtime", 0))


def run(bench: Bench, quick: bool) -> None:
    moves = 2 if quick else 6
    guest = build_test_guest(ROOT)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    with TwoNodes.start() as pair:
        a, b = start_agent(pair.a, guest), start_agent(pair.b, guest)
        conns = [libvirt.open(n.libvirt_uri) for n in (pair.a, pair.b)]
        try:
            measure(bench, (a, b), conns, moves)
        finally:
            for agent in (a, b):
                agent.delete_all()
                agent.stop()
            for name in ("raw-mover",):
                for conn in conns:
                    try:
                        conn.lookupByName(name).destroy()
                    except libvirt.libvirtError:
                        pass
            for conn in conns:
                conn.close()


def measure(bench: Bench, agents: tuple[AgentProcess, AgentProcess], conns: list[Any],
            moves: int) -> None:  # fmt: skip
    a, b = agents
    a.apply(vm_doc("mover", network=False), timeout=120)
    a.wait_console("mover", READY, timeout=180)
    template = conns[0].lookupByName("default_mover").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    folder = a.node.dir / "raw" / "raw-mover"
    folder.mkdir(parents=True)
    for path in (folder.parent, folder):
        path.chmod(0o777)
    conns[0].defineXML(raw_xml(template, "raw-mover", folder)).create()
    wait_until(lambda: READY in read(folder / "console.log"), 180, "the raw guest booted", 0.2)
    agent_total, agent_down, raw_total, raw_down = [], [], [], []
    for i in range(moves):  # there and back again, interleaved
        src, dst = (0, 1) if i % 2 == 0 else (1, 0)
        took, down = agent_move(agents[src], agents[dst], "mover")
        agent_total.append(took)
        agent_down.append(down / 1000)
        wait_until(lambda dst=dst: is_running(conns[dst], "default_mover"), 30, "moved")
        took, down = raw_move(conns[src], conns[dst], (a.node, b.node)[dst], "raw-mover")
        raw_total.append(took)
        raw_down.append(down / 1000)
    total = bench.row("total time", agent_total, raw_total, unit="s", scale=1.0)
    bench.row("downtime", agent_down, raw_down)
    ratio = total["ratio"]
    bench.target("migration total <= 1.10x raw", f"{ratio:.2f}x", ratio <= 1.10)
    bench.note(f"{moves} moves, alternating node-a -> node-b -> node-a, agent and raw interleaved")


def read(path: Any) -> str:
    try:
        return str(path.read_text(errors="replace"))
    except OSError:
        return ""
