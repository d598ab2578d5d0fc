"""Parse a VirtualMachine document: identity, run strategy, hardware, firmware."""

from __future__ import annotations

import dataclasses
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any

from agent.defaults import GRACE_PERIOD_SECONDS
from agent.errors import InvalidSpec
from agent.models import (
    CPU,
    MAX_GRACE_PERIOD_SECONDS,
    Firmware,
    KernelBoot,
    RunStrategy,
    VMSpec,
)
from agent.quantity import format_bytes, parse_cpu_quantity, parse_quantity
from agent.spec.configvolumes import (
    MAX_ACCESS_CREDENTIALS,
    check_access_credentials,
    parse_access_credential,
)
from agent.spec.datavolumes import parse_data_volume_templates
from agent.spec.devices import (
    check_references,
    parse_disk,
    parse_interface,
    parse_network,
    parse_volume,
)
from agent.spec.hardware import parse_hardware
from agent.spec.limits import MAX_DISKS, MAX_INTERFACES, MAX_KERNEL_ARGS, check_labels
from agent.spec.probes import parse_probe
from agent.spec.reader import Node, one_of, quantity, relative_path, validate_name

__all__ = ["parse_vm"]

_MAX_VCPUS = 256
_MIN_MEMORY = 16 * 1024 * 1024
_MAX_IGNITION = 256 * 1024
_MAX_MEMORY = 16 * 1024**4  # 16 TiB; the node's own size is checked when a VM is applied
_CPU_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")  # host-model, Skylake-Server


def parse_vm(document: Mapping[str, Any]) -> VMSpec:
    """Parse a VirtualMachine document (``metadata`` and ``spec``; ``status`` is ignored)."""
    root = Node("", document)
    root.allowed.add("status")
    meta = root.child("metadata") or Node("metadata", {})
    spec = root.child("spec") or Node("spec", {})
    namespace = validate_name("metadata.namespace", meta.get("namespace", str, ""))
    name = validate_name("metadata.name", meta.get("name", str, ""))
    uid = meta.get("uid", str, "")
    if uid:
        try:
            uid = str(uuid.UUID(uid))
        except ValueError:
            raise InvalidSpec("metadata.uid", f"{uid!r} is not a UUID") from None
    labels = meta.get("labels", dict, {})
    check_labels(labels)
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
    template = spec.child("template") or Node("spec.template", {})
    instance = template.child("spec") or Node("spec.template.spec", {})
    template.done()
    data_volumes = parse_data_volume_templates(spec, namespace)
    spec.done()
    result = _parse_instance(instance, namespace, name, uid, labels, run_strategy)
    root.done()
    if data_volumes:
        result = dataclasses.replace(result, data_volume_templates=data_volumes)
    return result


def _parse_instance(
    node: Node,
    namespace: str,
    name: str,
    uid: str,
    labels: dict[str, str],
    run_strategy: RunStrategy,
) -> VMSpec:
    domain = node.child("domain") or Node(node.at("domain"), {})
    uid = _firmware_uuid(domain.child("firmware"), uid)
    grace = node.get("terminationGracePeriodSeconds", int, GRACE_PERIOD_SECONDS)
    if not 0 <= grace <= MAX_GRACE_PERIOD_SECONDS:
        raise InvalidSpec(
            node.at("terminationGracePeriodSeconds"),
            f"must be between 0 and {MAX_GRACE_PERIOD_SECONDS} seconds",
        )
    ignition = node.get("ignitionData", str, "")
    if len(ignition.encode()) > _MAX_IGNITION:
        raise InvalidSpec(node.at("ignitionData"), "is more than 256 KiB")
    hostname = node.get("hostname", str, "")
    if hostname:
        validate_name(node.at("hostname"), hostname)
    volumes = tuple(parse_volume(v) for v in node.items("volumes", MAX_DISKS))
    networks = tuple(parse_network(n) for n in node.items("networks", MAX_INTERFACES))
    hardware = _parse_domain(domain)
    readiness = parse_probe(node.child("readinessProbe"), liveness=False)
    liveness = parse_probe(node.child("livenessProbe"), liveness=True)
    credentials = tuple(
        parse_access_credential(c) for c in node.items("accessCredentials", MAX_ACCESS_CREDENTIALS)
    )
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
        ignition_data=ignition,
        readiness_probe=readiness,
        liveness_probe=liveness,
        access_credentials=credentials,
    )
    check_references(vm, node.path)
    check_access_credentials(vm, node.path)
    return vm


def _parse_domain(node: Node) -> dict[str, Any]:
    requests, limits = _parse_resources(node)
    cpu = _parse_cpu(node, requests, limits)
    memory = _parse_memory(node, requests, limits)
    machine = _parse_machine(node.child("machine"))
    firmware = _parse_firmware(node.child("firmware"))
    devices = node.child("devices") or Node(node.at("devices"), {})
    hardware = parse_hardware(node, devices)
    if hardware.features.smm is False and firmware.secure_boot:
        raise InvalidSpec(f"{node.path}.features.smm", "secure boot needs SMM")
    rng = devices.child("rng")  # every guest gets a virtio RNG: asking for one is fine
    if rng is not None:
        rng.done()
    disks = tuple(parse_disk(d) for d in devices.items("disks", MAX_DISKS))
    interfaces = tuple(parse_interface(i) for i in devices.items("interfaces", MAX_INTERFACES))
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
        "hardware": hardware,
    }


