"""Render a VMSpec back into its canonical KubeVirt-shaped document (what parse_vm reads)."""

from __future__ import annotations

from typing import Any

from agent.models import (
    CloudInitConfigDrive,
    CloudInitNoCloud,
    ConfigVolume,
    ContainerDisk,
    DataVolume,
    Disk,
    EmptyDisk,
    ImageFile,
    Interface,
    PersistentVolumeClaim,
    VMSpec,
    Volume,
)
from agent.quantity import format_bytes
from agent.spec.configvolumes import render_access_credential, render_config_source
from agent.spec.datavolumes import render_data_volume_template
from agent.spec.hardware_render import render_device_hardware, render_domain_hardware
from agent.spec.probes import render_probe

__all__ = ["render_vm"]


def render_vm(vm: VMSpec) -> dict[str, Any]:
    """The canonical document of a spec: what parse_vm reads, with defaults made explicit."""
    instance: dict[str, Any] = {
        "domain": _render_domain(vm),
        "terminationGracePeriodSeconds": vm.termination_grace_period_seconds,
    }
    if vm.hostname:
        instance["hostname"] = vm.hostname
    if vm.ignition_data:
        instance["ignitionData"] = vm.ignition_data
    for key, probe in (
        ("readinessProbe", vm.readiness_probe),
        ("livenessProbe", vm.liveness_probe),
    ):
        if probe is not None:
            instance[key] = render_probe(probe)
    if vm.access_credentials:
        instance["accessCredentials"] = [render_access_credential(c) for c in vm.access_credentials]
    if vm.volumes:
        instance["volumes"] = [_render_volume(v) for v in vm.volumes]
    if vm.networks:
        instance["networks"] = [
            {"name": n.name, n.kind: {"networkName": n.network_name} if n.network_name else {}}
            for n in vm.networks
        ]
    metadata: dict[str, Any] = {"namespace": vm.namespace, "name": vm.name, "uid": vm.uid}
    if vm.labels:
        metadata["labels"] = dict(sorted(vm.labels.items()))
    spec: dict[str, Any] = {"runStrategy": vm.run_strategy.value, "template": {"spec": instance}}
    if vm.data_volume_templates:
        spec["dataVolumeTemplates"] = [
            render_data_volume_template(t) for t in vm.data_volume_templates
        ]
    return {"metadata": metadata, "spec": spec}


def _render_domain(vm: VMSpec) -> dict[str, Any]:
    cpu: dict[str, Any] = {
        "cores": vm.cpu.cores,
        "sockets": vm.cpu.sockets,
        "threads": vm.cpu.threads,
    }
    if vm.cpu.model:
        cpu["model"] = vm.cpu.model
    domain: dict[str, Any] = {"cpu": cpu, "memory": {"guest": format_bytes(vm.memory_bytes)}}
    resources = {
        key: dict(sorted(group.items()))
        for key, group in (("requests", vm.resource_requests), ("limits", vm.resource_limits))
        if group
    }
    if resources:
        domain["resources"] = resources
    if vm.machine_type:
        domain["machine"] = {"type": vm.machine_type}
    firmware = _render_firmware(vm)
    if firmware:
        domain["firmware"] = firmware
    domain.update(render_domain_hardware(vm.hardware))
    devices: dict[str, Any] = render_device_hardware(vm.hardware)
    if vm.disks:
        devices["disks"] = [_render_disk(d) for d in vm.disks]
    if vm.interfaces:
        devices["interfaces"] = [_render_interface(i) for i in vm.interfaces]
    if devices:
        domain["devices"] = devices
    return domain


def _render_firmware(vm: VMSpec) -> dict[str, Any]:
    firmware: dict[str, Any] = {}
    if vm.firmware.bootloader == "efi":
        efi: dict[str, Any] = {"secureBoot": vm.firmware.secure_boot}
        if vm.firmware.efi_persistent:
            efi["persistent"] = True
        firmware["bootloader"] = {"efi": efi}
    kb = vm.firmware.kernel_boot
    if kb is not None:
        container = {"kernelPath": kb.kernel_path}
        if kb.initrd_path:
            container["initrdPath"] = kb.initrd_path
        firmware["kernelBoot"] = {"kernelArgs": kb.kernel_args, "container": container}
    if vm.firmware.serial:
        firmware["serial"] = vm.firmware.serial
    return firmware


def _render_disk(disk: Disk) -> dict[str, Any]:
    out: dict[str, Any] = {"name": disk.name, disk.device: {"bus": disk.bus}}
    out[disk.device]["readonly"] = disk.readonly
    if disk.boot_order is not None:
        out["bootOrder"] = disk.boot_order
    if disk.serial:
        out["serial"] = disk.serial
    if disk.cache:
        out["cache"] = disk.cache
    if disk.shareable:
        out["shareable"] = True
    if disk.dedicated_io_thread:
        out["dedicatedIOThread"] = True
    return out


def _render_volume(volume: Volume) -> dict[str, Any]:
    source = volume.source
    body: tuple[str, dict[str, Any]]
    if isinstance(source, ImageFile):
        body = ("imageFile", {"path": source.path})
    elif isinstance(source, ContainerDisk):
        fields = {"image": source.image.written or str(source.image), "path": source.path}
        if source.image_pull_policy:
            fields["imagePullPolicy"] = source.image_pull_policy
        body = ("containerDisk", {k: v for k, v in fields.items() if v})
    elif isinstance(source, CloudInitNoCloud | CloudInitConfigDrive | ConfigVolume):
        body = render_config_source(source)
    elif isinstance(source, EmptyDisk):
        body = ("emptyDisk", {"capacity": format_bytes(source.capacity_bytes)})
    elif isinstance(source, PersistentVolumeClaim):
        claim: dict[str, Any] = {"claimName": source.claim_name}
        if source.read_only:
            claim["readOnly"] = True
        body = ("persistentVolumeClaim", claim)
    elif isinstance(source, DataVolume):
        body = ("dataVolume", {"name": source.name})
    else:
        host: dict[str, Any] = {"path": source.path, "type": source.type}
        if source.capacity_bytes:
            host["capacity"] = format_bytes(source.capacity_bytes)
        body = ("hostDisk", host)
    return {"name": volume.name, body[0]: body[1]}


def _render_interface(iface: Interface) -> dict[str, Any]:
    out: dict[str, Any] = {"name": iface.name, iface.binding: {}, "model": iface.model}
    if iface.mac_address:
        out["macAddress"] = iface.mac_address
    if iface.ports:
        out["ports"] = [
            {
                k: v
                for k, v in {
                    "name": p.name,
                    "port": p.port,
                    "protocol": p.protocol,
                    "nodePort": p.node_port,
                }.items()
                if v
            }
            for p in iface.ports
        ]
    return out
