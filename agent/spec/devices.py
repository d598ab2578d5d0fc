"""Parsing of a VM's devices and their sources: disks, volumes, interfaces, networks."""

from __future__ import annotations

import re
from collections.abc import Callable

from agent.errors import InvalidSpec
from agent.hardware import NIC_MODELS
from agent.imageref import BadReference, parse_reference
from agent.models import (
    ContainerDisk,
    DataVolume,
    Disk,
    EmptyDisk,
    HostDisk,
    ImageFile,
    Interface,
    Network,
    PersistentVolumeClaim,
    Port,
    VMSpec,
    Volume,
    VolumeSource,
)
from agent.naming import DNS1123_SUBDOMAIN
from agent.spec.configvolumes import (
    parse_cloud_init,
    parse_config_drive,
    parse_config_map,
    parse_secret,
    parse_service_account,
)
from agent.spec.limits import MAX_PORTS
from agent.spec.reader import (
    Node,
    choice,
    one_of,
    quantity,
    relative_path,
    validate_name,
)

__all__ = ["check_references", "parse_disk", "parse_interface", "parse_network", "parse_volume"]

_MAX_DISK_BYTES = 1024**5
# Volumes used in place, which several VMs may share (a claim only when it is raw).
_SHAREABLE = (HostDisk, PersistentVolumeClaim, DataVolume)
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def parse_disk(node: Node) -> Disk:
    name = validate_name(node.at("name"), node.get("name", str, ""))
    target = one_of(
        node,
        {
            "disk": lambda n: (
                "disk",
                choice(n, "bus", ("virtio", "sata", "scsi"), "virtio"),
                n.get("readonly", bool, False),
            ),
            "cdrom": lambda n: (
                "cdrom",
                choice(n, "bus", ("sata", "scsi"), "sata"),
                n.get("readonly", bool, True),
            ),
        },
    ) or ("disk", "virtio", False)
    boot_order = node.get("bootOrder", int, 0) or None
    if boot_order is not None and boot_order < 1:
        raise InvalidSpec(node.at("bootOrder"), "must be at least 1")
    serial = node.get("serial", str, "")
    if serial and not re.match(r"^[A-Za-z0-9_.+-]{1,20}$", serial):
        raise InvalidSpec(node.at("serial"), "must be 1-20 letters, digits or _.+-")
    cache = node.get("cache", str, "")
    if cache and cache not in ("none", "writethrough", "writeback"):
        raise InvalidSpec(node.at("cache"), f"{cache!r} is not none, writethrough or writeback")
    shareable = node.get("shareable", bool, False)
    dedicated = node.get("dedicatedIOThread", bool, False)
    node.done()
    device, bus, readonly = target
    if dedicated and bus != "virtio":
        raise InvalidSpec(node.at("dedicatedIOThread"), "needs a virtio disk")
    return Disk(name, device, bus, readonly, boot_order, serial, cache, shareable, dedicated)


def parse_volume(node: Node) -> Volume:
    name = validate_name(node.at("name"), node.get("name", str, ""))
    sources: dict[str, Callable[[Node], VolumeSource]] = {
        "imageFile": lambda n: ImageFile(relative_path(n, "path")),
        "containerDisk": _container_disk,
        "cloudInitNoCloud": parse_cloud_init,
        "cloudInitConfigDrive": parse_config_drive,
        "emptyDisk": _empty_disk,
        "hostDisk": _host_disk,
        "secret": parse_secret,
        "configMap": parse_config_map,
        "serviceAccount": parse_service_account,
        "persistentVolumeClaim": _claim,
        "dataVolume": _data_volume,
    }
    source = one_of(node, sources)
    if source is None:
        raise InvalidSpec(
            node.path,
            f"needs a source: {', '.join(sources)}",
        )
    node.done()
    return Volume(name, source)


