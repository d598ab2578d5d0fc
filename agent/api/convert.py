"""Conversions between protobuf messages and the agent's models."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from agent.api._gen.virtagent.v1 import vm_pb2
from agent.domain.vmcache import VMRecord
from agent.errors import InvalidSpec
from agent.models import Phase, VMSpec
from agent.spec import parse_vm, render_vm

__all__ = ["spec_from_proto", "vm_to_proto"]

_PHASES = {phase: getattr(vm_pb2, f"PHASE_{phase.name}") for phase in Phase}


def spec_from_proto(message: vm_pb2.VirtualMachine) -> VMSpec:
    """Validate a VirtualMachine message into a VMSpec (errors name the JSON field path)."""
    if not message.HasField("metadata"):
        raise InvalidSpec("vm.metadata", "is required")
    document: dict[str, Any] = json_format.MessageToDict(message)
    document.pop("status", None)
    document.get("metadata", {}).pop("generation", None)
    document.get("metadata", {}).pop("creationTimestamp", None)
    return parse_vm(document)


def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


# Serialized spec part of the message per VMSpec object: rendering and ParseDict cost ~80%
# of a Get (bench/bench_rpc.py); a spec is frozen and a record keeps its object until the
# next Apply, so reads of one VM share one conversion. The entry holds the spec itself, so
# its id() cannot be reused while cached.
_SPEC_CACHE: dict[int, tuple[VMSpec, bytes]] = {}
_SPEC_CACHE_MAX = 4096


def _spec_message(spec: VMSpec) -> bytes:
    hit = _SPEC_CACHE.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    message = vm_pb2.VirtualMachine()
    json_format.ParseDict(render_vm(spec), message)
    data = message.SerializeToString()
    if len(_SPEC_CACHE) >= _SPEC_CACHE_MAX:
        _SPEC_CACHE.clear()  # simple bound; the live VMs' entries come back on their next read
    _SPEC_CACHE[id(spec)] = (spec, data)
    return data


def vm_to_proto(record: VMRecord) -> vm_pb2.VirtualMachine:
    """The VirtualMachine message of a record: stored spec plus observed status."""
    message = vm_pb2.VirtualMachine.FromString(_spec_message(record.spec))
    message.metadata.generation = record.books.generation
    if record.books.created_at:
        message.metadata.creation_timestamp.CopyFrom(timestamp(record.books.created_at))
    status = record.status
    out = message.status
    out.phase = _PHASES[status.phase]
    out.reason = status.reason
    out.message = status.message
    out.node_name = status.node_name
    out.qemu_pid = status.qemu_pid
    out.running_generation = status.running_generation
    if status.started_at:
        out.started_at.CopyFrom(timestamp(status.started_at))
    if status.stopped_at:
        out.stopped_at.CopyFrom(timestamp(status.stopped_at))
    for condition in status.conditions:
        out.conditions.add(
            type=condition.type,
            status="True" if condition.status else "False",
            reason=condition.reason,
            message=condition.message,
        )
    for iface in status.interfaces:
        item = out.interfaces.add(name=iface.name, mac=iface.mac, tap_name=iface.tap_name)
        item.ip_addresses.extend(iface.ip_addresses)
        for port in iface.published_ports:
            item.published_ports.add(
                name=port.name, port=port.port, protocol=port.protocol, node_port=port.node_port
            )
    return message
