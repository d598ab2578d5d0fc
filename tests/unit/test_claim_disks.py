"""Claim-backed volumes: spec parsing, the disks behind them, domain XML, sharing rules."""

from __future__ import annotations

import os
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from agent.adapters.qemuimg import QemuImg
from agent.api._gen.virtagent.v1 import vm_pb2
from agent.api.convert import spec_from_proto
from agent.cli.kubevirt import map_document
from agent.cli.output import describe_vm
from agent.config import load_settings
from agent.disks.claimdisks import check_sharing, claim_uses
from agent.domain.files import VMFiles, VolumeSupport
from agent.domain.plan import HostPlan
from agent.domain.xml import build_domain
from agent.errors import FailedPrecondition, InvalidSpec
from agent.models import DataVolume, Disk, PersistentVolumeClaim, VMSpec, Volume
from agent.spec import parse_vm, render_vm
from tests.unit.disk_fakes import FakeImages

UID = "0d6f4c1e-8f0a-4b7e-9a57-3d1b3c2e8f90"
VOLUMES = "spec.template.spec.volumes"


def document(volumes: list[dict[str, Any]], disks: list[dict[str, Any]] | None = None) -> Any:
    disks = disks if disks is not None else [{"name": v["name"]} for v in volumes]
    domain = {"devices": {"disks": disks}, "memory": {"guest": "128Mi"}}
    instance = {"domain": domain, "volumes": volumes}
    return {
        "metadata": {"namespace": "team-a", "name": "web", "uid": UID},
        "spec": {"runStrategy": "Halted", "template": {"spec": instance}},
    }


def vm(*volumes: Volume, namespace: str = "team-a", name: str = "web", **disk: Any) -> VMSpec:
    return VMSpec(
        namespace=namespace,
        name=name,
        uid=UID,
        disks=tuple(Disk(v.name, **disk) for v in volumes),
        volumes=volumes,
    )


def make_claim(root: Path, namespace: str, claim: str, fmt: str = "raw", *extra: str) -> Path:
    folder = root / namespace / claim
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / "disk.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *extra, str(image), "1M"], check=True)
    return image


def files_with(root: Path, tmp_path: Path) -> VMFiles:
    return VMFiles(str(tmp_path / "state"), [], QemuImg(), VolumeSupport(claim_roots=(str(root),)))


# -- the spec ------------------------------------------------------------------------------


def test_claim_and_data_volume_sources_parse_and_render_back() -> None:
    spec = parse_vm(
        document(
            [
                {"name": "root", "dataVolume": {"name": "fedora-root"}},
                {
                    "name": "data",
                    "persistentVolumeClaim": {"claimName": "db.data", "readOnly": True},
                },
            ]
        )
    )
    assert [v.source for v in spec.volumes] == [
        DataVolume("fedora-root"),
        PersistentVolumeClaim("db.data", read_only=True),
    ]
    assert parse_vm(render_vm(spec)) == spec


@pytest.mark.parametrize("name", ["..", "../etc", "a/b", "", "UPPER", "-x", "x" * 254, "a\x00b"])
def test_hostile_claim_names_are_refused_naming_the_field(name: str) -> None:
    for source, field in (
        ({"persistentVolumeClaim": {"claimName": name}}, "persistentVolumeClaim.claimName"),
        ({"dataVolume": {"name": name}}, "dataVolume.name"),
    ):
        with pytest.raises(InvalidSpec) as caught:
            parse_vm(document([{"name": "root", **source}]))
        assert caught.value.field == f"{VOLUMES}[0].{field}"


def test_a_shareable_disk_may_sit_on_a_claim() -> None:
    disks = [{"name": "data", "shareable": True}]
    spec = parse_vm(document([{"name": "data", "dataVolume": {"name": "d"}}], disks))
    assert spec.disks[0].shareable
    with pytest.raises(InvalidSpec, match="needs a hostDisk, persistentVolumeClaim or dataVolume"):
        parse_vm(document([{"name": "data", "emptyDisk": {"capacity": "1Mi"}}], disks))


def test_kubevirt_manifests_with_claims_map_to_the_agent_spec() -> None:
    manifest = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "web"},
        "spec": {
            "running": False,
            "template": {
                "spec": {
                    "domain": {"devices": {"disks": [{"name": "root", "disk": {}}]}},
                    "volumes": [
                        {"name": "root", "persistentVolumeClaim": {"claimName": "root-pvc"}}
                    ],
                }
            },
        },
    }
    message = map_document(manifest, default_namespace="team-a").vm
    volume = message.spec.template.spec.volumes[0]
    assert volume.persistent_volume_claim.claim_name == "root-pvc"


# -- the disks behind claims ---------------------------------------------------------------


