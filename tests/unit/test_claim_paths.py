"""Claim folders on the node: found where the contract says, hostile names and symlinks refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.disks.claims import claim_folder, find_claim
from agent.errors import InvalidSpec

FIELD = "spec.volumes[0].persistentVolumeClaim.claimName"


def make_claim(root: Path, namespace: str, claim: str) -> Path:
    folder = root / namespace / claim
    folder.mkdir(parents=True)
    (folder / "disk.img").write_bytes(b"\0" * 512)
    return folder


def test_a_claim_is_found_under_the_root_that_holds_it(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    folder = make_claim(second, "team-a", "root-disk")
    found = find_claim([str(first), str(second)], "team-a", "root-disk", FIELD)
    assert found is not None
    assert found.path == str(folder / "disk.img")
    assert not found.block


def test_a_claim_not_there_yet_is_none(tmp_path: Path) -> None:
    make_claim(tmp_path, "team-a", "other")
    assert find_claim([str(tmp_path)], "team-a", "root-disk", FIELD) is None
    assert find_claim([str(tmp_path)], "team-b", "other", FIELD) is None


@pytest.mark.parametrize(
    "name", ["..", "../etc", "a/b", "", "UPPER", "-leading", "trailing-", "x" * 254, "a\x00b"]
)
def test_hostile_claim_names_are_refused_naming_the_field(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        find_claim([str(tmp_path)], "team-a", name, FIELD)
    assert caught.value.field == FIELD


def test_a_hostile_namespace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec):
        claim_folder(str(tmp_path), "..", "disk", FIELD)


def test_a_symlink_anywhere_on_the_way_is_refused(tmp_path: Path) -> None:
    elsewhere = make_claim(tmp_path / "elsewhere", "team-b", "secret")
    root = tmp_path / "root"
    (root / "team-a").mkdir(parents=True)
    (root / "team-a" / "linked").symlink_to(elsewhere)
    with pytest.raises(InvalidSpec, match="symlink"):
        find_claim([str(root)], "team-a", "linked", FIELD)
    (root / "team-a" / "image").mkdir()
    (root / "team-a" / "image" / "disk.img").symlink_to("/etc/shadow")
    with pytest.raises(InvalidSpec, match="symlink"):
        find_claim([str(root)], "team-a", "image", FIELD)
    (root / "team-c").symlink_to(root / "team-a")
    with pytest.raises(InvalidSpec, match="symlink"):
        find_claim([str(root)], "team-c", "image", FIELD)


def test_a_folder_holding_something_else_is_refused(tmp_path: Path) -> None:
    (tmp_path / "team-a" / "weird" / "disk.img").mkdir(parents=True)
    with pytest.raises(InvalidSpec, match="neither a regular file nor a block device"):
        find_claim([str(tmp_path)], "team-a", "weird", FIELD)


def test_a_block_device_node_is_a_block_mode_claim(tmp_path: Path) -> None:
    folder = tmp_path / "team-a" / "raw"
    folder.mkdir(parents=True)
    loop0 = os.makedev(7, 0)
    os.mknod(folder / "disk.img", 0o600 | 0o060000, loop0)  # a node only: nothing is opened
    found = find_claim([str(tmp_path)], "team-a", "raw", FIELD)
    assert found is not None and found.block


def test_no_claim_root_is_a_clear_error() -> None:
    with pytest.raises(InvalidSpec, match="--claim-root"):
        find_claim([], "team-a", "disk", FIELD)
