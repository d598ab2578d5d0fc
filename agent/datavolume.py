"""DataVolume templates: claims the agent imports on its node before a VM starts (CDI's job).

A ``dataVolumeTemplates`` entry names a claim of the VM's namespace and says how to fill it
the first time: blank, from a registry image, from an HTTP download, or as a clone of
another claim of the same namespace. The claim outlives the VM unless the template carries
the ``virt-agent.io/delete-with-vm: "true"`` annotation.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DELETE_WITH_VM_ANNOTATION",
    "BlankImport",
    "DataVolumeTemplate",
    "HttpImport",
    "ImportSource",
    "PvcClone",
    "RegistryImport",
]

# On a template's metadata: "true" removes the claim when the VM is deleted.
DELETE_WITH_VM_ANNOTATION = "virt-agent.io/delete-with-vm"


@dataclass(frozen=True, slots=True)
class BlankImport:
    """A sparse raw disk of the template's size."""


@dataclass(frozen=True, slots=True)
class RegistryImport:
    """A containerdisk-style image (``docker://`` URL), pulled and copied into the claim."""

    url: str  # as written, ``docker://host/repo:tag``
    pull_method: str = "node"  # "pod" or "node": both pull through the agent's cache here


@dataclass(frozen=True, slots=True)
class HttpImport:
    """An image downloaded over HTTP(S): raw or qcow2, possibly gzip or xz compressed."""

    url: str
    checksum: str = ""  # "sha256:<hex>" (or sha512/md5/sha1) of the downloaded bytes
    secret_ref: str = ""  # node secret with accessKeyId/secretKey: basic authentication


@dataclass(frozen=True, slots=True)
class PvcClone:
    """A copy of another claim of the same namespace."""

    namespace: str
    name: str


ImportSource = BlankImport | RegistryImport | HttpImport | PvcClone


@dataclass(frozen=True, slots=True)
class DataVolumeTemplate:
    """One entry of ``spec.dataVolumeTemplates``: the claim ``name`` of the VM's namespace."""

    name: str
    size_bytes: int
    source: ImportSource
    delete_with_vm: bool = False

    @property
    def source_kind(self) -> str:
        return {
            BlankImport: "blank",
            RegistryImport: "registry",
            HttpImport: "http",
            PvcClone: "pvc",
        }[type(self.source)]