def _container_disk(node: Node) -> ContainerDisk:
    image = node.get("image", str, "")
    if not image or any(c.isspace() for c in image):
        raise InvalidSpec(node.at("image"), "must name an image such as registry:5000/repo:tag")
    try:
        reference = parse_reference(image)
    except BadReference as exc:
        raise InvalidSpec(node.at("image"), f"{image!r}: {exc}") from None
    path = relative_path(node, "path", required=False)
    policy = node.get("imagePullPolicy", str, "")
    if policy and policy not in ("Always", "IfNotPresent", "Never"):
        raise InvalidSpec(node.at("imagePullPolicy"), "must be Always, IfNotPresent or Never")
    return ContainerDisk(image=reference, path=path, image_pull_policy=policy)


def _capacity(node: Node) -> int:
    """A disk size: at most 1 PiB (qemu-img and most filesystems stop well before 2**63)."""
    capacity = quantity(node, "capacity") or 0
    if capacity > _MAX_DISK_BYTES:
        raise InvalidSpec(node.at("capacity"), "is more than 1Pi")
    return capacity


def _empty_disk(node: Node) -> EmptyDisk:
    capacity = _capacity(node)
    if not capacity:
        raise InvalidSpec(node.at("capacity"), "is required, such as 1Gi")
    return EmptyDisk(capacity)


def _host_disk(node: Node) -> HostDisk:
    kind = choice(node, "type", ("Disk", "DiskOrCreate"), "")
    capacity = _capacity(node)
    if kind == "DiskOrCreate" and not capacity:
        raise InvalidSpec(node.at("capacity"), "is required with type DiskOrCreate")
    path = relative_path(node, "path")
    return HostDisk(path=path, type=kind, capacity_bytes=capacity)


def _object_name(node: Node, key: str) -> str:
    """A claim's or DataVolume's name: a DNS-1123 subdomain, so never '/', '..' or empty
    (it names a folder under a claim root, ``agent.disks.claims``)."""
    name = node.get(key, str, "")
    if not name:
        raise InvalidSpec(node.at(key), "is required")
    if len(name) > 253 or not DNS1123_SUBDOMAIN.fullmatch(name):
        raise InvalidSpec(
            node.at(key),
            f"{name!r} is not a valid object name (lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters)",
        )
    return name


def _claim(node: Node) -> PersistentVolumeClaim:
    name = _object_name(node, "claimName")
    return PersistentVolumeClaim(claim_name=name, read_only=node.get("readOnly", bool, False))


def _data_volume(node: Node) -> DataVolume:
    return DataVolume(name=_object_name(node, "name"))


def parse_interface(node: Node) -> Interface:
    name = validate_name(node.at("name"), node.get("name", str, ""))
    binding = one_of(node, {"masquerade": lambda n: "masquerade", "bridge": lambda n: "bridge"})
    if binding is None:
        raise InvalidSpec(node.path, "needs a binding method: masquerade or bridge")
    ports = tuple(_parse_port(p) for p in node.items("ports", MAX_PORTS))
    if ports and binding != "masquerade":
        raise InvalidSpec(node.at("ports"), "are only supported with masquerade binding")
    mac = node.get("macAddress", str, "").lower()
    if mac and (not _MAC.match(mac) or int(mac[:2], 16) & 1):
        raise InvalidSpec(node.at("macAddress"), f"{mac!r} is not a unicast MAC address")
    model = choice(node, "model", NIC_MODELS, "virtio")
    node.done()
    return Interface(name, binding, ports, mac, model)


