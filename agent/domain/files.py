"""Per-VM files on the node: kernel paths, disk overlays and the console log.

Everything a VM owns lives in ``<state-dir>/vms/<domain>/`` and goes with the VM.
Client paths are resolved under the image roots (see ``agent.paths``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass

from agent.domain.plan import DiskBacking
from agent.errors import InvalidSpec
from agent.models import EmptyDisk, ImageFile, VMSpec
from agent.paths import resolve_under_roots
from agent.ports import ImageTool

__all__ = ["PreparedFiles", "VMFiles"]

_INSTANCE = "spec.template.spec"


@dataclass(frozen=True, slots=True)
class PreparedFiles:
    """Host paths a domain definition needs."""

    kernel: str
    initrd: str
    console_log: str
    disks: tuple[DiskBacking, ...]


class VMFiles:
    """Resolves and creates the files of VMs.

    Usage::

        files = VMFiles("/var/lib/virt-agent", ["/var/lib/virt-agent/images"], QemuImg())
        prepared = files.prepare(spec, "default_web")   # idempotent
        files.remove("default_web")
    """

    def __init__(self, state_dir: str, image_roots: list[str], images: ImageTool) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.image_roots = [os.path.abspath(root) for root in image_roots]
        self.images = images

    def vm_dir(self, domain: str) -> str:
        return os.path.join(self.state_dir, "vms", domain)

    def console_log(self, domain: str) -> str:
        return os.path.join(self.vm_dir(domain), "console.log")

    def prepare(self, vm: VMSpec, domain: str) -> PreparedFiles:
        """Resolve every path and create missing overlays; safe to call again."""
        kernel = initrd = ""
        boot = vm.firmware.kernel_boot
        field = f"{_INSTANCE}.domain.firmware.kernelBoot.container"
        if boot is not None:
            kernel = resolve_under_roots(self.image_roots, boot.kernel_path, f"{field}.kernelPath")
            if boot.initrd_path:
                initrd = resolve_under_roots(
                    self.image_roots, boot.initrd_path, f"{field}.initrdPath"
                )
        created_dir = not os.path.isdir(self.vm_dir(domain))
        os.makedirs(self.vm_dir(domain), mode=0o755, exist_ok=True)
        try:
            disks = tuple(self._disk(vm, domain, index) for index in range(len(vm.volumes)))
        except Exception:
            if created_dir:
                self.remove(domain)
            raise
        return PreparedFiles(kernel, initrd, self.console_log(domain), disks)

    def _disk(self, vm: VMSpec, domain: str, index: int) -> DiskBacking:
        volume = vm.volumes[index]
        field = f"{_INSTANCE}.volumes[{index}]"
        source = volume.source
        if isinstance(source, ImageFile):
            base = resolve_under_roots(self.image_roots, source.path, f"{field}.imageFile.path")
            base_format = self.images.format_of(base, f"{field}.imageFile.path")
            # Named by base path so a changed image never swaps the disk under a running guest.
            digest = hashlib.sha256(base.encode()).hexdigest()[:12]
            overlay = os.path.join(self.vm_dir(domain), f"{volume.name}-{digest}.qcow2")
            if not os.path.exists(overlay):
                self.images.create_overlay(base, base_format, overlay)
            return DiskBacking(name=volume.name, path=overlay, format="qcow2")
        if isinstance(source, EmptyDisk):
            path = os.path.join(self.vm_dir(domain), f"{volume.name}-empty.qcow2")
            if not os.path.exists(path):
                self.images.create_blank(path, source.capacity_bytes)
            return DiskBacking(name=volume.name, path=path, format="qcow2")
        kind = type(source).__name__
        raise InvalidSpec(field, f"{kind} volumes are not supported by this agent yet")

    def remove(self, domain: str) -> None:
        """Delete everything the agent made for the VM; a missing folder is fine."""
        shutil.rmtree(self.vm_dir(domain), ignore_errors=True)
