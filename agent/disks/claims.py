"""Where a persistent volume claim lives on a node: ``<claim root>/<namespace>/<claim>/disk.img``.

A node agent has no pod for kubelet to mount a claim into, so the node-side contract is a
folder per claim under one of the operator's ``--claim-root`` folders. Whoever provisions
storage (a CSI driver, an operator, a control plane, or the agent itself for a
``dataVolumeTemplates`` entry) puts the claim's ``disk.img`` there: a regular file
(KubeVirt's filesystem mode) or a block device node (block mode). A DataVolume is a claim of
the same name.

Names are Kubernetes object names (DNS-1123 subdomains), which cannot hold '/' or '..'; every
component under the root is checked with lstat, so a symlink is refused, never followed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from agent.errors import InvalidSpec
from agent.naming import DNS1123_SUBDOMAIN

__all__ = ["CLAIM_IMAGE", "ClaimDisk", "claim_folder", "find_claim", "check_claim_name"]

CLAIM_IMAGE = "disk.img"  # the name virt-launcher looks for in a filesystem-mode claim


@dataclass(frozen=True)
class ClaimDisk:
    """A claim found on the node: its folder, its image and whether that is a block device."""

    folder: str
    path: str
    block: bool


def check_claim_name(name: str, field: str) -> None:
    """Refuse a claim or namespace name that is not a Kubernetes object name."""
    if not name or len(name) > 253 or not DNS1123_SUBDOMAIN.fullmatch(name):
        raise InvalidSpec(
            field,
            f"{name!r} is not a valid claim name (lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters)",
        )


def claim_folder(root: str, namespace: str, claim: str, field: str) -> str:
    """The folder of ``namespace/claim`` under ``root`` (names checked, nothing touched)."""
    check_claim_name(namespace, field)
    check_claim_name(claim, field)
    return os.path.join(os.path.abspath(root), namespace, claim)


def find_claim(roots: Sequence[str], namespace: str, claim: str, field: str) -> ClaimDisk | None:
    """The claim's disk under the first root that holds it; None while it is not there yet.

    Raises InvalidSpec naming ``field`` when no claim root is configured, a name is invalid,
    a symlink is on the way, or the claim's folder holds something that is not a disk.
    """
    if not roots:
        raise InvalidSpec(field, "claims are not enabled on this node (no --claim-root)")
    for root in roots:
        folder = claim_folder(root, namespace, claim, field)
        found = _lookup(folder, field, f"{namespace}/{claim}")
        if found is not None:
            return found
    return None


def _lookup(folder: str, field: str, what: str) -> ClaimDisk | None:
    """``folder/disk.img`` checked component by component below the root."""
    namespace_dir = os.path.dirname(folder)
    image = os.path.join(folder, CLAIM_IMAGE)
    for index, current in enumerate((namespace_dir, folder, image)):
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(info.st_mode):
            raise InvalidSpec(field, f"claim {what}: {current} is a symlink, which is not allowed")
        if index < 2 and not stat.S_ISDIR(info.st_mode):
            raise InvalidSpec(field, f"claim {what}: {current} is not a folder")
        if index == 2 and not (stat.S_ISREG(info.st_mode) or stat.S_ISBLK(info.st_mode)):
            raise InvalidSpec(
                field, f"claim {what}: {current} is neither a regular file nor a block device"
            )
    return ClaimDisk(folder=folder, path=image, block=stat.S_ISBLK(os.lstat(image).st_mode))
