"""A mixed load on an agent: concurrent clients looping over Get/List/Watch/Apply/Delete.

Each client has its own channel and its own VM names (so its Applies and Deletes meet only
the agent's limits, not each other). The answers a loaded agent may give are counted;
anything else is kept with its message, for the test to show.
"""

from __future__ import annotations

import collections
import os
import random
import threading
from dataclasses import dataclass, field

import grpc
from google.protobuf import json_format

from agent.api._gen.virtagent.v1 import vm_pb2, vm_service_pb2_grpc
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from tests.api.test_vm_api import vm_doc

__all__ = ["LoadReport", "process_usage", "run_load"]

NAMESPACE = "load"
CALL_SECONDS = 60.0  # a call that takes longer counts as unexpected (DEADLINE_EXCEEDED)
# What a loaded agent may answer: missing VMs, its limits (backpressure), another operation
# on the same VM in progress (the agent's own background work: "retry").
EXPECTED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
_CHANGE_WAIT_SECONDS = 1.0
MIX = {"get": 30, "list": 20, "watch": 10, "apply": 20, "delete": 20}


@dataclass
class LoadReport:
    """What every client got, by call and status code, and the unexpected answers."""

    counts: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, call: str, code: grpc.StatusCode, details: str = "") -> None:
        with self.lock:
            self.counts[(call, code.name)] += 1
            if code not in EXPECTED:
                self.unexpected.append(f"{call}: {code.name}: {details}")

    def total(self) -> int:
        return sum(self.counts.values())


def process_usage() -> dict[str, int]:
    """This process's OS threads, open file descriptors and resident memory (bytes)."""
    with open("/proc/self/status") as status:
        rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return {
        "threads": len(os.listdir("/proc/self/task")),
        "fds": len(os.listdir("/proc/self/fd")),
        "rss": rss_kib * 1024,
    }


def _client(target: str, index: int, stop: threading.Event, report: LoadReport) -> None:
    chooser = random.Random(index)
    names = [f"vm-{index}-{n}" for n in range(3)]
    kinds, weights = list(MIX), list(MIX.values())
    with grpc.insecure_channel(target) as channel:
        stub = vm_service_pb2_grpc.VirtualMachineServiceStub(channel)
        while not stop.is_set():
            kind = chooser.choices(kinds, weights)[0]
            try:
                _call(stub, kind, chooser.choice(names), chooser)
                report.note(kind, grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                report.note(kind, exc.code(), exc.details() or "")


def _call(
    stub: vm_service_pb2_grpc.VirtualMachineServiceStub,
    kind: str,
    name: str,
    chooser: random.Random,
) -> None:
    if kind == "get":
        stub.GetVirtualMachine(
            pb.GetVirtualMachineRequest(namespace=NAMESPACE, name=name), timeout=CALL_SECONDS
        )
    elif kind == "list":
        stub.ListVirtualMachines(
            pb.ListVirtualMachinesRequest(namespace=NAMESPACE), timeout=CALL_SECONDS
        )
    elif kind == "watch":
        _watch_a_little(stub)
    elif kind == "apply":
        strategy = chooser.choice(["Always", "Halted"])
        doc = vm_doc(name, NAMESPACE, run_strategy=strategy, labels={"n": str(chooser.random())})
        vm = json_format.ParseDict(doc, vm_pb2.VirtualMachine())
        stub.ApplyVirtualMachine(pb.ApplyVirtualMachineRequest(vm=vm), timeout=CALL_SECONDS)
    else:
        request = pb.DeleteVirtualMachineRequest(namespace=NAMESPACE, name=name)
        if chooser.random() < 0.5:
            request.grace_period_seconds = 0
        stub.DeleteVirtualMachine(request, timeout=CALL_SECONDS)


def _watch_a_little(stub: vm_service_pb2_grpc.VirtualMachineServiceStub) -> None:
    """Open a watch, read its snapshot, then wait a second at most for a change."""
    stream = stub.WatchVirtualMachines(
        pb.WatchVirtualMachinesRequest(namespace=NAMESPACE), timeout=CALL_SECONDS
    )
    waited = threading.Event()

    def enough() -> None:
        waited.set()
        stream.cancel()

    timer = threading.Timer(_CHANGE_WAIT_SECONDS, enough)
    try:
        for event in stream:
            if event.type == pb.EVENT_TYPE_SYNCED:
                timer.start()
                break
        next(stream, None)
    except grpc.RpcError as exc:
        if not (waited.is_set() and exc.code() == grpc.StatusCode.CANCELLED):
            raise  # (cancelled after the wait: the client's own choice)
    finally:
        timer.cancel()
        stream.cancel()


def run_load(target: str, *, clients: int, seconds: float) -> LoadReport:
    """``clients`` threads calling ``target`` for ``seconds``; joined before it returns."""
    report, stop = LoadReport(), threading.Event()
    threads = [
        threading.Thread(target=_client, args=(target, i, stop, report), name=f"load-{i}")
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join(CALL_SECONDS * 2)
        assert not thread.is_alive(), f"{thread.name} is stuck in a call"
    return report
