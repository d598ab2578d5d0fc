"""Domain XML for a VM's machine settings (``agent.hardware``): features, clock, SMBIOS
system info, I/O threads, pointing devices, display adapter and watchdog."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from agent.hardware import Clock, Hyperv
from agent.models import Disk, VMSpec

__all__ = [
    "clock_element",
    "disk_io_thread",
    "features_element",
    "hardware_devices",
    "io_threads",
    "sysinfo_elements",
]

# KubeVirt's timer names → libvirt's.
_TIMER_NAMES = {"hpet": "hpet", "pit": "pit", "rtc": "rtc", "kvm": "kvmclock"}
_TIMER_NAMES["hyperv"] = "hypervclock"
_HYPERV_ORDER: tuple[str, ...] = (
    "relaxed",
    "vapic",
    "spinlocks",
    "vpindex",
    "runtime",
    "synic",
    "stimer",
    "reset",
)
_HYPERV_ORDER += ("vendor_id", "frequencies", "reenlightenment", "tlbflush", "ipi", "evmcs")


def _on(value: bool) -> str:
    return "on" if value else "off"


def features_element(spec: VMSpec) -> ET.Element:
    wanted = spec.hardware.features
    features = ET.Element("features")
    # ACPI carries the power-button event behind graceful shutdown.
    if wanted.acpi:
        ET.SubElement(features, "acpi")
    if wanted.apic:
        apic = ET.SubElement(features, "apic")
        if wanted.apic_eoi is not None:
            apic.set("eoi", _on(wanted.apic_eoi))
    if wanted.hyperv is not None:
        features.append(_hyperv(wanted.hyperv))
    if wanted.kvm_hidden:
        ET.SubElement(ET.SubElement(features, "kvm"), "hidden", state="on")
    if wanted.pvspinlock is not None:
        ET.SubElement(features, "pvspinlock", state=_on(wanted.pvspinlock))
    # OVMF's secure-boot builds keep the variable store safe only with SMM on.
    if wanted.smm or (wanted.smm is None and spec.firmware.secure_boot):
        ET.SubElement(features, "smm", state="on")
    elif wanted.smm is False:
        ET.SubElement(features, "smm", state="off")
    return features


def _hyperv(hyperv: Hyperv) -> ET.Element:
    element = ET.Element("hyperv", mode="custom")
    switches = dict.fromkeys(hyperv.enabled, True)
    for name in _HYPERV_ORDER:
        if switches.get(name):
            ET.SubElement(element, name, state="on")
        elif name == "spinlocks" and hyperv.spinlocks is not None:
            ET.SubElement(element, name, state="on", retries=str(hyperv.spinlocks))
        elif name == "stimer" and hyperv.synic_timer:
            stimer = ET.SubElement(element, name, state="on")
            if hyperv.synic_timer_direct:
                ET.SubElement(stimer, "direct", state="on")
        elif name == "vendor_id" and hyperv.vendor_id:
            ET.SubElement(element, name, state="on", value=hyperv.vendor_id)
        elif name == "tlbflush" and hyperv.tlb_flush:
            ET.SubElement(element, name, state="on")
    return element


def clock_element(clock: Clock) -> ET.Element:
    if clock.timezone:
        element = ET.Element("clock", offset="timezone", timezone=clock.timezone)
    elif clock.offset_seconds:
        element = ET.Element("clock", offset="variable", basis="utc")
        element.set("adjustment", str(clock.offset_seconds))
    else:
        element = ET.Element("clock", offset="utc")
    for timer in clock.timers:
        attrs = {"name": _TIMER_NAMES[timer.name]}
        if timer.tick_policy:
            attrs["tickpolicy"] = timer.tick_policy
        if timer.track:
            attrs["track"] = timer.track
        if timer.present is not None:
            attrs["present"] = "yes" if timer.present else "no"
        ET.SubElement(element, "timer", attrs)
    return element


def sysinfo_elements(spec: VMSpec, ignition: str) -> list[ET.Element]:
    """SMBIOS system serial (``<os><smbios mode='sysinfo'/>`` makes QEMU use it), and the
    ignition file as fw_cfg opt/com.coreos/config (where Ignition looks, as in KubeVirt)."""
    elements = []
    if spec.firmware.serial:
        sysinfo = ET.Element("sysinfo", type="smbios")
        entry = ET.SubElement(ET.SubElement(sysinfo, "system"), "entry", name="serial")
        entry.text = spec.firmware.serial
        elements.append(sysinfo)
    if ignition:
        fw_cfg = ET.Element("sysinfo", type="fwcfg")
        ET.SubElement(fw_cfg, "entry", name="opt/com.coreos/config", file=ignition)
        elements.append(fw_cfg)
    return elements


def io_threads(spec: VMSpec) -> int:
    """I/O threads: one shared (with ioThreadsPolicy) plus one per dedicatedIOThread disk."""
    dedicated = sum(1 for d in spec.disks if d.dedicated_io_thread)
    shared = 1 if spec.hardware.io_threads_policy else 0
    return shared + dedicated


def disk_io_thread(spec: VMSpec, disk: Disk) -> int:
    """The I/O thread (1-based) a virtio disk runs in; 0: QEMU's main loop."""
    if disk.bus != "virtio" or disk.device != "disk" or not io_threads(spec):
        return 0
    shared = 1 if spec.hardware.io_threads_policy else 0
    if disk.dedicated_io_thread:
        dedicated = [d.name for d in spec.disks if d.dedicated_io_thread]
        return shared + dedicated.index(disk.name) + 1
    return shared


def hardware_devices(spec: VMSpec) -> list[ET.Element]:
    """Pointing devices, display adapter and watchdog, in libvirt's device order."""
    hardware = spec.hardware
    elements = [ET.Element("input", type=i.type, bus=i.bus) for i in hardware.inputs]
    video = hardware.video or ("vga" if hardware.autoattach_graphics else "")
    if video:
        element = ET.Element("video")
        ET.SubElement(element, "model", type=video)
        elements.append(element)
    if hardware.watchdog is not None:
        action = hardware.watchdog.action
        elements.append(ET.Element("watchdog", model="i6300esb", action=action))
    if hardware.tpm is not None:
        # tpm-tis works on pc and q35 alike (KubeVirt's choice too); swtpm runs per VM.
        tpm = ET.Element("tpm", model="tpm-tis")
        ET.SubElement(tpm, "backend", type="emulator", version="2.0")
        elements.append(tpm)
    return elements
