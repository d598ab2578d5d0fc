"""Machine settings the node cannot run, refused before anything is made for the VM.

Under QEMU's TCG (``--virt-type qemu``) QEMU refuses the Hyper-V VP index (and with it the
synthetic interrupt controller's timers in direct mode) and libvirt refuses paravirtual
spinlocks; both would otherwise surface as a libvirt error when the VM starts.
"""

from __future__ import annotations

from agent.errors import FailedPrecondition
from agent.models import VMSpec

__all__ = ["require_node_support"]

_DOMAIN = "spec.template.spec.domain"


def require_node_support(spec: VMSpec, virt_type: str) -> None:
    """Raise FailedPrecondition naming the first field the node's hypervisor cannot run."""
    if virt_type == "kvm":
        return
    features = spec.hardware.features
    why = "needs KVM; this node runs VMs under QEMU's TCG (--virt-type qemu)"
    if features.hyperv is not None and "vpindex" in features.hyperv.enabled:
        raise FailedPrecondition(f"{_DOMAIN}.features.hyperv.vpindex: {why}")
    if features.pvspinlock:
        raise FailedPrecondition(f"{_DOMAIN}.features.pvspinlock: {why}")