def test_a_raw_claim_is_used_in_place_and_kept_when_the_vm_goes(tmp_path: Path) -> None:
    root = tmp_path / "claims"
    image = make_claim(root, "team-a", "data")
    files = files_with(root, tmp_path)
    prepared = files.prepare(vm(Volume("data", PersistentVolumeClaim("data"))), "team-a_web")
    [backing] = prepared.disks
    assert (backing.path, backing.format, backing.block, backing.readonly) == (
        str(image),
        "raw",
        False,
        False,
    )
    assert prepared.missing_claims == ()
    files.remove("team-a_web")
    assert image.exists()


def test_a_qcow2_claim_is_detected_and_a_backing_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "claims"
    make_claim(root, "team-a", "root", "qcow2")
    files = files_with(root, tmp_path)
    [backing] = files.prepare(vm(Volume("root", DataVolume("root"))), "team-a_web").disks
    assert backing.format == "qcow2"
    base = tmp_path / "host-secret.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    make_claim(root, "team-a", "evil", "qcow2", "-F", "qcow2", "-b", str(base))
    with pytest.raises(InvalidSpec) as caught:
        files.prepare(vm(Volume("root", DataVolume("evil"))), "team-a_evil")
    assert caught.value.field == f"{VOLUMES}[0].dataVolume.name"
    assert "claim team-a/evil" in str(caught.value) and "backing file" in str(caught.value)
    assert not (tmp_path / "state" / "vms" / "team-a_evil").exists()  # nothing half-made


def test_a_claim_format_is_pinned_at_first_use_never_probed_again(tmp_path: Path) -> None:
    # A guest may write anything into its raw disk, a qcow2 header too: the next VM must not
    # have QEMU read it as qcow2 metadata.
    root = tmp_path / "claims"
    image = make_claim(root, "team-a", "data")
    files = files_with(root, tmp_path)
    spec = vm(Volume("data", PersistentVolumeClaim("data")))
    assert files.prepare(spec, "team-a_web").disks[0].format == "raw"
    assert (image.parent / ".virt-agent-format").read_text() == "raw\n"
    files.remove("team-a_web")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M"], check=True)

    assert files.prepare(spec, "team-a_next").disks[0].format == "raw"


def test_a_qcow2_claim_that_changed_format_or_a_bad_pin_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "claims"
    image = make_claim(root, "team-a", "root", "qcow2")
    files = files_with(root, tmp_path)
    spec = vm(Volume("root", DataVolume("root")))
    assert files.prepare(spec, "team-a_web").disks[0].format == "qcow2"
    files.remove("team-a_web")
    make_claim(root, "team-a", "root", "raw")
    with pytest.raises(InvalidSpec, match="was qcow2 when first used, now raw"):
        files.prepare(spec, "team-a_web")
    (image.parent / ".virt-agent-format").write_text("vmdk\n")
    with pytest.raises(InvalidSpec, match="says 'vmdk'; write raw or qcow2"):
        files.prepare(spec, "team-a_web")


def test_a_shareable_disk_needs_a_raw_claim(tmp_path: Path) -> None:
    root = tmp_path / "claims"
    make_claim(root, "team-a", "shared", "qcow2")
    files = files_with(root, tmp_path)
    spec = vm(Volume("data", PersistentVolumeClaim("shared")), shareable=True)
    with pytest.raises(InvalidSpec, match="shareable disk needs raw"):
        files.prepare(spec, "team-a_web")


def test_a_block_device_claim_is_a_raw_block_disk(tmp_path: Path) -> None:
    root = tmp_path / "claims"
    (root / "team-a" / "fast").mkdir(parents=True)
    device = root / "team-a" / "fast" / "disk.img"
    os.mknod(device, stat.S_IFBLK | 0o600, os.makedev(7, 0))  # a loop device's numbers
    files = VMFiles(str(tmp_path / "state"), [], FakeImages(),
                    VolumeSupport(claim_roots=(str(root),)))  # fmt: skip
    spec = vm(Volume("fast", PersistentVolumeClaim("fast", read_only=True)))
    prepared = files.prepare(spec, "team-a_web")
    [backing] = prepared.disks
    assert (backing.path, backing.format, backing.block, backing.readonly) == (
        str(device),
        "raw",
        True,
        True,
    )
    element = build_domain(spec, HostPlan(domain_name="team-a_web", uuid=UID, disks=prepared.disks))
    disk = element.find("devices/disk")
    assert disk is not None
    assert disk.get("type") == "block"
    source = disk.find("source")
    assert source is not None and source.attrib == {"dev": str(device)}
    assert disk.find("readonly") is not None


def test_a_missing_claim_is_a_placeholder_and_reported(tmp_path: Path) -> None:
    root = tmp_path / "claims"
    files = files_with(root, tmp_path)
    spec = vm(Volume("data", PersistentVolumeClaim("later")))
    prepared = files.prepare(spec, "team-a_web")
    [missing] = prepared.missing_claims
    assert missing.key == "team-a/later"
    assert prepared.disks[0].path == str(root / "team-a" / "later" / "disk.img")
    assert [u.key for u in files.missing_claims(spec)] == ["team-a/later"]
    make_claim(root, "team-a", "later")
    assert files.missing_claims(spec) == ()


