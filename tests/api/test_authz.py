"""Who may call the agent: mTLS identities, roles and namespaces, over real TLS connections."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

import agent.metrics.agent_metrics as agent_metrics
from agent.api._gen.virtagent.v1 import migration_service_pb2 as mig_pb
from agent.api._gen.virtagent.v1 import node_service_pb2, vm_pb2
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from agent.domain.metadata import metadata_payload
from agent.models import Bookkeeping
from agent.spec import parse_vm
from tests.api.certs import CertificateAuthority
from tests.api.secure import SecureAgent, Stubs, secure_agent
from tests.api.test_vm_api import vm_doc

RULES = """
rules:
  - identity: "DNS:control-plane.example"
    role: control-plane
  - identity: "URI:spiffe://cluster/ns/tenant-a/*"
    role: control-plane
    namespaces: [tenant-a]
  - identity: "DNS:reader.example"
    role: reader
  - identity: "DNS:*.agents.example"
    role: peer
"""
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture
def agent() -> Iterator[SecureAgent]:
    with secure_agent(RULES) as served:
        yield served


def admin(agent: SecureAgent) -> Stubs:
    return agent.client(agent.ca.issue("cp", "DNS:control-plane.example"))


def apply(stubs: Stubs, namespace: str, name: str = "web") -> pb.ApplyVirtualMachineResponse:
    vm = json_format.ParseDict(vm_doc(name, namespace), vm_pb2.VirtualMachine())
    return stubs.vms.ApplyVirtualMachine(pb.ApplyVirtualMachineRequest(vm=vm), timeout=20)


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def names(stubs: Stubs, namespace: str = "") -> set[str]:
    reply = stubs.vms.ListVirtualMachines(pb.ListVirtualMachinesRequest(namespace=namespace))
    return {f"{vm.metadata.namespace}/{vm.metadata.name}" for vm in reply.vms}


def get_node(stubs: Stubs) -> Any:
    return stubs.nodes.GetNode(node_service_pb2.GetNodeRequest(), timeout=10)


def test_a_client_without_a_certificate_never_gets_past_the_handshake(
    agent: SecureAgent,
) -> None:
    assert code_of(lambda: get_node(agent.client(None))) == grpc.StatusCode.UNAVAILABLE
    assert agent.access.denied_total() == 0  # refused by TLS, not by a rule
    assert get_node(admin(agent)).node.name == "node-test"


def test_a_certificate_from_another_ca_is_refused(agent: SecureAgent) -> None:
    forged = CertificateAuthority("other-ca").issue("cp", "DNS:control-plane.example")
    assert code_of(lambda: get_node(agent.client(forged))) == grpc.StatusCode.UNAVAILABLE


def test_a_reader_reads_but_cannot_apply_delete_or_start(agent: SecureAgent) -> None:
    apply(admin(agent), "tenant-a")
    reader = agent.client(agent.ca.issue("r", "DNS:reader.example"))
    request = {"namespace": "tenant-a", "name": "web"}
    assert reader.vms.GetVirtualMachine(pb.GetVirtualMachineRequest(**request)).vm.metadata.uid
    assert names(reader) == {"tenant-a/web"}
    assert get_node(reader).node.name == "node-test"
    assert list(reader.vms.GetConsoleLog(pb.GetConsoleLogRequest(**request))) == []
    assert code_of(lambda: apply(reader, "tenant-a", "other")) == DENIED
    delete = pb.DeleteVirtualMachineRequest(**request)
    assert code_of(lambda: reader.vms.DeleteVirtualMachine(delete)) == DENIED
    start = pb.StartVirtualMachineRequest(**request)
    assert code_of(lambda: reader.vms.StartVirtualMachine(start)) == DENIED
    stop = pb.StopVirtualMachineRequest(**request)
    assert code_of(lambda: reader.vms.StopVirtualMachine(stop)) == DENIED
    assert names(admin(agent)) == {"tenant-a/web"}  # nothing was done


def test_a_peer_may_call_the_migration_methods_only(agent: SecureAgent) -> None:
    peer = agent.client(agent.ca.issue("node-2", "DNS:node-2.agents.example"))
    prepare = mig_pb.PrepareMigrationTargetRequest(namespace="tenant-a", name="web")
    # Past authorization, into the service, which answers for itself.
    invalid = grpc.StatusCode.INVALID_ARGUMENT  # no migration_id
    assert code_of(lambda: peer.migrations.PrepareMigrationTarget(prepare)) == invalid
    cancel = mig_pb.CancelMigrationRequest(migration_id="m-1")
    assert code_of(lambda: peer.migrations.CancelMigration(cancel)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: get_node(peer)) == DENIED
    assert code_of(lambda: names(peer)) == DENIED
    assert code_of(lambda: apply(peer, "tenant-a")) == DENIED
    get = pb.GetVirtualMachineRequest(namespace="tenant-a", name="web")
    assert code_of(lambda: peer.vms.GetVirtualMachine(get)) == DENIED


def test_a_peer_cannot_bring_in_a_vm_other_than_the_one_its_request_names(
    agent: SecureAgent,
) -> None:
    """The namespace authorised is the request's: metadata for another VM is refused."""
    peer = agent.client(agent.ca.issue("node-2", "DNS:node-2.agents.example"))
    other = parse_vm(
        {
            "metadata": {"namespace": "tenant-b", "name": "db"},
            "spec": {"template": {"spec": {"domain": {"memory": {"guest": "64Mi"}}}}},
        }
    )
    prepare = mig_pb.PrepareMigrationTargetRequest(
        migration_id="m-1",
        namespace="tenant-a",
        name="web",
        metadata_xml=metadata_payload(other, Bookkeeping(generation=1, created_at=0.0)),
        source_node="node-2",
    )
    with pytest.raises(grpc.RpcError) as refused:
        peer.migrations.PrepareMigrationTarget(prepare)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tenant-b/db" in (refused.value.details() or "")


