"""The nft element diff between two firewall states: only what changed, shared entries kept."""

from __future__ import annotations

from typing import Any

from agent.network.ruleset import FirewallState, Forward, element_commands


def vm(i: int, *, group: int = 7, port: int = 80) -> FirewallState:
    tap, ip = f"va{i:012x}", f"10.250.0.{i + 2}"
    return FirewallState(
        taps=frozenset([tap]),
        sources=frozenset([(tap, ip, f"52:54:00:00:00:{i:02x}")]),
        groups=frozenset([group]),
        forwards=frozenset([Forward("tcp", 24000 + i, ip, port)]),
    )


def changes(commands: list[dict[str, Any]]) -> dict[tuple[str, str], list[Any]]:
    out = {}
    for command in commands:
        ((verb, body),) = command.items()
        out[(verb, body["element"]["name"])] = body["element"]["elem"]
    return out


def test_adding_one_vm_to_many_adds_only_its_elements() -> None:
    policy = FirewallState.egress_policy(["203.0.113.0/24"], [])
    many = FirewallState.union(vm(i) for i in range(50)) | policy
    more = FirewallState.union([many, vm(50)])
    found = changes(element_commands("t", many, more))
    assert found[("add", "taps")] == [f"va{50:012x}"]
    assert found[("add", "fwd_addr")] == [[{"concat": ["tcp", 24050]}, "10.250.0.52"]]
    assert found[("add", "published")] == [{"concat": ["10.250.0.52", "tcp", 80]}]
    # the namespace's group pair and the egress ranges were there already
    assert set(found) == {
        ("add", n) for n in ("taps", "guest_sources", "fwd_addr", "fwd_port", "published")
    }
    assert element_commands("t", more, more) == []


def test_a_published_entry_shared_by_two_forwards_stays_until_the_last_goes() -> None:
    one = Forward("tcp", 24000, "10.250.0.2", 80)
    two = Forward("tcp", 24001, "10.250.0.2", 80)
    both = FirewallState(forwards=frozenset([one, two]))
    left = FirewallState(forwards=frozenset([two]))
    found = changes(element_commands("t", both, left))
    assert ("delete", "published") not in found
    assert found[("delete", "fwd_addr")] == [[{"concat": ["tcp", 24000]}, "10.250.0.2"]]
    gone = changes(element_commands("t", left, FirewallState()))
    assert gone[("delete", "published")] == [{"concat": ["10.250.0.2", "tcp", 80]}]


def test_a_forward_whose_guest_port_changed_is_deleted_and_added_again() -> None:
    before, after = vm(1, port=80), vm(1, port=8080)
    found = changes(element_commands("t", before, after))
    assert found[("delete", "fwd_port")] == [[{"concat": ["tcp", 24001]}, 80]]
    assert found[("add", "fwd_port")] == [[{"concat": ["tcp", 24001]}, 8080]]
    assert found[("delete", "published")] == [{"concat": ["10.250.0.3", "tcp", 80]}]
    assert found[("add", "published")] == [{"concat": ["10.250.0.3", "tcp", 8080]}]


def test_egress_ranges_change_as_merged_prefixes() -> None:
    before = FirewallState.egress_policy(["10.1.0.0/24"], [])
    after = FirewallState.egress_policy(["10.1.0.0/24", "10.1.1.0/24"], [])
    found = changes(element_commands("t", before, after))
    assert found[("delete", "egress_deny")] == [{"prefix": {"addr": "10.1.0.0", "len": 24}}]
    assert found[("add", "egress_deny")] == [{"prefix": {"addr": "10.1.0.0", "len": 23}}]
