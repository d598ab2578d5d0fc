"""NoNetwork: the VMNetwork for nodes without VM networking; NICs are refused by name."""

from __future__ import annotations

from collections.abc import Collection

from agent.errors import InvalidSpec
from agent.models import InterfaceStatus, NicBacking, VMAllocation, VMSpec
from agent.ports import NetworkRepair

__all__ = ["NoNetwork"]


class NoNetwork:
    """Accepts VMs without interfaces and refuses any with one."""

    def allocate(
        self, domain: str, spec: VMSpec, previous: VMAllocation | None
    ) -> VMAllocation | None:
        if spec.interfaces:
            raise InvalidSpec(
                "spec.template.spec.domain.devices.interfaces",
                "VM networking is not enabled on this node",
            )
        return None

    def adopt(
        self, domain: str, spec: VMSpec, incoming: VMAllocation | None
    ) -> VMAllocation | None:
        return self.allocate(domain, spec, incoming)

    def settle(self, domain: str, allocation: VMAllocation | None) -> None:
        return None

    def nics(
        self, domain: str, spec: VMSpec, allocation: VMAllocation | None
    ) -> tuple[NicBacking, ...]:
        return ()

    def plug(self, domain: str, spec: VMSpec, allocation: VMAllocation | None) -> None:
        return None

    def unplug(self, domain: str, spec: VMSpec, allocation: VMAllocation | None) -> None:
        return None

    def interfaces(
        self, domain: str, spec: VMSpec, allocation: VMAllocation | None
    ) -> tuple[InterfaceStatus, ...]:
        return ()

    def reconcile(
        self, vms: dict[str, tuple[VMSpec, VMAllocation | None, bool]]
    ) -> tuple[NetworkRepair, ...]:
        return ()

    def repair(self, running: Collection[str]) -> tuple[NetworkRepair, ...]:
        return ()

    def cut_off(self, domain: str) -> str:
        return ""
