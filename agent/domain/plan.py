"""HostPlan: what the node resolved for one VM (paths, taps, MACs) before its XML is built."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from agent.models import DiskBacking, NicBacking

__all__ = ["VIRT_TYPES", "HostPlan"]

# "qemu" is TCG (software emulation); "kvm" needs working hardware virtualisation.
VIRT_TYPES = ("qemu", "kvm")


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPlan:
    """Everything domain XML needs that the spec does not say.

    Usage::

        plan = HostPlan(
            domain_name=domain_name(spec.namespace, spec.name),
            uuid=spec.uid,
            disks=(DiskBacking("root", "/var/lib/virt-agent/vms/<uid>/root.qcow2"),),
            nics=(NicBacking("default", tap="va-1a2b3c4d", mac="52:54:00:12:34:56"),),
            console_log="/var/lib/virt-agent/vms/<uid>/console.log",
            metadata=metadata_element(spec, bookkeeping),
        )
        xml = domain_xml(spec, plan)
    """

    domain_name: str
    uuid: str
    virt_type: str = "qemu"
    arch: str = "x86_64"
    emulator: str = ""  # empty: libvirt picks the emulator for arch and virt_type
    kernel: str = ""  # absolute paths for direct kernel boot
    initrd: str = ""
    efi_loader: str = ""  # empty with bootloader efi: libvirt's firmware autoselection
    efi_vars_template: str = ""
    efi_vars: str = ""  # the VM's own NVRAM file; empty: libvirt's default path
    disks: tuple[DiskBacking, ...] = ()
    nics: tuple[NicBacking, ...] = ()
    console_log: str = ""
    ignition: str = ""  # a file QEMU hands the guest as fw_cfg opt/com.coreos/config
    # The agent's own element for <metadata>; a string is parsed. Never mutated.
    metadata: ET.Element | str | None = None

    def __post_init__(self) -> None:
        if self.virt_type not in VIRT_TYPES:
            raise ValueError(f"virt_type {self.virt_type!r} is not one of {VIRT_TYPES}")
        for kind, names in (
            ("disk", [d.name for d in self.disks]),
            ("nic", [n.name for n in self.nics]),
        ):
            if len(set(names)) != len(names):
                raise ValueError(f"HostPlan names a {kind} backing twice: {names}")

    def disk(self, name: str) -> DiskBacking | None:
        return next((d for d in self.disks if d.name == name), None)

    def nic(self, name: str) -> NicBacking | None:
        return next((n for n in self.nics if n.name == name), None)