def test_a_tenant_control_plane_cannot_touch_or_see_another_tenant(agent: SecureAgent) -> None:
    root = admin(agent)
    apply(root, "tenant-b")
    tenant_a = agent.client(agent.ca.issue("a", "URI:spiffe://cluster/ns/tenant-a/sa/controller"))
    assert apply(tenant_a, "tenant-a").changed
    other = {"namespace": "tenant-b", "name": "web"}
    assert code_of(lambda: apply(tenant_a, "tenant-b", "mine")) == DENIED
    get = pb.GetVirtualMachineRequest(**other)
    assert code_of(lambda: tenant_a.vms.GetVirtualMachine(get)) == DENIED
    delete = pb.DeleteVirtualMachineRequest(**other)
    assert code_of(lambda: tenant_a.vms.DeleteVirtualMachine(delete)) == DENIED
    console = pb.GetConsoleLogRequest(**other)
    assert code_of(lambda: list(tenant_a.vms.GetConsoleLog(console))) == DENIED
    assert names(tenant_a) == {"tenant-a/web"}
    assert names(tenant_a, "tenant-b") == set()
    assert names(root) == {"tenant-a/web", "tenant-b/web"}

    watch = tenant_a.vms.WatchVirtualMachines(pb.WatchVirtualMachinesRequest(), timeout=30)
    seen = []
    for event in watch:
        seen.append(f"{event.vm.metadata.namespace}/{event.vm.metadata.name}")
        if event.type == pb.EVENT_TYPE_SYNCED:
            apply(root, "tenant-b", "later")  # happens first: would be seen first
            apply(root, "tenant-a", "later")
        elif event.vm.metadata.name == "later":
            break
    watch.cancel()
    # tenant-b/later was applied before tenant-a/later: unfiltered, it would be here.
    assert seen[0] == "tenant-a/web" and seen[-1] == "tenant-a/later", seen
    assert not [name for name in seen if name.startswith("tenant-b/")], seen


def test_the_identity_comes_from_the_certificate_not_from_its_cn_or_headers(
    agent: SecureAgent,
) -> None:
    # A CN spelled like the control plane's SAN, and a header claiming it: neither counts.
    spoof = agent.client(agent.ca.issue("DNS:control-plane.example"))
    metadata = (("x-forwarded-client-cert", "DNS=control-plane.example"),)
    call = spoof.nodes.GetNode
    assert code_of(lambda: call(node_service_pb2.GetNodeRequest(), metadata=metadata)) == DENIED
    reader = agent.client(agent.ca.issue("r", "DNS:reader.example"))
    claim = (("x-identity", "DNS:control-plane.example"),)
    vm = json_format.ParseDict(vm_doc("x", "tenant-a"), vm_pb2.VirtualMachine())
    request = pb.ApplyVirtualMachineRequest(vm=vm)
    assert code_of(lambda: reader.vms.ApplyVirtualMachine(request, metadata=claim)) == DENIED


