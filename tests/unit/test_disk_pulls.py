"""Container disks with fakes: pulling, caching by digest, policies, GC, progress in status."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.disks.cache import ImageCache
from agent.disks.containerdisk import ContainerDisks, cache_key, effective_policy
from agent.disks.layers import LayerLimits
from agent.disks.ports import PullProgress
from agent.domain.files import VMFiles, VolumeSupport
from agent.domain.pullstatus import CONDITION, PullStatusPublisher
from agent.domain.vmcache import VMCache, VMRecord
from agent.errors import FailedPrecondition, InvalidSpec, Unavailable
from agent.imageref import parse_reference
from agent.models import Bookkeeping, ContainerDisk, Disk, Phase, VMSpec, VMStatus, Volume
from tests.unit.disk_fakes import FakeImages, FakeObserver, FakeRegistry, layer, sparse_layer

IMAGE = "reg.test:5000/disks/guest:v1"
DISK = b"QFI\xfb" + b"x" * 5000


@pytest.fixture
def reg() -> FakeRegistry:
    registry = FakeRegistry()
    registry.add_image([layer({"disk/disk.qcow2": DISK})], tag="v1")
    return registry


def make(tmp_path: Path, reg: FakeRegistry) -> tuple[ContainerDisks, ImageCache, set[str]]:
    alive: set[str] = set()
    cache = ImageCache(str(tmp_path / "cache"), vm_exists=alive.__contains__)
    return ContainerDisks(reg, cache, FakeImages()), cache, alive


def test_a_pull_verifies_caches_read_only_and_reports_progress(
    tmp_path: Path, reg: FakeRegistry
) -> None:
    disks, cache, _ = make(tmp_path, reg)
    seen: list[tuple[int, int]] = []
    entry = disks.ensure(
        parse_reference(IMAGE), "", "default_a", progress=lambda d, t: seen.append((d, t))
    )
    assert Path(entry.path).read_bytes() == DISK
    assert stat.S_IMODE(os.stat(entry.path).st_mode) == 0o444
    assert entry.digest == next(k for k in reg.manifests if k.startswith("sha256:"))
    total = seen[0][1]
    assert seen[0] == (0, total) and seen[-1] == (total, total) and total > 0
    assert cache.users(entry.digest) == ["default_a"]
    assert os.listdir(tmp_path / "cache" / "tmp") == []


def test_a_second_vm_reuses_the_entry_without_downloading(
    tmp_path: Path, reg: FakeRegistry
) -> None:
    disks, cache, _ = make(tmp_path, reg)
    first = disks.ensure(parse_reference(IMAGE), "", "default_a")
    blobs = reg.blob_calls()
    second = disks.ensure(parse_reference(IMAGE), "", "default_b")
    assert second == first and reg.blob_calls() == blobs == 1
    # IfNotPresent (the default for a tag other than latest): not even the manifest again.
    assert [c for c in reg.calls if c[0] == "manifest"] == [("manifest", "v1")]
    assert cache.users(first.digest) == ["default_a", "default_b"]


def test_gc_removes_entries_once_every_user_is_gone(tmp_path: Path, reg: FakeRegistry) -> None:
    disks, cache, alive = make(tmp_path, reg)
    alive.update({"default_a", "default_b"})
    entry = disks.ensure(parse_reference(IMAGE), "", "default_a")
    disks.ensure(parse_reference(IMAGE), "", "default_b")
    disks.release("default_a")
    assert disks.gc() == [] and cache.entries() == [entry.digest]
    alive.discard("default_b")  # deleted while the agent was down: a stale user
    assert disks.gc() == [entry.digest]
    assert cache.entries() == [] and os.listdir(tmp_path / "cache" / "tags") == []
    disks.ensure(parse_reference(IMAGE), "", "default_c")  # pulled again: the tag is gone
    assert reg.blob_calls() == 2


def test_a_tampered_blob_fails_and_leaves_nothing(tmp_path: Path, reg: FakeRegistry) -> None:
    disks, cache, _ = make(tmp_path, reg)
    layer_digest = next(d for d, b in reg.blobs.items() if b.startswith(b"\x1f\x8b"))
    reg.tamper.add(layer_digest)
    with pytest.raises(FailedPrecondition, match=f"blob {layer_digest}: content has digest"):
        disks.ensure(parse_reference(IMAGE), "", "default_a")
    assert cache.entries() == []
    assert os.listdir(tmp_path / "cache" / "tmp") == []


def test_a_tampered_manifest_by_digest_is_refused(tmp_path: Path, reg: FakeRegistry) -> None:
    disks, _, _ = make(tmp_path, reg)
    digest = next(k for k in reg.manifests if k.startswith("sha256:"))
    body = reg.manifests[digest]
    reg.manifests[digest] = body.replace(b'"schemaVersion": 2', b'"schemaVersion":2')
    with pytest.raises(FailedPrecondition, match="content has digest"):
        disks.ensure(parse_reference(f"reg.test:5000/disks/guest@{digest}"), "", "default_a")


def test_an_index_gives_its_linux_amd64_manifest(tmp_path: Path, reg: FakeRegistry) -> None:
    amd64 = next(k for k in reg.manifests if k.startswith("sha256:"))
    arm64 = reg.add_image([layer({"disk/arm.img": b"ARM"})], tag="arm")
    reg.add_index({"linux/arm64": arm64, "linux/amd64": amd64}, tag="multi")
    disks, _, _ = make(tmp_path, reg)
    entry = disks.ensure(parse_reference("reg.test:5000/disks/guest:multi"), "", "default_a")
    assert entry.digest == amd64 and Path(entry.path).read_bytes() == DISK


def test_an_index_pinned_by_digest_is_served_from_the_cache(
    tmp_path: Path, reg: FakeRegistry
) -> None:
    amd64 = next(k for k in reg.manifests if k.startswith("sha256:"))
    index = reg.add_index({"linux/amd64": amd64}, tag="multi")
    pinned = parse_reference(f"reg.test:5000/disks/guest@{index}")
    disks, _, _ = make(tmp_path, reg)
    first = disks.ensure(pinned, "", "default_a")
    assert first.digest == amd64
    pulled = list(reg.calls)
    reg.manifests.clear()  # the registry has nothing to give any more
    for policy in ("", "IfNotPresent", "Never", "Always"):
        assert disks.ensure(pinned, policy, "default_b") == first
    assert reg.calls == pulled


def test_pull_policies(tmp_path: Path, reg: FakeRegistry) -> None:
    assert effective_policy(parse_reference("r.io/a"), "") == "Always"
    assert effective_policy(parse_reference("r.io/a:1"), "") == "IfNotPresent"
    assert effective_policy(parse_reference("r.io/a:1"), "Never") == "Never"
    disks, _, _ = make(tmp_path, reg)
    with pytest.raises(FailedPrecondition, match="not cached and imagePullPolicy is Never"):
        disks.ensure(parse_reference(IMAGE), "Never", "default_a")
    assert reg.calls == []
    disks.ensure(parse_reference(IMAGE), "Always", "default_a")
    disks.ensure(parse_reference(IMAGE), "Always", "default_b")
    disks.ensure(parse_reference(IMAGE), "Never", "default_c")
    # Always asks for the manifest each time, but blobs are reused by digest.
    assert reg.calls.count(("manifest", "v1")) == 2 and reg.blob_calls() == 1


def test_a_named_path_is_its_own_entry(tmp_path: Path, reg: FakeRegistry) -> None:
    reg.add_image([layer({"disk/a.img": b"A", "disk/b.img": b"B"})], tag="two")
    disks, _, _ = make(tmp_path, reg)
    ref = parse_reference("reg.test:5000/disks/guest:two")
    a = disks.ensure(ref, "", "default_a", path="/disk/a.img")
    b = disks.ensure(ref, "", "default_b", path="/disk/b.img")
    assert Path(a.path).read_bytes() == b"A" and Path(b.path).read_bytes() == b"B"
    assert b.digest == cache_key(a.digest.split("+")[0], "/disk/b.img")
    with pytest.raises(FailedPrecondition, match="several files"):
        disks.ensure(ref, "", "default_c")


def test_not_a_containerdisk_is_a_failed_precondition(tmp_path: Path, reg: FakeRegistry) -> None:
    reg.add_image([layer({"etc/hostname": b"x"})], tag="app")
    disks, cache, _ = make(tmp_path, reg)
    with pytest.raises(FailedPrecondition, match=r"no file in /disk/"):
        disks.ensure(parse_reference("reg.test:5000/disks/guest:app"), "", "default_a")
    assert cache.entries() == []


def test_an_interrupted_pull_is_cleaned_when_the_cache_opens(tmp_path: Path) -> None:
    leftover = tmp_path / "cache" / "tmp" / "pull-dead"
    leftover.mkdir(parents=True)
    (leftover / "layer-0").write_bytes(b"half")
    ImageCache(str(tmp_path / "cache"), vm_exists=lambda d: True)
    assert not leftover.exists()


# -- VMFiles with container disks ----------------------------------------------------------


def spec(image: str = IMAGE) -> VMSpec:
    return VMSpec(
        namespace="default",
        name="a",
        uid="9b2c5b70-3c62-4f1e-9d53-6d8a0b7d2f11",
        disks=(Disk("root"),),
        volumes=(Volume("root", ContainerDisk(image=parse_reference(image))),),
    )


def files_with(
    tmp_path: Path, reg: FakeRegistry
) -> tuple[VMFiles, FakeObserver, ContainerDisks, FakeImages]:
    images = FakeImages()
    files = VMFiles(str(tmp_path / "state"), [], images)
    cache = ImageCache(str(tmp_path / "cache"), vm_exists=files.vm_exists)
    disks = ContainerDisks(reg, cache, images)
    observer = FakeObserver()
    files.support = VolumeSupport(container_disks=disks, pulls=observer)
    return files, observer, disks, images


def test_vm_files_boot_from_an_overlay_of_the_cached_disk(
    tmp_path: Path, reg: FakeRegistry
) -> None:
    files, observer, disks, images = files_with(tmp_path, reg)
    prepared = files.prepare(spec(), "default_a")
    [backing] = prepared.disks
    [(base, fmt, overlay)] = images.overlays
    assert backing.path == overlay and backing.format == "qcow2"
    assert overlay.startswith(files.vm_dir("default_a") + "/") and fmt == "qcow2"
    assert base.startswith(str(tmp_path / "cache" / "entries"))
    assert observer.progress[-1].done_bytes == observer.progress[-1].total_bytes
    assert observer.ended == [("default_a", None)]
    files.prepare(spec(), "default_a")  # again: nothing new
    assert len(images.overlays) == 1 and reg.blob_calls() == 1
    files.remove("default_a")
    assert disks.cache.entries() == [] and observer.forgotten == ["default_a"]


def test_vm_files_name_the_field_of_a_failed_pull_and_clean_up(
    tmp_path: Path, reg: FakeRegistry
) -> None:
    # (A malformed reference never gets this far: the spec parser refuses it.)
    files, observer, _, _ = files_with(tmp_path, reg)
    with pytest.raises(FailedPrecondition, match=r"volumes\[0\]\.containerDisk\.image: .*404"):
        files.prepare(spec("reg.test:5000/disks/guest:missing"), "default_a")
    reg.tamper.update(d for d, b in reg.blobs.items() if b.startswith(b"\x1f\x8b"))
    with pytest.raises(FailedPrecondition) as caught:
        files.prepare(spec(), "default_a")
    assert observer.ended == [("default_a", caught.value)]
    assert not os.path.exists(files.vm_dir("default_a"))


def test_container_disks_are_refused_where_not_enabled(tmp_path: Path) -> None:
    files = VMFiles(str(tmp_path), [], FakeImages())
    with pytest.raises(InvalidSpec, match="not enabled on this node"):
        files.prepare(spec(), "default_a")


# -- pull progress in the VM registry -------------------------------------------------------


def test_a_new_vm_shows_pull_progress_then_its_failure(tmp_path: Path) -> None:
    registry = VMCache()
    _, _, watch = registry.watch()
    now = [0.0]
    publisher = PullStatusPublisher(registry, node_name="n1", clock=lambda: now[0])
    publisher.pulling("default_a", spec(), PullProgress("root", IMAGE, 0, 100))
    publisher.pulling("default_a", spec(), PullProgress("root", IMAGE, 10, 100))  # throttled
    now[0] = 1.0
    publisher.pulling("default_a", spec(), PullProgress("root", IMAGE, 60, 100))
    record = registry.get("default_a")
    assert record is not None and record.status.phase == Phase.PENDING
    assert record.status.reason == "PullingImage"
    [condition] = record.status.conditions
    assert condition.type == CONDITION and condition.message.endswith("60 of 100 bytes")
    publisher.finished("default_a", FailedPrecondition("blob sha256:x: content has digest"))
    assert registry.get("default_a") is None
    kinds = []
    while (event := watch.next_event(0.01)) is not None:
        assert event.record is not None
        kinds.append((event.type, event.record.status.reason))
    assert kinds == [("ADDED", "PullingImage"), ("MODIFIED", "PullingImage"),
                     ("MODIFIED", "ImagePullFailed"), ("DELETED", "ImagePullFailed")]  # fmt: skip


def test_an_existing_vm_keeps_its_record_around_a_pull() -> None:
    registry = VMCache()
    existing = VMRecord(
        spec=spec(),
        books=Bookkeeping(generation=3, created_at=1.0),
        status=VMStatus(phase=Phase.RUNNING, reason="Booted"),
    )
    registry.put("default_a", existing)
    publisher = PullStatusPublisher(registry, node_name="n1")
    publisher.pulling("default_a", spec(), PullProgress("root", IMAGE, 5, 10))
    during = registry.get("default_a")
    assert during is not None and during.status.phase == Phase.RUNNING
    assert [c.type for c in during.status.conditions] == [CONDITION]
    publisher.finished("default_a", None)
    assert registry.get("default_a") == existing


def test_a_stand_in_left_after_a_good_pull_is_forgotten() -> None:
    registry = VMCache()
    publisher = PullStatusPublisher(registry, node_name="n1")
    publisher.pulling("default_a", spec(), PullProgress("root", IMAGE, 10, 10))
    publisher.finished("default_a", None)
    assert registry.get("default_a") is not None  # until the lifecycle refreshes it
    publisher.forget("default_a")  # defining the domain failed: VMFiles.remove
    assert registry.get("default_a") is None


# -- hostile layers: bounded expansion --------------------------------------------------------

MIB = 1024 * 1024


def test_a_tiny_layer_expanding_to_a_huge_disk_is_refused_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    reg = FakeRegistry()
    reg.add_image([sparse_layer("disk/disk.img", 256 * MIB)], tag="bomb")
    reg.add_image([sparse_layer("disk/disk.img", 1 << 50)], tag="petabyte")
    disks, cache, _ = make(tmp_path, reg)
    for tag, problem in [("bomb", "expands to 268435456 bytes"), ("petabyte", "more than")]:
        image = f"reg.test:5000/disks/guest:{tag}"
        with pytest.raises(FailedPrecondition, match=f"^{image}: .*{problem}"):
            disks.ensure(parse_reference(image), "", "default_a")
    assert cache.entries() == [] and os.listdir(tmp_path / "cache" / "tmp") == []


def test_a_sparse_disk_is_written_sparse(tmp_path: Path) -> None:
    reg = FakeRegistry()
    reg.add_image([sparse_layer("disk/disk.img", 64 * MIB)], tag="sparse")
    alive: set[str] = set()
    cache = ImageCache(str(tmp_path / "cache"), vm_exists=alive.__contains__)
    limits = LayerLimits(max_bytes=1 << 30, max_ratio=0)  # ratio off: a sparse raw image
    disks = ContainerDisks(reg, cache, FakeImages(), limits=limits)
    entry = disks.ensure(parse_reference("reg.test:5000/disks/guest:sparse"), "", "default_a")
    written = os.stat(entry.path)
    assert written.st_size == 64 * MIB
    assert written.st_blocks * 512 < MIB  # holes stay holes
    with open(entry.path, "rb") as handle:
        handle.seek(64 * MIB - 4)
        assert handle.read() == b"QFI\xfb"


def test_a_pull_has_an_overall_deadline(tmp_path: Path) -> None:
    reg = FakeRegistry()
    reg.add_image([layer({"disk/disk.qcow2": os.urandom(50_000)})], tag="slow")
    now = [0.0]

    def clock() -> float:  # every chunk arrives in time, but they take ten seconds each
        now[0] += 10.0
        return now[0]

    cache = ImageCache(str(tmp_path / "cache"), vm_exists=lambda d: True)
    disks = ContainerDisks(reg, cache, FakeImages(), pull_timeout=60.0, clock=clock)
    image = "reg.test:5000/disks/guest:slow"
    with pytest.raises(Unavailable, match=f"^{image}: the pull took longer than 60s"):
        disks.ensure(parse_reference(image), "", "default_a")
    assert cache.entries() == [] and os.listdir(tmp_path / "cache" / "tmp") == []
