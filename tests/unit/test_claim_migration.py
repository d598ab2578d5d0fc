"""Live migration of VMs on claims: claims are shared storage, checked on the target up front."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.errors import FailedPrecondition
from agent.migration.admission import check_claims
from agent.migration.xml import copied_disks, for_target, has_shared_disks
from agent.models import VMSpec
from agent.spec import parse_vm
from tests.unit.disk_fakes import FakeImages

SOURCE = """<domain type='qemu'><name>default_web</name><devices>
<disk type='file' device='disk'><source file='/a/claims/default/data/disk.img' index='1'/>
<target dev='vda' bus='virtio'/><address type='pci' slot='0x04'/></disk>
</devices></domain>"""
TARGET = """<domain type='qemu'><name>default_web</name>
<metadata><va:vm xmlns:va="https://virt-agent.io/xmlns/vm/v1"/></metadata><devices>
<disk type='block' device='disk'><source dev='/b/claims/default/data/disk.img'/>
<target dev='vda' bus='virtio'/></disk>
</devices></domain>"""


def claim_vm(**volume: Any) -> VMSpec:
    source = volume or {"persistentVolumeClaim": {"claimName": "data"}}
    return parse_vm(
        {
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {
                "template": {
                    "spec": {
                        "domain": {
                            "memory": {"guest": "64Mi"},
                            "devices": {"disks": [{"name": "data", "disk": {}}]},
                        },
                        "volumes": [{"name": "data", **source}],
                    }
                }
            },
        }
    )


def test_claims_are_shared_storage_never_copied() -> None:
    for spec in (claim_vm(), claim_vm(dataVolume={"name": "data"})):
        assert copied_disks(spec, TARGET) == ()
        assert has_shared_disks(spec)


def test_the_target_names_its_own_claim_path_file_or_device() -> None:
    moved = ET.fromstring(for_target(SOURCE, TARGET))
    disk = moved.find("devices/disk")
    assert disk is not None and disk.get("type") == "block"
    source = disk.find("source")
    assert source is not None
    assert source.attrib == {"dev": "/b/claims/default/data/disk.img", "index": "1"}
    assert disk.find("address") is not None  # the guest's hardware stays


def target_node(root: Path) -> SimpleNamespace:
    """The parts of a target's VMService that its claim check reads."""
    support = SimpleNamespace(host_disk_roots=(), claim_roots=(str(root),))
    return SimpleNamespace(
        node_name="node-b", files=SimpleNamespace(support=support, images=FakeImages("raw"))
    )


def test_the_target_refuses_a_claim_it_does_not_have_naming_the_disk(tmp_path: Path) -> None:
    service = target_node(tmp_path)
    with pytest.raises(FailedPrecondition) as caught:
        check_claims(service, claim_vm())  # type: ignore[arg-type]
    message = str(caught.value)
    assert "volumes[0].persistentVolumeClaim.claimName: disk 'data'" in message
    assert "claim default/data is not on node node-b" in message
    (tmp_path / "default" / "data").mkdir(parents=True)
    (tmp_path / "default" / "data" / "disk.img").write_bytes(b"\0" * 512)
    check_claims(service, claim_vm())  # type: ignore[arg-type]


def test_a_target_without_claim_roots_refuses_claims(tmp_path: Path) -> None:
    service = target_node(tmp_path)
    service.files.support.claim_roots = ()
    with pytest.raises(FailedPrecondition, match="no --claim-root"):
        check_claims(service, claim_vm(dataVolume={"name": "data"}))  # type: ignore[arg-type]
