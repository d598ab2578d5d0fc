"""Instancetypes and preferences resolved by vmctl (agent/cli/instancetypes.py,
agent/cli/preferences.py): KubeVirt's common ones by name, documents in the applied file
or an --instancetypes folder, conflicts and requirements, and what the agent then accepts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from agent.cli.instancetypes import Catalog
from agent.cli.kubevirt import ManifestError, load_manifests, map_document
from agent.cli.main import main
from agent.models import VMSpec
from agent.spec import parse_vm

VM: dict[str, Any] = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachine",
    "metadata": {"name": "web"},
    "spec": {
        "instancetype": {"name": "u1.medium"},
        "runStrategy": "Halted",
        "template": {
            "spec": {
                "domain": {"devices": {}},
                "volumes": [{"name": "root", "containerDisk": {"image": "registry:5000/os:1"}}],
            }
        },
    },
}


def _vm(**spec: Any) -> dict[str, Any]:
    document = copy.deepcopy(VM)
    document["spec"].update(spec)
    return document


def _domain(document: dict[str, Any]) -> dict[str, Any]:
    domain: dict[str, Any] = document["spec"]["template"]["spec"]["domain"]
    return domain


def _spec(document: dict[str, Any], catalog: Catalog | None = None) -> tuple[VMSpec, Any]:
    manifest = map_document(document, default_namespace="d", catalog=catalog)
    return parse_vm(json_format.MessageToDict(manifest.vm)), manifest


def test_a_common_instancetype_by_name_sizes_the_vm() -> None:
    spec, _ = _spec(VM)
    assert (spec.cpu.sockets, spec.cpu.cores, spec.memory_bytes) == (1, 1, 4 * 1024**3)
    assert [(d.name, d.bus) for d in spec.disks] == [("root", "virtio")]


def test_a_windows_preference_fills_what_the_vm_leaves_open() -> None:
    document = _vm(instancetype={"name": "u1.large"}, preference={"name": "windows.11"})
    spec, _ = _spec(document)
    assert (spec.cpu.sockets, spec.cpu.cores) == (1, 2)  # windows prefers cores
    assert [(d.name, d.bus) for d in spec.disks] == [("root", "sata")]
    assert [(i.name, i.model) for i in spec.interfaces] == [("default", "e1000e")]
    assert [(i.type, i.bus) for i in spec.hardware.inputs] == [("tablet", "usb")]
    features = spec.hardware.features
    assert features.hyperv is not None and "vpindex" in features.hyperv.enabled
    assert features.smm and spec.hardware.tpm is not None
    assert (spec.firmware.bootloader, spec.firmware.secure_boot) == ("efi", True)
    assert spec.firmware.efi_persistent
    assert [t.name for t in spec.hardware.clock.timers] == ["hpet", "pit", "rtc", "hyperv"]
    assert spec.termination_grace_period_seconds == 3600


def test_the_vms_own_fields_win_over_the_preference() -> None:
    document = _vm(instancetype={"name": "u1.large"}, preference={"name": "windows.11"})
    _domain(document)["devices"]["disks"] = [{"name": "root", "disk": {"bus": "virtio"}}]
    _domain(document)["firmware"] = {"bootloader": {"bios": {}}}
    spec, _ = _spec(document)
    assert [d.bus for d in spec.disks] == ["virtio"] and spec.firmware.bootloader == "bios"


INSTANCETYPES = """\
apiVersion: instancetype.kubevirt.io/v1beta1
kind: VirtualMachineInstancetype
metadata: {name: quad}
spec:
  cpu: {guest: 4}
  memory: {guest: 1Gi}
  ioThreadsPolicy: shared
---
apiVersion: instancetype.kubevirt.io/v1beta1
kind: VirtualMachinePreference
metadata: {name: spread}
spec:
  cpu: {preferredCPUTopology: preferSpread}
  devices: {preferredDiskDedicatedIoThread: true}
