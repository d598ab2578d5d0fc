"""Footprint: the agent's RSS and CPU while idle, and with 500 VMs defined and running (test
driver), against a floor process: Python with grpc, libvirt and a health server, no agent."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import ROOT, Bench, cpu_seconds, rss_mib
from bench.testdriver import RAW_XML, TestDriverAgent

TITLE = "agent RSS and CPU idle and with 500 VMs (test driver)"
BASELINE = (
    "a floor process: Python importing grpcio and libvirt-python, one test-driver connection "
    "holding the same number of running domains, a gRPC server with the health service"
)
FLOOR = r"""
import sys, time, grpc, libvirt
from concurrent import futures
from grpc_health.v1 import health, health_pb2_grpc
conn = libvirt.open("test:///default")
for i in range(int(sys.argv[2])):
    conn.defineXML(sys.argv[3].format(name=f"floor_{i}")).create()
server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
server.add_insecure_port("unix:" + sys.argv[1])
server.start()
print("ready", flush=True)
time.sleep(3600)
"""


def idle(pid: int, seconds: float) -> tuple[float, float]:
    """(RSS MiB, CPU millicores) over ``seconds`` of doing nothing."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    used = cpu_seconds(pid) - before
    return rss_mib(pid), used / seconds * 1000


def floor(count: int, settle: float, window: float) -> tuple[float, float]:
    folder = Path(tempfile.mkdtemp(prefix="va-bench-floor-"))
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOOR, str(folder / "floor.sock"), str(count), RAW_XML],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(settle)
        return idle(proc.pid, window)
    finally:
        proc.kill()
        proc.wait(10)
        (folder / "floor.sock").unlink(missing_ok=True)
        folder.rmdir()


IMPORTS = r"""
import re, sys
def rss():
    return int(re.search(r"VmRSS:\s*(\d+)", open("/proc/self/status").read()).group(1)) / 1024
import grpc, libvirt
floor = rss()
import agent.app
print(floor, rss())
"""


def import_cost() -> tuple[float, float]:
    """RSS (MiB) of a Python that imports grpcio and libvirt-python, then the agent."""
    out = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()  # fmt: skip
    return float(out[0]), float(out[1])


def run(bench: Bench, quick: bool) -> None:
    count = 100 if quick else 500
    settle, window = (2.0, 3.0) if quick else (5.0, 15.0)
    with TestDriverAgent() as agent:
        time.sleep(settle)
        rss0, cpu0 = idle(agent.pid, window)
        for i in range(count):
            agent.apply(f"vm-{i:04d}")
        time.sleep(settle)
        rss1, cpu1 = idle(agent.pid, window)
    frss0, fcpu0 = floor(0, settle, window)
    frss1, fcpu1 = floor(count, settle, window)
    bench.row("RSS idle, no VMs", [rss0], [frss0], unit="MiB", scale=1.0)
    bench.row(f"RSS idle, {count} VMs", [rss1], [frss1], unit="MiB", scale=1.0)
    bench.row("CPU idle, no VMs", [cpu0], [fcpu0], unit="millicores", scale=1.0)
    bench.row(f"CPU idle, {count} VMs", [cpu1], [fcpu1], unit="millicores", scale=1.0)
    bench.target("idle RSS <= 80 MiB", f"{rss0:.1f} MiB", rss0 <= 80.0)
    bench.target(f"RSS <= 150 MiB with {count} VMs", f"{rss1:.1f} MiB", rss1 <= 150.0)
    bench.note(f"CPU averaged over {window:.0f} s after {settle:.0f} s of settling")
    libs, imported = import_cost()
    bench.note(
        f"of the idle RSS, {libs:.0f} MiB is Python with grpcio and libvirt-python imported and "
        f"{imported - libs:.0f} MiB the agent's imports (its libraries: pyroute2, cryptography, "
        f"prometheus_client, pycdlib, httpx, ... and its own modules); {rss0 - imported:.0f} "
        "MiB is made at run time (threads, caches, the libvirt connection)"
    )
