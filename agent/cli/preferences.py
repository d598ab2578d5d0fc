"""Preferences (KubeVirt's VirtualMachinePreference): defaults for what a VM leaves open,
applied by vmctl; the VM's own fields always win. Requirements are checked."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from agent.cli.yamlpath import UNSUPPORTED, ManifestError, mapping
from agent.quantity import parse_quantity

__all__ = ["apply_preference", "cpu_topology"]

_FEATURES = {"preferredAcpi": "acpi", "preferredApic": "apic", "preferredHyperv": "hyperv"}
_FEATURES |= {"preferredSmm": "smm", "preferredKvm": "kvm", "preferredPvspinlock": "pvspinlock"}
_DEVICE_SWITCHES = {
    "preferredTPM": "tpm",
    "preferredRng": "rng",
    "preferredNetworkInterfaceMultiQueue": "networkInterfaceMultiqueue",
    "preferredAutoattachGraphicsDevice": "autoattachGraphicsDevice",
    "preferredBlockMultiQueue": "blockMultiQueue",
}
_DEVICE_IGNORED = {"preferredAutoattachMemBalloon", "preferredAutoattachSerialConsole"}
_DEVICE_IGNORED |= {"preferredUseVirtioTransitional", "preferredLunBus"}
_DEVICE_DONE = {"preferredDiskBus", "preferredCdromBus", "preferredDiskDedicatedIoThread"}
_DEVICE_DONE |= {"preferredInterfaceModel", "preferredInputBus", "preferredInputType"}
_DEVICE_DONE |= {"preferredAutoattachInputDevice", "preferredVideoType"}
_TOP = {"annotations", "cpu", "devices", "features", "firmware", "clock", "machine"}
_TOP |= {"requirements", "preferredArchitecture", "preferredTerminationGracePeriodSeconds"}
_TOPOLOGIES = {"preferSockets": "sockets", "preferCores": "cores", "preferThreads": "threads"}
_TOPOLOGIES |= {"sockets": "sockets", "cores": "cores", "threads": "threads"}
_TOPOLOGIES |= {"preferAny": "sockets", "any": "sockets"}


def cpu_topology(vcpus: int, preference: Mapping[str, Any], label: str) -> dict[str, int]:
    """The instancetype's vCPUs arranged as the preference prefers (default: sockets)."""
    cpu = mapping(preference.get("cpu"), "cpu")
    wanted = str(cpu.get("preferredCPUTopology") or "preferSockets")
    if wanted in _TOPOLOGIES:
        return {"sockets": 1, "cores": 1, "threads": 1} | {_TOPOLOGIES[wanted]: vcpus}
    if wanted not in ("preferSpread", "spread"):
        raise ManifestError(f"{label} spec.cpu.preferredCPUTopology", f"{wanted!r} is unknown")
    options = mapping(cpu.get("spreadOptions"), "cpu.spreadOptions")
    ratio = int(options.get("ratio", 2))
    across = str(options.get("across", "SocketsCores"))
    per_socket = {"SocketsCores": ratio, "CoresThreads": ratio, "SocketsCoresThreads": 2 * ratio}
    if across not in per_socket or ratio < 1 or vcpus % per_socket[across]:
        raise ManifestError(
            f"{label} spec.cpu.spreadOptions", f"cannot spread {vcpus} vCPUs {across} by {ratio}"
        )
    if across == "CoresThreads":
        return {"sockets": 1, "cores": vcpus // ratio, "threads": ratio}
    threads = 2 if across == "SocketsCoresThreads" else 1
    return {"sockets": vcpus // per_socket[across], "cores": ratio, "threads": threads}


def apply_preference(
    preference: Mapping[str, Any], instance: dict[str, Any], label: str
) -> list[str]:
    """Fill ``instance`` (a VMI spec, changed in place) from the preference; returns the
    preference fields that were ignored."""
    for key in preference:
        if key not in _TOP:
            raise ManifestError(f"{label} spec.{key}", UNSUPPORTED)
    architecture = preference.get("preferredArchitecture", "amd64")
    if architecture != "amd64":
        raise ManifestError(f"{label} spec.preferredArchitecture", "this node is amd64")
    domain = instance.setdefault("domain", {})
    if "preferredTerminationGracePeriodSeconds" in preference:
        grace = preference["preferredTerminationGracePeriodSeconds"]
        instance.setdefault("terminationGracePeriodSeconds", grace)
    for key, target in _FEATURES.items():
        value = mapping(preference.get("features"), "features").get(key)
        if value is not None:
            domain.setdefault("features", {}).setdefault(target, copy.deepcopy(value))
    _firmware(mapping(preference.get("firmware"), "firmware"), domain)
    _clock(mapping(preference.get("clock"), "clock"), domain)
    machine = mapping(preference.get("machine"), "machine").get("preferredMachineType")
    if machine:
        domain.setdefault("machine", {}).setdefault("type", machine)
    ignored = _devices(mapping(preference.get("devices"), "devices"), domain, label)
    _requirements(mapping(preference.get("requirements"), "requirements"), domain, label)
    return ignored


def _firmware(firmware: Mapping[str, Any], domain: dict[str, Any]) -> None:
    target = domain.setdefault("firmware", {})
    if "bootloader" in target or "kernelBoot" in target:
        return
    efi = firmware.get("preferredEfi")
    if efi is None and firmware.get("preferredUseEfi"):
        efi = {"secureBoot": bool(firmware.get("preferredUseSecureBoot", False))}
    if efi is not None:
        target["bootloader"] = {"efi": copy.deepcopy(efi)}
    elif firmware.get("preferredUseBios"):
        target["bootloader"] = {"bios": {}}
    if not target:
        del domain["firmware"]


def _clock(clock: Mapping[str, Any], domain: dict[str, Any]) -> None:
    if not clock:
        return
    target = domain.setdefault("clock", {})
    offset = mapping(clock.get("preferredClockOffset"), "clock.preferredClockOffset")
    if offset and "utc" not in target and "timezone" not in target:
        target.update(copy.deepcopy(dict(offset)))
    if "preferredTimer" in clock:
        target.setdefault("timer", copy.deepcopy(clock["preferredTimer"]))


def _devices(devices: Mapping[str, Any], domain: dict[str, Any], label: str) -> list[str]:
    known = _DEVICE_DONE | _DEVICE_IGNORED | set(_DEVICE_SWITCHES)
    for key in devices:
        if key not in known:
            raise ManifestError(f"{label} spec.devices.{key}", UNSUPPORTED)
    target = domain.setdefault("devices", {})
    for key, name in _DEVICE_SWITCHES.items():
        if key in devices:
            target.setdefault(name, copy.deepcopy(devices[key]))
    if devices.get("preferredVideoType"):
        target.setdefault("video", {"type": devices["preferredVideoType"]})
    _disks(devices, target.get("disks") or [])
    for interface in target.get("interfaces") or []:
        if isinstance(interface, dict) and devices.get("preferredInterfaceModel"):
            interface.setdefault("model", devices["preferredInterfaceModel"])
    _inputs(devices, target)
    return [f"{label} spec.devices.{key}" for key in sorted(_DEVICE_IGNORED) if key in devices]


def _disks(devices: Mapping[str, Any], disks: list[Any]) -> None:
    for disk in disks:
        if not isinstance(disk, dict):
            continue
        if "cdrom" in disk and isinstance(disk["cdrom"], dict) and "preferredCdromBus" in devices:
            disk["cdrom"].setdefault("bus", devices["preferredCdromBus"])
        elif "cdrom" not in disk and "lun" not in disk:
            target = disk.setdefault("disk", {})
            if isinstance(target, dict) and "preferredDiskBus" in devices:
                target.setdefault("bus", devices["preferredDiskBus"])
            bus = target.get("bus", "virtio") if isinstance(target, dict) else ""
            if devices.get("preferredDiskDedicatedIoThread") and bus == "virtio":
                disk.setdefault("dedicatedIOThread", True)


def _inputs(devices: Mapping[str, Any], target: dict[str, Any]) -> None:
    bus = devices.get("preferredInputBus")
    kind = devices.get("preferredInputType")
    if devices.get("preferredAutoattachInputDevice") and not target.get("inputs"):
        target["inputs"] = [{"name": "default-0", "type": kind or "tablet", "bus": bus or "usb"}]
    for item in target.get("inputs") or []:
        if isinstance(item, dict):
            if bus:
                item.setdefault("bus", bus)
            if kind:
                item.setdefault("type", kind)


def _requirements(requirements: Mapping[str, Any], domain: Mapping[str, Any], label: str) -> None:
    """The preference's minimum vCPUs and memory, checked against the resolved VM."""
    cpu = mapping(domain.get("cpu"), "cpu")
    vcpus = 1
    for key in ("sockets", "cores", "threads"):
        vcpus *= int(cpu.get(key) or 1)
    needed = mapping(requirements.get("cpu"), "requirements.cpu").get("guest")
    if needed is not None and vcpus < int(needed):
        raise ManifestError(
            f"{label} spec.requirements.cpu.guest", f"needs {needed} vCPUs, the VM has {vcpus}"
        )
    memory = mapping(domain.get("memory"), "memory").get("guest")
    if memory is None:
        requests = mapping(mapping(domain.get("resources"), "resources").get("requests"), "r")
        memory = requests.get("memory")
    minimum = mapping(requirements.get("memory"), "requirements.memory").get("guest")
    try:
        too_small = (
            memory is not None
            and minimum
            and parse_quantity(str(memory)) < parse_quantity(str(minimum))
        )
    except ValueError:
        return  # a malformed size is refused by name when the spec is parsed
    if too_small:
        raise ManifestError(
            f"{label} spec.requirements.memory.guest", f"needs {minimum}, the VM has {memory}"
        )
