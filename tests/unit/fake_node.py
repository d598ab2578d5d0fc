"""A VMService on the fake hypervisor and fake clock, with its background work queued.

The agent's own background work (recording a stop, restarting a crashed guest, resync)
is queued rather than threaded; tests run it when they choose with ``tasks.run_all()``.
Real ``VMFiles`` on a tmp dir (with an ImageTool that writes small files) and a network
that records what it was given and given back.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.domain.files import VMFiles
from agent.domain.lifecycle import Spawn, VMService
from agent.domain.vmcache import VMCache, VMRecord
from agent.models import InterfaceStatus, NicBacking, VMAllocation, VMSpec
from agent.ports import NetworkRepair
from agent.spec import parse_vm
from tests.unit.disk_fakes import FakeImages
from tests.unit.fake_clock import FakeClock
from tests.unit.fake_hypervisor import FakeHypervisor, Hold

__all__ = ["FakeNode", "RecordingNetwork", "Tasks", "make_node", "vm_spec"]


class Tasks:
    """A ``spawn`` that queues work; ``run_all`` runs it, and whatever it queues, in order."""

    def __init__(self) -> None:
        self.queue: list[tuple[str, Callable[[], None]]] = []
        self.ran: list[str] = []

    def __call__(self, name: str, work: Callable[[], None]) -> None:
        self.queue.append((name, work))

    def names(self) -> list[str]:
        return [name for name, _ in self.queue]

    def take(self, name: str) -> Callable[[], None]:
        """Remove one queued task by name, to run it where the test wants (e.g. a thread)."""
        index = self.names().index(name)
        return self.queue.pop(index)[1]

    def run_all(self) -> list[str]:
        ran = []
        while self.queue:
            name, work = self.queue.pop(0)
            work()
            ran.append(name)
        self.ran.extend(ran)
        return ran


@dataclass
class RecordingNetwork:
    """A VMNetwork that allocates no NICs but remembers which VMs hold an allocation."""

    allocated: set[str] = field(default_factory=set)
    plugged: set[str] = field(default_factory=set)
    reconciled: list[dict[str, bool]] = field(default_factory=list)
    unplug_error: Exception | None = None
    repaired: list[set[str]] = field(default_factory=list)  # running VMs of each repair pass
    repairs: tuple[NetworkRepair, ...] = ()  # what the next repair passes report
    broken: dict[str, str] = field(default_factory=dict)  # cut-off VMs: why
    plug_hold: Hold | None = None  # the next plug blocks until released (a slow prepare)
    plug_error: Exception | None = None  # the next plug raises it (after its hold)

    def allocate(
        self, domain: str, spec: VMSpec, previous: VMAllocation | None
    ) -> VMAllocation | None:
        self.allocated.add(domain)
        return previous or VMAllocation(namespace=spec.namespace, group=1)

    def adopt(
        self, domain: str, spec: VMSpec, allocation: VMAllocation | None
    ) -> VMAllocation | None:
        """(A VM migrating in keeps what the source gave it.)"""
        self.allocated.add(domain)
        return allocation

    def settle(self, domain: str, allocation: VMAllocation | None) -> None:
        if allocation is None:
            self.allocated.discard(domain)

    def nics(
        self, domain: str, spec: VMSpec, allocation: VMAllocation | None
    ) -> tuple[NicBacking, ...]:
        return ()

    def plug(self, domain: str, spec: VMSpec, allocation: VMAllocation | None) -> None:
        hold, self.plug_hold = self.plug_hold, None
        if hold is not None:
            hold.reached.set()
            if not hold.released.wait(10):
                raise RuntimeError("the test never released the held plug")
        error, self.plug_error = self.plug_error, None
        if error is not None:
            raise error
        self.plugged.add(domain)

    def unplug(self, domain: str, spec: VMSpec, allocation: VMAllocation | None) -> None:
        if self.unplug_error is not None:
            raise self.unplug_error
        self.allocated.discard(domain)
        self.plugged.discard(domain)

    def interfaces(
        self, domain: str, spec: VMSpec, allocation: VMAllocation | None
    ) -> tuple[InterfaceStatus, ...]:
        return ()

    def reconcile(
        self, vms: dict[str, tuple[VMSpec, VMAllocation | None, bool]]
    ) -> tuple[NetworkRepair, ...]:
        self.reconciled.append({name: running for name, (_, _, running) in vms.items()})
        return ()

    def repair(self, running: Collection[str]) -> tuple[NetworkRepair, ...]:
        self.repaired.append(set(running))
        return self.repairs

    def cut_off(self, domain: str) -> str:
        return self.broken.get(domain, "")


@dataclass
class FakeNode:
    clock: FakeClock
    hv: FakeHypervisor
    service: VMService
    network: RecordingNetwork
    tasks: Tasks
    state_dir: Path

    def vms(self) -> list[VMRecord]:
        """The registry's records, by name."""
        return sorted(self.service.cache.records(), key=lambda r: r.spec.name)

    def vm_dir(self, name: str, namespace: str = "default") -> Path:
        return self.state_dir / "vms" / f"{namespace}_{name}"

    def restarted_agent(self, *, spawn: Spawn | None = None) -> FakeNode:
        """A new agent process on the same hypervisor: empty registry, fresh state."""
        self.hv.unsubscribe(self.service)  # this one is gone
        return make_node(self.state_dir.parent, hv=self.hv, spawn=spawn)


def make_node(
    tmp_path: Path, *, hv: FakeHypervisor | None = None, spawn: Spawn | None = None
) -> FakeNode:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    (images / "base.qcow2").write_text("base image")
    clock = hv.clock if hv is not None else FakeClock()
    hv = hv or FakeHypervisor(clock)
    network = RecordingNetwork()
    tasks = Tasks()
    state_dir = tmp_path / "state"
    service = VMService(
        hv,
        VMFiles(str(state_dir), [str(images)], FakeImages()),
        VMCache(),
        node_name="node-fake",
        virt_type="qemu",
        network=network,
        clock=clock,
        spawn=spawn or tasks,
    )
    hv.subscribe(service)
    return FakeNode(clock, hv, service, network, tasks, state_dir)


def vm_spec(
    name: str = "web", *, run_strategy: str = "Always", grace: int = 30, **instance: Any
) -> VMSpec:
    spec: dict[str, Any] = {
        "domain": {
            "cpu": {"cores": 1},
            "memory": {"guest": "128Mi"},
            "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
        },
        "volumes": [{"name": "root", "imageFile": {"path": "base.qcow2"}}],
        "terminationGracePeriodSeconds": grace,
        **instance,
    }
    return parse_vm(
        {
            "metadata": {"namespace": "default", "name": name},
            "spec": {"runStrategy": run_strategy, "template": {"spec": spec}},
        }
    )
