"""DataVolume imports on a node: each source fills its claim, faults leave nothing half-made."""

from __future__ import annotations

import dataclasses
import errno
import gzip
import hashlib
import lzma
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from agent.adapters.qemuimg import QemuImg
from agent.claimsources import DataVolume, PersistentVolumeClaim
from agent.datavolume import BlankImport, DataVolumeTemplate, HttpImport, PvcClone, RegistryImport
from agent.disks.cache import CacheEntry
from agent.disks.claimdisks import ClaimUse, claim_backing
from agent.disks.dvimport import DataVolumeImporter, ImportServices
from agent.disks.ports import PullProgress
from agent.domain.files import VMFiles, VolumeSupport
from agent.errors import FailedPrecondition, InvalidSpec, ResourceExhausted
from agent.models import VMSpec, Volume

MiB = 1024 * 1024
PAGE = b"<html>hello from the claim</html>".ljust(4096, b"\0")
PUBLISHED = [".virt-agent-format", ".virt-agent-owner", "disk.img"]  # pinned raw, marked


class Killed(BaseException):
    """Stands for the agent being killed: nothing of the import's own cleanup runs."""


@dataclass
class FakeDownloader:
    """Serves URLs from a dict in small chunks; ``fault`` runs after the first chunk."""

    files: dict[str, bytes] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    fault: Callable[[], None] | None = None

    auths: list[object] = field(default_factory=list)

    def download(self, url, write, *, auth=None, progress=None):  # type: ignore[no-untyped-def]
        self.calls.append(url)
        self.auths.append(auth)
        data = self.files[url]
        for start in range(0, len(data), 64 * 1024):
            write(data[start : start + 64 * 1024])
            if progress is not None:
                progress(min(start + 64 * 1024, len(data)), len(data))
            if self.fault is not None:
                self.fault()


class RawCopier:
    """An ImageConverter for raw images only (qcow2 goes through the real qemu-img)."""

    def virtual_size(self, path: str, fmt: str) -> int:
        assert fmt == "raw"
        return os.path.getsize(path)

    def convert_to_raw(self, source: str, source_format: str, target: str) -> None:
        assert source_format == "raw"
        shutil.copyfile(source, target)


@dataclass
class FakeContainerDisks:
    path: str
    pulls: list[str] = field(default_factory=list)

    def ensure(self, image, policy, user, *, path="", progress=None):  # type: ignore[no-untyped-def]
        self.pulls.append(str(image))
        if progress is not None:
            progress(len(PAGE), len(PAGE))
        return CacheEntry("sha256:x", self.path, "raw", str(image), len(PAGE))


@dataclass
class Observer:
    events: list[tuple[str, object]] = field(default_factory=list)

    def pulling(self, domain: str, spec: VMSpec, progress: PullProgress) -> None:
        self.events.append(("pulling", progress))

    def finished(self, domain: str, error: Exception | None) -> None:
        self.events.append(("finished", error))

    def forget(self, domain: str) -> None:
        pass


def vm(*templates: DataVolumeTemplate) -> VMSpec:
    return VMSpec(namespace="team", name="web", uid="", data_volume_templates=templates)


@pytest.fixture
def node(tmp_path):  # type: ignore[no-untyped-def]
    root = tmp_path / "claims"
    root.mkdir()
    image = tmp_path / "cached.img"
    image.write_bytes(PAGE)
    downloader = FakeDownloader()
    disks = FakeContainerDisks(str(image))
    observer = Observer()
    services = ImportServices(
        images=QemuImg(),
        converter=RawCopier(),
        downloader=downloader,
        container_disks=disks,  # type: ignore[arg-type]
        observer=observer,
    )
    importer = DataVolumeImporter([str(root)], services)
    return importer, root, downloader, disks, observer


def claim_files(root, name: str = "root") -> list[str]:  # type: ignore[no-untyped-def]
    """What the claim's folder holds; a failed import leaves no folder at all."""
    folder = root / "team" / name
    return sorted(os.listdir(folder)) if folder.exists() else []


def http(url: str = "http://files/disk.img", **kwargs: str) -> DataVolumeTemplate:
    return DataVolumeTemplate("root", 16 * MiB, HttpImport(url=url, **kwargs))


