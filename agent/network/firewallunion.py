"""The union of every plugged VM's firewall elements, kept up to date as VMs come and go."""

from __future__ import annotations

from collections.abc import Mapping

from agent.network.ruleset import FirewallState

__all__ = ["FirewallUnion"]


class FirewallUnion:
    """``FirewallState.union`` of the VMs' states and the node's policy.

    A plug (on the start's critical path) only adds a VM: its elements are added to the last
    union instead of the union of every VM being made again, which kept the cost of one
    VM's change growing with the node's VM count. A VM gone or changed recomputes it all (an
    element two VMs share, such as a namespace group, must stay while either has it).
    """

    def __init__(self, policy: FirewallState) -> None:
        self._policy = policy
        self._states: dict[str, FirewallState] = {}
        self._union = policy

    def of(self, states: Mapping[str, FirewallState]) -> FirewallState:
        """The union for ``states`` (VM → its elements)."""
        previous = self._states
        only_added = len(states) >= len(previous) and all(
            states.get(vm) is state for vm, state in previous.items()
        )
        if only_added:
            added = [state for vm, state in states.items() if vm not in previous]
            if added:
                self._union = FirewallState.union([self._union, *added])
        else:
            self._union = FirewallState.union(states.values()) | self._policy
        self._states = dict(states)
        return self._union
