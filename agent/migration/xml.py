"""The domain definitions a migrating VM carries to its target: the source's (with its device
addresses, so the guest's hardware is unchanged) with the target's host paths and metadata.

Pure. Disks are matched by their target device (``vda``...), which both agents derive from
the same spec in the same order.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from agent.models import DataVolume, HostDisk, PersistentVolumeClaim, VMSpec
from agent.naming import METADATA_KEY, METADATA_URI

__all__ = ["copied_disks", "for_target", "has_shared_disks"]

# Volumes used in place, which stay where they are: both nodes must share their storage.
_IN_PLACE = (HostDisk, PersistentVolumeClaim, DataVolume)


def for_target(source_xml: str, target_xml: str) -> str:
    """``source_xml`` with the kernel, initrd, disk files, console log and the agent's
    metadata of ``target_xml``."""
    ET.register_namespace(METADATA_KEY, METADATA_URI)  # keep the prefix libvirt shows
    source = ET.fromstring(source_xml)
    target = ET.fromstring(target_xml)
    for path in ("os/kernel", "os/initrd"):
        mine, theirs = source.find(path), target.find(path)
        if mine is not None and theirs is not None:
            mine.text = theirs.text
    target_disks = {_dev(d): d for d in target.iterfind("devices/disk")}
    for disk in source.iterfind("devices/disk"):
        wanted = target_disks.get(_dev(disk))
        mine_source, their_source = disk.find("source"), _source(wanted)
        if mine_source is not None and their_source is not None and wanted is not None:
            # A file names it by file=, a block device (a claim in block mode) by dev=.
            for key in ("file", "dev"):
                mine_source.attrib.pop(key, None)
                if their_source.get(key) is not None:
                    mine_source.set(key, their_source.get(key, ""))
            disk.set("type", wanted.get("type", "file"))
    their_log = target.find("devices/serial/log")
    for log in source.iterfind("devices/serial/log"):
        if their_log is not None:
            log.set("file", their_log.get("file", ""))
    _replace_metadata(source, target)
    return ET.tostring(source, encoding="unicode")


def copied_disks(spec: VMSpec, target_xml: str) -> tuple[str, ...]:
    """Target devices of the disks libvirt must copy: every writable one on the VM's own
    files (a writable cloud-init seed too: libvirt refuses to leave a writable disk behind
    unless it is shared); host disks and claims must be shared storage on both nodes."""
    volumes = {v.name: v.source for v in spec.volumes}
    elements = list(ET.fromstring(target_xml).iterfind("devices/disk"))
    copied = []
    for disk, element in zip(spec.disks, elements, strict=False):
        source = volumes.get(disk.name)
        if isinstance(source, _IN_PLACE) or element.find("readonly") is not None:
            continue
        copied.append(_dev(element))
    return tuple(copied)


def has_shared_disks(spec: VMSpec) -> bool:
    """Whether the VM has host disks or claims, which stay where they are (shared storage)."""
    return any(isinstance(v.source, _IN_PLACE) for v in spec.volumes)


def _dev(disk: ET.Element | None) -> str:
    target = disk.find("target") if disk is not None else None
    return target.get("dev", "") if target is not None else ""


def _source(disk: ET.Element | None) -> ET.Element | None:
    return disk.find("source") if disk is not None else None


def _replace_metadata(source: ET.Element, target: ET.Element) -> None:
    tag = f"{{{METADATA_URI}}}vm"
    theirs = target.find(f"metadata/{tag}")
    if theirs is None:
        raise ValueError("the target's definition carries no virt-agent metadata")
    container = source.find("metadata")
    if container is None:
        container = ET.SubElement(source, "metadata")
    for old in container.findall(tag):
        container.remove(old)
    container.append(theirs)
