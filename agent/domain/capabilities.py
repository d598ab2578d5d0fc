"""Machine settings the node cannot run, refused before anything is made for the VM.

Under QEMU's TCG (``--virt-type qemu``) QEMU refuses the Hyper-V VP index and libvirt
refuses paravirtual spinlocks; a TPM needs swtpm and UEFI needs OVMF on the node. Each would
otherwise surface as a libvirt error when the VM starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import FailedPrecondition
from agent.models import VMSpec

__all__ = ["ASSUMED_SUPPORT", "NodeSupport", "require_node_support"]

_DOMAIN = "spec.template.spec.domain"


@dataclass(frozen=True, slots=True)
class NodeSupport:
    """Software on the node that some settings need (found by the host probe at start)."""

    swtpm: bool = True
    uefi_firmware: bool = True


# What the agent assumes when nobody probed the node (tests, embedding).
ASSUMED_SUPPORT = NodeSupport()


def require_node_support(spec: VMSpec, virt_type: str, support: NodeSupport) -> None:
    """Raise FailedPrecondition naming the first field the node cannot run."""
    if spec.hardware.tpm is not None and not support.swtpm:
        raise FailedPrecondition(
            f"{_DOMAIN}.devices.tpm: needs swtpm on the node (Debian package swtpm)"
        )
    if spec.firmware.bootloader == "efi" and not support.uefi_firmware:
        raise FailedPrecondition(
            f"{_DOMAIN}.firmware.bootloader.efi: needs OVMF on the node (Debian package ovmf)"
        )
    if virt_type == "kvm":
        return
    features = spec.hardware.features
    why = "needs KVM; this node runs VMs under QEMU's TCG (--virt-type qemu)"
    if features.hyperv is not None and "vpindex" in features.hyperv.enabled:
        raise FailedPrecondition(f"{_DOMAIN}.features.hyperv.vpindex: {why}")
    if features.pvspinlock:
        raise FailedPrecondition(f"{_DOMAIN}.features.pvspinlock: {why}")
