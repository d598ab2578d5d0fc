"""Density on libvirt's test driver: Apply, Get, List (all) and Watch fan-out at 10, 100 and
500 VMs, and the agent's RSS at each size, against the same work in raw libvirt-python."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import libvirt

from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from agent.api._gen.virtagent.v1 import vm_service_pb2_grpc
from bench.harness import Bench, rss_mib, timed
from bench.testdriver import NAMESPACE, RawTestDriver, TestDriverAgent

WATCHERS = 10
_EVENT_LOOP = False


def event_loop() -> None:
    """libvirt's default event loop in a thread (needed before opening a connection)."""
    global _EVENT_LOOP
    if _EVENT_LOOP:
        return
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    threading.Thread(target=run, name="libvirt-events", daemon=True).start()
    _EVENT_LOOP = True


class Seen:
    """When each watcher first saw each name (perf_counter)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.times: dict[str, list[float]] = {}
        self.cond = threading.Condition(self.lock)

    def saw(self, name: str) -> None:
        now = time.perf_counter()
        with self.cond:
            self.times.setdefault(name, []).append(now)
            self.cond.notify_all()

    def wait(self, name: str, count: int, timeout: float = 30.0) -> list[float]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.times.get(name, [])) >= count, timeout)
            return list(self.times.get(name, []))


def agent_watchers(agent: TestDriverAgent, seen: Seen) -> list[Any]:
    channel = grpc.insecure_channel(agent.address)
    stub = vm_service_pb2_grpc.VirtualMachineServiceStub(channel)
    streams = []
    for _ in range(WATCHERS):
        stream = stub.WatchVirtualMachines(pb.WatchVirtualMachinesRequest(namespace=NAMESPACE))

        def read(stream: Any = stream) -> None:
            try:
                for event in stream:
                    if event.type == pb.EVENT_TYPE_ADDED and event.vm.metadata.name[:2] == "w-":
                        seen.saw(event.vm.metadata.name)
            except grpc.RpcError:
                pass  # cancelled at the end

        threading.Thread(target=read, daemon=True).start()
        streams.append(stream)
    return [channel, *streams]


def raw_watchers(seen: Seen) -> list[Any]:
    """One connection per watcher (libvirt refuses a second identical callback on one);
    test:///default connections of one process share one node."""

    def callback(_conn: Any, dom: Any, event: int, _detail: int, _opaque: Any) -> None:
        if event == libvirt.VIR_DOMAIN_EVENT_DEFINED:
            seen.saw(dom.name().split("_", 1)[1])

    conns = [libvirt.open("test:///default") for _ in range(WATCHERS)]
    for conn in conns:
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, None)
    return conns


def fan_out(apply: Any, seen: Seen, names: list[str]) -> list[float]:
    out: list[float] = []
    for name in names:
        started = time.perf_counter()
        apply(name)
        out += [t - started for t in seen.wait(name, WATCHERS)]
    return out


TITLE = "Apply, Get, List, Watch fan-out and RSS at 10/100/500 VMs (test driver)"
BASELINE = (
    "the same define+start, lookup+XMLDesc, listAllDomains+XMLDesc and lifecycle-event "
    f"callbacks ({WATCHERS}) in raw libvirt-python on another test-driver node"
)


def run(bench: Bench, quick: bool) -> None:
    sizes = [10, 50] if quick else [10, 100, 500]
    reads, lists, events = (30, 3, 3) if quick else (200, 10, 10)
    event_loop()
    raw = RawTestDriver()
    try:
        with TestDriverAgent() as agent:
            measure(bench, agent, raw, sizes, (reads, lists, events))
    finally:
        raw.close()


def measure(
    bench: Bench,
    agent: TestDriverAgent,
    raw: RawTestDriver,
    sizes: list[int],
    rounds: tuple[int, int, int],
) -> None:
    reads, lists, events = rounds
    seen_agent, seen_raw = Seen(), Seen()
    held = agent_watchers(agent, seen_agent)
    watchers = raw_watchers(seen_raw)
    count, rss = 0, {}
    for size in sizes:
        names = [f"vm-{i:04d}" for i in range(count, size)]
        apply_a = timed_each(agent.apply, names)
        apply_r = timed_each(raw.create, names)
        count = size
        bench.row(f"Apply (define+start) while filling to {size}", apply_a, apply_r)
        bench.row(
            f"Get at {size}",
            timed(lambda: agent.get("vm-0000"), reads),
            timed(lambda: raw.get("vm-0000"), reads),
        )
        bench.row(
            f"List all at {size}",
            timed(agent.list_all, lists),
            timed(raw.list_all, lists),
            returned=len(agent.list_all().vms),
        )
        wnames = [f"w-{size}-{i}" for i in range(events)]
        bench.row(
            f"Watch fan-out to {WATCHERS} watchers at {size}",
            fan_out(agent.apply, seen_agent, wnames),
            fan_out(raw.create, seen_raw, wnames),
        )
        rss[size] = rss_mib(agent.pid)
        bench.row(f"agent RSS at {size} VMs", [rss[size]], None, unit="MiB", scale=1.0)
    for conn in watchers:
        conn.close()
    for stream in held[1:]:
        stream.cancel()
    held[0].close()
    first, last = sizes[0], sizes[-1]
    bench.note(f"RSS grows {rss[last] - rss[first]:.1f} MiB from {first} to {last} VMs")


def timed_each(call: Any, names: list[str]) -> list[float]:
    out = []
    for name in names:
        started = time.perf_counter()
        call(name)
        out.append(time.perf_counter() - started)
    return out
