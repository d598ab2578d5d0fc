"""The agent's bookkeeping in a domain's ``<metadata>``: libvirt is the agent's database.

Each domain the agent owns carries, in the namespace ``METADATA_URI``::

    <va:vm xmlns:va="https://virt-agent.io/xmlns/vm/v1">
      <va:spec>{canonical JSON of render_vm(spec)}</va:spec>
      <va:state>{canonical JSON of Bookkeeping}</va:state>
    </va:vm>

libvirt keeps the namespace but may rename the prefix (and ``virDomainGetMetadata`` returns
the element without one), so reading goes by namespace URI and accepts children with or
without the namespace.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from agent.errors import InvalidSpec
from agent.models import Bookkeeping, NicAllocation, Port, VMAllocation, VMSpec
from agent.naming import METADATA_KEY, METADATA_URI
from agent.spec import parse_vm, render_vm

__all__ = [
    "CorruptMetadata",
    "bookkeeping_from_json",
    "bookkeeping_to_json",
    "canonical_spec_json",
    "metadata_element",
    "metadata_payload",
    "parse_metadata",
    "read_metadata",
]

_VM = f"{{{METADATA_URI}}}vm"


class CorruptMetadata(ValueError):
    """The domain carries the agent's namespace but its content cannot be read back."""


def canonical_spec_json(spec: VMSpec) -> str:
    """The spec as stored: equal specs give equal text, so "unchanged" is a string compare."""
    return json.dumps(render_vm(spec), sort_keys=True, separators=(",", ":"))


