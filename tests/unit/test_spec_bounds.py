"""Every client-sized part of a spec is bounded, and a spec over a bound names its field."""

from __future__ import annotations

import pytest

from agent.errors import InvalidSpec
from agent.spec import parse_vm
from agent.spec.limits import (
    MAX_DISKS,
    MAX_INTERFACES,
    MAX_LABELS,
    MAX_PORTS,
    MAX_USER_DATA_BYTES,
)
from tests.unit.test_spec import DEVICES, INSTANCE, Mutation, _all, _doc, _set

_CLOUD = {"name": "seed", "cloudInitNoCloud": {"userData": "#cloud-config\n"}}


def _seed(user_data: str = "", network_data: str = "") -> Mutation:
    source = {"userData": user_data or "#cloud-config\n"}
    if network_data:
        source["networkData"] = network_data
    return _all(
        _set(f"{DEVICES}.disks", [{"name": "root", "disk": {}}, {"name": "seed", "cdrom": {}}]),
        _set(
            f"{INSTANCE}.volumes",
            [
                {"name": "root", "imageFile": {"path": "images/root.qcow2"}},
                {"name": "seed", "cloudInitNoCloud": source},
            ],
        ),
    )


BAD = [
    ("labels-count", _set("metadata.labels", {f"k{i}": "v" for i in range(MAX_LABELS + 1)}),
     "metadata.labels"),
    ("label-value-long", _set("metadata.labels", {"app": "v" * 64}), "metadata.labels"),
    ("label-value-chars", _set("metadata.labels", {"app": "a b"}), "metadata.labels"),
    ("label-key", _set("metadata.labels", {"no spaces": "v"}), "metadata.labels"),
    ("label-key-long", _set("metadata.labels", {"k" * 64: "v"}), "metadata.labels"),
    ("disks", _set(f"{DEVICES}.disks", [{"name": f"d{i}"} for i in range(MAX_DISKS + 1)]),
     f"{DEVICES}.disks"),
    ("volumes", _set(f"{INSTANCE}.volumes", [_CLOUD] * (MAX_DISKS + 1)), f"{INSTANCE}.volumes"),
    ("interfaces", _set(f"{DEVICES}.interfaces", [{"name": "n"}] * (MAX_INTERFACES + 1)),
     f"{DEVICES}.interfaces"),
    ("networks", _set(f"{INSTANCE}.networks", [{"name": "n"}] * (MAX_INTERFACES + 1)),
     f"{INSTANCE}.networks"),
    ("ports", _set(f"{DEVICES}.interfaces.0.ports", [{"port": 80}] * (MAX_PORTS + 1)),
     f"{DEVICES}.interfaces[0].ports"),
    ("user-data", _seed("x" * (MAX_USER_DATA_BYTES + 1)),
     f"{INSTANCE}.volumes[1].cloudInitNoCloud.userData"),
    ("network-data", _seed(network_data="x" * (MAX_USER_DATA_BYTES + 1)),
     f"{INSTANCE}.volumes[1].cloudInitNoCloud.networkData"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "field"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_spec_over_a_bound_is_refused_naming_the_field(mutate: Mutation, field: str) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(InvalidSpec) as caught:
        parse_vm(doc)
    assert caught.value.field == field, str(caught.value)


def test_specs_at_the_bounds_are_fine() -> None:
    doc = _doc()
    _set("metadata.labels", {f"example.com/k{i}": "v" * 63 for i in range(MAX_LABELS)})(doc)
    _seed("x" * MAX_USER_DATA_BYTES)(doc)
    assert len(parse_vm(doc).labels) == MAX_LABELS


# -- every field checked: INVALID_ARGUMENT naming it, never an internal error ---------------

_DOMAIN = f"{INSTANCE}.domain"
_KB = {"container": {"kernelPath": "vmlinuz"}}

FIELDS = [
    ("memory-400-digits", _set(f"{_DOMAIN}.memory.guest", "9" * 400), f"{_DOMAIN}.memory.guest"),
    ("memory-exabyte", _set(f"{_DOMAIN}.memory.guest", "1Ei"), f"{_DOMAIN}.memory.guest"),
    ("memory-64-tib", _set(f"{_DOMAIN}.memory.guest", "64Ti"), f"{_DOMAIN}.memory.guest"),
    ("request-400-digits", _set(f"{_DOMAIN}.resources.requests.memory", "9" * 400),
     f"{_DOMAIN}.resources.requests.memory"),
    ("cpu-400-digits", _set(f"{_DOMAIN}.resources.requests.cpu", "9" * 400),
     f"{_DOMAIN}.resources.requests.cpu"),
    ("cpu-model-control", _set(f"{_DOMAIN}.cpu", {"model": "host\x00-model"}),
     f"{_DOMAIN}.cpu.model"),
    ("cpu-model-markup", _set(f"{_DOMAIN}.cpu", {"model": "x'/><evil/>"}),
     f"{_DOMAIN}.cpu.model"),
    ("kernel-args-control", _set(f"{_DOMAIN}.firmware.kernelBoot",
                                 {**_KB, "kernelArgs": "console=ttyS0\x01"}),
     f"{_DOMAIN}.firmware.kernelBoot.kernelArgs"),
    ("kernel-args-newline", _set(f"{_DOMAIN}.firmware.kernelBoot",
                                 {**_KB, "kernelArgs": "a\nb"}),
     f"{_DOMAIN}.firmware.kernelBoot.kernelArgs"),
    ("kernel-args-long", _set(f"{_DOMAIN}.firmware.kernelBoot",
                              {**_KB, "kernelArgs": "a" * 5000}),
     f"{_DOMAIN}.firmware.kernelBoot.kernelArgs"),
    ("port-name-control", _set(f"{DEVICES}.interfaces.0.ports.0.name", "web\x1b[0m"),
     f"{DEVICES}.interfaces[0].ports[0].name"),
    ("port-name-long", _set(f"{DEVICES}.interfaces.0.ports.0.name", "p" * 100),
     f"{DEVICES}.interfaces[0].ports[0].name"),
    ("image-path-control", _set(f"{INSTANCE}.volumes.0.imageFile.path", "images/\x07.qcow2"),
     f"{INSTANCE}.volumes[0].imageFile.path"),
    ("user-data-control", _seed("#cloud-config\n\x00"),
     f"{INSTANCE}.volumes[1].cloudInitNoCloud.userData"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "field"), [c[1:] for c in FIELDS], ids=[c[0] for c in FIELDS])
def test_hostile_values_are_invalid_naming_the_field(mutate: Mutation, field: str) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(InvalidSpec) as caught:
        parse_vm(doc)
    assert caught.value.field == field, str(caught.value)


def test_ordinary_values_still_parse() -> None:
    doc = _doc()
    _set(f"{_DOMAIN}.cpu", {"model": "host-passthrough", "cores": 2})(doc)
    _set(f"{_DOMAIN}.firmware.kernelBoot", {**_KB, "kernelArgs": "console=ttyS0 quiet"})(doc)
    _seed("#cloud-config\nruncmd:\n\t- [echo, hi]\r\n")(doc)
    vm = parse_vm(doc)
    assert vm.cpu.model == "host-passthrough" and vm.cpu.vcpus == 2