def _parse_cpu(node: Node, requests: dict[str, str], limits: dict[str, str]) -> CPU:
    cpu = CPU()
    cpus_requested = limits.get("cpu") or requests.get("cpu")
    if cpus_requested:
        # No topology given: KubeVirt sizes the guest from the CPU limit or request.
        cpu = CPU(sockets=max(1, math.ceil(parse_cpu_quantity(cpus_requested))))
        if cpu.vcpus > _MAX_VCPUS:
            which = "limits" if "cpu" in limits else "requests"
            raise InvalidSpec(
                f"{node.at('resources')}.{which}.cpu",
                f"{cpu.vcpus} vCPUs is more than {_MAX_VCPUS}",
            )
    cpu_node = node.child("cpu")
    if cpu_node is not None:
        counts = {}
        for key in ("cores", "sockets", "threads"):
            counts[key] = cpu_node.get(key, int, 0) or 1
            if counts[key] < 1:
                raise InvalidSpec(cpu_node.at(key), "must be at least 1")
        model = cpu_node.get("model", str, "")
        if model and not _CPU_MODEL.match(model):
            raise InvalidSpec(cpu_node.at("model"), f"{model[:40]!r} is not a CPU model name")
        cpu = CPU(model=model, **counts)
        if cpu.vcpus > _MAX_VCPUS:
            raise InvalidSpec(cpu_node.path, f"{cpu.vcpus} vCPUs is more than {_MAX_VCPUS}")
        cpu_node.done()
    return cpu


def _parse_machine(machine_node: Node | None) -> str:
    if machine_node is None:
        return ""
    machine = machine_node.get("type", str, "")
    if machine and not re.match(r"^[a-z0-9][a-z0-9.-]*$", machine):
        raise InvalidSpec(machine_node.at("type"), f"{machine!r} is not a machine type")
    machine_node.done()
    return machine


def _parse_resources(domain: Node) -> tuple[dict[str, str], dict[str, str]]:
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


def _parse_memory(domain: Node, requests: dict[str, str], limits: dict[str, str]) -> int:
    memory_node = domain.child("memory")
    guest = quantity(memory_node, "guest") if memory_node else None
    if memory_node:
        memory_node.done()
    # No guest size and no request: KubeVirt sizes the guest from the memory limit.
    sized_by = "requests" if "memory" in requests else "limits"
    written = requests.get("memory") or limits.get("memory")
    requested = parse_quantity(written) if written else None
    memory = guest or requested
    field = "memory.guest" if guest else f"resources.{sized_by}.memory"
    if memory is None:
        raise InvalidSpec(
            f"{domain.path}.memory.guest",
            "is required (or resources.requests.memory or resources.limits.memory)",
        )
    if memory < _MIN_MEMORY:
        raise InvalidSpec(f"{domain.path}.{field}", "must be at least 16Mi")
    if memory > _MAX_MEMORY:
        raise InvalidSpec(f"{domain.path}.{field}", f"must be at most {format_bytes(_MAX_MEMORY)}")
    if "memory" in limits and parse_quantity(limits["memory"]) < memory:
        raise InvalidSpec(
            f"{domain.path}.resources.limits.memory",
            f"is less than the guest's {format_bytes(memory)}",
        )
    return memory


def _firmware_uuid(node: Node | None, uid: str) -> str:
    """firmware.uuid is the SMBIOS UUID, which libvirt keeps equal to the domain UUID: the
    VM's uid. Without a uid it becomes the uid; with a different one it is an error."""
    text = node.get("uuid", str, "") if node is not None else ""
    if not text or node is None:
        return uid
    try:
        value = str(uuid.UUID(text))
    except ValueError:
        raise InvalidSpec(node.at("uuid"), f"{text!r} is not a UUID") from None
    if uid and uid != value:
        raise InvalidSpec(node.at("uuid"), f"must equal metadata.uid {uid} (the domain UUID)")
    return value


def _parse_firmware(node: Node | None) -> Firmware:
    if node is None:
        return Firmware()
    node.allowed.add("uuid")  # read by _firmware_uuid
    serial = node.get("serial", str, "")
    if serial and not re.match(r"^[A-Za-z0-9 _.:/+-]{1,64}$", serial):
        raise InvalidSpec(node.at("serial"), "must be 1-64 letters, digits, spaces or _.:/+-")
    bootloader, secure, persistent = "bios", False, False
    loader = node.child("bootloader")
    if loader is not None:
        kind = one_of(
            loader,
            {
                "bios": lambda n: ("bios", False, False),
                "efi": lambda n: (
                    "efi",
                    n.get("secureBoot", bool, False),
                    n.get("persistent", bool, False),
                ),
            },
        )
        if kind is not None:
            bootloader, secure, persistent = kind
        loader.done()
    kernel_boot = None
    kb = node.child("kernelBoot")
    if kb is not None:
        container = kb.child("container") or Node(kb.at("container"), {})
        if container.get("image", str, ""):
            raise InvalidSpec(
                container.at("image"),
                "kernels from container images are not supported; leave image empty and "
                "give kernelPath/initrdPath under an image root",
            )
        container.allowed.add("imagePullPolicy")
        kernel_boot = KernelBoot(
            kernel_path=relative_path(container, "kernelPath"),
            initrd_path=relative_path(container, "initrdPath", required=False),
            kernel_args=_kernel_args(kb),
        )
        container.done()
        kb.done()
    node.done()
    return Firmware(
        bootloader=bootloader,
        kernel_boot=kernel_boot,
        secure_boot=secure,
        efi_persistent=persistent,
        serial=serial,
    )


def _kernel_args(node: Node) -> str:
    args = node.get("kernelArgs", str, "", max_length=MAX_KERNEL_ARGS)
    if any(ch < " " or ch == "\x7f" for ch in args):  # one line; the XML check allows \n
        raise InvalidSpec(node.at("kernelArgs"), "must be one line without control characters")
    return args
