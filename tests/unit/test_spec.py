"""Validation and rendering of KubeVirt-shaped VM documents (agent.spec)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from agent.errors import InvalidSpec
from agent.imageref import parse_reference
from agent.models import (
    CloudInitNoCloud,
    ContainerDisk,
    EmptyDisk,
    HostDisk,
    ImageFile,
    KernelBoot,
    RunStrategy,
)
from agent.spec import parse_vm, render_vm

Doc = dict[str, Any]
Mutation = Callable[[Doc], None]

INSTANCE = "spec.template.spec"
DOMAIN = f"{INSTANCE}.domain"
DEVICES = f"{DOMAIN}.devices"


def _doc() -> Doc:
    """A valid VM with one disk and one masquerade NIC; each case breaks one thing."""
    return {
        "metadata": {"namespace": "tenant-a", "name": "vm-1"},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "spec": {
                    "domain": {
                        "memory": {"guest": "128Mi"},
                        "devices": {
                            "disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                            "interfaces": [
                                {"name": "default", "masquerade": {}, "ports": [{"port": 80}]}
                            ],
                        },
                    },
                    "volumes": [{"name": "root", "imageFile": {"path": "images/root.qcow2"}}],
                    "networks": [{"name": "default", "pod": {}}],
                }
            },
        },
    }


def _at(doc: Doc, path: str) -> Any:
    """The container at a dotted path; ``disks.0`` indexes a list."""
    node: Any = doc
    for part in path.split(".") if path else ():
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    return node


def _set(path: str, value: Any) -> Mutation:
    parent, _, key = path.rpartition(".")

    def mutate(doc: Doc) -> None:
        container = _at(doc, parent)
        container[int(key) if key.isdigit() else key] = value

    return mutate


def _delete(path: str) -> Mutation:
    parent, _, key = path.rpartition(".")
    return lambda doc: _at(doc, parent).pop(key)


def _append(path: str, item: Any) -> Mutation:
    return lambda doc: _at(doc, path).append(copy.deepcopy(item))


def _all(*mutations: Mutation) -> Mutation:
    def mutate(doc: Doc) -> None:
        for mutation in mutations:
            mutation(doc)

    return mutate


# Mutation paths are dotted (disks.0); the fields InvalidSpec names use [0].
_DISK0 = f"{DOMAIN}.devices.disks.0"
_NIC0 = f"{DOMAIN}.devices.interfaces.0"
_VOL0 = f"{INSTANCE}.volumes.0"
_KERNEL = f"{DOMAIN}.firmware.kernelBoot"

BAD = [
    ("disk-bus", _set(f"{_DISK0}.disk.bus", "ide"), f"{DEVICES}.disks[0].disk.bus"),
    (
        "cdrom-bus",
        _set(f"{_DISK0}", {"name": "root", "cdrom": {"bus": "virtio"}}),
        f"{DEVICES}.disks[0].cdrom.bus",
    ),
    ("disk-and-cdrom", _set(f"{_DISK0}.cdrom", {}), f"{DEVICES}.disks[0]"),
    (
        "disk-readonly-type",
        _set(f"{_DISK0}.disk.readonly", "yes"),
        f"{DEVICES}.disks[0].disk.readonly",
    ),
    ("disk-cache", _set(f"{_DISK0}.cache", "unsafe"), f"{DEVICES}.disks[0].cache"),
    ("disk-serial", _set(f"{_DISK0}.serial", "has space"), f"{DEVICES}.disks[0].serial"),
    ("disk-boot-order", _set(f"{_DISK0}.bootOrder", -1), f"{DEVICES}.disks[0].bootOrder"),
    ("name-not-dns1123", _set("metadata.name", "My_VM"), "metadata.name"),
    ("name-too-long", _set("metadata.name", "a" * 64), "metadata.name"),
    ("name-missing", _delete("metadata.name"), "metadata.name"),
    ("namespace-upper", _set("metadata.namespace", "Tenant"), "metadata.namespace"),
    ("uid-not-uuid", _set("metadata.uid", "1234"), "metadata.uid"),
    ("label-not-string", _set("metadata.labels", {"tier": 3}), "metadata.labels.tier"),
    ("unknown-metadata-key", _set("metadata.finalizers", []), "metadata.finalizers"),
    ("unknown-gpus", _set(f"{DOMAIN}.devices.gpus", [{"name": "gpu0"}]), f"{DEVICES}.gpus"),
    ("unknown-spec-running", _set("spec.running", True), "spec.running"),
    ("unknown-top-level", _set("kind", "VirtualMachine"), "kind"),
    (
        "unknown-in-masquerade",
        _set(f"{_NIC0}.masquerade.mode", "x"),
        f"{DEVICES}.interfaces[0].masquerade.mode",
    ),
    (
        "unsupported-resource",
        _set(f"{DOMAIN}.resources", {"requests": {"storage": "1Gi"}}),
        f"{DOMAIN}.resources.requests.storage",
    ),
    ("memory-missing", _delete(f"{DOMAIN}.memory"), f"{DOMAIN}.memory.guest"),
    ("memory-too-small", _set(f"{DOMAIN}.memory.guest", "8Mi"), f"{DOMAIN}.memory.guest"),
    ("memory-not-quantity", _set(f"{DOMAIN}.memory.guest", "lots"), f"{DOMAIN}.memory.guest"),
    ("memory-exponent", _set(f"{DOMAIN}.memory.guest", "1e9"), f"{DOMAIN}.memory.guest"),
    ("cpu-cores-negative", _set(f"{DOMAIN}.cpu", {"cores": -1}), f"{DOMAIN}.cpu.cores"),
    ("cpu-too-many", _set(f"{DOMAIN}.cpu", {"cores": 64, "sockets": 8}), f"{DOMAIN}.cpu"),
    ("machine-type", _set(f"{DOMAIN}.machine", {"type": "Q35;rm"}), f"{DOMAIN}.machine.type"),
    (
        "disk-without-volume",
        _append(f"{DOMAIN}.devices.disks", {"name": "data", "disk": {}}),
        f"{DEVICES}.disks[1].name",
    ),
    (
        "volume-without-disk",
        _append(f"{INSTANCE}.volumes", {"name": "data", "emptyDisk": {"capacity": "1Gi"}}),
        f"{INSTANCE}.volumes[1].name",
    ),
    ("volume-without-source", _set(f"{_VOL0}", {"name": "root"}), f"{INSTANCE}.volumes[0]"),
    (
        "duplicate-disk",
        _append(f"{DOMAIN}.devices.disks", {"name": "root", "disk": {}}),
        f"{DEVICES}.disks[1].name",
    ),
    (
        "duplicate-volume",
        _append(f"{INSTANCE}.volumes", {"name": "root", "emptyDisk": {"capacity": "1Gi"}}),
        f"{INSTANCE}.volumes[1].name",
    ),
    (
        "duplicate-network",
        _append(f"{INSTANCE}.networks", {"name": "default", "pod": {}}),
        f"{INSTANCE}.networks[1].name",
    ),
    (
        "two-masquerade",
        _all(
            _append(f"{DOMAIN}.devices.interfaces", {"name": "second", "masquerade": {}}),
            _append(f"{INSTANCE}.networks", {"name": "second", "pod": {}}),
        ),
        f"{DEVICES}.interfaces",
    ),
    ("nic-without-network", _set(f"{INSTANCE}.networks", []), f"{DEVICES}.interfaces[0].name"),
    ("nic-without-binding", _delete(f"{_NIC0}.masquerade"), f"{DEVICES}.interfaces[0]"),
    (
        "bridge-on-pod-network",
        _all(
            _delete(f"{_NIC0}.masquerade"), _delete(f"{_NIC0}.ports"), _set(f"{_NIC0}.bridge", {})
        ),
        f"{DEVICES}.interfaces[0]",
    ),
    (
        "ports-on-bridge",
        _all(_delete(f"{_NIC0}.masquerade"), _set(f"{_NIC0}.bridge", {})),
        f"{DEVICES}.interfaces[0].ports",
    ),
    ("nic-model", _set(f"{_NIC0}.model", "ne2k_pci"), f"{DEVICES}.interfaces[0].model"),
    (
        "port-too-big",
        _set(f"{_NIC0}.ports.0.port", 65536),
        f"{DEVICES}.interfaces[0].ports[0].port",
    ),
    ("port-zero", _set(f"{_NIC0}.ports.0.port", 0), f"{DEVICES}.interfaces[0].ports[0].port"),
    ("port-missing", _set(f"{_NIC0}.ports.0", {}), f"{DEVICES}.interfaces[0].ports[0].port"),
    (
        "node-port-too-big",
        _set(f"{_NIC0}.ports.0.nodePort", 70000),
        f"{DEVICES}.interfaces[0].ports[0].nodePort",
    ),
    (
        "port-protocol",
        _set(f"{_NIC0}.ports.0.protocol", "SCTP"),
        f"{DEVICES}.interfaces[0].ports[0].protocol",
    ),
    ("port-twice", _append(f"{_NIC0}.ports", {"port": 80}), f"{DEVICES}.interfaces"),
    (
        "mac-malformed",
        _set(f"{_NIC0}.macAddress", "02:00:00:00:00"),
        f"{DEVICES}.interfaces[0].macAddress",
    ),
    (
        "mac-not-hex",
        _set(f"{_NIC0}.macAddress", "02:00:00:00:00:zz"),
        f"{DEVICES}.interfaces[0].macAddress",
    ),
    (
        "mac-multicast",
        _set(f"{_NIC0}.macAddress", "01:00:5e:00:00:01"),
        f"{DEVICES}.interfaces[0].macAddress",
    ),
    (
        "multus-bridge-name",
        _set(f"{INSTANCE}.networks.0", {"name": "default", "multus": {}}),
        f"{INSTANCE}.networks[0].multus.networkName",
    ),
    (
        "image-path-dotdot",
        _set(f"{_VOL0}.imageFile.path", "images/../../etc/shadow"),
        f"{INSTANCE}.volumes[0].imageFile.path",
    ),
    (
        "image-path-nul",
        _set(f"{_VOL0}.imageFile.path", "a\x00b"),
        f"{INSTANCE}.volumes[0].imageFile.path",
    ),
    (
        "host-disk-dotdot",
        _set(f"{_VOL0}", {"name": "root", "hostDisk": {"path": "/data/../etc", "type": "Disk"}}),
        f"{INSTANCE}.volumes[0].hostDisk.path",
    ),
    (
        "host-disk-create-no-capacity",
        _set(
            f"{_VOL0}",
            {"name": "root", "hostDisk": {"path": "/data/d.img", "type": "DiskOrCreate"}},
        ),
        f"{INSTANCE}.volumes[0].hostDisk.capacity",
    ),
    (
        "container-disk-dotdot",
        _set(f"{_VOL0}", {"name": "root", "containerDisk": {"image": "r/i:1", "path": "../x"}}),
        f"{INSTANCE}.volumes[0].containerDisk.path",
    ),
    (
        "container-disk-no-image",
        _set(f"{_VOL0}", {"name": "root", "containerDisk": {}}),
        f"{INSTANCE}.volumes[0].containerDisk.image",
    ),
    (
        "empty-disk-no-capacity",
        _set(f"{_VOL0}", {"name": "root", "emptyDisk": {}}),
        f"{INSTANCE}.volumes[0].emptyDisk.capacity",
    ),
    (
        "cloud-init-empty",
        _set(f"{_VOL0}", {"name": "root", "cloudInitNoCloud": {}}),
        f"{INSTANCE}.volumes[0].cloudInitNoCloud",
    ),
    (
        "cloud-init-bad-base64",
        _set(f"{_VOL0}", {"name": "root", "cloudInitNoCloud": {"userDataBase64": "%%%"}}),
        f"{INSTANCE}.volumes[0].cloudInitNoCloud.userDataBase64",
    ),
    (
        "kernel-path-dotdot",
        _set(f"{_KERNEL}.container.kernelPath", "../../boot/vmlinuz"),
        f"{DOMAIN}.firmware.kernelBoot.container.kernelPath",
    ),
    (
        "initrd-path-dotdot",
        _set(f"{_KERNEL}.container", {"kernelPath": "k", "initrdPath": "a/../../i"}),
        f"{DOMAIN}.firmware.kernelBoot.container.initrdPath",
    ),
    (
        "kernel-path-missing",
        _set(f"{_KERNEL}.kernelArgs", "console=ttyS0"),
        f"{DOMAIN}.firmware.kernelBoot.container.kernelPath",
    ),
    (
        "kernel-from-image",
        _set(f"{_KERNEL}.container", {"image": "r/k:1", "kernelPath": "k"}),
        f"{DOMAIN}.firmware.kernelBoot.container.image",
    ),
    (
        "bios-and-efi",
        _set(f"{DOMAIN}.firmware.bootloader", {"bios": {}, "efi": {}}),
        f"{DOMAIN}.firmware.bootloader",
    ),
    ("run-strategy", _set("spec.runStrategy", "Sometimes"), "spec.runStrategy"),
    (
        "grace-negative",
        _set(f"{INSTANCE}.terminationGracePeriodSeconds", -1),
        f"{INSTANCE}.terminationGracePeriodSeconds",
    ),
    (
        "grace-negative-string",
        _set(f"{INSTANCE}.terminationGracePeriodSeconds", "-5"),
        f"{INSTANCE}.terminationGracePeriodSeconds",
    ),
    (
        "grace-not-int",
        _set(f"{INSTANCE}.terminationGracePeriodSeconds", "soon"),
        f"{INSTANCE}.terminationGracePeriodSeconds",
    ),
    (
        "grace-bool",
        _set(f"{INSTANCE}.terminationGracePeriodSeconds", True),
        f"{INSTANCE}.terminationGracePeriodSeconds",
    ),
    (
        "grace-float",
        _set(f"{INSTANCE}.terminationGracePeriodSeconds", 1.5),
        f"{INSTANCE}.terminationGracePeriodSeconds",
    ),
    ("hostname", _set(f"{INSTANCE}.hostname", "not_a_hostname"), f"{INSTANCE}.hostname"),
    ("disks-not-list", _set(f"{DOMAIN}.devices.disks", {"name": "root"}), f"{DEVICES}.disks"),
    ("disk-not-object", _set(f"{DOMAIN}.devices.disks", ["root"]), f"{DEVICES}.disks[0]"),
    ("spec-not-object", _set("spec", []), "spec"),
    # Found by tests/api/test_fuzz.py: control characters broke the domain XML (INTERNAL).
    (
        "kernel-args-control-character",
        _set(
            f"{DOMAIN}.firmware.kernelBoot",
            {"kernelArgs": "console=\x01", "container": {"kernelPath": "vmlinuz"}},
        ),  # fmt: skip
        f"{DOMAIN}.firmware.kernelBoot.kernelArgs",
    ),
    ("cpu-model-nul", _set(f"{DOMAIN}.cpu.model", "host\x00"), f"{DOMAIN}.cpu.model"),
    ("label-escape", _set("metadata.labels", {"app": "\x1b[1m"}), "metadata.labels"),
    (  # found by tests/api/test_fuzz.py: base64 text that is not ASCII was INTERNAL
        "user-data-base64-not-ascii",
        _set(
            f"{INSTANCE}.volumes",
            [{"name": "seed", "cloudInitNoCloud": {"userDataBase64": "\x80"}}],
        ),  # fmt: skip
        f"{INSTANCE}.volumes[0].cloudInitNoCloud.userDataBase64",
    ),
]


@pytest.mark.parametrize(("mutate", "field"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_invalid_field_is_named(mutate: Mutation, field: str) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(InvalidSpec) as caught:
        parse_vm(doc)
    assert caught.value.field == field, str(caught.value)


def test_base_document_is_valid() -> None:
    vm = parse_vm(_doc())
    assert (vm.namespace, vm.name, vm.uid) == ("tenant-a", "vm-1", "")
    assert vm.key == "tenant-a/vm-1"
    assert vm.memory_bytes == 128 * 1024**2


ACCEPTED = [
    (
        "int64-as-string",
        _set(f"{INSTANCE}.terminationGracePeriodSeconds", "60"),
        lambda vm: vm.termination_grace_period_seconds == 60,
    ),
    (
        "int64-as-number",
        _set(f"{INSTANCE}.terminationGracePeriodSeconds", 0),
        lambda vm: vm.termination_grace_period_seconds == 0,
    ),
    ("grace-default", lambda doc: None, lambda vm: vm.termination_grace_period_seconds == 30),
    (
        "cores-as-string",
        _set(f"{DOMAIN}.cpu", {"cores": "2", "sockets": 2}),
        lambda vm: vm.cpu.vcpus == 4,
    ),
    ("cores-zero-means-one", _set(f"{DOMAIN}.cpu", {"cores": 0}), lambda vm: vm.cpu.vcpus == 1),
    (
        "requests-memory",
        _all(
            _delete(f"{DOMAIN}.memory"),
            _set(f"{DOMAIN}.resources", {"requests": {"memory": "256Mi"}}),
        ),
        lambda vm: vm.memory_bytes == 256 * 1024**2,
    ),
    (
        "guest-wins-over-requests",
        _set(f"{DOMAIN}.resources", {"requests": {"memory": "1Gi"}}),
        lambda vm: vm.memory_bytes == 128 * 1024**2,
    ),
    ("decimal-memory", _set(f"{DOMAIN}.memory.guest", "1G"), lambda vm: vm.memory_bytes == 10**9),
    (
        "fractional-memory",
        _set(f"{DOMAIN}.memory.guest", "1.5Gi"),
        lambda vm: vm.memory_bytes == 1536 * 1024**2,
    ),
    (
        "uid-normalised",
        _set("metadata.uid", "6B1F7C1E-4A4E-4F5E-9A57-3A1D2F8F0C11"),
        lambda vm: vm.uid == "6b1f7c1e-4a4e-4f5e-9a57-3a1d2f8f0c11",
    ),
    (
        "mac-lowercased",
        _set(f"{_NIC0}.macAddress", "02:AB:00:00:00:01"),
        lambda vm: vm.interfaces[0].mac_address == "02:ab:00:00:00:01",
    ),
    (
        "run-strategy",
        _set("spec.runStrategy", "Halted"),
        lambda vm: vm.run_strategy is RunStrategy.HALTED,
    ),
    (
        "run-strategy-default",
        _delete("spec.runStrategy"),
        lambda vm: vm.run_strategy is RunStrategy.ALWAYS,
    ),
    ("status-ignored", _set("status", {"phase": "Running"}), lambda vm: vm.name == "vm-1"),
    ("server-set-metadata", _set("metadata.generation", 4), lambda vm: vm.name == "vm-1"),
    (
        "cdrom-readonly-default",
        _set(f"{_DISK0}", {"name": "root", "cdrom": {}}),
        lambda vm: (
            vm.disks[0].device == "cdrom" and vm.disks[0].readonly and vm.disks[0].bus == "sata"
        ),
    ),
    (
        "disk-defaults",
        _set(f"{_DISK0}", {"name": "root"}),
        lambda vm: (
            (vm.disks[0].device, vm.disks[0].bus, vm.disks[0].readonly) == ("disk", "virtio", False)
        ),
    ),
    (
        "boot-order-zero-is-unset",
        _set(f"{_DISK0}.bootOrder", 0),
        lambda vm: vm.disks[0].boot_order is None,
    ),
    (
        "kernel-boot",
        _set(
            f"{_KERNEL}",
            {
                "kernelArgs": "console=ttyS0",
                "container": {"kernelPath": "g/k", "initrdPath": "g/i"},
            },
        ),
        lambda vm: vm.firmware.kernel_boot == KernelBoot("g/k", "g/i", "console=ttyS0"),
    ),
    (
        "efi-secure",
        _set(f"{DOMAIN}.firmware.bootloader", {"efi": {"secureBoot": True}}),
        lambda vm: (vm.firmware.bootloader, vm.firmware.secure_boot) == ("efi", True),
    ),
    (
        "cloud-init-base64",
        _set(
            f"{_VOL0}",
            {"name": "root", "cloudInitNoCloud": {"userDataBase64": "I2Nsb3VkLWNvbmZpZwo="}},
        ),
        lambda vm: vm.volumes[0].source == CloudInitNoCloud(user_data="#cloud-config\n"),
    ),
]


@pytest.mark.parametrize(
    ("mutate", "check"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED]
)
def test_accepted(mutate: Mutation, check: Callable[[Any], bool]) -> None:
    doc = _doc()
    mutate(doc)
    assert check(parse_vm(doc))


def _full() -> Doc:
    """Every kind of field set at least once."""
    return {
        "metadata": {
            "namespace": "tenant-b",
            "name": "full",
            "uid": "6b1f7c1e-4a4e-4f5e-9a57-3a1d2f8f0c11",
            "labels": {"tier": "web", "app": "shop"},
        },
        "spec": {
            "runStrategy": "RerunOnFailure",
            "template": {
                "spec": {
                    "hostname": "shop",
                    "terminationGracePeriodSeconds": "45",
                    "domain": {
                        "cpu": {"sockets": 2, "cores": 2, "threads": 1, "model": "Haswell"},
                        "resources": {"requests": {"memory": "1536Mi", "cpu": "2"}},
                        "machine": {"type": "pc-q35-7.2"},
                        "firmware": {
                            "bootloader": {"efi": {"secureBoot": False}},
                            "kernelBoot": {
                                "kernelArgs": "console=ttyS0",
                                "container": {"kernelPath": "k/vmlinuz", "initrdPath": "k/initrd"},
                            },
                        },
                        "devices": {
                            "disks": [
                                {
                                    "name": "root",
                                    "disk": {"bus": "scsi"},
                                    "bootOrder": 1,
                                    "serial": "ROOT1",
                                    "cache": "writeback",
                                },
                                {"name": "iso", "cdrom": {"bus": "sata", "readonly": False}},
                                {"name": "seed", "disk": {"readonly": True}},
                                {"name": "scratch", "disk": {"bus": "sata"}},
                                {"name": "host", "disk": {}},
                            ],
                            "interfaces": [
                                {
                                    "name": "default",
                                    "masquerade": {},
                                    "macAddress": "02:00:00:00:00:01",
                                    "ports": [
                                        {"name": "http", "port": 80},
                                        {"port": 53, "protocol": "UDP", "nodePort": 30053},
                                    ],
                                },
                                {"name": "lan", "bridge": {}},
                            ],
                        },
                    },
                    "volumes": [
                        {
                            "name": "root",
                            "containerDisk": {
                                "image": "registry:5000/os:1",
                                "path": "/disk/os.qcow2",
                                "imagePullPolicy": "IfNotPresent",
                            },
                        },
                        {"name": "iso", "imageFile": {"path": "iso/tools.iso"}},
                        {
                            "name": "seed",
                            "cloudInitNoCloud": {
                                "userData": "#cloud-config\n",
                                "networkData": "version: 2\n",
                                "networkDataSecretRef": {"name": "net-secret"},
                            },
                        },
                        {"name": "scratch", "emptyDisk": {"capacity": "2Gi"}},
                        {
                            "name": "host",
                            "hostDisk": {
                                "path": "/data/host.img",
                                "type": "DiskOrCreate",
                                "capacity": "1G",
                            },
                        },
                    ],
                    "networks": [
                        {"name": "default", "pod": {}},
                        {"name": "lan", "multus": {"networkName": "br-lan"}},
                    ],
                }
            },
        },
    }


@pytest.mark.parametrize("make", [_doc, _full], ids=["minimal", "every-field"])
def test_render_round_trips(make: Callable[[], Doc]) -> None:
    vm = parse_vm(make())
    rendered = render_vm(vm)
    assert parse_vm(rendered) == vm
    # Canonical: rendering what was rendered changes nothing.
    assert render_vm(parse_vm(rendered)) == rendered


def test_run_strategy_once_round_trips() -> None:
    doc = _doc()
    doc["spec"]["runStrategy"] = "Once"
    vm = parse_vm(doc)
    assert vm.run_strategy is RunStrategy.ONCE
    assert render_vm(vm)["spec"]["runStrategy"] == "Once"
    assert parse_vm(render_vm(vm)) == vm


def test_every_field_parses_to_the_model() -> None:
    vm = parse_vm(_full())
    assert vm.labels == {"tier": "web", "app": "shop"}
    assert vm.run_strategy is RunStrategy.RERUN_ON_FAILURE
    assert vm.termination_grace_period_seconds == 45
    assert (vm.cpu.vcpus, vm.cpu.model, vm.memory_bytes) == (4, "Haswell", 1536 * 1024**2)
    assert [(d.name, d.device, d.bus, d.readonly) for d in vm.disks] == [
        ("root", "disk", "scsi", False),
        ("iso", "cdrom", "sata", False),
        ("seed", "disk", "virtio", True),
        ("scratch", "disk", "sata", False),
        ("host", "disk", "virtio", False),
    ]
    assert [v.source for v in vm.volumes] == [
        ContainerDisk(parse_reference("registry:5000/os:1"), "/disk/os.qcow2", "IfNotPresent"),
        ImageFile("iso/tools.iso"),
        CloudInitNoCloud("#cloud-config\n", "version: 2\n", "", "net-secret"),
        EmptyDisk(2 * 1024**3),
        HostDisk("/data/host.img", "DiskOrCreate", 10**9),
    ]
    ports = vm.interfaces[0].ports
    assert [(p.port, p.protocol, p.node_port) for p in ports] == [
        (80, "TCP", 0),
        (53, "UDP", 30053),
    ]
    assert [(n.kind, n.network_name) for n in vm.networks] == [("pod", ""), ("multus", "br-lan")]


def test_requests_memory_renders_as_guest_memory() -> None:
    doc = _doc()
    del doc["spec"]["template"]["spec"]["domain"]["memory"]
    doc["spec"]["template"]["spec"]["domain"]["resources"] = {"requests": {"memory": "256Mi"}}
    rendered = render_vm(parse_vm(doc))
    domain = rendered["spec"]["template"]["spec"]["domain"]
    assert domain["memory"] == {"guest": "256Mi"}
    assert domain["resources"] == {"requests": {"memory": "256Mi"}}  # kept as written


@pytest.mark.parametrize(
    ("resources", "sockets"),
    [
        ({"requests": {"cpu": "2"}}, 2),
        ({"requests": {"cpu": "500m"}}, 1),
        ({"limits": {"cpu": "3"}, "requests": {"cpu": "1"}}, 3),
    ],
    ids=["request", "millicores", "limit-wins"],
)
def test_cpu_resources_size_the_guest_without_a_topology(
    resources: dict[str, dict[str, str]], sockets: int
) -> None:
    doc = _doc()
    domain = doc["spec"]["template"]["spec"]["domain"]
    domain.pop("cpu", None)
    domain["resources"] = resources
    assert parse_vm(doc).cpu.vcpus == sockets


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ({"requests": {"cpu": "two"}}, "resources.requests.cpu"),
        ({"limits": {"memory": "1Mi"}}, "resources.limits.memory"),
        ({"requests": {"nvidia.com/gpu": "1"}}, "resources.requests.nvidia.com/gpu"),
    ],
    ids=["bad-cpu", "limit-below-guest", "unknown-resource"],
)
def test_bad_resources_are_named(resources: dict[str, dict[str, str]], field: str) -> None:
    doc = _doc()
    doc["spec"]["template"]["spec"]["domain"]["resources"] = resources
    with pytest.raises(InvalidSpec) as info:
        parse_vm(doc)
    assert info.value.field == f"spec.template.spec.domain.{field}"


@pytest.mark.parametrize("value", ["--5", "²"], ids=["double-minus", "superscript-digit"])
def test_malformed_int64_string_is_invalid_spec(value: str) -> None:
    doc = _doc()
    doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = value
    with pytest.raises(InvalidSpec):
        parse_vm(doc)


def test_duplicate_boot_order_is_rejected() -> None:
    doc = _doc()
    _append(f"{DOMAIN}.devices.disks", {"name": "data", "disk": {}, "bootOrder": 1})(doc)
    _append(f"{INSTANCE}.volumes", {"name": "data", "emptyDisk": {"capacity": "1Gi"}})(doc)
    _set(f"{_DISK0}.bootOrder", 1)(doc)
    with pytest.raises(InvalidSpec):
        parse_vm(doc)


@pytest.mark.parametrize("kind", ["emptyDisk", "hostDisk"])
def test_disk_capacities_are_bounded(kind: str) -> None:
    doc = _doc()
    source = (
        {"capacity": "2Pi"}
        if kind == "emptyDisk"
        else {"path": "d.img", "type": "DiskOrCreate", "capacity": "2Pi"}
    )
    _append(f"{DOMAIN}.devices.disks", {"name": "big", "disk": {}})(doc)
    _append(f"{INSTANCE}.volumes", {"name": "big", kind: source})(doc)
    with pytest.raises(InvalidSpec) as info:
        parse_vm(doc)
    assert info.value.field.endswith(f"{kind}.capacity")
