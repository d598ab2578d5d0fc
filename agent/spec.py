"""Parse and validate KubeVirt-shaped VM documents into VMSpec, and render them back.

The input is the protobuf JSON mapping of ``virtagent.v1.VirtualMachine`` (camelCase keys,
KubeVirt's names). Every problem raises InvalidSpec naming the field by its path, for
example ``spec.template.spec.domain.devices.disks[1].disk.bus``. Keys this agent does not
know are rejected by name, never dropped.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from agent.errors import InvalidSpec
from agent.models import (
    CPU,
    CloudInitNoCloud,
    ContainerDisk,
    Disk,
    EmptyDisk,
    Firmware,
    HostDisk,
    ImageFile,
    Interface,
    KernelBoot,
    Network,
    Port,
    RunStrategy,
    VMSpec,
    Volume,
    VolumeSource,
)
from agent.quantity import format_bytes, parse_cpu_quantity, parse_quantity

__all__ = ["DNS1123_LABEL", "parse_vm", "render_vm", "validate_name"]

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_MAX_VCPUS = 256
_MIN_MEMORY = 16 * 1024 * 1024
T = TypeVar("T")


def validate_name(field: str, value: str) -> str:
    """Check a Kubernetes object name (DNS-1123 label, at most 63 characters)."""
    if not value:
        raise InvalidSpec(field, "is required")
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        raise InvalidSpec(
            field,
            f"{value!r} is not a DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)",
        )
    return value


class _Node:
    """A dict being read at a known path; remembers which keys were used."""

    def __init__(self, path: str, data: Any) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise InvalidSpec(path, f"must be an object, not {type(data).__name__}")
        self.path = path
        self.data: Mapping[str, Any] = data
        self.allowed: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type[T], default: T) -> T:
        self.allowed.add(key)
        value = self.data.get(key)
        if value is None:
            return default
        if kind is int and isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
            value = int(value)  # the protobuf JSON mapping writes int64 as a string
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise InvalidSpec(self.at(key), f"must be {kind.__name__}, not {value!r}")
        return value

    def child(self, key: str) -> _Node | None:
        self.allowed.add(key)
        if key not in self.data:
            return None
        return _Node(self.at(key), self.data[key])

    def items(self, key: str) -> list[_Node]:
        self.allowed.add(key)
        value = self.data.get(key) or []
        if not isinstance(value, list):
            raise InvalidSpec(self.at(key), "must be a list")
        return [_Node(f"{self.at(key)}[{i}]", item) for i, item in enumerate(value)]

    def done(self) -> None:
        """Reject every key that was not read: unsupported fields are errors, not no-ops."""
        for key in self.data:
            if key not in self.allowed:
                raise InvalidSpec(self.at(key), "is not supported by this agent")


def _one_of(node: _Node, choices: Mapping[str, Callable[[_Node], T]]) -> T | None:
    present = [key for key in choices if key in node.data]
    node.allowed.update(choices)
    if len(present) > 1:
        raise InvalidSpec(node.path, f"set only one of {', '.join(present)}")
    if not present:
        return None
    child = node.child(present[0])
    assert child is not None
    result = choices[present[0]](child)
    child.done()
    return result


def _quantity(node: _Node, key: str) -> int | None:
    text = node.get(key, str, "")
    if not text:
        return None
    try:
        return parse_quantity(text)
    except ValueError as exc:
        raise InvalidSpec(node.at(key), str(exc)) from None


def _choice(node: _Node, key: str, allowed: tuple[str, ...], default: str) -> str:
    value = node.get(key, str, "") or default
    if value not in allowed:
        raise InvalidSpec(node.at(key), f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _relative_path(node: _Node, key: str, *, required: bool = True) -> str:
    """A path under an image root: relative, no '..'; symlinks are checked when resolved."""
    value = node.get(key, str, "")
    if not value:
        if required:
            raise InvalidSpec(node.at(key), "is required")
        return ""
    parts = value.split("/")
    if ".." in parts or "\x00" in value:
        raise InvalidSpec(node.at(key), f"{value!r} must not contain '..'")
    return value


def parse_vm(document: Mapping[str, Any]) -> VMSpec:
    """Parse a VirtualMachine document (``metadata`` and ``spec``; ``status`` is ignored)."""
    root = _Node("", document)
    root.allowed.add("status")
    meta = root.child("metadata") or _Node("metadata", {})
    spec = root.child("spec") or _Node("spec", {})
    namespace = validate_name("metadata.namespace", meta.get("namespace", str, ""))
    name = validate_name("metadata.name", meta.get("name", str, ""))
    uid = meta.get("uid", str, "")
    if uid:
        try:
            uid = str(uuid.UUID(uid))
        except ValueError:
            raise InvalidSpec("metadata.uid", f"{uid!r} is not a UUID") from None
    labels = meta.get("labels", dict, {})
    for key, value in labels.items():
        if not isinstance(value, str):
            raise InvalidSpec(f"metadata.labels.{key}", "must be a string")
    meta.allowed.update({"generation", "creationTimestamp", "resourceVersion"})
    meta.done()

    strategy_text = spec.get("runStrategy", str, "") or RunStrategy.ALWAYS.value
    try:
        run_strategy = RunStrategy(strategy_text)
    except ValueError:
        allowed = ", ".join(s.value for s in RunStrategy)
        raise InvalidSpec(
            "spec.runStrategy", f"{strategy_text!r} is not one of {allowed}"
        ) from None
    template = spec.child("template") or _Node("spec.template", {})
    instance = template.child("spec") or _Node("spec.template.spec", {})
    template.done()
    spec.done()
    result = _parse_instance(instance, namespace, name, uid, labels, run_strategy)
    root.done()
    return result


def _parse_instance(
    node: _Node,
    namespace: str,
    name: str,
    uid: str,
    labels: dict[str, str],
    run_strategy: RunStrategy,
) -> VMSpec:
    domain = node.child("domain") or _Node(node.at("domain"), {})
    grace = node.get("terminationGracePeriodSeconds", int, 30)
    if grace < 0:
        raise InvalidSpec(node.at("terminationGracePeriodSeconds"), "must not be negative")
    hostname = node.get("hostname", str, "")
    if hostname:
        validate_name(node.at("hostname"), hostname)
    volumes = tuple(_parse_volume(v) for v in node.items("volumes"))
    networks = tuple(_parse_network(n) for n in node.items("networks"))
    hardware = _parse_domain(domain)
    node.done()
    vm = VMSpec(
        namespace=namespace,
        name=name,
        uid=uid,
        labels=dict(labels),
        run_strategy=run_strategy,
        volumes=volumes,
        networks=networks,
        **hardware,
        termination_grace_period_seconds=grace,
        hostname=hostname,
    )
    _check_references(vm, node.path)
    return vm


def _parse_domain(node: _Node) -> dict[str, Any]:
    requests, limits = _parse_resources(node)
    cpu = CPU()
    cpus_requested = limits.get("cpu") or requests.get("cpu")
    if cpus_requested:
        # No topology given: KubeVirt sizes the guest from the CPU limit or request.
        cpu = CPU(sockets=max(1, math.ceil(parse_cpu_quantity(cpus_requested))))
    cpu_node = node.child("cpu")
    if cpu_node is not None:
        counts = {}
        for key in ("cores", "sockets", "threads"):
            counts[key] = cpu_node.get(key, int, 0) or 1
            if counts[key] < 1:
                raise InvalidSpec(cpu_node.at(key), "must be at least 1")
        cpu = CPU(model=cpu_node.get("model", str, ""), **counts)
        if cpu.vcpus > _MAX_VCPUS:
            raise InvalidSpec(cpu_node.path, f"{cpu.vcpus} vCPUs is more than {_MAX_VCPUS}")
        cpu_node.done()
    memory = _parse_memory(node, requests, limits)
    machine_node = node.child("machine")
    machine = ""
    if machine_node is not None:
        machine = machine_node.get("type", str, "")
        if machine and not re.match(r"^[a-z0-9][a-z0-9.-]*$", machine):
            raise InvalidSpec(machine_node.at("type"), f"{machine!r} is not a machine type")
        machine_node.done()
    firmware = _parse_firmware(node.child("firmware"))
    devices = node.child("devices") or _Node(node.at("devices"), {})
    disks = tuple(_parse_disk(d) for d in devices.items("disks"))
    interfaces = tuple(_parse_interface(i) for i in devices.items("interfaces"))
    devices.done()
    node.done()
    return {
        "cpu": cpu,
        "memory_bytes": memory,
        "resource_requests": requests,
        "resource_limits": limits,
        "machine_type": machine,
        "firmware": firmware,
        "disks": disks,
        "interfaces": interfaces,
    }


def _parse_resources(domain: _Node) -> tuple[dict[str, str], dict[str, str]]:
    """resources.requests/limits: memory and cpu only, each a valid quantity."""
    groups: list[dict[str, str]] = [{}, {}]
    resources = domain.child("resources")
    if resources is None:
        return groups[0], groups[1]
    for index, key in enumerate(("requests", "limits")):
        group = resources.child(key)
        if group is None:
            continue
        for name, parse in (("memory", parse_quantity), ("cpu", parse_cpu_quantity)):
            text = group.get(name, str, "")
            if text:
                try:
                    parse(text)
                except ValueError as exc:
                    raise InvalidSpec(group.at(name), str(exc)) from None
                groups[index][name] = text
        group.done()
    resources.done()
    return groups[0], groups[1]


def _parse_memory(domain: _Node, requests: dict[str, str], limits: dict[str, str]) -> int:
    memory_node = domain.child("memory")
    guest = _quantity(memory_node, "guest") if memory_node else None
    if memory_node:
        memory_node.done()
    requested = parse_quantity(requests["memory"]) if "memory" in requests else None
    memory = guest or requested
    field = "memory.guest" if guest else "resources.requests.memory"
    if memory is None:
        raise InvalidSpec(
            f"{domain.path}.memory.guest", "is required (or resources.requests.memory)"
        )
    if memory < _MIN_MEMORY:
        raise InvalidSpec(f"{domain.path}.{field}", "must be at least 16Mi")
    if "memory" in limits and parse_quantity(limits["memory"]) < memory:
        raise InvalidSpec(
            f"{domain.path}.resources.limits.memory",
            f"is less than the guest's {format_bytes(memory)}",
        )
    return memory


def _parse_firmware(node: _Node | None) -> Firmware:
    if node is None:
        return Firmware()
    bootloader, secure = "bios", False
    loader = node.child("bootloader")
    if loader is not None:
        kind = _one_of(
            loader,
            {
                "bios": lambda n: ("bios", False),
                "efi": lambda n: ("efi", n.get("secureBoot", bool, False)),
            },
        )
        if kind is not None:
            bootloader, secure = kind
        loader.done()
    kernel_boot = None
    kb = node.child("kernelBoot")
    if kb is not None:
        container = kb.child("container") or _Node(kb.at("container"), {})
        if container.get("image", str, ""):
            raise InvalidSpec(
                container.at("image"),
                "kernels from container images are not supported; leave image empty and "
                "give kernelPath/initrdPath under an image root",
            )
        container.allowed.add("imagePullPolicy")
        kernel_boot = KernelBoot(
            kernel_path=_relative_path(container, "kernelPath"),
            initrd_path=_relative_path(container, "initrdPath", required=False),
            kernel_args=kb.get("kernelArgs", str, ""),
        )
        container.done()
        kb.done()
    node.done()
    return Firmware(bootloader=bootloader, kernel_boot=kernel_boot, secure_boot=secure)


def _parse_disk(node: _Node) -> Disk:
    name = validate_name(node.at("name"), node.get("name", str, ""))
    target = _one_of(
        node,
        {
            "disk": lambda n: (
                "disk",
                _choice(n, "bus", ("virtio", "sata", "scsi"), "virtio"),
                n.get("readonly", bool, False),
            ),
            "cdrom": lambda n: (
                "cdrom",
                _choice(n, "bus", ("sata", "scsi"), "sata"),
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
    node.done()
    device, bus, readonly = target
    return Disk(name, device, bus, readonly, boot_order, serial, cache)


def _parse_volume(node: _Node) -> Volume:
    name = validate_name(node.at("name"), node.get("name", str, ""))
    sources: dict[str, Callable[[_Node], VolumeSource]] = {
        "imageFile": lambda n: ImageFile(_relative_path(n, "path")),
        "containerDisk": _container_disk,
        "cloudInitNoCloud": _cloud_init,
        "emptyDisk": _empty_disk,
        "hostDisk": _host_disk,
    }
    source = _one_of(node, sources)
    if source is None:
        raise InvalidSpec(
            node.path,
            "needs a source: imageFile, containerDisk, cloudInitNoCloud, emptyDisk or hostDisk",
        )
    node.done()
    return Volume(name, source)


def _container_disk(node: _Node) -> ContainerDisk:
    image = node.get("image", str, "")
    if not image or any(c.isspace() for c in image):
        raise InvalidSpec(node.at("image"), "must name an image such as registry:5000/repo:tag")
    path = node.get("path", str, "")
    if ".." in path.split("/"):
        raise InvalidSpec(node.at("path"), "must not contain '..'")
    policy = node.get("imagePullPolicy", str, "")
    if policy and policy not in ("Always", "IfNotPresent", "Never"):
        raise InvalidSpec(node.at("imagePullPolicy"), "must be Always, IfNotPresent or Never")
    return ContainerDisk(image=image, path=path, image_pull_policy=policy)


def _decoded(node: _Node, plain: str, encoded: str) -> str:
    text = node.get(plain, str, "")
    data = node.get(encoded, str, "")
    if text and data:
        raise InvalidSpec(node.path, f"set only one of {plain}, {encoded}")
    if data:
        try:
            return base64.b64decode(data, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidSpec(node.at(encoded), "is not base64 of UTF-8 text") from None
    return text


def _secret_name(node: _Node, key: str) -> str:
    ref = node.child(key)
    if ref is None:
        return ""
    name = validate_name(ref.at("name"), ref.get("name", str, ""))
    ref.done()
    return name


def _cloud_init(node: _Node) -> CloudInitNoCloud:
    source = CloudInitNoCloud(
        user_data=_decoded(node, "userData", "userDataBase64"),
        network_data=_decoded(node, "networkData", "networkDataBase64"),
        user_data_secret=_secret_name(node, "secretRef"),
        network_data_secret=_secret_name(node, "networkDataSecretRef"),
    )
    if not (source.user_data or source.user_data_secret):
        raise InvalidSpec(node.path, "needs userData, userDataBase64 or secretRef")
    return source


def _empty_disk(node: _Node) -> EmptyDisk:
    capacity = _quantity(node, "capacity")
    if not capacity:
        raise InvalidSpec(node.at("capacity"), "is required, such as 1Gi")
    return EmptyDisk(capacity)


def _host_disk(node: _Node) -> HostDisk:
    kind = _choice(node, "type", ("Disk", "DiskOrCreate"), "")
    capacity = _quantity(node, "capacity") or 0
    if kind == "DiskOrCreate" and not capacity:
        raise InvalidSpec(node.at("capacity"), "is required with type DiskOrCreate")
    path = node.get("path", str, "")
    if not path:
        raise InvalidSpec(node.at("path"), "is required")
    if ".." in path.split("/") or "\x00" in path:
        raise InvalidSpec(node.at("path"), f"{path!r} must not contain '..'")
    return HostDisk(path=path, type=kind, capacity_bytes=capacity)


def _parse_interface(node: _Node) -> Interface:
    name = validate_name(node.at("name"), node.get("name", str, ""))
    binding = _one_of(node, {"masquerade": lambda n: "masquerade", "bridge": lambda n: "bridge"})
    if binding is None:
        raise InvalidSpec(node.path, "needs a binding method: masquerade or bridge")
    ports = tuple(_parse_port(p) for p in node.items("ports"))
    if ports and binding != "masquerade":
        raise InvalidSpec(node.at("ports"), "are only supported with masquerade binding")
    mac = node.get("macAddress", str, "").lower()
    if mac and (not _MAC.match(mac) or int(mac[:2], 16) & 1):
        raise InvalidSpec(node.at("macAddress"), f"{mac!r} is not a unicast MAC address")
    model = _choice(node, "model", ("virtio",), "virtio")
    node.done()
    return Interface(name, binding, ports, mac, model)


def _parse_port(node: _Node) -> Port:
    port = node.get("port", int, 0)
    if not 1 <= port <= 65535:
        raise InvalidSpec(node.at("port"), "must be between 1 and 65535")
    protocol = _choice(node, "protocol", ("TCP", "UDP"), "TCP")
    node_port = node.get("nodePort", int, 0)
    if not 0 <= node_port <= 65535:
        raise InvalidSpec(node.at("nodePort"), "must be between 1 and 65535 (0: allocated)")
    name = node.get("name", str, "")
    node.done()
    return Port(port=port, protocol=protocol, name=name, node_port=node_port)


def _parse_network(node: _Node) -> Network:
    name = validate_name(node.at("name"), node.get("name", str, ""))

    def multus(n: _Node) -> tuple[str, str]:
        bridge = n.get("networkName", str, "")
        if not bridge or len(bridge) > 15 or not re.match(r"^[A-Za-z0-9_.-]+$", bridge):
            raise InvalidSpec(n.at("networkName"), "must name a host bridge (at most 15 chars)")
        return "multus", bridge

    kind = _one_of(node, {"pod": lambda n: ("pod", ""), "multus": multus})
    if kind is None:
        raise InvalidSpec(node.path, "needs a source: pod or multus")
    node.done()
    return Network(name, kind[0], kind[1])


def _check_references(vm: VMSpec, path: str) -> None:
    """Cross-field rules: unique names, every disk has a volume, every NIC a network."""
    devices = f"{path}.domain.devices"
    _unique([d.name for d in vm.disks], f"{devices}.disks")
    _unique([v.name for v in vm.volumes], f"{path}.volumes")
    _unique([i.name for i in vm.interfaces], f"{devices}.interfaces")
    _unique([n.name for n in vm.networks], f"{path}.networks")
    volume_names = {v.name for v in vm.volumes}
    for index, disk in enumerate(vm.disks):
        if disk.name not in volume_names:
            raise InvalidSpec(f"{devices}.disks[{index}].name", f"no volume named {disk.name!r}")
    disk_names = {d.name for d in vm.disks}
    for index, volume in enumerate(vm.volumes):
        if volume.name not in disk_names:
            raise InvalidSpec(f"{path}.volumes[{index}].name", f"no disk named {volume.name!r}")
    boot_orders: dict[int, str] = {}
    for index, disk in enumerate(vm.disks):
        if disk.boot_order is not None:
            if disk.boot_order in boot_orders:
                raise InvalidSpec(
                    f"{devices}.disks[{index}].bootOrder",
                    f"{disk.boot_order} is also the boot order of {boot_orders[disk.boot_order]!r}",
                )
            boot_orders[disk.boot_order] = disk.name
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


def render_vm(vm: VMSpec) -> dict[str, Any]:
    """The canonical document of a spec: what parse_vm reads, with defaults made explicit."""
    instance: dict[str, Any] = {
        "domain": _render_domain(vm),
        "terminationGracePeriodSeconds": vm.termination_grace_period_seconds,
    }
    if vm.hostname:
        instance["hostname"] = vm.hostname
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
    return {
        "metadata": metadata,
        "spec": {"runStrategy": vm.run_strategy.value, "template": {"spec": instance}},
    }


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
    firmware: dict[str, Any] = {}
    if vm.firmware.bootloader == "efi":
        firmware["bootloader"] = {"efi": {"secureBoot": vm.firmware.secure_boot}}
    kb = vm.firmware.kernel_boot
    if kb is not None:
        container = {"kernelPath": kb.kernel_path}
        if kb.initrd_path:
            container["initrdPath"] = kb.initrd_path
        firmware["kernelBoot"] = {"kernelArgs": kb.kernel_args, "container": container}
    if firmware:
        domain["firmware"] = firmware
    devices: dict[str, Any] = {}
    if vm.disks:
        devices["disks"] = [_render_disk(d) for d in vm.disks]
    if vm.interfaces:
        devices["interfaces"] = [_render_interface(i) for i in vm.interfaces]
    if devices:
        domain["devices"] = devices
    return domain


def _render_disk(disk: Disk) -> dict[str, Any]:
    out: dict[str, Any] = {"name": disk.name, disk.device: {"bus": disk.bus}}
    out[disk.device]["readonly"] = disk.readonly
    if disk.boot_order is not None:
        out["bootOrder"] = disk.boot_order
    if disk.serial:
        out["serial"] = disk.serial
    if disk.cache:
        out["cache"] = disk.cache
    return out


def _render_volume(volume: Volume) -> dict[str, Any]:
    source = volume.source
    body: tuple[str, dict[str, Any]]
    if isinstance(source, ImageFile):
        body = ("imageFile", {"path": source.path})
    elif isinstance(source, ContainerDisk):
        fields = {"image": source.image, "path": source.path}
        if source.image_pull_policy:
            fields["imagePullPolicy"] = source.image_pull_policy
        body = ("containerDisk", {k: v for k, v in fields.items() if v})
    elif isinstance(source, CloudInitNoCloud):
        fields = {"userData": source.user_data, "networkData": source.network_data}
        cloud: dict[str, Any] = {k: v for k, v in fields.items() if v}
        if source.user_data_secret:
            cloud["secretRef"] = {"name": source.user_data_secret}
        if source.network_data_secret:
            cloud["networkDataSecretRef"] = {"name": source.network_data_secret}
        body = ("cloudInitNoCloud", cloud)
    elif isinstance(source, EmptyDisk):
        body = ("emptyDisk", {"capacity": format_bytes(source.capacity_bytes)})
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