def test_another_namespace_cannot_reach_a_claim(tmp_path: Path) -> None:
    """A claim lives in its namespace's folder: the same name elsewhere is another claim."""
    root = tmp_path / "claims"
    make_claim(root, "team-a", "secret-data")
    files = files_with(root, tmp_path)
    intruder = vm(Volume("data", PersistentVolumeClaim("secret-data")), namespace="team-b")
    assert [u.key for u in files.missing_claims(intruder)] == ["team-b/secret-data"]


def test_claims_need_a_configured_root(tmp_path: Path) -> None:
    files = VMFiles(str(tmp_path / "state"), [], FakeImages(), VolumeSupport())
    with pytest.raises(InvalidSpec, match="no --claim-root") as caught:
        files.prepare(vm(Volume("data", DataVolume("d"))), "team-a_web")
    assert caught.value.field == f"{VOLUMES}[0].dataVolume.name"


# -- sharing -------------------------------------------------------------------------------


def test_two_writers_of_one_claim_are_refused_naming_the_claim_and_the_vm() -> None:
    first = vm(Volume("data", PersistentVolumeClaim("db")), name="one")
    second = vm(Volume("disk", DataVolume("db")), name="two")
    with pytest.raises(FailedPrecondition) as caught:
        check_sharing(second, [first])
    assert "claim team-a/db is in use by vm team-a/one" in str(caught.value)
    check_sharing(second, [second])  # a VM never conflicts with itself


@pytest.mark.parametrize(
    ("mine", "theirs", "allowed"),
    [
        ({"shareable": True}, {"shareable": True}, True),
        ({"readonly": True}, {"readonly": True}, True),
        ({"readonly": True}, {"shareable": True}, True),
        ({"shareable": True}, {}, False),
        ({"readonly": True}, {}, False),
    ],
)
def test_sharing_needs_both_disks_shareable_or_read_only(
    mine: dict[str, bool], theirs: dict[str, bool], allowed: bool
) -> None:
    first = vm(Volume("data", PersistentVolumeClaim("db")), name="one", **theirs)
    second = vm(Volume("data", PersistentVolumeClaim("db")), name="two", **mine)
    if allowed:
        check_sharing(second, [first])
    else:
        with pytest.raises(FailedPrecondition, match="team-a/db"):
            check_sharing(second, [first])


def test_a_read_only_claim_volume_counts_as_read_only() -> None:
    [use] = claim_uses(vm(Volume("data", PersistentVolumeClaim("db", read_only=True))))
    assert use.read_only and not use.exclusive
    other = vm(Volume("data", PersistentVolumeClaim("db", read_only=True)), name="two")
    check_sharing(other, [vm(Volume("data", PersistentVolumeClaim("db", read_only=True)))])


def test_the_same_claim_name_in_another_namespace_is_no_conflict() -> None:
    first = vm(Volume("data", PersistentVolumeClaim("db")), namespace="team-a")
    second = vm(Volume("data", PersistentVolumeClaim("db")), namespace="team-b")
    check_sharing(second, [first])


def test_claim_roots_are_a_repeatable_setting() -> None:
    settings = load_settings(["--claim-root", "/srv/claims", "--claim-root", "/mnt/fast"], {})
    assert settings.claim_root == ["/srv/claims", "/mnt/fast"]


def test_describe_names_claim_volumes() -> None:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.namespace, vm.metadata.name = "team-a", "web"
    for name in ("root", "data"):
        vm.spec.template.spec.domain.devices.disks.add(name=name)
    root = vm.spec.template.spec.volumes.add(name="root")
    root.data_volume.name = "fedora-root"
    data = vm.spec.template.spec.volumes.add(name="data")
    data.persistent_volume_claim.claim_name = "db"
    data.persistent_volume_claim.read_only = True
    text = describe_vm(vm, datetime.now(UTC))
    assert "dataVolume fedora-root" in text
    assert "persistentVolumeClaim db (read-only)" in text


def test_claims_travel_through_the_api_messages_and_back() -> None:
    message = vm_pb2.VirtualMachine()
    json_format.ParseDict(
        document(
            [
                {"name": "root", "dataVolume": {"name": "root-dv"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "db", "readOnly": True}},
            ]
        ),
        message,
    )
    spec = spec_from_proto(message)
    assert [v.source for v in spec.volumes] == [
        DataVolume("root-dv"),
        PersistentVolumeClaim("db", read_only=True),
    ]
    back = vm_pb2.VirtualMachine()
    json_format.ParseDict(render_vm(spec), back)
    assert back.spec.template.spec.volumes[1].persistent_volume_claim.read_only
