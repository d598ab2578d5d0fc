"""vmctl maps KubeVirt's dataVolumeTemplates: cluster storage hints dropped and listed,
sources kept, a DataSource refused by the agent with a reason."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.api.convert import spec_from_proto
from agent.cli.kubevirt import ManifestError, load_manifests
from agent.cli.output import describe_vm
from agent.datavolume import DataVolumeTemplate, RegistryImport
from agent.errors import InvalidSpec

CORPUS = Path(__file__).resolve().parents[1] / "data" / "kubevirt"

TEMPLATE = """
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: web}
spec:
  runStrategy: Halted
  dataVolumeTemplates:
  - apiVersion: cdi.kubevirt.io/v1beta1
    kind: DataVolume
    metadata:
      name: root
      annotations: {cdi.kubevirt.io/storage.bind.immediate.requested: "true"}
    spec:
      storage:
        accessModes: [ReadWriteOnce]
        volumeMode: Filesystem
        resources: {requests: {storage: 1Gi}}
      source: %s
  template:
    spec:
      domain: {memory: {guest: 128Mi}, devices: {}}
"""


def mapped(source: str):  # type: ignore[no-untyped-def]
    return load_manifests(TEMPLATE % source, default_namespace="team").vms[0]


def test_a_real_example_keeps_size_and_source_and_lists_what_it_drops() -> None:
    text = (CORPUS / "kubevirt" / "vm-alpine-datavolume.yaml").read_text()
    manifest = load_manifests(text, default_namespace="team").vms[0]
    templates = manifest.vm.spec.data_volume_templates
    assert [t.metadata.name for t in templates] == ["alpine-dv"]
    assert templates[0].spec.pvc.resources.requests["storage"] == "2Gi"
    url = "docker://registry:5000/kubevirt/alpine-container-disk-demo:devel"
    assert templates[0].spec.source.registry.url == url
    assert "spec.dataVolumeTemplates[0].spec.pvc.storageClassName" in manifest.ignored
    assert "spec.dataVolumeTemplates[0].spec.pvc.accessModes" in manifest.ignored


def test_the_agent_reads_the_mapped_template() -> None:
    manifest = mapped("{registry: {url: 'docker://reg:5000/disks/web:1', pullMethod: node}}")
    spec = spec_from_proto(manifest.vm)
    assert spec.data_volume_templates == (
        DataVolumeTemplate("root", 1 << 30, RegistryImport("docker://reg:5000/disks/web:1")),
    )
    assert "spec.dataVolumeTemplates[0].kind" in manifest.ignored


def test_a_cdi_source_the_agent_cannot_import_is_named() -> None:
    with pytest.raises(ManifestError) as caught:
        mapped("{s3: {url: 's3://bucket/disk'}}")
    assert caught.value.path == "spec.dataVolumeTemplates[0].spec.source.s3"


def test_a_data_source_reference_is_refused_with_a_reason() -> None:
    text = (TEMPLATE % "{blank: {}}").replace(
        "source: {blank: {}}", "sourceRef: {kind: DataSource, name: fedora, namespace: os}"
    )
    manifest = load_manifests(text, default_namespace="team").vms[0]
    with pytest.raises(InvalidSpec, match="DataSource cannot be resolved on a node") as caught:
        spec_from_proto(manifest.vm)
    assert caught.value.field == "spec.dataVolumeTemplates[0].spec.sourceRef"


def test_describe_says_how_a_data_volume_is_filled() -> None:
    manifest = mapped("{http: {url: 'https://example.org/fedora.qcow2.xz'}}")
    vm = manifest.vm
    disk = vm.spec.template.spec.domain.devices.disks.add(name="root")
    disk.disk.bus = "virtio"
    vm.spec.template.spec.volumes.add(name="root").data_volume.name = "root"
    rows = describe_vm(vm, datetime(2024, 5, 1, tzinfo=UTC)).split("Disks:")[1]
    assert "dataVolume root (http https://example.org/fedora.qcow2.xz, 1Gi)" in rows
