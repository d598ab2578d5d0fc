"""Persistent volume claims with the real agent, libvirtd, QEMU and test guest (issue 16).

The session's agent is restarted for this module with ``--claim-root`` and put back as it
was afterwards. The tests play the storage provisioner: they put ``disk.img`` into
``<claim root>/<namespace>/<claim>/`` themselves, as a CSI driver or an operator would.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.api._gen.virtagent.v1 import migration_service_pb2 as mpb
from agent.api._gen.virtagent.v1 import vm_pb2
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from agent.client import AgentCallError, AgentClient
from tests.system.agentproc import AgentProcess, guest_vm
from tests.system.netbed import node_get
from tests.testbed.nodebox import GuestImage, NodeBox, TwoNodes
from tests.testbed.wait import wait_for

READY = "VIRT-AGENT-READY"
PORT = 7443  # the migration test agents' gRPC port on the nodes' uplinks
POOLS = {"node-a": "10.250.1.0/24", "node-b": "10.250.2.0/24"}
BOOT_TIMEOUT = 240.0
# Prints the first bytes of the disk with serial DATA1, then writes WORD there (synced).
DATA_SCRIPT = """#!/bin/sh
for d in /sys/block/vd*; do
  [ "$(cat $d/serial 2>/dev/null)" = DATA1 ] && dev=/dev/$(basename $d)