def test_blank_is_a_sparse_raw_file_of_the_requested_size(node):  # type: ignore[no-untyped-def]
    importer, root, *_ = node
    importer.import_all(vm(DataVolumeTemplate("data", 64 * MiB, BlankImport())), "team_web")
    image = root / "team" / "data" / "disk.img"
    assert image.stat().st_size == 64 * MiB
    assert image.stat().st_blocks * 512 < MiB  # sparse: nothing written
    assert claim_files(root, "data") == PUBLISHED


def test_http_raw_download_is_grown_to_the_claim_size_and_shows_progress(node):  # type: ignore[no-untyped-def]
    importer, root, downloader, _, observer = node
    downloader.files["http://files/disk.img"] = PAGE * 40
    importer.import_all(vm(http()), "team_web")
    image = root / "team" / "root" / "disk.img"
    assert image.read_bytes()[: len(PAGE) * 40] == PAGE * 40
    assert image.stat().st_size == 16 * MiB
    assert claim_files(root) == PUBLISHED
    progress = [e[1] for e in observer.events if e[0] == "pulling"]
    assert progress[-1] == PullProgress(
        "root", "http://files/disk.img", len(PAGE) * 40, len(PAGE) * 40
    )
    assert observer.events[-1] == ("finished", None)


@pytest.mark.parametrize("pack", [gzip.compress, lzma.compress], ids=["gz", "xz"])
def test_http_compressed_qcow2_is_unpacked_and_converted_to_raw(node, tmp_path, pack):  # type: ignore[no-untyped-def]
    importer, root, downloader, *_ = node
    raw = tmp_path / "src.raw"
    raw.write_bytes(PAGE * 8)
    qcow2 = tmp_path / "src.qcow2"
    tool = QemuImg()
    tool._run(["convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], "test")
    downloader.files["http://files/disk.qcow2.gz"] = pack(qcow2.read_bytes())
    services = ImportServices(images=tool, converter=tool, downloader=downloader)
    DataVolumeImporter([str(root)], services).import_all(
        vm(http("http://files/disk.qcow2.gz")), "team_web"
    )
    image = root / "team" / "root" / "disk.img"
    assert image.read_bytes()[: len(PAGE) * 8] == PAGE * 8
    assert tool.inspect(str(image)).format == "raw"
    assert claim_files(root) == PUBLISHED


def test_a_second_apply_never_imports_again(node):  # type: ignore[no-untyped-def]
    importer, root, downloader, *_ = node
    downloader.files["http://files/disk.img"] = PAGE
    importer.import_all(vm(http()), "team_web")
    image = root / "team" / "root" / "disk.img"
    image.write_bytes(b"written by the guest")
    importer.import_all(vm(http()), "team_web")
    assert downloader.calls == ["http://files/disk.img"]
    assert image.read_bytes() == b"written by the guest"


def test_bad_checksum_names_the_template_and_leaves_nothing(node):  # type: ignore[no-untyped-def]
    importer, root, downloader, *_ = node
    downloader.files["http://files/disk.img"] = PAGE
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    with pytest.raises(FailedPrecondition) as caught:
        importer.import_all(vm(http(checksum=wrong)), "team_web")
    assert "spec.dataVolumeTemplates[0] (DataVolume root)" in str(caught.value)
    assert "checksum mismatch" in str(caught.value)
    assert claim_files(root) == []
    right = "sha256:" + hashlib.sha256(PAGE).hexdigest()
    importer.import_all(vm(http(checksum=right)), "team_web")
    assert claim_files(root) == PUBLISHED


def test_disk_full_is_resource_exhausted_and_leaves_nothing(node):  # type: ignore[no-untyped-def]
    importer, root, downloader, *_ = node
    downloader.files["http://files/disk.img"] = PAGE * 64

    def disk_full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    downloader.fault = disk_full
    with pytest.raises(ResourceExhausted, match=r"DataVolume root\): no space left"):
        importer.import_all(vm(http()), "team_web")
    assert claim_files(root) == []


def test_a_download_larger_than_the_claim_is_refused(node):  # type: ignore[no-untyped-def]
    importer, root, downloader, *_ = node
    downloader.files["http://files/disk.img"] = b"x" * (81 * MiB)  # 16Mi + 64Mi of room
    with pytest.raises(FailedPrecondition, match="larger than .* bytes"):
        importer.import_all(vm(http()), "team_web")
    assert claim_files(root) == []


def test_an_image_bigger_than_the_storage_size_is_refused(node):  # type: ignore[no-untyped-def]
    importer, root, downloader, *_ = node
    downloader.files["http://files/disk.img"] = b"x" * (17 * MiB)
    with pytest.raises(FailedPrecondition, match="virtual size .* larger than the DataVolume"):
        importer.import_all(vm(http()), "team_web")
    assert claim_files(root) == []


def test_an_import_cut_by_an_agent_restart_starts_again_cleanly(node):  # type: ignore[no-untyped-def]
    importer, root, downloader, *_ = node
    downloader.files["http://files/disk.img"] = PAGE * 64

    def kill() -> None:
        raise Killed

    downloader.fault = kill
    with pytest.raises(Killed):
        importer.import_all(vm(http()), "team_web")
    assert claim_files(root) == [".disk.img.download"]  # what a killed agent leaves
    restarted = DataVolumeImporter([str(root)], importer.services)
    assert restarted.sweep() == [str(root / "team" / "root" / ".disk.img.download")]
    assert claim_files(root) == []
    downloader.fault = None
    restarted.import_all(vm(http()), "team_web")
    assert (root / "team" / "root" / "disk.img").read_bytes()[: len(PAGE) * 64] == PAGE * 64


def test_leftovers_are_removed_by_the_next_import_too(node):  # type: ignore[no-untyped-def]
    importer, root, downloader, *_ = node
    folder = root / "team" / "root"
    folder.mkdir(parents=True)
    (folder / ".disk.img.importing").write_bytes(b"half")
    downloader.files["http://files/disk.img"] = PAGE
    importer.import_all(vm(http()), "team_web")
    assert claim_files(root) == PUBLISHED


def test_registry_source_copies_the_pulled_image(node):  # type: ignore[no-untyped-def]
    importer, root, _, disks, observer = node
    source = RegistryImport(url="docker://reg:5000/disks/web:1")
    importer.import_all(vm(DataVolumeTemplate("root", 4 * MiB, source)), "team_web")
    assert disks.pulls == ["reg:5000/disks/web:1"]
    assert (root / "team" / "root" / "disk.img").read_bytes()[: len(PAGE)] == PAGE
    assert ("finished", None) in observer.events
    assert os.path.exists(disks.path)  # the cache entry is copied, never moved


def test_pvc_clone_copies_a_claim_of_the_same_namespace(node):  # type: ignore[no-untyped-def]
    importer, root, *_ = node
    golden = root / "team" / "golden"
    golden.mkdir(parents=True)
    (golden / "disk.img").write_bytes(PAGE)
    template = DataVolumeTemplate("root", 4 * MiB, PvcClone("team", "golden"))
    importer.import_all(vm(template), "team_web")
    assert (root / "team" / "root" / "disk.img").read_bytes()[: len(PAGE)] == PAGE
    assert (golden / "disk.img").read_bytes() == PAGE


def test_pvc_clone_of_a_missing_claim_is_a_clear_error(node):  # type: ignore[no-untyped-def]
    importer, root, *_ = node
    template = DataVolumeTemplate("root", 4 * MiB, PvcClone("team", "golden"))
    with pytest.raises(FailedPrecondition, match="team/golden, is not on this node"):
        importer.import_all(vm(template), "team_web")
    assert claim_files(root) == []


def test_claims_are_kept_unless_the_template_says_delete_with_vm(node):  # type: ignore[no-untyped-def]
    importer, root, *_ = node
    kept = DataVolumeTemplate("kept", 2 * MiB, BlankImport())
    dropped = DataVolumeTemplate("dropped", 2 * MiB, BlankImport(), delete_with_vm=True)
    spec = vm(kept, dropped)
    importer.import_all(spec, "team_web")
    assert importer.remove_claims(spec) == [str(root / "team" / "dropped")]
    assert (root / "team" / "kept" / "disk.img").exists()
    assert not (root / "team" / "dropped").exists()


def test_no_claim_root_is_a_clear_error(tmp_path):  # type: ignore[no-untyped-def]
    importer = DataVolumeImporter([], ImportServices(images=QemuImg(), converter=RawCopier()))
    with pytest.raises(InvalidSpec, match=r"dataVolumeTemplates\[0\]: claims are not enabled"):
        importer.import_all(vm(DataVolumeTemplate("d", 2 * MiB, BlankImport())), "team_web")


def test_vm_files_import_before_the_disks_and_delete_with_the_vm(node, tmp_path):  # type: ignore[no-untyped-def]
    importer, root, *_ = node
    files = VMFiles(str(tmp_path / "state"), [], QemuImg(), VolumeSupport(data_volumes=importer))
    dropped = DataVolumeTemplate("scratch", 2 * MiB, BlankImport(), delete_with_vm=True)
    spec = vm(DataVolumeTemplate("root", 2 * MiB, BlankImport()), dropped)
    files.prepare(spec, "team_web")
    assert claim_files(root, "root") == claim_files(root, "scratch") == PUBLISHED
    files.remove("team_web")  # a migration away or a leftover sweep: claims stay
    assert claim_files(root, "scratch") == PUBLISHED
    files.remove("team_web", spec)  # the VM is deleted
    assert claim_files(root, "root") == PUBLISHED and claim_files(root, "scratch") == []


def test_vm_files_without_claim_roots_refuse_templates(tmp_path):  # type: ignore[no-untyped-def]
    files = VMFiles(str(tmp_path / "state"), [], QemuImg())
    with pytest.raises(InvalidSpec, match="spec.dataVolumeTemplates: claims are not enabled"):
        files.prepare(vm(DataVolumeTemplate("d", 2 * MiB, BlankImport())), "team_web")
    assert not (tmp_path / "state" / "vms" / "team_web").exists()


def test_http_secret_ref_is_basic_authentication_from_the_node_secret(node, tmp_path):  # type: ignore[no-untyped-def]
    importer, root, downloader, *_ = node
    secrets = tmp_path / "secrets"
    (secrets / "team" / "mirror").mkdir(parents=True)
    (secrets / "team" / "mirror" / "accessKeyId").write_text("reader\n")
    (secrets / "team" / "mirror" / "secretKey").write_text("s3cret")
    services = dataclasses.replace(importer.services, secrets_dir=str(secrets))
    downloader.files["http://files/disk.img"] = PAGE
    DataVolumeImporter([str(root)], services).import_all(vm(http(secret_ref="mirror")), "team_web")
    assert downloader.auths == [("reader", "s3cret")]
    with pytest.raises(InvalidSpec, match=r"secretRef.name: secret team/absent not found"):
        DataVolumeImporter([str(root)], services).import_all(
            vm(
                DataVolumeTemplate(
                    "other", 2 * MiB, HttpImport("http://files/disk.img", secret_ref="absent")
                )
            ),
            "team_web",
        )
    assert claim_files(root, "other") == []


def test_delete_with_vm_removes_only_claims_this_vm_imported(node):  # type: ignore[no-untyped-def]
    importer, root, *_ = node
    first = dataclasses.replace(vm(DataVolumeTemplate("data", 2 * MiB, BlankImport())), uid="u1")
    importer.import_all(first, "team_first")  # VM first runs on claim data
    (root / "team" / "data" / "disk.img").write_bytes(b"first's live disk")
    dropped = DataVolumeTemplate("data", 2 * MiB, BlankImport(), delete_with_vm=True)
    second = VMSpec(namespace="team", name="second", uid="u2", data_volume_templates=(dropped,))
    importer.import_all(second, "team_second")  # complete already: nothing imported
    assert importer.remove_claims(second) == []  # e.g. its refused start rolled back
    assert (root / "team" / "data" / "disk.img").read_bytes() == b"first's live disk"
    provisioned = root / "team" / "prov"
    provisioned.mkdir()
    (provisioned / "disk.img").write_bytes(PAGE)  # no owner mark: a provisioner's
    mine = DataVolumeTemplate("prov", 2 * MiB, BlankImport(), delete_with_vm=True)
    assert importer.remove_claims(dataclasses.replace(second, data_volume_templates=(mine,))) == []
    assert (provisioned / "disk.img").exists()


def test_delete_with_vm_keeps_a_claim_another_defined_vm_names(node):  # type: ignore[no-untyped-def]
    importer, root, *_ = node
    dropped = DataVolumeTemplate("scratch", 2 * MiB, BlankImport(), delete_with_vm=True)
    owner = dataclasses.replace(vm(dropped), uid="u1")
    importer.import_all(owner, "team_web")
    other = VMSpec(namespace="team", name="reader", uid="u2", data_volume_templates=(dropped,))
    assert importer.remove_claims(owner, [other]) == []
    assert claim_files(root, "scratch") == PUBLISHED
    assert importer.remove_claims(owner, [owner]) == [str(root / "team" / "scratch")]
    assert claim_files(root, "scratch") == []


def test_publish_pins_the_claim_raw_so_guest_bytes_are_never_probed(node):  # type: ignore[no-untyped-def]
    importer, root, downloader, *_ = node
    downloader.files["http://files/disk.img"] = PAGE
    importer.import_all(vm(http()), "team_web")
    assert (root / "team" / "root" / ".virt-agent-format").read_text() == "raw\n"
    (root / "team" / "root" / "disk.img").write_bytes(b"QFI\xfb" + PAGE)  # the guest's bytes
    backing = claim_backing(
        [str(root)], QemuImg(), ClaimUse("d", "team", "root", "f", False, False)
    )
    assert backing is not None and backing.format == "raw"


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "unpinned"])
def test_pvc_clone_never_unpacks_or_removes_the_source(node, pinned):  # type: ignore[no-untyped-def]
    importer, root, *_ = node
    golden = root / "team" / "golden"
    golden.mkdir(parents=True)
    guest_bytes = gzip.compress(PAGE)  # a guest wrote a gzip stream into its raw claim
    (golden / "disk.img").write_bytes(guest_bytes)
    if pinned:
        (golden / ".virt-agent-format").write_text("raw\n")
    template = DataVolumeTemplate("root", 4 * MiB, PvcClone("team", "golden"))
    importer.import_all(vm(template), "team_web")
    assert (golden / "disk.img").read_bytes() == guest_bytes
    assert (golden / ".virt-agent-format").read_text() == "raw\n"  # probed once, then pinned
    clone = (root / "team" / "root" / "disk.img").read_bytes()
    assert clone[: len(guest_bytes)] == guest_bytes  # copied as the raw bytes they are


