"""Metrics scrape at 10, 100 and 500 domains (test driver) against one raw
``getAllDomainStats`` call; the pieces come from ``bench/bench_metrics.py``."""

from __future__ import annotations

from typing import Any

import libvirt

from agent.adapters.libvirt import LibvirtHypervisor
from agent.adapters.libvirt_stats import raw_all_domain_stats
from agent.metrics.ports import VMView
from bench.bench_metrics import NAMESPACE, TEST_XML, Replayed, scrape, serve
from bench.harness import Bench, timed

TITLE = "GET /metrics at 10/100/500 domains (test driver)"
BASELINE = "one raw getAllDomainStats call (same stats groups and flags as the agent)"


def measure(bench: Bench, conn: Any, hv: LibvirtHypervisor, names: list[str], runs: int) -> float:
    """Rows for one size; returns the ratio of the full-record scrape to the raw call."""
    views = [VMView(f"{NAMESPACE}_{n}", NAMESPACE, n, "running") for n in names]
    raw = timed(lambda: raw_all_domain_stats(conn), runs)
    ratio = 0.0
    for what, source in (("scrape", hv), ("scrape, recorded QEMU records", Replayed(hv))):
        server = serve(source, views)
        try:
            size = len(scrape(server.port))  # warm up
            agent = timed(lambda server=server: scrape(server.port), runs)
        finally:
            server.stop()
        row = bench.row(f"{what} at {len(names)}", agent, raw, bytes=size)
        ratio = row["ratio"]
    return ratio


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
        f"scrape at {counts[-1]} domains <= 2x the raw call (recorded QEMU records)",
        f"{ratio:.2f}x",
        ratio <= 2.0,
    )
    bench.note(
        "the test driver reports state only; 'recorded QEMU records' replaces each record "
        "with a real QEMU one (2 vCPUs, balloon, 1 NIC, 1 disk) to cost the conversion"
    )
