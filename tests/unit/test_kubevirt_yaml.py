"""KubeVirt manifest → virtagent.v1.VirtualMachine mapping (agent.cli.kubevirt)."""

from __future__ import annotations

import copy
import textwrap
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from agent.cli.kubevirt import ManifestError, load_manifests, map_document
from agent.models import RunStrategy
from agent.spec import parse_vm

FEDORA = textwrap.dedent(
    """\
    apiVersion: kubevirt.io/v1
    kind: VirtualMachine
    metadata:
      name: fedora-vm
      labels:
        app: web
      annotations:
        kubevirt.io/latest-observed-api-version: v1
      creationTimestamp: "2024-05-01T10:00:00Z"
      generation: 3
      resourceVersion: "12345"
    spec:
      runStrategy: RerunOnFailure
      template:
        metadata:
          creationTimestamp: null
          labels:
            kubevirt.io/vm: fedora-vm
        spec:
          terminationGracePeriodSeconds: 60
          hostname: fedora
          domain:
            cpu:
              cores: 2
              sockets: 1
              threads: 1
            machine:
              type: q35
            firmware:
              bootloader:
                efi:
                  secureBoot: false
            resources:
              requests:
                memory: 2Gi
                cpu: 1
            devices:
              disks:
                - name: containerdisk
                  bootOrder: 1
                  disk:
                    bus: virtio
                - name: cloudinitdisk
                  cdrom:
                    bus: sata
                    readonly: true
                - name: scratch
                  serial: scratch01
                  cache: none
                  disk: {}
              interfaces:
                - name: default
                  masquerade: {}
                  model: virtio
                  macAddress: "02:00:00:00:00:01"
                  ports:
                    - name: ssh
                      port: 22
                    - name: dns
                      port: 53
                      protocol: UDP
          networks:
            - name: default
              pod: {}
          volumes:
            - name: containerdisk
              containerDisk:
                image: quay.io/containerdisks/fedora:40
            - name: cloudinitdisk
              cloudInitNoCloud:
                userData: |
                  #cloud-config
                  password: fedora
                  chpasswd: { expire: False }
            - name: scratch
              emptyDisk:
                capacity: 1Gi
    status:
      printableStatus: Running
      ready: true
    """
)


def fedora() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(FEDORA)
    return document


