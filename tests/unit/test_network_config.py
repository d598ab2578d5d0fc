"""The networking flags: defaults, parsing and the errors that name the flag."""

from __future__ import annotations

import pytest

from agent.config import ConfigError, load_settings


def test_defaults_turn_networking_on() -> None:
    settings = load_settings([], environ={})
    assert settings.vm_network is True
    assert (str(settings.vm_cidr), settings.node_port_range) == ("10.250.0.0/16", (24000, 24999))
    assert settings.uplink == "" and settings.dns == []


def test_flags_and_environment() -> None:
    settings = load_settings(
        [
            "--vm-cidr",
            "10.9.0.0/24",
            "--dns",
            "192.0.2.53",
            "--dns",
            "192.0.2.54",
            "--uplink",
            "br-ex",
        ],
        environ={"VIRT_AGENT_NODE_PORT_RANGE": "31000-31999"},
    )
    assert str(settings.vm_cidr) == "10.9.0.0/24" and settings.node_port_range == (31000, 31999)
    assert settings.dns == ["192.0.2.53", "192.0.2.54"] and settings.uplink == "br-ex"
    assert load_settings(["--no-vm-network"], environ={}).vm_network is False
    assert load_settings([], environ={"VIRT_AGENT_DNS": "192.0.2.1,192.0.2.2"}).dns == [
        "192.0.2.1",
        "192.0.2.2",
    ]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--vm-cidr", "10.9.0.1/24"], "vm-cidr"),
        (["--vm-cidr", "10.9.0.0/31"], "vm-cidr"),
        (["--node-port-range", "32767-30000"], "node-port-range"),
        (["--dns", "dns.example"], "dns"),
        (["--uplink", "a-very-long-interface"], "uplink"),
        (["--node-vm-pool", "10.9.0.1/24"], "node-vm-pool"),
        (["--node-vm-pool", "10.251.0.0/24"], "node-vm-pool"),
        (["--migration-address", "node-a"], "migration-address"),
        (["--max-inbound-migrations", "0"], "max-inbound-migrations"),
    ],
)
def test_bad_values_name_the_flag(argv: list[str], flag: str) -> None:
    with pytest.raises(ConfigError, match=f"^{flag}:"):
        load_settings(argv, environ={})


def test_node_vm_pool_and_migration_settings() -> None:
    settings = load_settings(
        ["--vm-cidr", "10.9.0.0/16", "--node-vm-pool", "10.9.3.0/24"], environ={}
    )
    assert settings.node_vm_pool == "10.9.3.0/24"
    assert settings.migration is True and settings.migration_address == ""
    assert (settings.max_outbound_migrations, settings.max_inbound_migrations) == (2, 2)
    assert load_settings(["--no-migration"], environ={}).migration is False


def test_the_default_node_ports_collide_neither_with_kubernetes_nor_ephemeral_ports() -> None:
    low, high = load_settings([], environ={}).node_port_range
    kubernetes = range(30000, 32768)  # kube-proxy DNATs these at the same hook priority
    ephemeral = range(32768, 61000)  # Linux's default net.ipv4.ip_local_port_range
    ours = range(low, high + 1)
    assert not set(ours) & set(kubernetes) and not set(ours) & set(ephemeral)
    assert len(ours) >= 1000


def test_egress_policy_flags() -> None:
    settings = load_settings(
        ["--egress-deny", "10.96.0.0/12", "--egress-allow", "169.254.169.123/32"], environ={}
    )
    assert settings.egress_deny == ["10.96.0.0/12"]
    assert settings.egress_allow == ["169.254.169.123/32"]
    with pytest.raises(ConfigError, match="^egress-deny: 'nope' is not an IPv4 network"):
        load_settings(["--egress-deny", "nope"], environ={})