# Kubernetes' port names (IANA service names): a letter somewhere, no "--", no edge "-".
_PORT_NAME = re.compile(r"^(?=.*[a-z])(?!.*--)[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


def _parse_port(node: Node) -> Port:
    port = node.get("port", int, 0)
    if not 1 <= port <= 65535:
        raise InvalidSpec(node.at("port"), "must be between 1 and 65535")
    protocol = choice(node, "protocol", ("TCP", "UDP"), "TCP")
    node_port = node.get("nodePort", int, 0)
    if not 0 <= node_port <= 65535:
        raise InvalidSpec(node.at("nodePort"), "must be between 1 and 65535 (0: allocated)")
    name = node.get("name", str, "")
    if name and not _PORT_NAME.match(name):
        raise InvalidSpec(
            node.at("name"), "must be at most 15 lowercase letters, digits and '-' (IANA)"
        )
    node.done()
    return Port(port=port, protocol=protocol, name=name, node_port=node_port)


def parse_network(node: Node) -> Network:
    name = validate_name(node.at("name"), node.get("name", str, ""))

    def multus(n: Node) -> tuple[str, str]:
        bridge = n.get("networkName", str, "")
        if not bridge or len(bridge) > 15 or not re.match(r"^[A-Za-z0-9_.-]+$", bridge):
            raise InvalidSpec(n.at("networkName"), "must name a host bridge (at most 15 chars)")
        return "multus", bridge

    kind = one_of(node, {"pod": lambda n: ("pod", ""), "multus": multus})
    if kind is None:
        raise InvalidSpec(node.path, "needs a source: pod or multus")
    node.done()
    return Network(name, kind[0], kind[1])


def check_references(vm: VMSpec, path: str) -> None:
    """Cross-field rules: unique names, every disk has a volume, every NIC a network."""
    devices = f"{path}.domain.devices"
    _unique([d.name for d in vm.disks], f"{devices}.disks")
    _unique([v.name for v in vm.volumes], f"{path}.volumes")
    _unique([i.name for i in vm.interfaces], f"{devices}.interfaces")
    _unique([n.name for n in vm.networks], f"{path}.networks")
    _check_disks(vm, path, devices)
    _check_interfaces(vm, devices)


def _check_disks(vm: VMSpec, path: str, devices: str) -> None:
    volume_names = {v.name for v in vm.volumes}
    for index, disk in enumerate(vm.disks):
        # A CD-ROM without a volume is an empty drive, as KubeVirt allows.
        if disk.name not in volume_names and disk.device != "cdrom":
            raise InvalidSpec(f"{devices}.disks[{index}].name", f"no volume named {disk.name!r}")
    disk_names = {d.name for d in vm.disks}
    for index, volume in enumerate(vm.volumes):
        if volume.name not in disk_names:
            raise InvalidSpec(f"{path}.volumes[{index}].name", f"no disk named {volume.name!r}")
    for index, disk in enumerate(vm.disks):
        source = vm.volume(disk.name)
        if disk.shareable and not (source and isinstance(source.source, _SHAREABLE)):
            # QEMU shares only raw files; every other volume is a qcow2 overlay.
            raise InvalidSpec(
                f"{devices}.disks[{index}].shareable",
                "needs a hostDisk, persistentVolumeClaim or dataVolume volume",
            )
    boot_orders: dict[int, str] = {}
    for index, disk in enumerate(vm.disks):
        if disk.boot_order is not None:
            if disk.boot_order in boot_orders:
                raise InvalidSpec(
                    f"{devices}.disks[{index}].bootOrder",
                    f"{disk.boot_order} is also the boot order of {boot_orders[disk.boot_order]!r}",
                )
            boot_orders[disk.boot_order] = disk.name


def _check_interfaces(vm: VMSpec, devices: str) -> None:
    networks = {n.name: n for n in vm.networks}
    for index, iface in enumerate(vm.interfaces):
        network = networks.get(iface.name)
        field = f"{devices}.interfaces[{index}]"
        if network is None:
            raise InvalidSpec(f"{field}.name", f"no network named {iface.name!r}")
        expected = "pod" if iface.binding == "masquerade" else "multus"
        if network.kind != expected:
            raise InvalidSpec(field, f"{iface.binding} binding needs a {expected} network")
    masquerades = [i for i in vm.interfaces if i.binding == "masquerade"]
    if len(masquerades) > 1:
        raise InvalidSpec(f"{devices}.interfaces", "only one interface may use masquerade")
    seen_ports: set[tuple[int, str]] = set()
    for iface in masquerades:
        for port in iface.ports:
            if (port.port, port.protocol) in seen_ports:
                raise InvalidSpec(f"{devices}.interfaces", f"port {port.port} declared twice")
            seen_ports.add((port.port, port.protocol))


def _unique(names: list[str], field: str) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise InvalidSpec(f"{field}[{index}].name", f"{name!r} is used twice")
        seen.add(name)