"""


def _local(**changes: Any) -> dict[str, Any]:
    return _vm(
        instancetype={"kind": "VirtualMachineInstancetype", "name": "quad"},
        preference={"kind": "VirtualMachinePreference", "name": "spread"},
        **changes,
    )


def test_instancetypes_and_preferences_from_the_same_file() -> None:
    text = INSTANCETYPES + "---\n" + yaml.safe_dump(_local())
    loaded = load_manifests(text, default_namespace="d")
    assert [str(s) for s in loaded.skipped] == [
        "document 1 (VirtualMachineInstancetype quad)",
        "document 2 (VirtualMachinePreference spread)",
    ]
    spec = parse_vm(json_format.MessageToDict(loaded.vms[0].vm))
    assert (spec.cpu.sockets, spec.cpu.cores, spec.memory_bytes) == (2, 2, 1024**3)
    assert spec.hardware.io_threads_policy == "shared"
    assert [d.dedicated_io_thread for d in spec.disks] == [True]


def test_vmctl_validate_reads_an_instancetypes_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "types").mkdir()
    (tmp_path / "types" / "mine.yaml").write_text(INSTANCETYPES)
    vm = tmp_path / "vm.yaml"
    vm.write_text(yaml.safe_dump(_local()))
    assert main(["validate", "-f", str(vm)]) == 2
    assert "no VirtualMachineInstancetype named 'quad'" in capsys.readouterr().out
    assert main(["validate", "--instancetypes", str(tmp_path / "types"), "-f", str(vm)]) == 0
    assert capsys.readouterr().out.endswith("VirtualMachine web: accepted\n")


@pytest.mark.parametrize(
    ("domain", "field"),
    [
        ({"memory": {"guest": "2Gi"}}, "spec.template.spec.domain.memory.guest"),
        ({"cpu": {"cores": 2}}, "spec.template.spec.domain.cpu"),
        ({"resources": {"requests": {"memory": "1Gi"}}}, "domain.resources.requests.memory"),
        ({"resources": {"limits": {"cpu": "2"}}}, "domain.resources.limits.cpu"),
    ],
    ids=["memory", "cpu", "memory-request", "cpu-limit"],
)
def test_a_vm_that_sets_what_its_instancetype_sets_is_refused(
    domain: dict[str, Any], field: str
) -> None:
    document = _vm()
    _domain(document).update(domain)
    with pytest.raises(ManifestError) as caught:
        map_document(document, default_namespace="d")
    assert caught.value.path.endswith(field)
    assert "conflicts with spec.instancetype (u1.medium)" in caught.value.problem


def test_the_same_value_as_the_instancetype_is_no_conflict() -> None:
    document = _vm()
    _domain(document).update({"memory": {"guest": "4096Mi"}, "cpu": {"sockets": 1}})
    spec, _ = _spec(document)
    assert spec.memory_bytes == 4 * 1024**3


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("cx1.medium", "spec.instancetype (cx1.medium) spec.cpu.dedicatedCPUPlacement"),
        ("m1.large", "spec.instancetype (m1.large) spec.memory.hugepages"),
        ("x9.huge", "spec.instancetype.name"),
    ],
    ids=["dedicated-cpus", "hugepages", "unknown"],
)
def test_instancetypes_the_agent_cannot_honour_are_named(name: str, field: str) -> None:
    with pytest.raises(ManifestError) as caught:
        map_document(_vm(instancetype={"name": name}), default_namespace="d")
    assert caught.value.path == field


def test_scheduler_only_instancetype_fields_are_ignored_and_named() -> None:
    _, manifest = _spec(_vm(instancetype={"name": "o1.medium"}))
    assert manifest.ignored == ("spec.instancetype (o1.medium) spec.memory.overcommitPercent",)


def test_preference_requirements_are_checked() -> None:
    document = _vm(instancetype={"name": "u1.medium"}, preference={"name": "windows.11"})
    with pytest.raises(ManifestError) as caught:
        map_document(document, default_namespace="d")
    assert caught.value.path == "spec.preference (windows.11) spec.requirements.cpu.guest"
    assert caught.value.problem == "needs 2 vCPUs, the VM has 1"


def test_a_preference_without_an_instancetype() -> None:
    document = _vm(preference={"name": "fedora"})
    del document["spec"]["instancetype"]
    _domain(document)["memory"] = {"guest": "2Gi"}
    spec, _ = _spec(document)
    assert spec.firmware.secure_boot and spec.hardware.features.smm
    assert [i.model for i in spec.interfaces] == ["virtio"]
