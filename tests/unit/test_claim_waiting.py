"""VMs on claims with the fake hypervisor: waiting for a claim, starting when it appears (also
after an agent restart), claims outliving VMs, and two VMs on one claim."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.datavolume import BlankImport, DataVolumeTemplate
from agent.disks.dvimport import DataVolumeImporter, ImportServices
from agent.domain.claimgate import ClaimWatch
from agent.domain.files import VolumeSupport
from agent.errors import FailedPrecondition, NotFound
from agent.models import Phase, VMSpec
from agent.ports import DomainState
from tests.unit.disk_fakes import FakeImages
from tests.unit.fake_node import FakeNode, make_node, vm_spec


def with_claims(node: FakeNode, root: Path, fmt: str = "raw") -> FakeNode:
    root.mkdir(exist_ok=True)
    node.service.files.support = VolumeSupport(claim_roots=(str(root),))
    node.service.files.images = FakeImages(fmt)
    return node


def claim_vm(
    name: str = "web", claim: str = "data", run_strategy: str = "Always", **disk: Any
) -> VMSpec:
    devices = {"disks": [{"name": "root", "disk": {"bus": "virtio"}, **disk}]}
    return vm_spec(
        name,
        run_strategy=run_strategy,
        domain={"memory": {"guest": "128Mi"}, "devices": devices},
        volumes=[{"name": "root", "persistentVolumeClaim": {"claimName": claim}}],
    )


def make_claim(root: Path, claim: str = "data", namespace: str = "default") -> Path:
    folder = root / namespace / claim
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / "disk.img"
    image.write_bytes(b"\0" * 4096)
    return image


def state(node: FakeNode, name: str = "web") -> DomainState:
    info = node.hv.lookup(f"default_{name}")
    assert info is not None
    return info.state


def test_a_vm_waits_for_its_claim_then_starts_by_itself(tmp_path: Path) -> None:
    node = with_claims(make_node(tmp_path), tmp_path / "claims")
    record, _ = node.service.apply(claim_vm())
    assert record.status.phase == Phase.PENDING
    assert record.status.reason == "WaitingForVolumeBinding"
    assert "default/data" in record.status.message
    [volumes] = [c for c in record.status.conditions if c.type == "DataVolumesReady"]
    assert not volumes.status and "default/data (volume 'root')" in volumes.message
    assert state(node) == DomainState.SHUTOFF

    node.service.sync.check_claims()  # still missing: nothing happens
    assert state(node) == DomainState.SHUTOFF
    assert node.service.get("default", "web").status.phase == Phase.PENDING

    image = make_claim(tmp_path / "claims")
    node.service.sync.check_claims()
    assert state(node) == DomainState.RUNNING
    record = node.service.get("default", "web")
    assert record.status.phase == Phase.RUNNING and record.status.reason == "Booted"
    info = node.hv.lookup("default_web")
    assert info is not None and f'file="{image}"' in info.config_xml.replace("'", '"')


def test_a_waiting_vm_still_waits_after_an_agent_restart(tmp_path: Path) -> None:
    """The wait is derived from the stored intent (the starting mark), not from memory."""
    node = with_claims(make_node(tmp_path), tmp_path / "claims")
    node.service.apply(claim_vm(run_strategy="Manual"))
    node.service.start("default", "web")  # a person asks; the claim is not there
    assert node.service.get("default", "web").status.phase == Phase.PENDING

    restarted = with_claims(node.restarted_agent(), tmp_path / "claims")
    restarted.service.resync()
    restarted.tasks.run_all()  # finishes the start it finds marked: waits again
    record = restarted.service.get("default", "web")
    assert record.status.phase == Phase.PENDING and "default/data" in record.status.message
    make_claim(tmp_path / "claims")
    restarted.service.sync.check_claims()
    assert state(restarted) == DomainState.RUNNING


def test_a_stopped_vm_no_longer_waits_for_its_claim(tmp_path: Path) -> None:
    node = with_claims(make_node(tmp_path), tmp_path / "claims")
    node.service.apply(claim_vm(run_strategy="Manual"))
    node.service.start("default", "web")
    record = node.service.stop("default", "web")
    assert record.status.phase == Phase.STOPPED
    make_claim(tmp_path / "claims")
    node.service.sync.check_claims()
    assert state(node) == DomainState.SHUTOFF


def test_deleting_a_vm_never_deletes_its_claim(tmp_path: Path) -> None:
    node = with_claims(make_node(tmp_path), tmp_path / "claims")
    image = make_claim(tmp_path / "claims")
    record, _ = node.service.apply(claim_vm())
    assert record.status.phase == Phase.RUNNING
    node.service.delete("default", "web", grace_period=0)
    assert image.read_bytes() == b"\0" * 4096


def test_a_second_writer_of_a_claim_is_refused_and_not_left_behind(tmp_path: Path) -> None:
    node = with_claims(make_node(tmp_path), tmp_path / "claims")
    make_claim(tmp_path / "claims")
    node.service.apply(claim_vm("first"))
    with pytest.raises(FailedPrecondition) as caught:
        node.service.apply(claim_vm("second"))
    assert "claim default/data is in use by vm default/first" in str(caught.value)
    with pytest.raises(NotFound):
        node.service.get("default", "second")
    # Once the first VM is stopped, the claim is free.
    node.service.stop("default", "first", grace_period=0)
    assert node.service.apply(claim_vm("second"))[0].status.phase == Phase.RUNNING


def test_a_refused_delete_with_vm_template_never_deletes_another_vms_claim(
    tmp_path: Path,
) -> None:
    """The second VM's template finds the claim complete (no import): undoing its refused
    start must not remove the first VM's live disk."""
    node = with_claims(make_node(tmp_path), tmp_path / "claims")
    importer = DataVolumeImporter([str(tmp_path / "claims")], ImportServices(FakeImages(), None))  # type: ignore[arg-type]
    node.service.files.support = dataclasses.replace(
        node.service.files.support, data_volumes=importer
    )
    image = make_claim(tmp_path / "claims")
    node.service.apply(claim_vm("first"))
    template = DataVolumeTemplate("data", 1024 * 1024, BlankImport(), delete_with_vm=True)
    second = dataclasses.replace(claim_vm("second"), data_volume_templates=(template,))
    with pytest.raises(FailedPrecondition, match="claim default/data is in use by vm"):
        node.service.apply(second)
    assert image.read_bytes() == b"\0" * 4096
    assert state(node, "first") == DomainState.RUNNING


