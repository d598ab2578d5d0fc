"""What a target checks before it takes a VM: its own node, the name, memory, hostDisks,
claims and post-copy. Nothing here changes the node, so the source can ask it before it answers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from agent.disks.claimdisks import claim_backing, claim_uses
from agent.disks.hostdisk import host_disk_path
from agent.domain.lifecycle import VMService
from agent.domain.metadata import CorruptMetadata, parse_metadata
from agent.domain.status import ACTIVE_PHASES
from agent.errors import AlreadyExists, FailedPrecondition, InvalidSpec
from agent.models import Bookkeeping, HostDisk, VMSpec
from agent.naming import domain_name, vm_key
from agent.ports import HostProbe

__all__ = [
    "check_claims",
    "check_host_disks",
    "check_memory",
    "check_post_copy",
    "check_request",
]


def check_request(
    service: VMService, metadata_xml: str, source_node: str, vm: tuple[str, str]
) -> tuple[VMSpec, Bookkeeping]:
    """The VM the request describes, unless it comes from this node, describes another VM
    than the request names, or a VM of its name exists here."""
    node = service.node_name
    if source_node == node:
        raise FailedPrecondition(f"the target is node {node}, the VM's own node: pick another node")
    try:
        spec, books = parse_metadata(metadata_xml)
    except (CorruptMetadata, ValueError) as exc:
        raise InvalidSpec("metadata_xml", f"unreadable: {exc}") from exc
    if (spec.namespace, spec.name) != vm:
        raise InvalidSpec(
            "metadata_xml", f"describes vm {spec.key}, not the request's {vm[0]}/{vm[1]}"
        )
    domain = domain_name(spec.namespace, spec.name)
    if service.hv.lookup(domain) is not None:
        raise AlreadyExists(f"vm {vm_key(domain)} already exists on node {node}")
    return spec, books


def check_memory(
    service: VMService,
    host: HostProbe | None,
    reserved: int,
    spec: VMSpec,
    incoming: Iterable[tuple[str, int]] = (),
) -> None:
    """FailedPrecondition unless the node's allocatable memory holds the VM besides the
    VMs it runs (the same allocatable NodeService reports) and those ``incoming``
    ((domain, memory) of migrations prepared here that have not arrived yet)."""
    if host is None:
        return
    allocatable = host.facts().memory_bytes - reserved
    running = {
        domain_name(r.spec.namespace, r.spec.name): r.spec.memory_bytes
        for r in service.cache.records()
        if r.status.phase in ACTIVE_PHASES
    }
    used = sum(running.values()) + sum(m for d, m in incoming if d not in running)
    if used + spec.memory_bytes > allocatable:
        mib = 1 << 20
        raise FailedPrecondition(
            f"node {service.node_name} cannot take vm {spec.key}: it needs "
            f"{spec.memory_bytes // mib} MiB, {max(0, allocatable - used) // mib} MiB of "
            f"{allocatable // mib} MiB allocatable are free"
        )


def check_host_disks(service: VMService, spec: VMSpec) -> None:
    """A hostDisk stays where it is: its file must already be here (shared storage),
    never created afresh as DiskOrCreate would."""
    roots = service.files.support.host_disk_roots
    for index, volume in enumerate(spec.volumes):
        if not isinstance(volume.source, HostDisk):
            continue
        field = f"spec.template.spec.volumes[{index}].hostDisk.path"
        existing = dataclasses.replace(volume.source, type="Disk")
        try:
            host_disk_path(roots, existing, field)
        except InvalidSpec as exc:
            raise FailedPrecondition(
                f"{exc} on node {service.node_name}: hostDisk {volume.name!r} migrates only "
                "on storage both nodes share"
            ) from exc


def check_claims(service: VMService, spec: VMSpec) -> None:
    """A claim stays where it is, like a hostDisk: the same claim must be on this node
    (shared storage under this node's claim roots), else the migration is refused."""
    files = service.files
    for use in claim_uses(spec):
        try:
            found = claim_backing(files.support.claim_roots, files.images, use)
        except InvalidSpec as exc:
            found, why = None, str(exc)
        else:
            why = f"claim {use.key} is not on node {service.node_name}"
        if found is None:
            raise FailedPrecondition(
                f"{use.field}: disk {use.volume!r}: {why}; claims migrate only on storage "
                "both nodes share"
            )


def check_post_copy(node: str, why_not: Callable[[], str] | None, wanted: bool) -> None:
    """Post-copy needs the target's QEMU to use userfaultfd; refuse up front where it
    cannot (``why_not`` says why, "" when it can)."""
    reason = why_not() if wanted and why_not is not None else ""
    if reason:
        raise FailedPrecondition(
            f"options.post_copy: node {node} cannot run post-copy: {reason}; migrate without it"
        )
