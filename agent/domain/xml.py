"""Pure translation of a VMSpec and its HostPlan into libvirt domain XML."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET

from agent.domain.hardware_xml import (
    clock_element,
    disk_io_thread,
    features_element,
    hardware_devices,
    io_threads,
    sysinfo_elements,
)
from agent.domain.plan import HostPlan
from agent.models import CPU, Disk, DiskBacking, Interface, NicBacking, VMSpec

__all__ = ["build_domain", "domain_xml"]

_DEFAULT_MACHINE = "q35"
_BUS_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd"}
# KubeVirt spells these as CPU models; libvirt expresses them as CPU modes.
_CPU_MODES = ("host-model", "host-passthrough")


def domain_xml(spec: VMSpec, plan: HostPlan) -> str:
    """The domain XML text, indented and deterministic (golden files compare it byte for byte)."""
    root = build_domain(spec, plan)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def build_domain(spec: VMSpec, plan: HostPlan) -> ET.Element:
    """The ``<domain>`` element; raises ValueError when the plan does not match the spec."""
    _check_plan(spec, plan)
    domain = ET.Element("domain", type=plan.virt_type)
    _text(domain, "name", plan.domain_name)
    if plan.uuid:
        _text(domain, "uuid", plan.uuid)
    if plan.metadata is not None:
        ET.SubElement(domain, "metadata").append(_metadata_child(plan.metadata))
    domain.extend(_resources(spec))
    domain.extend(sysinfo_elements(spec, plan.ignition))
    domain.append(_os(spec, plan))
    domain.append(features_element(spec))
    domain.append(_cpu(spec.cpu, plan.virt_type))
    domain.append(clock_element(spec.hardware.clock))
    # destroy on poweroff/crash: the agent, not libvirt, decides whether to restart (runStrategy).
    for event, action in (("poweroff", "destroy"), ("reboot", "restart"), ("crash", "destroy")):
        _text(domain, f"on_{event}", action)
    domain.append(_devices(spec, plan))
    return domain


def _check_plan(spec: VMSpec, plan: HostPlan) -> None:
    """A plan that does not cover the spec is a bug in the caller, not a user error."""
    for disk in spec.disks:
        if plan.disk(disk.name) is None and not _empty_cdrom(spec, disk):
            raise ValueError(f"HostPlan has no backing for disk {disk.name!r}")
    for iface in spec.interfaces:
        if plan.nic(iface.name) is None:
            raise ValueError(f"HostPlan has no tap for interface {iface.name!r}")
    if bool(spec.ignition_data) != bool(plan.ignition):
        raise ValueError("HostPlan and spec disagree about an ignition file")
    if spec.firmware.kernel_boot is not None and not plan.kernel:
        raise ValueError("HostPlan has no kernel path for direct kernel boot")
    unknown = {d.name for d in plan.disks} - {d.name for d in spec.disks}
    unknown |= {n.name for n in plan.nics} - {i.name for i in spec.interfaces}
    if unknown:
        raise ValueError(f"HostPlan has backings the spec does not declare: {sorted(unknown)}")


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    element.text = text
    return element


def _metadata_child(metadata: ET.Element | str) -> ET.Element:
    # A copy: ET.indent rewrites whitespace in place and the plan's element is not ours to touch.
    if isinstance(metadata, str):
        return ET.fromstring(metadata)
    return copy.deepcopy(metadata)


def _resources(spec: VMSpec) -> list[ET.Element]:
    size = str(spec.memory_bytes)
    memory = ET.Element("memory", unit="b")
    memory.text = size
    current = ET.Element("currentMemory", unit="b")
    current.text = size
    vcpu = ET.Element("vcpu")
    vcpu.text = str(spec.cpu.vcpus)
    elements = [memory, current, vcpu]
    if io_threads(spec):
        threads = ET.Element("iothreads")
        threads.text = str(io_threads(spec))
        elements.append(threads)
    return elements


def _os(spec: VMSpec, plan: HostPlan) -> ET.Element:
    os_el = ET.Element("os")
    machine = spec.machine_type or _DEFAULT_MACHINE
    _text(os_el, "type", "hvm", arch=plan.arch, machine=machine)
    if spec.firmware.bootloader == "efi":
        _efi(os_el, spec.firmware.secure_boot, plan)
    kernel_boot = spec.firmware.kernel_boot
    if kernel_boot is not None:
        _text(os_el, "kernel", plan.kernel)
        if plan.initrd:
            _text(os_el, "initrd", plan.initrd)
        if kernel_boot.kernel_args:
            _text(os_el, "cmdline", kernel_boot.kernel_args)
    # libvirt refuses <os><boot dev> together with per-device <boot order>.
    elif not any(d.boot_order is not None for d in spec.disks):
        ET.SubElement(os_el, "boot", dev="hd")
    if spec.firmware.serial:
        ET.SubElement(os_el, "smbios", mode="sysinfo")
    return os_el


def _efi(os_el: ET.Element, secure: bool, plan: HostPlan) -> None:
    if not plan.efi_loader:
        # Firmware autoselection from /usr/share/qemu/firmware/*.json. Say what we want about
        # secure boot either way: the first descriptor found may be a secure-boot build.
        os_el.set("firmware", "efi")
        wanted = ET.SubElement(os_el, "firmware")
        state = "yes" if secure else "no"
        ET.SubElement(wanted, "feature", enabled=state, name="enrolled-keys")
        ET.SubElement(wanted, "feature", enabled=state, name="secure-boot")
        return
    loader_attrs = {"readonly": "yes", "secure": "yes" if secure else "no", "type": "pflash"}
    _text(os_el, "loader", plan.efi_loader, **loader_attrs)
    if plan.efi_vars_template or plan.efi_vars:
        nvram = ET.SubElement(os_el, "nvram")
        if plan.efi_vars_template:
            nvram.set("template", plan.efi_vars_template)
        if plan.efi_vars:
            nvram.text = plan.efi_vars


def _cpu(cpu: CPU, virt_type: str) -> ET.Element:
    model = cpu.model
    if not model and virt_type == "kvm":
        model = "host-model"
    if model == "host-passthrough" and virt_type == "qemu":
        # TCG has no host CPU to pass through; "maximum" is its closest (-cpu max).
        model = "maximum"
    if model in (*_CPU_MODES, "maximum"):
        element = ET.Element("cpu", mode=model)
    else:
        # No model under TCG: QEMU's default CPU (qemu64), with only the topology set.
        element = ET.Element("cpu", mode="custom")
        if model:
            element.set("match", "exact")
            # forbid: fail to start rather than silently run without a feature of the model.
            _text(element, "model", model, fallback="forbid")
    ET.SubElement(
        element,
        "topology",
        sockets=str(cpu.sockets),
        cores=str(cpu.cores),
        threads=str(cpu.threads),
    )
    return element


def _devices(spec: VMSpec, plan: HostPlan) -> ET.Element:
    devices = ET.Element("devices")
    if plan.emulator:
        _text(devices, "emulator", plan.emulator)
    devices.extend(_disks(spec, plan))
    if any(d.bus == "scsi" for d in spec.disks):
        ET.SubElement(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    for iface in spec.interfaces:
        nic = plan.nic(iface.name)
        assert nic is not None  # _check_plan
        devices.append(_interface(iface, nic, plan.virt_type))
    devices.extend(_console(plan.console_log))
    devices.extend(hardware_devices(spec))
    balloon = ET.SubElement(devices, "memballoon", model="virtio")
    # A stats period makes the guest report its memory usage through the balloon driver.
    ET.SubElement(balloon, "stats", period="10")
    rng = ET.SubElement(devices, "rng", model="virtio")
    _text(rng, "backend", "/dev/urandom", model="random")
    return devices


def _disks(spec: VMSpec, plan: HostPlan) -> list[ET.Element]:
    # sata and scsi share the sd* names, so the counter is per prefix, not per bus.
    used: dict[str, int] = {}
    elements = []
    for disk in spec.disks:
        prefix = _BUS_PREFIX[disk.bus]
        index = used.get(prefix, 0)
        used[prefix] = index + 1
        backing = plan.disk(disk.name)  # None: an empty CD-ROM (_check_plan)
        element = _disk(disk, backing, prefix + _drive_letters(index))
        _tune_driver(spec, disk, element)
        elements.append(element)
    return elements


def _tune_driver(spec: VMSpec, disk: Disk, element: ET.Element) -> None:
    """I/O thread and queues of a virtio disk (ioThreadsPolicy, blockMultiQueue)."""
    driver = element.find("driver")
    assert driver is not None
    thread = disk_io_thread(spec, disk)
    if thread:
        driver.set("iothread", str(thread))
    if spec.hardware.block_multi_queue and disk.bus == "virtio" and disk.device == "disk":
        driver.set("queues", str(spec.cpu.vcpus))


def _drive_letters(index: int) -> str:
    """0 → a, 25 → z, 26 → aa: libvirt's own disk naming scheme."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