done
echo "VIRT-AGENT-CLAIM-HAD $(head -c 32 $dev | tr -d '\\000')."
printf '%s' WORD | dd of=$dev bs=32 count=1 conv=notrunc 2>/dev/null
sync
echo "VIRT-AGENT-CLAIM-WROTE WORD"
"""


@pytest.fixture(scope="module")
def claim_root(node: NodeBox, agent_process: AgentProcess) -> Iterator[Path]:
    root = node.dir / "claims"
    root.mkdir(mode=0o755, exist_ok=True)
    saved = list(agent_process.extra_args)
    try:
        agent_process.stop()
        agent_process.extra_args = [*saved, "--claim-root", str(root)]
        agent_process.start()
        yield root
    finally:
        agent_process.stop()
        agent_process.extra_args = saved
        agent_process.start()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cagent(claim_root: Path, agent: AgentProcess) -> AgentProcess:
    """The agent with claims enabled; every VM is deleted after the test."""
    return agent


def claim_folder(root: Path, claim: str, namespace: str = "default") -> Path:
    folder = root / namespace / claim
    folder.mkdir(parents=True, mode=0o755, exist_ok=True)
    for parent in (folder, folder.parent):
        parent.chmod(0o755)
    return folder


def blank_claim(root: Path, claim: str, size: int = 1 << 20) -> Path:
    image = claim_folder(root, claim) / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(size)
    return image


def delete(agent: AgentProcess, name: str) -> None:
    agent.vms.DeleteVirtualMachine(
        pb.DeleteVirtualMachineRequest(namespace="default", name=name, grace_period_seconds=0),
        timeout=60,
    )


def data_vm(name: str, claim: str, word: str) -> dict[str, Any]:
    """The test guest (kernel boot) with the claim as a disk of serial DATA1, and a seed
    whose script shows what the claim held and writes ``word`` to it."""
    doc = guest_vm(name)
    instance = doc["spec"]["template"]["spec"]
    instance["domain"]["devices"]["disks"] = [
        {"name": "seed", "disk": {"bus": "virtio"}},
        {"name": "data", "disk": {"bus": "virtio"}, "serial": "DATA1"},
    ]
    instance["volumes"] = [
        {"name": "seed", "cloudInitNoCloud": {"userData": DATA_SCRIPT.replace("WORD", word)}},
        {"name": "data", "persistentVolumeClaim": {"claimName": claim}},
    ]
    return doc


def test_a_vm_boots_from_a_claim_and_serves_its_page(
    cagent: AgentProcess, claim_root: Path, test_guest: GuestImage
) -> None:
    assert test_guest.disk is not None, "the test guest has no disk.qcow2"
    image = claim_folder(claim_root, "root-disk") / "disk.img"
    shutil.copyfile(test_guest.disk, image)  # the provisioner's part: a qcow2 claim
    doc = guest_vm("from-claim")
    instance = doc["spec"]["template"]["spec"]
    del instance["domain"]["firmware"]  # BIOS boot from the claim's own boot loader
    instance["domain"]["devices"] = {
        "disks": [{"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1}],
        "interfaces": [{"name": "default", "masquerade": {}}],
    }
    instance["networks"] = [{"name": "default", "pod": {}}]
    instance["volumes"] = [{"name": "root", "dataVolume": {"name": "root-disk"}}]
    cagent.apply(doc, timeout=120)
    vm = cagent.wait_phase("from-claim", vm_pb2.PHASE_RUNNING, timeout=60)
    xml = cagent.node.virsh("dumpxml", "default_from-claim")
    assert f"<source file='{image}'" in xml and "type='qcow2'" in xml  # used in place
    cagent.wait_console("from-claim", READY, timeout=BOOT_TIMEOUT)

    def page() -> str | None:
        nics = cagent.get("from-claim").status.interfaces
        if not nics or not nics[0].ip_addresses:
            return None
        text = node_get(cagent.node, nics[0].ip_addresses[0], timeout=5)
        return text if text and "token=disk" in text else None

    assert "token=disk" in wait_for(page, 60, interval=1, message="the guest's page")
    assert vm.status.phase == vm_pb2.PHASE_RUNNING
    delete(cagent, "from-claim")
    assert image.is_file()  # a claim outlives its VM


def test_data_written_to_a_claim_outlives_the_vm(cagent: AgentProcess, claim_root: Path) -> None:
    image = blank_claim(claim_root, "data")
    cagent.apply(data_vm("writer", "data", "first-vm-was-here"))
    text = cagent.wait_console("writer", "VIRT-AGENT-CLAIM-WROTE", timeout=BOOT_TIMEOUT)
    assert "VIRT-AGENT-CLAIM-HAD ." in text  # a blank claim
    delete(cagent, "writer")
    assert image.read_bytes().startswith(b"first-vm-was-here")

    cagent.apply(data_vm("reader", "data", "second-vm"))
    text = cagent.wait_console("reader", "VIRT-AGENT-CLAIM-WROTE", timeout=BOOT_TIMEOUT)
    assert "VIRT-AGENT-CLAIM-HAD first-vm-was-here." in text


def test_a_vm_waiting_for_its_claim_starts_when_it_appears(
    cagent: AgentProcess, claim_root: Path
) -> None:
    vm = cagent.apply(data_vm("patient", "late", "hello"))
    assert vm.status.phase == vm_pb2.PHASE_PENDING
    assert vm.status.reason == "WaitingForVolumeBinding"
    assert "default/late" in vm.status.message
    conditions = {c.type: c for c in vm.status.conditions}
    assert conditions["DataVolumesReady"].status == "False"
    assert "default/late" in conditions["DataVolumesReady"].message
    assert cagent.get("patient").status.phase == vm_pb2.PHASE_PENDING
    assert "running" not in cagent.node.virsh("domstate", "default_patient")

    image = blank_claim(claim_root, "late")
    cagent.wait_phase("patient", vm_pb2.PHASE_RUNNING, timeout=60)
    cagent.wait_console("patient", "VIRT-AGENT-CLAIM-WROTE", timeout=BOOT_TIMEOUT)
    delete(cagent, "patient")
    assert image.read_bytes().startswith(b"hello")


def test_a_claim_with_a_backing_file_is_refused(
    cagent: AgentProcess, claim_root: Path, tmp_path: Path
) -> None:
    base = tmp_path / "host-secret.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    image = claim_folder(claim_root, "evil") / "disk.img"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(image)],
        check=True,
    )
    with pytest.raises(grpc.RpcError) as caught:
        cagent.apply(data_vm("evil", "evil", "x"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "claim default/evil" in caught.value.details()
    assert "backing file" in caught.value.details()


def _migration_agent(node: NodeBox, guest: GuestImage, roots: list[Path]) -> AgentProcess:
    """An agent of its own on one of two nodes, plaintext gRPC on the uplink (as in
    test_migration.py), with the given claim roots."""
    args = ["--listen", f"{node.uplink_ip}:{PORT}", "--insecure", "--vm-cidr", "10.250.0.0/16"]
    args += ["--node-vm-pool", POOLS[node.name]]
    for root in roots:
        args += ["--claim-root", str(root)]
    return AgentProcess(node=node, guest=guest, dir=node.dir / "agents" / "claims", extra_args=args)


def _migrate(agent: AgentProcess, name: str, target: AgentProcess) -> mpb.Migration:
    with AgentClient(f"unix:{agent.socket}", timeout=30) as client:
        started = client.migrate("default", name, f"{target.node.uplink_ip}:{PORT}")
        updates = list(client.watch_migration(started.id, timeout=240))
    assert updates, "no migration updates"
    return updates[-1]


def test_a_vm_on_a_shared_claim_migrates_and_one_on_a_local_claim_is_refused(
    two_nodes: TwoNodes, test_guest: GuestImage
) -> None:
    shared = two_nodes.world.dir / "shared-claims"  # both nodes see it: shared storage
    local = two_nodes.a.dir / "local-claims"  # only node-a's agent looks here
    for folder in (shared, local):
        folder.mkdir(mode=0o755)
    a = _migration_agent(two_nodes.a, test_guest, [shared, local])
    b = _migration_agent(two_nodes.b, test_guest, [shared])
    a.start()
    try:
        b.start()
        try:
            image = blank_claim(shared, "data")
            a.apply(data_vm("mover", "data", "written-on-a"))
            a.wait_console("mover", "VIRT-AGENT-CLAIM-WROTE", timeout=BOOT_TIMEOUT)
            final = _migrate(a, "mover", b)
            assert final.state == mpb.MIGRATION_STATE_SUCCEEDED, final.message
            assert b.wait_phase("mover", vm_pb2.PHASE_RUNNING).status.node_name == "node-b"
            assert f"<source file='{image}'" in b.node.virsh("dumpxml", "default_mover")
            assert image.read_bytes().startswith(b"written-on-a")  # never copied or reset

            blank_claim(local, "scratch")
            a.apply(data_vm("stayer", "scratch", "x"))
            a.wait_phase("stayer", vm_pb2.PHASE_RUNNING)
            with (
                AgentClient(f"unix:{a.socket}", timeout=30) as client,
                pytest.raises(AgentCallError) as refused,
            ):
                client.migrate("default", "stayer", f"{b.node.uplink_ip}:{PORT}")
            # The call itself is refused, before anything is made on either node.
            assert refused.value.code.name == "FAILED_PRECONDITION", refused.value
            assert "disk 'data'" in refused.value.message
            assert "claim default/scratch is not on node node-b" in refused.value.message
            assert a.get("stayer").status.phase == vm_pb2.PHASE_RUNNING  # it stayed on a
            assert "default_stayer" not in b.node.virsh("list", "--all", "--name")
        finally:
            for agent in (a, b):
                if agent.proc is not None:
                    agent.delete_all()
            b.stop()
    finally:
        a.stop()
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(local, ignore_errors=True)


def shared_vm(name: str, claim: str, *, shareable: bool) -> dict[str, Any]:
    doc = guest_vm(name, memory="160Mi")
    instance = doc["spec"]["template"]["spec"]
    instance["domain"]["devices"]["disks"] = [
        {"name": "data", "disk": {"bus": "virtio"}, "shareable": shareable}
    ]
    instance["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    return doc


def test_two_vms_share_a_claim_only_when_both_disks_are_shareable(
    cagent: AgentProcess, claim_root: Path
) -> None:
    blank_claim(claim_root, "shared")
    for name in ("one", "two"):
        cagent.apply(shared_vm(name, "shared", shareable=True))
        cagent.wait_phase(name, vm_pb2.PHASE_RUNNING)  # QEMU shares the raw file
    with pytest.raises(grpc.RpcError) as caught:
        cagent.apply(shared_vm("three", "shared", shareable=False))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
    assert "claim default/shared is in use by vm default/" in caught.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        cagent.get("three")  # not left behind
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