def bookkeeping_to_json(bookkeeping: Bookkeeping) -> str:
    fields: dict[str, Any] = {
        "generation": bookkeeping.generation,
        "created_at": bookkeeping.created_at,
        "started_at": bookkeeping.started_at,
        "stopped_at": bookkeeping.stopped_at,
        "last_reason": bookkeeping.last_reason,
        "node_name": bookkeeping.node_name,
        "halted": bookkeeping.halted,
    }
    if bookkeeping.starting:  # only while a start is under way; older agents ignore it
        fields["starting"] = True
    if bookkeeping.resumed:
        fields["resumed"] = True
    if bookkeeping.network is not None:
        fields["network"] = _allocation_to_json(bookkeeping.network)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def bookkeeping_from_json(text: str) -> Bookkeeping:
    """Read what ``bookkeeping_to_json`` wrote; keys it does not know are ignored, so an
    older agent can still read what a newer one stored. Agents before the typed allocation
    kept it under ``extra.network``: read from there too, so their VMs keep their addresses."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptMetadata(f"state is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CorruptMetadata("state is not a JSON object")
    network = data.get("network")
    if network is None and isinstance(data.get("extra"), dict):
        network = data["extra"].get("network")
    return Bookkeeping(
        generation=_typed(data, "generation", int, None),
        created_at=float(_typed(data, "created_at", (int, float), None)),
        started_at=float(_typed(data, "started_at", (int, float), 0.0)),
        stopped_at=float(_typed(data, "stopped_at", (int, float), 0.0)),
        last_reason=_typed(data, "last_reason", str, ""),
        node_name=_typed(data, "node_name", str, ""),
        halted=data.get("halted") is True,
        starting=data.get("starting") is True,
        resumed=data.get("resumed") is True,
        network=None if network is None else _allocation_from_json(network),
    )


def _typed(data: dict[str, Any], key: str, kind: Any, default: Any) -> Any:
    value = data.get(key, default)
    # bool is an int to isinstance; a stored true is still not a generation.
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise CorruptMetadata(f"state.{key} is {value!r}")
    return value


def _allocation_to_json(allocation: VMAllocation) -> dict[str, Any]:
    return {
        "namespace": allocation.namespace,
        "group": allocation.group,
        "nics": [
            {
                "name": n.name,
                "binding": n.binding,
                "tap": n.tap,
                "mac": n.mac,
                "ip": n.ip,
                "bridge": n.bridge,
                "ports": [[p.protocol, p.port, p.node_port, p.name] for p in n.ports],
            }
            for n in allocation.nics
        ],
    }


def _allocation_from_json(data: Any) -> VMAllocation:
    """Read what ``_allocation_to_json`` wrote; anything else is CorruptMetadata (a VM whose
    allocation cannot be read must not have its address handed to another)."""
    try:
        nics = tuple(
            NicAllocation(
                name=str(n["name"]),
                binding=str(n["binding"]),
                tap=str(n["tap"]),
                mac=str(n["mac"]),
                ip=str(n.get("ip", "")),
                bridge=str(n.get("bridge", "")),
                ports=tuple(
                    Port(protocol=str(p[0]), port=int(p[1]), node_port=int(p[2]), name=str(p[3]))
                    for p in n.get("ports", [])
                ),
            )
            for n in data["nics"]
        )
        return VMAllocation(namespace=str(data["namespace"]), group=int(data["group"]), nics=nics)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
        raise CorruptMetadata(f"state.network is unreadable: {exc!r}") from None


def metadata_element(spec: VMSpec, bookkeeping: Bookkeeping) -> ET.Element:
    """``<va:vm>`` for ``HostPlan.metadata``, declaring its namespace on itself.

    The prefix is written literally (with an ``xmlns:va`` attribute) rather than through
    ``ET.register_namespace``, which is process-wide state and would also move the
    declaration to the root ``<domain>``.
    """
    return _vm_element(spec, bookkeeping, prefix=f"{METADATA_KEY}:")


def metadata_payload(spec: VMSpec, bookkeeping: Bookkeeping) -> str:
    """The text for ``virDomainSetMetadata(ELEMENT, text, METADATA_KEY, METADATA_URI)``.

    It carries no namespace: libvirt puts the element and its children in ``METADATA_URI``
    itself, and refuses (“failed to create a new XML namespace”) text that declares it.
    """
    return ET.tostring(_vm_element(spec, bookkeeping, prefix=""), encoding="unicode")


def _vm_element(spec: VMSpec, bookkeeping: Bookkeeping, *, prefix: str) -> ET.Element:
    vm = ET.Element(f"{prefix}vm")
    if prefix:
        vm.set(f"xmlns:{METADATA_KEY}", METADATA_URI)
    ET.SubElement(vm, f"{prefix}spec").text = canonical_spec_json(spec)
    ET.SubElement(vm, f"{prefix}state").text = bookkeeping_to_json(bookkeeping)
    return vm


def read_metadata(domain_xml: str) -> tuple[VMSpec, Bookkeeping] | None:
    """The spec and bookkeeping a domain carries; None when it is not the agent's domain."""
    root = ET.fromstring(domain_xml)
    container = root.find("metadata")
    vm = container.find(_VM) if container is not None else None
    if vm is None:
        return None
    return _read_vm(vm)


def parse_metadata(element_xml: str) -> tuple[VMSpec, Bookkeeping]:
    """Read the element alone, as ``virDomainGetMetadata`` returns it (without namespace)."""
    return _read_vm(ET.fromstring(element_xml))


def _read_vm(vm: ET.Element) -> tuple[VMSpec, Bookkeeping]:
    spec_text = _child_text(vm, "spec")
    try:
        document = json.loads(spec_text)
    except json.JSONDecodeError as exc:
        raise CorruptMetadata(f"spec is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise CorruptMetadata("spec is not a JSON object")
    try:
        spec = parse_vm(document)
    except InvalidSpec as exc:
        raise CorruptMetadata(f"stored spec no longer parses: {exc}") from exc
    return spec, bookkeeping_from_json(_child_text(vm, "state"))


def _child_text(vm: ET.Element, name: str) -> str:
    # libvirt's setMetadata namespaces the children too, but accept bare ones as well.
    child = vm.find(f"{{{METADATA_URI}}}{name}")
    if child is None:
        child = vm.find(name)
    if child is None or not (child.text or "").strip():
        raise CorruptMetadata(f"the agent's metadata has no {name}")
    return (child.text or "").strip()
