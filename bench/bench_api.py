"""Agent overhead on libvirt's test driver: gRPC verbs against raw libvirt-python calls.

Prints figures and ratios measured in the same run; it passes or fails nothing.
Run: .venv/bin/python bench/bench_api.py [--vms 50] [--reads 500]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import libvirt
from google.protobuf import json_format

from agent.api._gen.virtagent.v1 import vm_pb2, vm_service_pb2_grpc
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from agent.app import build_agent
from agent.config import Settings

RAW_XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory>
<os><type arch='x86_64' machine='q35'>hvm</type></os></domain>"""


def vm(name: str) -> vm_pb2.VirtualMachine:
    doc = {
        "metadata": {"namespace": "bench", "name": name},
        "spec": {
            "runStrategy": "Always",
            "template": {"spec": {"domain": {"memory": {"guest": "128Mi"}}}},
        },
    }
    return json_format.ParseDict(doc, vm_pb2.VirtualMachine())


def timed(calls: list[Callable[[], object]]) -> list[float]:
    out = []
    for call in calls:
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def report(what: str, agent: list[float], raw: list[float]) -> None:
    def p(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000

    ratio = statistics.median(agent) / statistics.median(raw)
    print(
        f"{what:<28} agent p50 {p(agent, 0.5):7.2f} ms p95 {p(agent, 0.95):7.2f} ms | "
        f"raw libvirt p50 {p(raw, 0.5):7.2f} ms | ratio {ratio:5.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--reads", type=int, default=500)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="va-bench-"))
    (work / "node.xml").write_text("<node/>")
    uri = f"test://{work / 'node.xml'}"
    settings = Settings(
        libvirt_uri=uri, state_dir=str(work / "state"), image_root=[str(work)],
        listen=["127.0.0.1:0"], insecure=True, unix_socket="", vm_network=False,
        virt_type="qemu", node_name="bench", reserved_memory=0,
    )  # fmt: skip
    agent = build_agent(settings)  # the daemon's own wiring, on libvirt's test driver
    agent.start()
    agent.service.readiness.wait(30)
    server = agent.server
    stub = vm_service_pb2_grpc.VirtualMachineServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{server.ports[0]}")
    )
    raw = libvirt.open(uri)  # a second, separate instance of the test driver
    names = [f"vm{i}" for i in range(args.vms)]

    def raw_create(name: str) -> None:
        raw.defineXML(RAW_XML.format(name=name)).create()

    def raw_delete(name: str) -> None:
        dom = raw.lookupByName(name)
        dom.destroy()
        dom.undefine()

    print(f"virt-agent on {uri}: {args.vms} VMs, {args.reads} reads")
    report(
        "create + start",
        timed([lambda n=n: stub.ApplyVirtualMachine(pb.ApplyVirtualMachineRequest(vm=vm(n)))
               for n in names]),
        timed([lambda n=n: raw_create(n) for n in names]),
    )  # fmt: skip
    get = pb.GetVirtualMachineRequest(namespace="bench", name=names[0])
    report(
        "get one VM",
        timed([lambda: stub.GetVirtualMachine(get)] * args.reads),
        timed([lambda: raw.lookupByName(names[0]).XMLDesc(0)] * args.reads),
    )
    report(
        f"list {args.vms} VMs",
        timed([lambda: stub.ListVirtualMachines(pb.ListVirtualMachinesRequest())] * 50),
        timed([lambda: [d.XMLDesc(0) for d in raw.listAllDomains()]] * 50),
    )
    threads, per_thread = 8, args.reads // 8
    started = time.perf_counter()
    workers = [
        threading.Thread(target=lambda: [stub.GetVirtualMachine(get) for _ in range(per_thread)])
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    rate = threads * per_thread / (time.perf_counter() - started)
    print(f"{'get, 8 concurrent clients':<28} {rate:8.0f} RPC/s")
    report(
        "stop (force) + delete",
        timed([lambda n=n: stub.DeleteVirtualMachine(pb.DeleteVirtualMachineRequest(
            namespace="bench", name=n, grace_period_seconds=0)) for n in names]),
        timed([lambda n=n: raw_delete(n) for n in names]),
    )  # fmt: skip
    agent.stop(None)
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