def _empty_cdrom(spec: VMSpec, disk: Disk) -> bool:
    return disk.device == "cdrom" and spec.volume(disk.name) is None


def _disk(disk: Disk, backing: DiskBacking | None, target: str) -> ET.Element:
    block = backing is not None and backing.block
    element = ET.Element("disk", type="block" if block else "file", device=disk.device)
    fmt = backing.format if backing is not None else "raw"
    driver = ET.SubElement(element, "driver", name="qemu", type=fmt)
    if disk.cache:
        driver.set("cache", disk.cache)
    if backing is not None:  # no source: an empty CD-ROM drive
        ET.SubElement(element, "source", {"dev" if block else "file": backing.path})
    ET.SubElement(element, "target", dev=target, bus=disk.bus)
    # Children in the order libvirt writes them back, so stored and built XML diff cleanly.
    # A CD-ROM is read-only media whatever the spec says; QEMU's cd devices cannot write.
    # Config volumes (secrets, config maps) and read-only claims are read-only media too.
    readonly = backing is not None and backing.readonly
    if disk.readonly or disk.device == "cdrom" or readonly:
        ET.SubElement(element, "readonly")
    if disk.shareable:
        ET.SubElement(element, "shareable")
    if disk.serial:
        _text(element, "serial", disk.serial)
    if disk.boot_order is not None:
        ET.SubElement(element, "boot", order=str(disk.boot_order))
    return element


