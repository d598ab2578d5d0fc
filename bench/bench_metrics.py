"""Scrape cost of /metrics against one raw libvirt getAllDomainStats call, in the same run.

On libvirt's test driver (test:///default) it defines and starts 10, 100 and 500 domains
and, for each count, times (median of --runs):

  raw       one getAllDomainStats call (same stats groups and flags as the agent)
  scrape    GET /metrics from the agent's metrics server (bulk call, conversion, exposition)
  full      the same scrape with every test-driver record replaced by a recorded QEMU record
            (2 vCPUs, balloon, 1 NIC, 1 disk): the test driver reports state only, so this
            shows the conversion cost at real record sizes

and prints milliseconds, bytes and the scrape/raw ratio (goal: at most 2x). It passes or
fails nothing.

Real libvirtd with running TCG guests (not part of the test suite; needs root and the
test guest from hack/build-test-guest.sh):

    .venv/bin/python bench/bench_metrics.py --uri qemu:///system --tcg-guests 20 \\
        --guest-dir "$(hack/build-test-guest.sh | tail -n 1)"

boots that many transient guests named bench_tcg-NN (no network, 96 MiB, software
emulation), measures raw call and scrape on them, and destroys them.

Run: .venv/bin/python bench/bench_metrics.py [--counts 10,100,500] [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from agent.adapters.libvirt import LibvirtHypervisor
from agent.adapters.libvirt_stats import raw_all_domain_stats
from agent.metrics.bounded import BoundedStats
from agent.metrics.http import MetricsServer
from agent.metrics.ports import DomainStats, NodeFacts, VMView
from agent.metrics.setup import build_endpoint

NAMESPACE = "bench"
TEST_XML = """<domain type='test'><name>{name}</name><memory unit='MiB'>128</memory>
<vcpu>2</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"""
TCG_XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>96</memory>
<vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type>
<kernel>{kernel}</kernel><initrd>{initrd}</initrd><cmdline>console=ttyS0 quiet</cmdline></os>
<devices><serial type='null'/><memballoon model='virtio'><stats period='5'/></memballoon>
</devices></domain>"""
QEMU_RECORD: dict[str, Any] = {
    "state.state": 1, "state.reason": 1, "cpu.time": 12_500_000_000, "cpu.user": 2_000_000_000,
    "cpu.system": 3_000_000_000, "balloon.current": 262144, "balloon.maximum": 262144,
    "balloon.swap_in": 0, "balloon.swap_out": 0, "balloon.major_fault": 120,
    "balloon.minor_fault": 54000, "balloon.unused": 100000, "balloon.available": 240000,
    "balloon.usable": 180000, "balloon.disk_caches": 30000, "balloon.rss": 150000,
    "vcpu.current": 2, "vcpu.maximum": 2,
    **{f"vcpu.{i}.{k}": v for i in (0, 1) for k, v in
       (("state", 1), ("time", 5_000_000_000), ("wait", 1000), ("delay", 2000))},
    "net.count": 1, "net.0.name": "va1a2b3c4d5e6",
    **{f"net.0.{d}.{k}": 1000 for d in ("rx", "tx") for k in ("bytes", "pkts", "errs", "drop")},
    "block.count": 1, "block.0.name": "vda", "block.0.path": "/var/lib/virt-agent/disk.qcow2",
    **{f"block.0.{k}": 1000 for k in ("rd.reqs", "rd.bytes", "rd.times", "wr.reqs", "wr.bytes",
                                      "wr.times", "fl.reqs", "fl.times")},
}  # fmt: skip
FACTS = NodeFacts("bench", cpus=64, memory_bytes=256 << 30, reserved_memory_bytes=1 << 30,
                  virt_type="qemu")  # fmt: skip


def median_ms(call: Callable[[], object], runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, result


class Replayed:
    """The real bulk call, with each record's stats replaced by a recorded QEMU record."""

    def __init__(self, hv: LibvirtHypervisor) -> None:
        self.hv = hv

    def all_domain_stats(self) -> list[DomainStats]:
        return [DomainStats(r.name, dict(QEMU_RECORD)) for r in self.hv.all_domain_stats()]


def serve(source: Any, views: list[VMView]) -> MetricsServer:
    endpoint = build_endpoint(BoundedStats(source, bound=30.0), lambda: views, lambda: FACTS)
    server = MetricsServer(endpoint, "127.0.0.1:0", ready=lambda: True)
    server.start()
    return server


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as reply:
        return bytes(reply.read())


def measure(
    conn: Any, hv: LibvirtHypervisor, names: list[str], runs: int, *, replay: bool = True
) -> None:
    views = [VMView(f"{NAMESPACE}_{n}", NAMESPACE, n, "running") for n in names]
    raw_ms, raw = median_ms(lambda: raw_all_domain_stats(conn), runs)
    assert isinstance(raw, list)
    line = f"{len(names):4d} domains  raw {raw_ms:8.2f} ms ({len(raw)} records)"
    variants: list[tuple[str, Any]] = [("scrape", hv)]
    if replay:  # the test driver's records are state only; real libvirt's are full already
        variants.append(("full", Replayed(hv)))
    for what, source in variants:
        server = serve(source, views)
        try:
            scrape(server.port)  # warm up
            ms, body = median_ms(lambda server=server: scrape(server.port), runs)
        finally:
            server.stop()
        assert isinstance(body, bytes)
        line += f" | {what} {ms:8.2f} ms {len(body) / 1024:8.1f} KiB ratio {ms / raw_ms:6.1f}x"
    print(line, flush=True)


def test_driver(counts: list[int], runs: int) -> None:
    conn = libvirt.open("test:///default")
    hv = LibvirtHypervisor("test:///default")
    hv.open()
    names: list[str] = []
    try:
        for count in counts:
            while len(names) < count:
                name = f"vm-{len(names):04d}"
                conn.defineXML(TEST_XML.format(name=f"{NAMESPACE}_{name}")).create()
                names.append(name)
            measure(conn, hv, names, runs)
    finally:
        for name in names:
            dom = conn.lookupByName(f"{NAMESPACE}_{name}")
            dom.destroy()
            dom.undefine()
        hv.close()
        conn.close()


def tcg_guests(uri: str, count: int, guest_dir: Path, runs: int) -> None:
    conn = libvirt.open(uri)
    hv = LibvirtHypervisor(uri)
    hv.open()
    names = [f"tcg-{i:02d}" for i in range(count)]
    try:
        for name in names:
            conn.createXML(TCG_XML.format(name=f"{NAMESPACE}_{name}",
                                          kernel=guest_dir / "vmlinuz",
                                          initrd=guest_dir / "initrd.img"), 0)  # fmt: skip
        time.sleep(10)  # let the guests boot past firmware so every stat group has values
        measure(conn, hv, names, runs, replay=False)
    finally:
        for name in names:
            try:
                conn.lookupByName(f"{NAMESPACE}_{name}").destroy()
            except libvirt.libvirtError:
                pass
        hv.close()
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="10,100,500")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--uri", default="test:///default")
    parser.add_argument("--tcg-guests", type=int, default=0)
    parser.add_argument("--guest-dir", type=Path)
    args = parser.parse_args()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    if args.tcg_guests:
        if args.guest_dir is None:
            parser.error("--tcg-guests needs --guest-dir (hack/build-test-guest.sh's output)")
        tcg_guests(args.uri, args.tcg_guests, args.guest_dir, args.runs)
        return
    test_driver([int(c) for c in args.counts.split(",")], args.runs)


if __name__ == "__main__":
    main()