def mapped(document: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    manifest = map_document(document, default_namespace=namespace)
    return json_format.MessageToDict(manifest.vm)


def test_realistic_vm_maps_field_for_field() -> None:
    document = mapped(fedora())

    assert document["metadata"] == {
        "namespace": "default",
        "name": "fedora-vm",
        "labels": {"kubevirt.io/vm": "fedora-vm", "app": "web"},
    }
    assert document["spec"]["runStrategy"] == "RerunOnFailure"
    instance = document["spec"]["template"]["spec"]
    expected = copy.deepcopy(fedora()["spec"]["template"]["spec"])
    expected["terminationGracePeriodSeconds"] = "60"  # int64 in the protobuf JSON mapping
    expected["domain"]["resources"]["requests"]["cpu"] = "1"  # quantities are strings
    assert instance == expected


def test_realistic_vm_passes_the_agents_validation() -> None:
    spec = parse_vm(mapped(fedora()))

    assert spec.run_strategy is RunStrategy.RERUN_ON_FAILURE
    assert spec.memory_bytes == 2 * 1024**3
    assert [d.name for d in spec.disks] == ["containerdisk", "cloudinitdisk", "scratch"]
    assert spec.interfaces[0].binding == "masquerade"
    assert [(p.port, p.protocol) for p in spec.interfaces[0].ports] == [(22, "TCP"), (53, "UDP")]
    assert spec.networks[0].kind == "pod"
    assert spec.termination_grace_period_seconds == 60


def test_namespace_defaults_to_the_cli_namespace_and_metadata_wins() -> None:
    document = fedora()
    assert mapped(document, "team-a")["metadata"]["namespace"] == "team-a"
    document["metadata"]["namespace"] = "team-b"
    assert mapped(document, "team-a")["metadata"]["namespace"] == "team-b"


def test_vm_labels_win_over_template_labels() -> None:
    document = fedora()
    document["spec"]["template"]["metadata"]["labels"]["app"] = "template"
    assert mapped(document)["metadata"]["labels"]["app"] == "web"


def test_uid_is_kept() -> None:
    document = fedora()
    document["metadata"]["uid"] = "6f1b7a4e-2f7c-4a55-9a59-1f6b0b4f7c11"
    assert mapped(document)["metadata"]["uid"] == "6f1b7a4e-2f7c-4a55-9a59-1f6b0b4f7c11"


@pytest.mark.parametrize(
    ("spec", "strategy"),
    [
        ({"running": True}, "Always"),
        ({"running": False}, "Halted"),
        ({"runStrategy": "Always"}, "Always"),
        ({"runStrategy": "Halted"}, "Halted"),
        ({"runStrategy": "Manual"}, "Manual"),
        ({"runStrategy": "RerunOnFailure"}, "RerunOnFailure"),
        ({}, None),
    ],
    ids=["running", "not-running", "always", "halted", "manual", "rerun", "agent-default"],
)
def test_run_strategy(spec: dict[str, Any], strategy: str | None) -> None:
    document = fedora()
    del document["spec"]["runStrategy"]
    document["spec"].update(spec)
    assert mapped(document)["spec"].get("runStrategy") == strategy


def test_vmi_becomes_run_strategy_once() -> None:
    document = fedora()
    document["kind"] = "VirtualMachineInstance"
    document["spec"] = document["spec"]["template"]["spec"]

    manifest = map_document(document, default_namespace="default")

    assert manifest.kind == "VirtualMachineInstance"
    assert manifest.vm.spec.run_strategy == "Once"
    assert manifest.vm.spec.template.spec.hostname == "fedora"
    assert map_document(fedora(), default_namespace="default").vm.spec.run_strategy != "Once"


def test_a_vm_with_run_strategy_once_keeps_it() -> None:
    manifest = map_document(vm_with("spec.runStrategy", "Once"), default_namespace="default")
    assert manifest.vm.spec.run_strategy == "Once"


def vm_with(path: str, value: Any) -> dict[str, Any]:
    """The Fedora VM with ``value`` set at a dotted path (``[n]`` indexes a list)."""
    document = fedora()
    *parents, last = path.split(".")
    node: Any = document
    for part in parents:
        name, _, index = part.partition("[")
        node = node[name] if not index else node[name][int(index.rstrip("]"))]
    node[last] = value
    return document


def running(value: Any) -> dict[str, Any]:
    document = vm_with("spec.running", value)
    del document["spec"]["runStrategy"]
    return document


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            vm_with("spec.template.spec.domain.devices.gpus", [{"name": "g", "deviceName": "x"}]),
            "spec.template.spec.domain.devices.gpus: field is not supported by virt-agent",
        ),
        (
            vm_with("spec.template.spec.domain.devices.hostDevices", [{"name": "h"}]),
            "spec.template.spec.domain.devices.hostDevices: field is not supported",
        ),
        (
            vm_with(
                "spec.template.spec.volumes",
                [{"name": "root", "persistentVolumeClaim": {"claimName": "c", "hotpluggable": 1}}],
            ),
            "spec.template.spec.volumes[0].persistentVolumeClaim.hotpluggable: field is not "
            "supported",
        ),
        (
            vm_with(
                "spec.dataVolumeTemplates",
                [{"metadata": {"name": "dv"}, "spec": {"source": {"upload": {}}}}],
            ),
            "spec.dataVolumeTemplates[0].spec.source.upload: field is not supported",
        ),
        (
            vm_with("spec.template.spec.accessCredentials", [{"userPassword": {}}]),
            "spec.template.spec.accessCredentials[0].userPassword: field is not supported",
        ),
        (
            vm_with("spec.template.spec.domain.devices.interfaces[0].sriov", {}),
            "spec.template.spec.domain.devices.interfaces[0].sriov: field is not supported",
        ),
        (
            vm_with("spec.template.spec.networks[0].multus", {"networkName": "br0"}),
            "spec.template.spec.networks[0]: set only one of pod, multus",
        ),
        (
            vm_with("metadata.ownerReferences", []),
            "metadata.ownerReferences: field is not supported",
        ),
        (
            vm_with("spec.template.metadata.namespace", "x"),
            "spec.template.metadata.namespace: field is not supported",
        ),
        (vm_with("spec.runStrategy", "Sometimes"), "spec.runStrategy: 'Sometimes' is not one of"),
        (vm_with("spec.running", True), "spec: set only one of running, runStrategy"),
        (running("yes"), "spec.running: must be true or false"),
        (
            vm_with("spec.template.spec.domain.cpu.cores", "two"),
            "spec.template.spec.domain.cpu.cores: must be an integer, not a string ('two')",
        ),
        (
            vm_with("spec.template.spec.domain.cpu.cores", -1),
            "spec.template.spec.domain.cpu.cores: -1 is out of range",
        ),
        (
            vm_with("spec.template.spec.volumes", {"name": "x"}),
            "spec.template.spec.volumes: must be a list, not a mapping",
        ),
        (
            vm_with("spec.template.spec.domain.devices.disks[0].disk", "virtio"),
            "spec.template.spec.domain.devices.disks[0].disk: must be a mapping",
        ),
        (vm_with("kind", "Pod"), "kind: 'Pod' (apiVersion 'kubevirt.io/v1') is not supported"),
        (vm_with("apiVersion", "kubevirt.io/v2"), "apiVersion: 'kubevirt.io/v2'"),
    ],
    ids=[
        "gpus",
        "host-devices",
        "pvc-volume",
        "data-volume-templates",
        "access-credentials-password",
        "sriov-binding",
        "two-network-sources",
        "owner-references",
        "template-namespace",
        "unknown-run-strategy",
        "running-and-run-strategy",
        "running-not-bool",
        "wrong-type",
        "out-of-range",
        "not-a-list",
        "not-a-mapping",
        "unknown-kind",
        "unknown-api-version",
    ],
)
def test_unsupported_input_is_named_by_path(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        map_document(document, default_namespace="default")
    assert str(caught.value).startswith(message)


def test_status_and_cluster_bookkeeping_are_ignored() -> None:
    document = fedora()
    document["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    document["metadata"]["finalizers"] = ["kubevirt.io/virtualMachineControllerFinalize"]
    document["spec"]["template"]["metadata"]["annotations"] = {"a": "b"}
    assert mapped(document) == mapped(fedora())


def test_multi_document_stream_skips_empty_documents() -> None:
    second = FEDORA.replace("name: fedora-vm\n", "name: second\n", 1)
    loaded = load_manifests(f"---\n{FEDORA}---\n---\n{second}", default_namespace="default")
    assert [(m.vm.metadata.name, m.document) for m in loaded.vms] == [
        ("fedora-vm", 1),
        ("second", 3),
    ]


def test_documents_of_other_kinds_are_skipped_by_name() -> None:
    service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n"
    claim = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\n"
    loaded = load_manifests(f"{service}---\n{FEDORA}---\n{claim}", default_namespace="default")
    assert [m.document for m in loaded.vms] == [2]
    assert [str(s) for s in loaded.skipped] == [
        "document 1 (Service web)",
        "document 3 (PersistentVolumeClaim data)",
    ]


def test_a_stream_without_vms_is_an_error() -> None:
    service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n"
    with pytest.raises(ManifestError) as caught:
        load_manifests(service, default_namespace="default")
    assert str(caught.value) == (
        "no VirtualMachine or VirtualMachineInstance documents found "
        "(only document 1 (Service web))"
    )


def test_a_document_without_a_kind_in_a_stream_is_named() -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifests(f"{FEDORA}---\nmetadata: {{name: x}}\n", default_namespace="default")
    assert str(caught.value).startswith("document 2: kind: None (apiVersion None)")


def test_the_same_vm_twice_in_a_stream_is_an_error() -> None:
    with pytest.raises(ManifestError, match="document 2: metadata.name: default/fedora-vm is"):
        load_manifests(f"{FEDORA}---\n{FEDORA}", default_namespace="default")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no documents found"),
        ("a: [1\n", "invalid YAML"),
        ("- 1\n- 2\n", "must be a mapping, not a list"),
    ],
    ids=["empty", "syntax", "not-a-mapping"],
)
def test_unreadable_streams(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        load_manifests(text, default_namespace="default")


def test_v1alpha3_manifests_and_rng_devices_are_accepted() -> None:
    document = vm_with("apiVersion", "kubevirt.io/v1alpha3")
    document["spec"]["template"]["spec"]["domain"]["devices"]["rng"] = {}
    vm = map_document(document, default_namespace="default").vm
    assert vm.spec.template.spec.domain.devices.HasField("rng")
    parse_vm(json_format.MessageToDict(vm))  # and the agent takes it


UPSTREAM_STYLE_VMI = """\
apiVersion: kubevirt.io/v1alpha3
kind: VirtualMachineInstance
metadata:
  name: vmi-web
  labels: {special: vmi-web}
spec:
  domain:
    devices:
      disks:
      - disk: {bus: virtio}
        name: containerdisk
      - disk: {bus: virtio}
        name: cloudinitdisk
      - disk: {bus: virtio}
        name: scratch
      rng: {}
    machine:
      type: ""
    resources:
      requests:
        memory: 1024M
  terminationGracePeriodSeconds: 0
  volumes:
  - containerDisk:
      image: registry:5000/kubevirt/fedora-cloud-container-disk-demo:devel
    name: containerdisk
  - cloudInitNoCloud:
      userData: |-
        #cloud-config
        password: fedora
    name: cloudinitdisk
  - emptyDisk:
      capacity: 2Gi
    name: scratch
"""


def test_an_upstream_style_vmi_without_nics_gets_kubevirts_default_pod_nic() -> None:
    (manifest,) = load_manifests(UPSTREAM_STYLE_VMI, default_namespace="default").vms
    instance = manifest.vm.spec.template.spec
    assert [i.name for i in instance.domain.devices.interfaces] == ["default"]
    assert instance.domain.devices.interfaces[0].HasField("masquerade")
    assert instance.networks[0].HasField("pod")
    spec = parse_vm(json_format.MessageToDict(manifest.vm))
    assert spec.memory_bytes == 1024 * 1000**2 and len(spec.volumes) == 3


def test_autoattach_pod_interface_false_means_no_nic() -> None:
    document = yaml.safe_load(UPSTREAM_STYLE_VMI)
    document["spec"]["domain"]["devices"]["autoattachPodInterface"] = False
    manifest = map_document(document, default_namespace="default")
    assert not manifest.vm.spec.template.spec.domain.devices.interfaces
    assert not manifest.vm.spec.template.spec.networks
