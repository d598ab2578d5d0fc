"""Volume sources backed by persistent volume claims, as plain frozen dataclasses.

On a node a claim is ``<claim root>/<namespace>/<claim>/disk.img`` (``agent.disks.claims``);
``agent.models`` makes these part of a VM's volume sources.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DataVolume", "PersistentVolumeClaim"]


@dataclass(frozen=True, slots=True)
class PersistentVolumeClaim:
    """A claim of the VM's namespace, found under a claim root (``agent.disks.claims``)."""

    claim_name: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class DataVolume:
    """A DataVolume: on a node, the claim of the same name in the VM's namespace."""

    name: str