def _interface(iface: Interface, nic: NicBacking, virt_type: str) -> ET.Element:
    element = ET.Element("interface", type="ethernet")
    if nic.mac:
        ET.SubElement(element, "mac", address=nic.mac)
    # managed='no': the agent creates the tap (name, MTU, queues) and libvirt only opens it.
    ET.SubElement(element, "target", dev=nic.tap, managed="no")
    ET.SubElement(element, "model", type=iface.model)
    if nic.queues > 1 and iface.model == "virtio":
        driver = ET.SubElement(element, "driver")
        # libvirt never opens vhost-net for a non-KVM domain (qemuInterfaceOpenVhostNet),
        # so under TCG name='vhost' would only claim something that does not happen.
        if virt_type == "kvm":
            driver.set("name", "vhost")
        driver.set("queues", str(nic.queues))
    if nic.mtu:
        ET.SubElement(element, "mtu", size=str(nic.mtu))
    return element


def _console(log_path: str) -> list[ET.Element]:
    serial = ET.Element("serial", type="pty")
    if log_path:
        # virtlogd writes the log, so it survives agent restarts and is readable while running.
        ET.SubElement(serial, "log", file=log_path, append="on")
    ET.SubElement(serial, "target", port="0")
    console = ET.Element("console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")
    return [serial, console]