def test_a_failed_create_removes_the_delete_with_vm_claim_it_imported(tmp_path: Path) -> None:
    node = with_claims(make_node(tmp_path), tmp_path / "claims")
    importer = DataVolumeImporter([str(tmp_path / "claims")], ImportServices(FakeImages(), None))  # type: ignore[arg-type]
    node.service.files.support = dataclasses.replace(
        node.service.files.support, data_volumes=importer
    )
    template = DataVolumeTemplate("data", 1024 * 1024, BlankImport(), delete_with_vm=True)
    spec = dataclasses.replace(claim_vm("web"), data_volume_templates=(template,))
    node.hv.fail_next("define", FailedPrecondition("libvirt refused the domain"))
    with pytest.raises(FailedPrecondition, match="libvirt refused the domain"):
        node.service.apply(spec)
    assert not (tmp_path / "claims" / "default" / "data").exists()
    assert node.service.apply(spec)[0].status.phase == Phase.RUNNING  # imported afresh


def test_shareable_disks_share_a_raw_claim(tmp_path: Path) -> None:
    node = with_claims(make_node(tmp_path), tmp_path / "claims")
    make_claim(tmp_path / "claims")
    for name in ("first", "second"):
        record, _ = node.service.apply(claim_vm(name, shareable=True))
        assert record.status.phase == Phase.RUNNING


def test_a_waiting_vm_shows_why_it_cannot_start_and_retries(tmp_path: Path) -> None:
    node = with_claims(make_node(tmp_path), tmp_path / "claims")
    node.service.apply(claim_vm("waiter"))
    make_claim(tmp_path / "claims")
    node.service.apply(claim_vm("holder"))  # got there first
    node.service.sync.check_claims()
    record = node.service.get("default", "waiter")
    assert record.status.phase == Phase.PENDING
    assert "in use by vm default/holder" in record.status.message
    node.service.stop("default", "holder", grace_period=0)
    node.service.sync.check_claims()
    assert state(node, "waiter") == DomainState.RUNNING


def test_a_claim_that_appears_as_a_symlink_is_refused_in_the_status(tmp_path: Path) -> None:
    node = with_claims(make_node(tmp_path), tmp_path / "claims")
    node.service.apply(claim_vm())
    elsewhere = make_claim(tmp_path / "elsewhere")
    (tmp_path / "claims" / "default").mkdir()
    (tmp_path / "claims" / "default" / "data").symlink_to(elsewhere.parent)
    node.service.sync.check_claims()
    record = node.service.get("default", "web")
    assert record.status.phase == Phase.PENDING
    assert "symlink, which is not allowed" in record.status.message
    assert state(node) == DomainState.SHUTOFF


def test_the_claim_watch_checks_until_it_is_stopped() -> None:
    calls = threading.Semaphore(0)
    watch = ClaimWatch(calls.release, interval=0.01)
    watch.start()
    try:
        assert calls.acquire(timeout=10) and calls.acquire(timeout=10)  # again and again
    finally:
        watch.stop()
    assert watch._thread is not None and not watch._thread.is_alive()


def test_halting_a_waiting_vm_by_its_run_strategy_ends_the_wait(tmp_path: Path) -> None:
    node = with_claims(make_node(tmp_path), tmp_path / "claims")
    node.service.apply(claim_vm())
    record, _ = node.service.apply(claim_vm(run_strategy="Halted"))
    assert record.status.phase == Phase.STOPPED
    make_claim(tmp_path / "claims")
    node.service.sync.check_claims()
    restarted = with_claims(node.restarted_agent(), tmp_path / "claims")
    restarted.service.resync()
    restarted.tasks.run_all()
    assert state(restarted) == DomainState.SHUTOFF