def test_an_image_a_provisioner_puts_there_during_the_import_is_kept(node):  # type: ignore[no-untyped-def]
    importer, root, downloader, *_ = node
    downloader.files["http://files/disk.img"] = PAGE * 64

    def provisioner_writes() -> None:
        image = root / "team" / "root" / "disk.img"
        if not image.exists():
            image.write_bytes(b"the provisioner's")

    downloader.fault = provisioner_writes
    with pytest.raises(FailedPrecondition, match="disk.img appeared while the import ran"):
        importer.import_all(vm(http()), "team_web")
    assert (root / "team" / "root" / "disk.img").read_bytes() == b"the provisioner's"
    assert claim_files(root) == ["disk.img"]


def test_nested_compression_is_refused_naming_the_template(node):  # type: ignore[no-untyped-def]
    importer, root, downloader, *_ = node
    downloader.files["http://files/disk.img.gz"] = gzip.compress(gzip.compress(PAGE))
    with pytest.raises(FailedPrecondition, match=r"DataVolume root\): .*nested compression"):
        importer.import_all(vm(http("http://files/disk.img.gz")), "team_web")
    assert claim_files(root) == []


def test_a_failed_create_removes_the_delete_with_vm_claims_it_imported(node, tmp_path):  # type: ignore[no-untyped-def]
    importer, root, *_ = node
    files = VMFiles(
        str(tmp_path / "state"),
        [],
        QemuImg(),
        VolumeSupport(claim_roots=(str(root),), data_volumes=importer),
    )
    (root / "team").mkdir()
    (root / "team" / "broken").write_bytes(b"")  # a claim folder that is a file
    dropped = DataVolumeTemplate("scratch", 2 * MiB, BlankImport(), delete_with_vm=True)
    volumes = (
        Volume("scratch", DataVolume("scratch")),
        Volume("bad", PersistentVolumeClaim("broken")),
    )
    spec = dataclasses.replace(vm(dropped), uid="u1", volumes=volumes)
    with pytest.raises(InvalidSpec, match="broken"):
        files.prepare(spec, "team_web")
    assert claim_files(root, "scratch") == []
