"""KubeVirt's admission defaults and leniency as vmctl applies them (agent/cli/webhook.py),
the agent parser's defaults, ``vmctl validate`` and the checks ``apply --dry-run`` runs."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from agent.cli.kubevirt import ManifestError, map_document
from agent.cli.main import main
from agent.spec import parse_vm

VM = yaml.safe_load(
    textwrap.dedent(
        """\
        apiVersion: kubevirt.io/v1
        kind: VirtualMachine
        metadata: {name: web}
        spec:
          runStrategy: Halted
          template:
            metadata: {labels: {app: web}}
            spec:
              domain:
                resources: {requests: {memory: 512Mi}}
                devices:
                  disks: [{name: root, disk: {bus: virtio}}]
              volumes:
                - name: root
                  containerDisk: {image: "registry:5000/web:1"}
        """
    )
)


def _with(changes: dict[str, Any]) -> dict[str, Any]:
    document = copy.deepcopy(VM)
    for path, value in changes.items():
        node = document
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return document


def _spec(document: dict[str, Any]) -> Any:
    return parse_vm(json_format.MessageToDict(map_document(document, default_namespace="d").vm))


@pytest.mark.parametrize(
    "field",
    [
        "nodeSelector",
        "affinity",
        "tolerations",
        "priorityClassName",
        "schedulerName",
        "evictionStrategy",
        "dnsPolicy",
        "dnsConfig",
        "subdomain",
        "topologySpreadConstraints",
        "architecture",
    ],
)
def test_scheduler_fields_are_accepted_ignored_and_named(field: str) -> None:
    value = "amd64" if field == "architecture" else {"x": "y"}
    manifest = map_document(_with({f"spec.template.spec.{field}": value}), default_namespace="d")
    assert manifest.ignored == (f"spec.template.spec.{field}",)
    assert manifest.vm == map_document(VM, default_namespace="d").vm


def test_template_name_is_ignored_and_another_architecture_refused() -> None:
    manifest = map_document(_with({"spec.template.metadata.name": "x"}), default_namespace="d")
    assert manifest.ignored == ("spec.template.metadata.name",)
    with pytest.raises(ManifestError, match="spec.template.spec.architecture: 'arm64' is not"):
        map_document(_with({"spec.template.spec.architecture": "arm64"}), default_namespace="d")


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("metadata.annotations", "hooks.kubevirt.io/hookSidecars"),
        ("spec.template.metadata.annotations", "hooks.kubevirt.io/hookSidecars"),
    ],
    ids=["vm-sidecar", "template-sidecar"],
)
def test_annotations_that_change_the_vm_are_refused(path: str, key: str) -> None:
    with pytest.raises(ManifestError, match=f"{path}.{key}: .* not supported"):
        map_document(_with({path: {key: "[]"}}), default_namespace="d")


IGNITION = '{"ignition": {"version": "3.3.0"}}'


def test_ignition_data_annotation_becomes_the_specs_ignition_data() -> None:
    annotated = _with(
        {"spec.template.metadata.annotations": {"kubevirt.io/ignitiondata": IGNITION}}
    )
    assert _spec(annotated).ignition_data == IGNITION
    vmi = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vmi", "annotations": {"kubevirt.io/ignitiondata": IGNITION}},
        "spec": VM["spec"]["template"]["spec"],
    }
    assert _spec(vmi).ignition_data == IGNITION


def test_a_volume_without_a_disk_gets_a_virtio_disk() -> None:
    volumes = [*VM["spec"]["template"]["spec"]["volumes"], {"name": "seed", "emptyDisk": {}}]
    volumes[1]["emptyDisk"] = {"capacity": "1Gi"}
    spec = _spec(_with({"spec.template.spec.volumes": volumes}))
    assert [(d.name, d.device, d.bus) for d in spec.disks] == [
        ("root", "disk", "virtio"),
        ("seed", "disk", "virtio"),
    ]


@pytest.mark.parametrize(
    ("resources", "memory"),
    [
        ({"limits": {"memory": "1Gi"}}, 1024**3),
        ({"requests": {"memory": "512Mi"}, "limits": {"memory": "1Gi"}}, 512 * 1024**2),
    ],
    ids=["limits-only", "requests-win"],
)
def test_memory_comes_from_limits_without_requests(resources: dict[str, Any], memory: int) -> None:
    spec = _spec(_with({"spec.template.spec.domain.resources": resources}))
    assert spec.memory_bytes == memory


def test_cloud_init_with_network_data_only() -> None:
    volumes = [
        *VM["spec"]["template"]["spec"]["volumes"],
        {"name": "seed", "cloudInitNoCloud": {"networkData": "version: 2\n"}},
    ]
    spec = _spec(_with({"spec.template.spec.volumes": volumes}))
    assert spec.volume("seed").source.network_data == "version: 2\n"  # type: ignore[union-attr]


def _write(tmp_path: Path, name: str, *documents: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(documents))
    return str(path)


SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}


def test_validate_prints_a_verdict_per_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _write(tmp_path, "good.yaml", SERVICE, _with({"spec.template.spec.nodeSelector": {}}))
    small = _with({"spec.template.spec.domain.resources": {"requests": {"memory": "1Mi"}}})
    bad = _write(tmp_path, "bad.yaml", small)

    assert main(["validate", "-f", good, "-f", bad]) == 2

    assert capsys.readouterr().out.splitlines() == [
        f"{good}: document 1: Service web: skipped "
        "(not a VirtualMachine or VirtualMachineInstance)",
        f"{good}: document 2: VirtualMachine web: accepted "
        "(ignored spec.template.spec.nodeSelector)",
        f"{bad}: document 1: VirtualMachine web: "
        "spec.template.spec.domain.resources.requests.memory: must be at least 16Mi",
    ]


def test_validate_of_good_files_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", _write(tmp_path, "vm.yaml", VM)]) == 0
    assert capsys.readouterr().out.endswith("VirtualMachine web: accepted\n")


def test_dry_run_runs_the_agents_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = _with({"spec.template.spec.domain.resources": {"requests": {"memory": "1Mi"}}})
    small["metadata"]["name"] = "small"
    assert main(["apply", "--dry-run", "-f", _write(tmp_path, "vm.yaml", VM, small)]) == 2
    assert capsys.readouterr().err == (
        "vmctl: document 2: spec.template.spec.domain.resources.requests.memory: "
        "must be at least 16Mi\n"
    )


def test_dry_run_says_what_it_skipped_and_ignored_in_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scheduled = _with({"spec.template.spec.tolerations": [], "spec.template.spec.affinity": {}})
    scheduled["metadata"]["name"] = "db"
    path = _write(tmp_path, "vm.yaml", SERVICE, VM, scheduled)

    assert main(["-n", "t", "apply", "--dry-run", "-f", path]) == 0

    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "vmctl: skipped document 1 (Service web): not a VirtualMachine or VM instance",
        "vmctl: warning: ignored fields only a cluster scheduler uses: "
        "t/db spec.template.spec.affinity, spec.template.spec.tolerations",
    ]
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(captured.out)] == ["web", "db"]
