"""Metrics scrape at 10, 100 and 500 domains (test driver) against one raw
``getAllDomainStats`` call; the pieces come from ``bench/bench_metrics.py``."""

from __future__ import annotations

from typing import Any

import libvirt

from agent.adapters.libvirt import LibvirtHypervisor
from agent.adapters.libvirt_stats import raw_all_domain_stats
from agent.metrics.ports import VMView
from bench.bench_metrics import NAMESPACE, TCG_XML, TEST_XML, Replayed, scrape, serve
from bench.harness import Bench, timed
from bench.qemunode import qemu_node, wait_until

TITLE = "GET /metrics at 10/100/500 domains (test driver)"
BASELINE = "one raw getAllDomainStats call (same stats groups and flags as the agent)"


def measure(
    bench: Bench, conn: Any, hv: LibvirtHypervisor, names: list[str], runs: int, real: bool = False
) -> float:
    """Rows for one size; returns the ratio of the (full-record) scrape to the raw call."""
    views = [VMView(f"{NAMESPACE}_{n}", NAMESPACE, n, "running") for n in names]
    raw = timed(lambda: raw_all_domain_stats(conn), runs)
    ratio = 0.0
    sources: list[tuple[str, Any]] = [("scrape, real libvirtd + TCG guests", hv)]
    if not real:
        sources = [("scrape", hv), ("scrape, recorded QEMU records", Replayed(hv))]
    for what, source in sources:
        server = serve(source, views)
        try:
            size = len(scrape(server.port))  # warm up
            agent = timed(lambda server=server: scrape(server.port), runs)
        finally:
            server.stop()
        row = bench.row(f"{what} at {len(names)}", agent, raw, bytes=size)
        ratio = row["ratio"]
    return ratio


def real_guests(bench: Bench, count: int, runs: int) -> float:
    """The same on a node in a box: ``count`` running TCG guests (no network, 96 MiB)."""
    with qemu_node() as qn:
        names = [f"tcg-{i}" for i in range(count)]
        for name in names:
            xml = TCG_XML.format(
                name=f"{NAMESPACE}_{name}", kernel=qn.guest.kernel, initrd=qn.guest.initrd
            )
            qn.conn.createXML(xml, 0)
        hv = LibvirtHypervisor(qn.node.libvirt_uri)
        hv.open()
        try:
            # until every guest's balloon driver reports, so each stats group has values
            wait_until(lambda: all(booted(r.stats) for r in hv.all_domain_stats()), 120,
                       "balloon stats from every guest", 0.5)  # fmt: skip
            return measure(bench, qn.conn, hv, names, runs, real=True)
        finally:
            hv.close()
            for name in names:
                qn.destroy_raw(f"{NAMESPACE}_{name}")


def booted(stats: dict[str, Any]) -> bool:
    return "balloon.unused" in stats


def run(bench: Bench, quick: bool) -> None:
    counts = [10, 100] if quick else [10, 100, 500]
    runs = 5 if quick else 20
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")
    hv = LibvirtHypervisor("test:///default")
    hv.open()
    names: list[str] = []
    ratio = 0.0
    try:
        for count in counts:
            while len(names) < count:
                name = f"vm-{len(names):04d}"
                conn.defineXML(TEST_XML.format(name=f"{NAMESPACE}_{name}")).create()
                names.append(name)
            ratio = measure(bench, conn, hv, names, runs)
    finally:
        for name in names:
            dom = conn.lookupByName(f"{NAMESPACE}_{name}")
            dom.destroy()
            dom.undefine()
        hv.close()
        conn.close()
    bench.target(
        f"scrape at {counts[-1]} domains <= 2x the raw call (test driver, recorded records)",
        f"{ratio:.2f}x",
        ratio <= 2.0,
    )
    guests = 3 if quick else 6
    real = real_guests(bench, guests, runs)
    bench.target(
        f"scrape <= 2x the raw call on real libvirtd ({guests} running TCG guests)",
        f"{real:.2f}x",
        real <= 2.0,
    )
    bench.note(
        "the test driver reports state only; 'recorded QEMU records' replaces each record "
        "with a real QEMU one (2 vCPUs, balloon, 1 NIC, 1 disk) to cost the conversion"
    )
