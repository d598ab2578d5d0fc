"""NoNetwork: the VMNetwork for nodes without VM networking; NICs are refused by name."""

from __future__ import annotations

from agent.domain.metadata import Bookkeeping
from agent.domain.plan import NicBacking
from agent.errors import InvalidSpec
from agent.models import InterfaceStatus, VMSpec

__all__ = ["NoNetwork"]


class NoNetwork:
    """Accepts VMs without interfaces and refuses any with one."""

    def allocate(self, domain: str, spec: VMSpec, books: Bookkeeping) -> Bookkeeping:
        if spec.interfaces:
            raise InvalidSpec(
                "spec.template.spec.domain.devices.interfaces",
                "VM networking is not enabled on this node",
            )
        return books

    def nics(self, domain: str, spec: VMSpec, books: Bookkeeping) -> tuple[NicBacking, ...]:
        return ()

    def plug(self, domain: str, spec: VMSpec, books: Bookkeeping) -> None:
        return None

    def unplug(self, domain: str, spec: VMSpec, books: Bookkeeping) -> None:
        return None

    def interfaces(
        self, domain: str, spec: VMSpec, books: Bookkeeping
    ) -> tuple[InterfaceStatus, ...]:
        return ()

    def reconcile(self, vms: dict[str, tuple[VMSpec, Bookkeeping, bool]]) -> None:
        return None
