"""Which disk images the agent hands to QEMU: qcow2 or raw, naming no other host file."""

from __future__ import annotations

from agent.errors import InvalidSpec
from agent.models import DISK_FORMATS
from agent.ports import ImageInfo

__all__ = ["usable_format"]


def usable_format(info: ImageInfo, path: str, field: str) -> str:
    """The image's format when the agent may boot from it; InvalidSpec naming ``field`` if not.

    A backing file or an external data file would let an image name any file on the host
    (KubeVirt's CVE-2022-1798 family), so both are refused rather than followed.
    """
    if info.format not in DISK_FORMATS:
        allowed = " or ".join(DISK_FORMATS)
        raise InvalidSpec(field, f"{path} is a {info.format or 'unknown'} image; use {allowed}")
    if info.backing_file:
        raise InvalidSpec(field, f"{path} has a backing file; flatten it first")
    if info.data_file:
        raise InvalidSpec(field, f"{path} has an external data file; convert it first")
    return info.format
