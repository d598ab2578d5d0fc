"""Deterministic link names and addresses: short enough for Linux, stable across restarts."""

from __future__ import annotations

import re

import pytest

from agent.network import names


@pytest.mark.parametrize(
    ("domain", "iface"),
    [("default_web", "default"), ("a" * 63 + "_" + "b" * 63, "c" * 63), ("x_y", "lan")],
    ids=["short", "longest-names", "second-nic"],
)
def test_tap_names_fit_ifnamsiz_and_are_stable(domain: str, iface: str) -> None:
    name = names.tap_name(domain, iface)
    assert len(name) <= names.IFNAMSIZ == 15
    assert re.fullmatch(r"va[0-9a-f]{12}", name)
    assert names.tap_name(domain, iface) == name


def test_tap_name_is_fixed_for_given_inputs() -> None:
    # Renaming would orphan the taps of running VMs on upgrade: the scheme must not drift.
    assert names.tap_name("default_web", "default") == "vac98364256be8"


def test_tap_names_differ_by_domain_interface_and_attempt() -> None:
    seen = {
        names.tap_name("default_web", "default"),
        names.tap_name("default_web", "lan"),
        names.tap_name("default_db", "default"),
        names.tap_name("default_web", "default", attempt=1),
    }
    assert len(seen) == 4


def test_alias_round_trip_and_foreign_aliases() -> None:
    alias = names.tap_alias("team-a_web", "default")
    assert alias == "virt-agent:team-a_web/default"
    assert names.alias_owner(alias) == ("team-a_web", "default")
    for foreign in ("", "uplink", "virt-agent:", "virt-agent:nodomain", "virt-agent:/x"):
        assert names.alias_owner(foreign) is None


def test_macs_are_stable_unicast_and_the_gateway_side_differs() -> None:
    mac = names.guest_mac("0b2f6c1e-uid", "default")
    assert mac == names.guest_mac("0b2f6c1e-uid", "default")
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", mac)
    assert names.guest_mac("0b2f6c1e-uid", "default", attempt=1) != mac
    gateway = names.gateway_mac(mac)
    assert gateway == "fe" + mac[2:]
    assert int(gateway[:2], 16) & 0b11 == 0b10  # locally administered, unicast
    with pytest.raises(ValueError):
        names.gateway_mac("not-a-mac")


def test_namespace_groups_are_stable_and_above_the_reserved_range() -> None:
    group = names.namespace_group("team-a")
    assert group == names.namespace_group("team-a")
    assert 0x10000 <= group < 0x7FFFFFFF
    assert names.namespace_group("team-b") != group
    assert names.namespace_group("team-a", attempt=1) == group + 1
