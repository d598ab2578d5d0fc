"""Spec + allocation → plan → nft JSON, against golden files (UPDATE_GOLDEN=1 rewrites them)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import subprocess
from typing import Any

import pytest

from agent.models import NicAllocation, Port, VMAllocation, VMSpec
from agent.network.plan import (
    NetworkConfig,
    interface_statuses,
    nic_backings,
    plumbing,
    resolv_conf_nameservers,
)
from agent.network.ruleset import (
    FirewallState,
    chain_rule_counts,
    element_commands,
    listing_summary,
    rebuild_commands,
    summary,
)
from agent.spec import parse_vm
from tests.unit.golden_files import assert_golden

CONFIG = NetworkConfig(
    cidr=ipaddress.IPv4Network("10.250.0.0/16"), uplink="eth0", dns=("192.0.2.53",)
)
MTUS = {"eth0": 1450, "br0": 9000}


def web_spec(cores: int = 2) -> VMSpec:
    return parse_vm(
        {
            "metadata": {
                "namespace": "team-a",
                "name": "web",
                "uid": "6f1c1d1e-8a51-4e0b-9f32-0c8b2f3f7a10",
            },
            "spec": {
                "template": {
                    "spec": {
                        "domain": {
                            "cpu": {"cores": cores},
                            "memory": {"guest": "128Mi"},
                            "devices": {
                                "interfaces": [
                                    {
                                        "name": "default",
                                        "masquerade": {},
                                        "ports": [
                                            {"name": "http", "port": 80},
                                            {"name": "dns", "port": 53, "protocol": "UDP"},
                                        ],
                                    },
                                    {"name": "lan", "bridge": {}},
                                ]
                            },
                        },
                        "networks": [
                            {"name": "default", "pod": {}},
                            {"name": "lan", "multus": {"networkName": "br0"}},
                        ],
                    }
                }
            },
        }
    )


WEB = VMAllocation(
    namespace="team-a",
    group=70001,
    nics=(
        NicAllocation(
            name="default",
            binding="masquerade",
            tap="va1111111111aa",
            mac="52:54:00:00:00:0a",
            ip="10.250.0.2",
            ports=(
                Port(protocol="TCP", port=80, node_port=30080, name="http"),
                Port(protocol="UDP", port=53, node_port=30053, name="dns"),
            ),
        ),
        NicAllocation(
            name="lan",
            binding="bridge",
            tap="va1111111111bb",
            mac="52:54:00:00:00:0b",
            bridge="br0",
        ),
    ),
)


def golden(name: str, actual: Any) -> None:
    assert_golden(name, json.dumps(actual, indent=1) + "\n")


def test_plan_of_a_vm_golden() -> None:
    plan = plumbing("team-a_web", web_spec(), WEB, CONFIG, MTUS)
    golden(
        "network_plan.json",
        {
            "taps": [dataclasses.asdict(t) for t in plan.taps],
            "leases": [[tap, dataclasses.asdict(lease)] for tap, lease in plan.leases],
            "addresses": list(plan.addresses),
        },
    )


def test_table_of_one_vm_golden() -> None:
    plan = plumbing("team-a_web", web_spec(), WEB, CONFIG, MTUS)
    golden("network_table.json", rebuild_commands("virt_agent", plan.firewall))


def test_element_changes_golden() -> None:
    web = plumbing("team-a_web", web_spec(), WEB, CONFIG, MTUS).firewall
    db = FirewallState(
        taps=frozenset({"va2222222222aa"}),
        sources=frozenset({("va2222222222aa", "10.250.0.3", "52:54:00:00:00:0c")}),
        groups=frozenset({70001}),
    )
    golden("network_elements.json", element_commands("virt_agent", web, db))


def test_rules_never_depend_on_the_vms() -> None:
    many = FirewallState.union(
        FirewallState(
            taps=frozenset({f"va{i:012x}"}),
            sources=frozenset(
                {(f"va{i:012x}", f"10.250.{i // 250}.{i % 250 + 2}", "52:54:00:00:00:01")}
            ),
            groups=frozenset({70000 + i % 7}),
        )
        for i in range(1000)
    )

    def rules(commands: list[dict[str, Any]]) -> list[Any]:
        return [c for c in commands if "rule" in c.get("add", {})]

    assert rules(rebuild_commands("t", FirewallState())) == rules(rebuild_commands("t", many))
    assert sum(chain_rule_counts().values()) == len(rules(rebuild_commands("t", many)))


def test_nothing_user_given_reaches_rule_text() -> None:
    # Names, MACs and addresses only ever appear as set elements, never inside rules.
    plan = plumbing("team-a_web", web_spec(), WEB, CONFIG, MTUS)
    commands = rebuild_commands("virt_agent", plan.firewall)
    rule_text = json.dumps([c for c in commands if "rule" in c.get("add", {})])
    for value in ("va1111111111aa", "10.250.0.2", "52:54:00:00:00:0a", "30080"):
        assert value not in rule_text


def test_a_listing_of_the_table_summarises_like_the_state() -> None:
    plan = plumbing("team-a_web", web_spec(), WEB, CONFIG, MTUS)
    listing: list[dict[str, Any]] = []
    for command in rebuild_commands("virt_agent", plan.firewall):
        ((verb, body),) = command.items()
        if verb != "add":
            continue
        ((kind, spec),) = body.items()
        if kind in ("chain", "rule"):
            listing.append({kind: spec})
        elif kind in ("set", "map"):
            listing.append({kind: dict(spec, elem=[])})
        elif kind == "element":
            target = next(i for i in listing if spec["name"] == next(iter(i.values())).get("name"))
            next(iter(target.values()))["elem"] += spec["elem"]
    assert listing_summary(listing) == summary(plan.firewall)


def test_nic_backings_and_statuses() -> None:
    backings = nic_backings(web_spec(), WEB, MTUS, "eth0")
    assert [(b.name, b.tap, b.mac, b.mtu, b.queues) for b in backings] == [
        ("default", "va1111111111aa", "52:54:00:00:00:0a", 1450, 2),
        ("lan", "va1111111111bb", "52:54:00:00:00:0b", 9000, 2),
    ]
    assert nic_backings(web_spec(cores=1), WEB, MTUS, "eth0")[0].queues == 1
    default, lan = interface_statuses(web_spec(), WEB)
    assert default.ip_addresses == ("10.250.0.2",) and default.tap_name == "va1111111111aa"
    assert [(p.port, p.protocol, p.node_port) for p in default.published_ports] == [
        (80, "TCP", 30080),
        (53, "UDP", 30053),
    ]
    assert lan.ip_addresses == () and lan.mac == "52:54:00:00:00:0b"


@pytest.mark.parametrize(
    ("text", "servers"),
    [
        ("nameserver 127.0.0.53\noptions edns0\n", ()),
        ("nameserver 192.0.2.53\nnameserver ::1\nnameserver 192.0.2.53\n", ("192.0.2.53",)),
        ("# nameserver 10.0.0.1\nnameserver 10.0.0.2 # x\nsearch lan\n", ("10.0.0.2",)),
    ],
    ids=["loopback-only", "ipv6-and-duplicates", "comments"],
)
def test_nameservers_from_resolv_conf(text: str, servers: tuple[str, ...]) -> None:
    assert resolv_conf_nameservers(text) == servers


@pytest.mark.skipif(  # allowed-skip: never in CI (CI is set there)
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root for a network namespace"
)
def test_golden_table_is_accepted_by_nft_and_lists_as_summarised() -> None:
    """The JSON applies on the real nft, in a network namespace that lives only as long as
    the command (never the machine's own), and its listing matches ``summary``."""
    plan = plumbing("team-a_web", web_spec(), WEB, CONFIG, MTUS)
    script = "nft -j -f - && nft -j list table inet virt_agent"
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        input=json.dumps({"nftables": rebuild_commands("virt_agent", plan.firewall)}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    listing = [i for i in json.loads(proc.stdout)["nftables"] if "metainfo" not in i]
    assert listing_summary(listing) == summary(plan.firewall)


def test_only_the_agents_own_published_ports_are_forwarded_to_a_tap() -> None:
    # A DNAT made by other software (a container runtime, kube-proxy) to a guest must not
    # pass: the accept for DNAT-ed connections matches the agent's own mappings only.
    plan = plumbing("team-a_web", web_spec(), WEB, CONFIG, MTUS)
    commands = rebuild_commands("virt_agent", plan.firewall)
    forward = [
        c["add"]["rule"]["expr"]
        for c in commands
        if c.get("add", {}).get("rule", {}).get("chain") == "forward"
    ]
    dnat_accepts = [rule for rule in forward if "dnat" in json.dumps(rule)]
    assert dnat_accepts and all("@published" in json.dumps(rule) for rule in dnat_accepts)
    elements = plan.firewall.elements()["published"]
    assert {"concat": ["10.250.0.2", "tcp", 80]} in elements
    assert {"concat": ["10.250.0.2", "udp", 53]} in elements
