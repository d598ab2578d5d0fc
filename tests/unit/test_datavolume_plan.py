"""The DataVolume import state machine: the steps of each source, in order, and the spec."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from agent.api._gen.virtagent.v1 import vm_pb2
from agent.api.convert import spec_from_proto
from agent.datavolume import BlankImport, DataVolumeTemplate, HttpImport, PvcClone, RegistryImport
from agent.disks.dvplan import Stage, advance, begin, fail, next_step, sniff_format
from agent.errors import InvalidSpec
from agent.spec import render_vm

# What each fetch or unpack reports: the file it made and its format.
REPORTS = {
    Stage.FETCH: ("/claims/ns/d/.disk.img.download", "gzip"),
    Stage.UNPACK: ("/claims/ns/d/.disk.img.unpacked", "qcow2"),
}


def run(template: DataVolumeTemplate, *, complete: bool = False, leftovers=()) -> list[Stage]:  # type: ignore[no-untyped-def]
    state = begin(template, complete=complete, leftovers=leftovers)
    stages = []
    while (step := next_step(state)).stage != Stage.DONE:
        stages.append(step.stage)
        path, fmt = REPORTS.get(step.stage, ("", ""))
        if step.stage == Stage.FETCH and not isinstance(template.source, HttpImport):
            fmt = "raw"
        state = advance(state, step, path=path, fmt=fmt)
        assert len(stages) < 20
    return stages


def template(source) -> DataVolumeTemplate:  # type: ignore[no-untyped-def]
    return DataVolumeTemplate("d", 1 << 30, source)


def test_each_source_has_its_steps() -> None:
    assert run(template(BlankImport())) == [Stage.CREATE_BLANK, Stage.PUBLISH]
    assert run(template(HttpImport("http://h/x.gz"))) == [
        Stage.FETCH, Stage.UNPACK, Stage.CONVERT, Stage.GROW, Stage.PUBLISH,
    ]  # fmt: skip
    for source in (RegistryImport("docker://r/i:1"), PvcClone("ns", "golden")):
        assert run(template(source)) == [Stage.FETCH, Stage.CONVERT, Stage.GROW, Stage.PUBLISH]


def test_a_complete_claim_needs_nothing_and_leftovers_are_cleaned_first() -> None:
    assert run(template(BlankImport()), complete=True, leftovers=(".disk.img.x",)) == []
    stages = run(template(BlankImport()), leftovers=(".disk.img.importing",))
    assert stages == [Stage.CLEAN, Stage.CREATE_BLANK, Stage.PUBLISH]


def test_a_failure_is_final() -> None:
    state = fail(begin(template(BlankImport()), complete=False, leftovers=()), "disk full")
    assert next_step(state).stage == Stage.FAILED
    with pytest.raises(ValueError, match="final"):
        advance(state, next_step(state))


def test_fetch_must_report_what_it_made() -> None:
    state = begin(template(HttpImport("http://h/x")), complete=False, leftovers=())
    with pytest.raises(ValueError, match="must report"):
        advance(state, next_step(state))


@pytest.mark.parametrize(
    ("header", "fmt"),
    [
        (b"\x1f\x8b\x08", "gzip"),
        (b"\xfd7zXZ\x00\x00", "xz"),
        (b"QFI\xfb\x00", "qcow2"),
        (b"\0" * 8, "raw"),
    ],
)
def test_formats_are_told_by_their_first_bytes(header: bytes, fmt: str) -> None:
    assert sniff_format(header) == fmt


def document(spec: dict) -> vm_pb2.VirtualMachine:  # type: ignore[type-arg]
    body = {
        "metadata": {"namespace": "ns", "name": "vm"},
        "spec": {
            "dataVolumeTemplates": [{"metadata": {"name": "root"}, "spec": spec}],
            "template": {"spec": {"domain": {"memory": {"guest": "128Mi"}}}},
        },
    }
    return json_format.ParseDict(body, vm_pb2.VirtualMachine())


SIZE = {"storage": {"resources": {"requests": {"storage": "2Gi"}}}}


def test_templates_round_trip_through_the_api() -> None:
    message = document(
        {"pvc": {"resources": {"requests": {"storage": "2Gi"}}},
         "source": {"http": {"url": "https://h/x.qcow2.xz", "checksum": "sha256:" + "a" * 64}}}
    )  # fmt: skip
    spec = spec_from_proto(message)
    assert spec.data_volume_templates == (
        DataVolumeTemplate(
            "root", 2 << 30, HttpImport("https://h/x.qcow2.xz", "sha256:" + "a" * 64)
        ),
    )
    again = json_format.ParseDict(render_vm(spec), vm_pb2.VirtualMachine())
    assert spec_from_proto(again) == spec


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({**SIZE, "sourceRef": {"kind": "DataSource", "name": "fedora"}},
         "spec.dataVolumeTemplates[0].spec.sourceRef", "cannot be resolved on a node"),
        ({**SIZE, "source": {"pvc": {"namespace": "other", "name": "golden"}}},
         "spec.dataVolumeTemplates[0].spec.source.pvc.namespace", "own namespace"),
        ({"source": {"blank": {}}}, "spec.dataVolumeTemplates[0].spec", "storage size"),
        ({**SIZE, "source": {"http": {"url": "ftp://h/x"}}},
         "spec.dataVolumeTemplates[0].spec.source.http.url", "http:// or https://"),
        ({**SIZE, "source": {"http": {"url": "https://me:hunter2@h/x"}}},
         "spec.dataVolumeTemplates[0].spec.source.http.url", "secretRef"),
        ({**SIZE, "source": {"http": {"url": "http://h/x", "checksum": "sha256:12"}}},
         "spec.dataVolumeTemplates[0].spec.source.http.checksum", "64 hex"),
        ({**SIZE, "source": {"registry": {"url": "quay.io/x:1"}}},
         "spec.dataVolumeTemplates[0].spec.source.registry.url", "docker://"),
        ({**SIZE}, "spec.dataVolumeTemplates[0].spec.source", "is required"),
    ],
)  # fmt: skip
def test_bad_templates_name_the_field(spec: dict, field: str, words: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidSpec) as caught:
        spec_from_proto(document(spec))
    assert caught.value.field == field
    assert words in caught.value.problem
    assert "hunter2" not in str(caught.value)  # a password is not repeated in the error
