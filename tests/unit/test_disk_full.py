"""A full state directory while a VM's files are made: RESOURCE_EXHAUSTED naming the state
directory, and no folder left behind (Python's ENOSPC and qemu-img's message alike)."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from agent.domain.files import VMFiles, VolumeSupport
from agent.errors import FailedPrecondition, ResourceExhausted
from agent.models import CloudInitNoCloud, Disk, EmptyDisk, VMSpec, Volume
from tests.unit.disk_fakes import FakeImages

UID = "0d6f4c1e-8f0a-4b7e-9a57-3d1b3c2e8f90"


class FullIso:
    def write_iso(self, path: str, volume_id: str, files: Mapping[str, bytes]) -> None:
        with open(path, "wb"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullImages(FakeImages):
    def create_blank(self, path: str, size_bytes: int, fmt: str = "qcow2") -> None:
        raise FailedPrecondition(
            f"creating {path}: qemu-img: {path}: Could not create: No space left on device"
        )


def spec(volume: Volume) -> VMSpec:
    return VMSpec(
        namespace="team-a", name="web", uid=UID, disks=(Disk(volume.name),), volumes=(volume,)
    )


@pytest.mark.parametrize(
    ("files", "volume"),
    [
        (
            lambda root: VMFiles(root, [], FakeImages(), VolumeSupport(iso=FullIso())),
            Volume("seed", CloudInitNoCloud(user_data="#cloud-config\n")),
        ),
        (lambda root: VMFiles(root, [], FullImages()), Volume("scratch", EmptyDisk(1 << 20))),
    ],
    ids=["python-enospc", "qemu-img"],
)
def test_a_full_state_directory_is_resource_exhausted_and_leaves_no_folder(
    tmp_path: Path, files: object, volume: Volume
) -> None:
    made: VMFiles = files(str(tmp_path))  # type: ignore[operator]
    with pytest.raises(ResourceExhausted, match="no space left in the state directory") as e:
        made.prepare(spec(volume), "team-a_web")
    assert str(tmp_path) in str(e.value)
    assert not os.path.exists(made.vm_dir("team-a_web"))


def test_other_errors_are_not_taken_for_a_full_disk(tmp_path: Path) -> None:
    class Broken(FakeImages):
        def create_blank(self, path: str, size_bytes: int, fmt: str = "qcow2") -> None:
            raise FailedPrecondition("qemu-img: unknown option")

    with pytest.raises(FailedPrecondition, match="unknown option"):
        VMFiles(str(tmp_path), [], Broken()).prepare(
            spec(Volume("scratch", EmptyDisk(1 << 20))), "team-a_web"
        )
