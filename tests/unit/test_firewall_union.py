"""The union of the VMs' firewall elements: added to on a plug, always what a full union is."""

from __future__ import annotations

from agent.network.firewallunion import FirewallUnion
from agent.network.ruleset import FirewallState, Forward

POLICY = FirewallState.egress_policy(["10.0.0.0/8"], [])


def vm(index: int, group: int = 7) -> FirewallState:
    tap, ip = f"va{index:06x}", f"10.250.0.{index + 2}"
    return FirewallState(
        taps=frozenset({tap}),
        sources=frozenset({(tap, ip, "02:00:00:00:00:01")}),
        groups=frozenset({group}),
        forwards=frozenset({Forward("tcp", 24000 + index, ip, 80)}),
    )


def full(states: dict[str, FirewallState]) -> FirewallState:
    return FirewallState.union(states.values()) | POLICY


def test_every_sequence_of_plugs_unplugs_and_changes_gives_the_full_union() -> None:
    union = FirewallUnion(POLICY)
    steps: list[dict[str, FirewallState]] = [
        {},
        {"a": vm(1)},
        {"a": vm(1), "b": vm(2)},  # b shares a's namespace group
        {"b": vm(2)},  # a went: the shared group stays (b has it)
        {"b": vm(2, group=9)},  # b changed: its old group goes
        {"b": vm(2, group=9), "c": vm(3), "d": vm(4)},
        {},
    ]
    for states in steps:
        assert union.of(states) == full(states)


def test_a_failed_sync_that_never_became_live_is_forgotten() -> None:
    # The service asks for live + the new VM; when nft refuses it, the next call is without it.
    union = FirewallUnion(POLICY)
    live = {"a": vm(1)}
    union.of(live)
    union.of({**live, "b": vm(2)})
    assert union.of(live) == full(live)
    assert union.of({**live, "c": vm(3)}) == full({**live, "c": vm(3)})
