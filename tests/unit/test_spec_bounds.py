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
