"""NoCloud seeds (contents, secrets, the real ISO writer) and host disks (paths, creation)."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pycdlib
import pytest

from agent.adapters.iso import PycdlibIso
from agent.adapters.qemuimg import QemuImg
from agent.disks.cloudinit import nocloud_seed
from agent.disks.hostdisk import host_disk_path
from agent.disks.imagecheck import usable_format
from agent.domain.files import VMFiles, VolumeSupport
from agent.errors import InvalidSpec
from agent.models import CloudInitNoCloud, Disk, EmptyDisk, HostDisk, VMSpec, Volume
from tests.unit.disk_fakes import FakeImages, FakeIso

UID = "0d6f4c1e-8f0a-4b7e-9a57-3d1b3c2e8f90"
FIELD = "spec.template.spec.volumes[0].cloudInitNoCloud"


def vm(hostname: str = "", volumes: tuple[Volume, ...] = ()) -> VMSpec:
    return VMSpec(
        namespace="team-a",
        name="web",
        uid=UID,
        hostname=hostname,
        disks=tuple(Disk(v.name) for v in volumes),
        volumes=volumes,
    )


# -- NoCloud seeds -------------------------------------------------------------------------


def test_meta_data_has_the_uid_and_the_host_name() -> None:
    seed = nocloud_seed(vm(), CloudInitNoCloud(user_data="#cloud-config\n"), secrets_dir="",
                        field=FIELD)  # fmt: skip
    assert json.loads(seed.files["meta-data"]) == {"instance-id": UID, "local-hostname": "web"}
    assert seed.files["user-data"] == b"#cloud-config\n"
    assert "network-config" not in seed.files
    named = nocloud_seed(vm("db-1"), CloudInitNoCloud(user_data="x", network_data="version: 2"),
                         secrets_dir="", field=FIELD)  # fmt: skip
    assert json.loads(named.files["meta-data"])["local-hostname"] == "db-1"
    assert named.files["network-config"] == b"version: 2"
    assert named.digest != seed.digest


def _secret(root: Path, name: str, key: str, data: bytes) -> None:
    folder = root / "team-a" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / key).write_bytes(data)


def test_secret_references_read_files_under_the_secrets_dir(tmp_path: Path) -> None:
    _secret(tmp_path, "boot", "userdata", b"#!/bin/sh\necho hi\n")
    _secret(tmp_path, "net", "networkData", b"version: 2\n")
    source = CloudInitNoCloud(user_data_secret="boot", network_data_secret="net")
    seed = nocloud_seed(vm(), source, secrets_dir=str(tmp_path), field=FIELD)
    assert seed.files["user-data"] == b"#!/bin/sh\necho hi\n"
    assert seed.files["network-config"] == b"version: 2\n"


@pytest.mark.parametrize("attack", ["symlinked-file", "symlinked-folder", "missing", "no-dir"])
def test_secret_references_refuse_symlinks_and_name_the_field(tmp_path: Path, attack: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "userdata").write_bytes(b"host secret")
    secrets = tmp_path / "secrets"
    (secrets / "team-a").mkdir(parents=True)
    if attack == "symlinked-file":
        (secrets / "team-a" / "boot").mkdir()
        (secrets / "team-a" / "boot" / "userdata").symlink_to(outside / "userdata")
    elif attack == "symlinked-folder":
        (secrets / "team-a" / "boot").symlink_to(outside)
    secrets_dir = "" if attack == "no-dir" else str(secrets)
    with pytest.raises(InvalidSpec) as caught:
        nocloud_seed(vm(), CloudInitNoCloud(user_data_secret="boot"), secrets_dir=secrets_dir,
                     field=FIELD)  # fmt: skip
    assert caught.value.field == f"{FIELD}.secretRef.name"
    assert "host secret" not in str(caught.value)


def test_the_iso_is_a_cidata_volume_with_rock_ridge_and_joliet_names(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    files = {"meta-data": b'{"instance-id": "x"}\n', "user-data": b"#!/bin/sh\n",
             "network-config": b"version: 2\n"}  # fmt: skip
    PycdlibIso().write_iso(str(path), "cidata", files)
    assert not (tmp_path / "seed.iso.tmp").exists()
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.rstrip() == b"cidata"
        for name, data in files.items():
            for kwargs in ({"rr_path": f"/{name}"}, {"joliet_path": f"/{name}"}):
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, **kwargs)
                assert out.getvalue() == data
    finally:
        iso.close()


def test_vm_files_write_one_seed_per_content(tmp_path: Path) -> None:
    iso = FakeIso()
    files = VMFiles(str(tmp_path), [], FakeImages(), VolumeSupport(iso=iso))
    seed_vm = vm(volumes=(Volume("seed", CloudInitNoCloud(user_data="a")),))
    [backing] = files.prepare(seed_vm, "team-a_web").disks
    assert backing.format == "raw" and backing.path.endswith(".iso")
    assert iso.written[backing.path]["user-data"] == b"a"
    files.prepare(seed_vm, "team-a_web")
    assert len(iso.written) == 1
    changed = vm(volumes=(Volume("seed", CloudInitNoCloud(user_data="b")),))
    [other] = files.prepare(changed, "team-a_web").disks
    assert other.path != backing.path and os.path.exists(backing.path)  # never rewritten
    with pytest.raises(InvalidSpec, match="not enabled"):
        VMFiles(str(tmp_path), [], FakeImages()).prepare(seed_vm, "team-a_x")


def test_empty_disks_are_blank_qcow2_in_the_vm_folder(tmp_path: Path) -> None:
    files = VMFiles(str(tmp_path), [], FakeImages())
    spec = vm(volumes=(Volume("scratch", EmptyDisk(64 * 1024 * 1024)),))
    [backing] = files.prepare(spec, "team-a_web").disks
    assert backing.path == f"{files.vm_dir('team-a_web')}/scratch-empty.qcow2"
    assert Path(backing.path).read_text() == f"blank {64 * 1024 * 1024}\n"


# -- host disks ----------------------------------------------------------------------------

HFIELD = "spec.template.spec.volumes[0].hostDisk.path"


def test_disk_or_create_creates_a_sparse_raw_file_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "vm").mkdir(parents=True)
    source = HostDisk(str(root / "vm" / "data.img"), "DiskOrCreate", 8 * 1024 * 1024)
    path = host_disk_path([str(root)], source, HFIELD)
    info = os.stat(path)
    assert info.st_size == 8 * 1024 * 1024 and info.st_blocks == 0  # sparse
    Path(path).write_bytes(b"DATA")
    bigger = HostDisk("vm/data.img", "DiskOrCreate", 16 * 1024 * 1024)  # relative to the root
    assert host_disk_path([str(root)], bigger, HFIELD) == path
    assert Path(path).read_bytes() == b"DATA" and os.stat(path).st_ino == info.st_ino


def _refuse_large_files(fd: int, length: int) -> None:
    """ftruncate of a filesystem whose largest file is smaller (ext4: 16Ti)."""
    raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))


@pytest.mark.parametrize(
    ("capacity", "limit", "shown"),
    [(2**63, None, "8388608Ti"), (1000 * 1024**4, _refuse_large_files, "1000Ti")],
    ids=["beyond-any-file", "beyond-this-filesystem"],
)
def test_a_capacity_no_file_can_have_is_refused_and_leaves_no_disk(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capacity: int,
    limit: Callable[[int, int], None] | None,
    shown: str,
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    if limit is not None:
        monkeypatch.setattr(os, "ftruncate", limit)
    huge = HostDisk(str(root / "data.img"), "DiskOrCreate", capacity)
    with pytest.raises(InvalidSpec, match=f"{shown} is larger than a file") as caught:
        host_disk_path([str(root)], huge, HFIELD)
    assert caught.value.field == "spec.template.spec.volumes[0].hostDisk.capacity"
    assert list(root.iterdir()) == []  # no empty disk for the next apply to boot from
    monkeypatch.undo()
    fixed = HostDisk(str(root / "data.img"), "DiskOrCreate", 1024 * 1024)
    path = host_disk_path([str(root)], fixed, HFIELD)
    assert os.stat(path).st_size == 1024 * 1024 and os.listdir(root) == ["data.img"]


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("missing-disk", "does not exist"),
        ("outside", "outside the host disk roots"),
        ("symlinked-folder", "is a symlink"),
        ("symlinked-file", "is a symlink"),
        ("dangling-symlink", "is a symlink"),
        ("missing-folder", "does not exist"),
        ("folder", "not a regular file"),
    ],
)  # fmt: skip
def test_host_disk_paths_are_confined_and_nothing_is_created(
    tmp_path: Path, case: str, problem: str
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (root / "link").symlink_to(outside)
    (root / "file-link").symlink_to(outside / "secret")
    (root / "dangling").symlink_to(outside / "made-through-link")
    (root / "dir").mkdir()
    path, kind = {
        "missing-disk": (root / "nothing.img", "Disk"),
        "outside": (outside / "new.img", "DiskOrCreate"),
        "symlinked-folder": (root / "link" / "new.img", "DiskOrCreate"),
        "symlinked-file": (root / "file-link", "DiskOrCreate"),
        "dangling-symlink": (root / "dangling", "DiskOrCreate"),
        "missing-folder": (root / "no" / "new.img", "DiskOrCreate"),
        "folder": (root / "dir", "Disk"),
    }[case]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(InvalidSpec, match=problem) as caught:
        host_disk_path([str(root)], HostDisk(str(path), kind, 1024), HFIELD)
    assert caught.value.field == HFIELD
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert (outside / "secret").read_bytes() == b"s"


def test_host_disks_need_a_configured_root(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="no --host-disk-root"):
        host_disk_path([], HostDisk(str(tmp_path / "x.img"), "DiskOrCreate", 1), HFIELD)


def test_vm_files_use_host_disks_in_place_as_raw_and_keep_them(tmp_path: Path) -> None:
    root = tmp_path / "hostdisks"
    root.mkdir()
    files = VMFiles(str(tmp_path / "state"), [], FakeImages(),
                    VolumeSupport(host_disk_roots=(str(root),)))  # fmt: skip
    spec = vm(volumes=(Volume("data", HostDisk(str(root / "d.img"), "DiskOrCreate", 4096)),))
    [backing] = files.prepare(spec, "team-a_web").disks
    assert backing.path == str(root / "d.img") and backing.format == "raw"
    files.remove("team-a_web")
    assert (root / "d.img").exists()


def test_images_naming_host_files_are_refused(tmp_path: Path) -> None:
    """A container disk's qcow2 could point at host files through a backing or data file."""
    tool = QemuImg()
    backed, external = tmp_path / "backed.qcow2", tmp_path / "external.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "base.qcow2"),
                    "1M"], check=True)  # fmt: skip
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(tmp_path / "base.qcow2"), str(backed)], check=True)  # fmt: skip
    data_file = f"data_file={tmp_path / 'data.raw'}"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", data_file, str(external),
                    "1M"], check=True)  # fmt: skip

    def check(path: Path) -> str:
        return usable_format(tool.inspect(str(path)), str(path), "f")

    assert check(tmp_path / "base.qcow2") == "qcow2"
    with pytest.raises(InvalidSpec, match="backing file"):
        check(backed)
    with pytest.raises(InvalidSpec, match="external data file"):
        check(external)


# -- what other local users can read ------------------------------------------------------


def test_vm_files_are_owner_only_and_the_folder_is_not_listable(tmp_path: Path) -> None:
    # Seeds carry secretRef contents; disks carry guest data. libvirt hands each file to
    # QEMU's user when the VM starts (dynamic ownership), so nobody else needs to read them.
    files = VMFiles(str(tmp_path / "state"), [], QemuImg(), VolumeSupport(iso=PycdlibIso()))
    spec = vm(
        volumes=(
            Volume("seed", CloudInitNoCloud(user_data="#cloud-config\npassword: s3cret\n")),
            Volume("scratch", EmptyDisk(16 * 1024 * 1024)),
        )
    )
    old_umask = os.umask(0o022)  # a usual umask: files would be 0644
    try:
        backings = files.prepare(spec, "team-a_web").disks
    finally:
        os.umask(old_umask)
    for backing in backings:
        assert stat.S_IMODE(os.stat(backing.path).st_mode) == 0o600, backing.path
    folder = os.stat(files.vm_dir("team-a_web")).st_mode
    assert stat.S_IMODE(folder) == 0o711  # QEMU's user can open the files, not list them
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "vms").st_mode) == 0o711