def test_the_unix_socket_is_the_control_plane_and_root_only(agent: SecureAgent) -> None:
    assert stat.S_IMODE(os.stat(agent.unix_socket).st_mode) == 0o600
    assert os.stat(agent.unix_socket).st_uid == os.getuid()
    local = agent.local()
    assert apply(local, "tenant-b").changed
    assert names(local) == {"tenant-b/web"}


def test_denied_calls_are_logged_with_the_identity_and_counted(
    agent: SecureAgent, caplog: pytest.LogCaptureFixture
) -> None:
    reader = agent.client(agent.ca.issue("r", "DNS:reader.example"))
    labels = {
        "method": "/virtagent.v1.VirtualMachineService/ApplyVirtualMachine",
        "code": "PERMISSION_DENIED",
    }
    before = agent_metrics.REGISTRY.get_sample_value("virt_agent_grpc_requests_total", labels) or 0
    with caplog.at_level(logging.WARNING, logger="agent.api.access"):
        assert code_of(lambda: apply(reader, "tenant-a")) == DENIED
        assert code_of(lambda: apply(reader, "tenant-b")) == DENIED
    method = "/virtagent.v1.VirtualMachineService/ApplyVirtualMachine"
    assert agent.access.denied[method] == 2
    denied = {"method": method, "code": "PERMISSION_DENIED"}
    assert agent_metrics.REGISTRY.get_sample_value("virt_agent_grpc_requests_total", denied) == (
        before + 2
    )
    identities = [getattr(record, "identity", "") for record in caplog.records]
    assert identities == ["DNS:reader.example,CN:r"] * 2


def test_a_changed_authz_file_takes_effect_and_a_broken_one_is_ignored(
    agent: SecureAgent,
) -> None:
    reader = agent.client(agent.ca.issue("r", "DNS:reader.example"))
    assert code_of(lambda: apply(reader, "tenant-a")) == DENIED
    agent.write("authz.yaml", RULES.replace("role: reader", "role: control-plane"))
    assert apply(reader, "tenant-a").changed
    agent.write("authz.yaml", "rules: [{identity: 'DNS:reader.example', role: admin}]")
    assert not apply(reader, "tenant-a").changed  # the last good rules still hold
    agent.write("authz.yaml", "rules: []")
    assert code_of(lambda: names(reader)) == DENIED
    assert code_of(lambda: get_node(admin(agent))) == DENIED


def test_a_replaced_server_certificate_is_served_without_a_restart(agent: SecureAgent) -> None:
    new_ca = CertificateAuthority("rotated-ca")
    client_pair = agent.ca.issue("cp", "DNS:control-plane.example")
    assert code_of(lambda: get_node(agent.client(client_pair, trust=new_ca.pem))) == (
        grpc.StatusCode.UNAVAILABLE
    )
    rotated = new_ca.issue("virt-agent", "DNS:localhost", "IP:127.0.0.1", server=True)
    agent.write("tls.key", rotated.key)
    agent.write("tls.crt", rotated.cert)
    assert get_node(agent.client(client_pair, trust=new_ca.pem)).node.name == "node-test"
    assert code_of(lambda: get_node(agent.client(client_pair))) == grpc.StatusCode.UNAVAILABLE


def test_a_replaced_client_ca_is_trusted_without_a_restart(agent: SecureAgent) -> None:
    new_ca = CertificateAuthority("new-client-ca")
    client_pair = new_ca.issue("cp", "DNS:control-plane.example")
    assert code_of(lambda: get_node(agent.client(client_pair))) == grpc.StatusCode.UNAVAILABLE
    agent.write("ca.crt", agent.ca.pem + new_ca.pem)
    assert get_node(agent.client(client_pair)).node.name == "node-test"


def test_without_rules_every_verified_client_is_control_plane_and_a_warning_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.app"), secure_agent(None) as served:
        anyone = served.client(served.ca.issue("whoever", "DNS:whoever.example"))
        assert apply(anyone, "tenant-b").changed
        assert code_of(lambda: get_node(served.client(None))) == grpc.StatusCode.UNAVAILABLE
    assert any("control-plane for all namespaces" in r.getMessage() for r in caplog.records)
