"""Disks backed by claims: which volumes of a VM use which claims, the host file (or block
device) behind each, and when two VMs may use one claim at the same time.

A ``persistentVolumeClaim`` or ``dataVolume`` volume names a claim of the VM's own namespace
(``agent.disks.claims`` finds it on the node), so a VM can never name another namespace's
claim. The claim is used in place: a block device raw; a file raw or qcow2 as ``qemu-img``
detects it, a qcow2 that names a backing or data file refused (never followed).

A file's format is detected once, the first time the agent uses the claim (before any guest
wrote to it), and pinned in the claim's folder (``FORMAT_PIN``): probing it again later would
let a guest that writes a qcow2 header into its raw disk have the next VM read attacker-made
qcow2 metadata. A provisioner that knows the format may write the pin itself.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.disks.claims import CLAIM_IMAGE, claim_folder, find_claim
from agent.disks.imagecheck import usable_format
from agent.errors import FailedPrecondition, InvalidSpec
from agent.models import DISK_FORMATS, DataVolume, DiskBacking, PersistentVolumeClaim, VMSpec
from agent.ports import ImageTool

__all__ = [
    "FORMAT_PIN",
    "ClaimUse",
    "pin_format",
    "pinned_format",
    "claim_backing",
    "claim_uses",
    "check_sharing",
    "placeholder_backing",
]

FORMAT_PIN = ".virt-agent-format"  # in the claim's folder: "raw" or "qcow2"

_INSTANCE = "spec.template.spec"


@dataclass(frozen=True, slots=True)
class ClaimUse:
    """One volume of a VM backed by a claim of the VM's namespace."""

    volume: str
    namespace: str
    claim: str
    field: str  # the spec field naming the claim, for error messages
    read_only: bool  # the volume or its disk is read-only
    shareable: bool  # the disk is marked shareable

    @property
    def key(self) -> str:
        """``namespace/claim``: how people name a claim."""
        return f"{self.namespace}/{self.claim}"

    @property
    def exclusive(self) -> bool:
        """Whether this use keeps other VMs off the claim (a plain writable disk)."""
        return not (self.read_only or self.shareable)


def claim_uses(vm: VMSpec) -> tuple[ClaimUse, ...]:
    """The VM's claim-backed volumes, in volume order."""
    disks = {d.name: d for d in vm.disks}
    uses = []
    for index, volume in enumerate(vm.volumes):
        source = volume.source
        field = f"{_INSTANCE}.volumes[{index}]"
        if isinstance(source, PersistentVolumeClaim):
            name, field, read_only = (
                source.claim_name,
                f"{field}.persistentVolumeClaim.claimName",
                source.read_only,
            )
        elif isinstance(source, DataVolume):
            name, field, read_only = source.name, f"{field}.dataVolume.name", False
        else:
            continue
        disk = disks.get(volume.name)
        read_only = read_only or (disk is not None and (disk.readonly or disk.device == "cdrom"))
        shareable = disk is not None and disk.shareable
        uses.append(ClaimUse(volume.name, vm.namespace, name, field, read_only, shareable))
    return tuple(uses)


def claim_backing(roots: Sequence[str], images: ImageTool, use: ClaimUse) -> DiskBacking | None:
    """The disk behind ``use``; None while the claim is not on the node.

    Raises InvalidSpec naming the claim's field when claims are off, the claim's folder is
    not a claim, or its image is not one the agent boots from.
    """
    found = find_claim(roots, use.namespace, use.claim, use.field)
    if found is None:
        return None
    if found.block:
        return DiskBacking(use.volume, found.path, "raw", block=True, readonly=use.read_only)
    what = f"claim {use.key} ({found.path})"
    fmt = pinned_format(found.folder, what, use.field)
    if fmt != "raw":  # a qcow2 (or not yet known): its header is the agent's to check
        detected = usable_format(images.inspect(found.path), what, use.field)
        if fmt and detected != fmt:
            raise InvalidSpec(use.field, f"{what} was {fmt} when first used, now {detected}")
        fmt = fmt or pin_format(found.folder, detected)
    if fmt != "raw" and use.shareable:
        # QEMU cannot share a qcow2 between writers (libvirt refuses it too).
        raise InvalidSpec(use.field, f"{what} is a {fmt} image; a shareable disk needs raw")
    return DiskBacking(use.volume, found.path, fmt, readonly=use.read_only)


def placeholder_backing(roots: Sequence[str], use: ClaimUse) -> DiskBacking:
    """Where the claim will be under the first root: the definition of a VM that waits for
    its claim names it; the start defines the VM again with what it finds then."""
    folder = claim_folder(roots[0], use.namespace, use.claim, use.field)
    return DiskBacking(use.volume, os.path.join(folder, CLAIM_IMAGE), "raw", readonly=use.read_only)


def check_sharing(vm: VMSpec, others: Iterable[VMSpec]) -> None:
    """FailedPrecondition when ``vm`` would use a claim another running VM uses, and not both
    uses are read-only or shareable (other namespaces' VMs cannot name the same claim)."""
    mine = claim_uses(vm)
    if not mine:
        return
    for other in others:
        if other.key == vm.key:
            continue
        theirs = {u.key: u for u in claim_uses(other)}
        for use in mine:
            their = theirs.get(use.key)
            if their is not None and (use.exclusive or their.exclusive):
                raise FailedPrecondition(
                    f"{use.field}: claim {use.key} is in use by vm {other.key} (volume "
                    f"{their.volume!r}); two VMs share a claim only when both disks are "
                    "shareable or read-only"
                )


def pinned_format(folder: str, what: str, field: str) -> str:
    """The claim's pinned format; "" when it has none yet."""
    try:
        fd = os.open(os.path.join(folder, FORMAT_PIN), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise InvalidSpec(field, f"{what}: cannot read {FORMAT_PIN}: {exc.strerror}") from exc
    with os.fdopen(fd) as pin:
        fmt = pin.read(16).strip()
    if fmt not in DISK_FORMATS:
        raise InvalidSpec(field, f"{what}: {FORMAT_PIN} says {fmt!r}; write raw or qcow2")
    return fmt


def pin_format(folder: str, fmt: str) -> str:
    """Record ``fmt`` as the claim's format (written whole, then renamed into place; the
    temporary name is unique so two writers never share one)."""
    temporary = os.path.join(folder, f"{FORMAT_PIN}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(temporary, flags, 0o644), "w") as pin:
        pin.write(fmt + "\n")
    os.replace(temporary, os.path.join(folder, FORMAT_PIN))
    return fmt
