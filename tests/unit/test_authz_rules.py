"""The authz rules alone: parsing, identity globs, roles and namespaces, certificate names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.__main__ import main
from agent.adapters.x509 import certificate_names
from agent.api.authz import Policy, Role, Rule, parse_policy
from agent.api.authzfile import PolicyFile
from agent.config import ConfigError, load_settings
from agent.errors import InvalidSpec
from tests.api.certs import CertificateAuthority

VM = "/virtagent.v1.VirtualMachineService/"
MIGRATION = "/virtagent.v1.MigrationService/"


def policy(text: str) -> Policy:
    return parse_policy(yaml.safe_load(text))


def test_the_issue_example_parses_with_all_namespaces_by_default() -> None:
    rules = policy(
        """
        rules:
          - identity: "DNS:control-plane.example"
            role: control-plane
          - identity: "URI:spiffe://cluster/ns/tenant-a/*"
            role: control-plane
            namespaces: [tenant-a]
        """
    ).rules
    assert rules[0] == Rule("DNS:control-plane.example", Role.CONTROL_PLANE, ("*",))
    assert rules[1].namespaces == ("tenant-a",)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({}, "rules"),
        ({"rules": "x"}, "rules"),
        ({"rules": ["x"]}, "rules[0]"),
        ({"rules": [{"identity": "control-plane", "role": "reader"}]}, "rules[0].identity"),
        ({"rules": [{"identity": "CN:x", "role": "admin"}]}, "rules[0].role"),
        ({"rules": [{"identity": "CN:x", "role": "reader", "namespaces": []}]}, "namespaces"),
        ({"rules": [{"identity": "CN:x", "role": "reader", "namespace": ["a"]}]}, "namespace"),
    ],
)
def test_a_wrong_rule_is_refused_naming_its_field(document: Any, field: str) -> None:
    with pytest.raises(InvalidSpec, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_policy(document)


def test_identities_glob_and_keep_their_kind() -> None:
    rules = policy("rules: [{identity: 'DNS:*.Agents.example', role: peer}]")
    assert rules.grant(("DNS:node-1.agents.example",)).rules
    assert not rules.grant(("CN:DNS:node-1.agents.example",)).rules  # a CN is not a SAN
    assert not rules.grant(("URI:node-1.agents.example",)).rules
    assert not rules.grant(()).rules


def test_roles_allow_their_methods_within_their_namespaces() -> None:
    rules = policy(
        """
        rules:
          - {identity: "CN:cp", role: control-plane, namespaces: [tenant-a, "team-*"]}
          - {identity: "CN:reader", role: reader}
          - {identity: "CN:peer", role: peer}
        """
    )
    cp, reader, peer = (rules.grant((f"CN:{n}",)) for n in ("cp", "reader", "peer"))
    assert cp.allows(VM + "DeleteVirtualMachine", "team-x")
    assert not cp.allows(VM + "DeleteVirtualMachine", "tenant-b")
    assert cp.allows(MIGRATION + "MigrateVirtualMachine", "tenant-a")
    assert reader.allows(VM + "WatchVirtualMachines", "tenant-b")
    assert reader.allows("/virtagent.v1.NodeService/GetNode", None)
    assert not reader.allows(VM + "PauseVirtualMachine", "tenant-b")
    assert peer.allows(MIGRATION + "AnyMethodMigrationAddsLater", None)
    assert not peer.allows(VM + "GetVirtualMachine", "tenant-a")
    assert all(g.allows("/grpc.health.v1.Health/Check", None) for g in (cp, reader, peer))
    assert not rules.grant(("CN:nobody",)).allows("/grpc.health.v1.Health/Check", None)


def test_certificate_names_are_typed_sans_then_the_cn() -> None:
    pair = CertificateAuthority().issue(
        "DNS:evil", "DNS:Node.Example", "URI:spiffe://c/ns/a/sa/b", "IP:10.0.0.1"
    )
    assert certificate_names(pair.cert) == (
        "DNS:node.example",
        "URI:spiffe://c/ns/a/sa/b",
        "IP:10.0.0.1",
        "CN:DNS:evil",
    )
    assert certificate_names(b"not a certificate") == ()


def test_a_rules_file_that_breaks_keeps_the_last_good_rules(tmp_path: Path) -> None:
    path = tmp_path / "authz.yaml"
    path.write_text("rules: [{identity: 'CN:a', role: reader}]")
    rules = PolicyFile(str(path))
    path.write_text("rules: [{identity: 'CN:a', role: reader}, {identity: 'CN:b', role: peer}]")
    assert len(rules().rules) == 2
    path.write_text("rules: {")
    assert len(rules().rules) == 2
    path.write_text("rules: 7")
    with pytest.raises(InvalidSpec, match="authz-config"):
        PolicyFile(str(path))  # at startup a wrong file stops the agent


def test_authz_config_needs_client_certificates() -> None:
    with pytest.raises(ConfigError, match="authz-config: .*tls-client-ca"):
        load_settings(["--unix-socket", "/tmp/s", "--authz-config", "/etc/authz.yaml"], {})


def test_the_daemon_refuses_to_start_with_wrong_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = CertificateAuthority()
    server = ca.issue("agent", "DNS:localhost", server=True)
    for name, data in (("tls.crt", server.cert), ("tls.key", server.key), ("ca.crt", ca.pem)):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "authz.yaml").write_text("rules: [{identity: 'DNS:cp', role: admin}]")
    argv = ["--listen", "127.0.0.1:0", "--unix-socket", str(tmp_path / "s"), "--log-level", "error"]
    argv += ["--tls-cert", str(tmp_path / "tls.crt"), "--tls-key", str(tmp_path / "tls.key")]
    argv += ["--tls-client-ca", str(tmp_path / "ca.crt")]
    argv += ["--authz-config", str(tmp_path / "authz.yaml")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "authz-config" in error and "rules[0].role" in error
