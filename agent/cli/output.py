"""Rendering for vmctl: tables, describe text, watch lines, JSON/YAML, error sentences.

Pure functions from messages to text (``now`` is passed in), so that each output can be
compared with golden text in tests.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from agent.api._gen.virtagent.v1 import node_service_pb2, vm_pb2, vm_service_pb2
from agent.client import AgentCallError

__all__ = [
    "NONE",
    "describe_node",
    "describe_vm",
    "error_sentence",
    "event_type_name",
    "format_age",
    "phase_name",
    "render_json",
    "render_table",
    "render_yaml",
    "to_document",
    "vm_table",
    "watch_line",
]

NONE = "<none>"
_COLUMNS = ("NAMESPACE", "NAME", "PHASE", "IP", "NODE", "AGE")
_WIDE_COLUMNS = ("NAMESPACE", "NAME", "PHASE", "REASON", "IP", "NODE", "STRATEGY", "PORTS", "AGE")


def phase_name(phase: vm_pb2.Phase.ValueType) -> str:
    """``PHASE_RUNNING`` → ``Running``; unspecified → ``<none>``."""
    if phase == vm_pb2.PHASE_UNSPECIFIED:
        return NONE
    try:
        return vm_pb2.Phase.Name(phase).removeprefix("PHASE_").capitalize()
    except ValueError:
        return f"Phase({phase})"  # a newer agent's phase


def event_type_name(event_type: vm_service_pb2.EventType.ValueType) -> str:
    try:
        return vm_service_pb2.EventType.Name(event_type).removeprefix("EVENT_TYPE_")
    except ValueError:
        return f"EventType({event_type})"


def format_age(created: datetime | None, now: datetime) -> str:
    """kubectl-style age: ``45s``, ``5m``, ``3h``, ``2d``."""
    if created is None:
        return NONE
    seconds = max(int((now - created).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _time(stamp: Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def _created(vm: vm_pb2.VirtualMachine) -> datetime | None:
    return _time(vm.metadata.creation_timestamp, vm.metadata.HasField("creation_timestamp"))


def _first_ip(vm: vm_pb2.VirtualMachine) -> str:
    interfaces = vm.status.interfaces
    if interfaces and interfaces[0].ip_addresses:
        return interfaces[0].ip_addresses[0]
    return NONE


def _ports(vm: vm_pb2.VirtualMachine) -> str:
    """Published ports as ``port:nodePort/PROTO`` (kubectl's Service notation)."""
    ports = [
        f"{p.port}:{p.node_port}/{p.protocol or 'TCP'}"
        for iface in vm.status.interfaces
        for p in iface.published_ports
    ]
    return ",".join(ports) or NONE


def vm_table(vms: Iterable[vm_pb2.VirtualMachine], now: datetime, *, wide: bool = False) -> str:
    """The ``vmctl get`` table: NAMESPACE NAME PHASE IP NODE AGE (more columns when wide)."""
    rows = []
    for vm in vms:
        meta, status = vm.metadata, vm.status
        age = format_age(_created(vm), now)
        phase, ip, node = phase_name(status.phase), _first_ip(vm), status.node_name or NONE
        if wide:
            strategy = vm.spec.run_strategy or NONE
            reason = status.reason or NONE
            rows.append(
                [meta.namespace, meta.name, phase, reason, ip, node, strategy, _ports(vm), age]
            )
        else:
            rows.append([meta.namespace, meta.name, phase, ip, node, age])
    return render_table(_WIDE_COLUMNS if wide else _COLUMNS, rows)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns aligned and separated by three spaces, no borders (kubectl's look)."""
    table = Table(box=None, pad_edge=False, padding=(0, 3, 0, 0), show_edge=False)
    for header in headers:
        table.add_column(header, no_wrap=True, header_style="", style="")
    for row in rows:
        table.add_row(*row)
    return _render(table)


def _render(renderable: Any) -> str:
    console = Console(
        file=io.StringIO(), width=1000, color_system=None, force_terminal=False, highlight=False
    )
    with console.capture() as capture:
        console.print(renderable, markup=False)
    return "".join(line.rstrip() + "\n" for line in capture.get().splitlines())


def watch_line(event: vm_service_pb2.WatchVirtualMachinesResponse, at: datetime) -> str:
    """One line per watch event: time, type, namespace/name, phase, reason."""
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    kind = event_type_name(event.type)
    if event.type == vm_service_pb2.EVENT_TYPE_SYNCED:
        return f"{stamp}  {kind:<8}  (snapshot complete)"
    vm = event.vm
    name = f"{vm.metadata.namespace}/{vm.metadata.name}"
    phase = phase_name(vm.status.phase)
    return f"{stamp}  {kind:<8}  {name:<32}  {phase:<9}  {vm.status.reason}".rstrip()


def describe_vm(vm: vm_pb2.VirtualMachine, now: datetime) -> str:
    """``vmctl describe``: identity, status, conditions, interfaces and disks."""
    meta, status = vm.metadata, vm.status
    created = _created(vm)
    started = _time(status.started_at, status.HasField("started_at"))
    stopped = _time(status.stopped_at, status.HasField("stopped_at"))
    labels = ",".join(f"{k}={v}" for k, v in sorted(meta.labels.items()))
    fields = [
        ("Name", meta.name),
        ("Namespace", meta.namespace),
        ("UID", meta.uid or NONE),
        ("Labels", labels or NONE),
        ("Created", _when(created, now)),
        ("Run Strategy", vm.spec.run_strategy or NONE),
        ("Generation", _generation(vm)),
        ("Node", status.node_name or NONE),
        ("Phase", phase_name(status.phase)),
        ("Reason", status.reason or NONE),
        ("Message", status.message or NONE),
        ("Started", _when(started, now)),
        ("Stopped", _when(stopped, now)),
        ("QEMU PID", str(status.qemu_pid) if status.qemu_pid else NONE),
    ]
    out = [_properties(fields)]
    conditions = [
        [
            c.type,
            c.status,
            c.reason or NONE,
            c.message or NONE,
            format_age(_time(c.last_transition_time, c.HasField("last_transition_time")), now),
        ]
        for c in status.conditions
    ]
    out.append(_section("Conditions", ("TYPE", "STATUS", "REASON", "MESSAGE", "AGE"), conditions))
    interfaces = [
        [
            i.name,
            i.mac or NONE,
            ",".join(i.ip_addresses) or NONE,
            i.tap_name or NONE,
            ",".join(f"{p.port}:{p.node_port}/{p.protocol or 'TCP'}" for p in i.published_ports)
            or NONE,
        ]
        for i in status.interfaces
    ]
    out.append(_section("Interfaces", ("NAME", "MAC", "IPS", "TAP", "PORTS"), interfaces))
    out.append(_section("Disks", ("NAME", "DEVICE", "BUS", "BOOT", "SOURCE"), _disk_rows(vm)))
    return "".join(out)


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return NONE
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%SZ')} ({format_age(moment, now)} ago)"


def _generation(vm: vm_pb2.VirtualMachine) -> str:
    text = str(vm.metadata.generation)
    running = vm.status.running_generation
    if running and running != vm.metadata.generation:
        text += f" (running {running}: restart to apply the newer spec)"
    return text


def _disk_rows(vm: vm_pb2.VirtualMachine) -> list[list[str]]:
    instance = vm.spec.template.spec
    sources = {v.name: _volume_source(v) for v in instance.volumes}
    for volume in instance.volumes:
        template = _imported(vm, volume)
        if template:
            sources[volume.name] += f" ({template})"
    rows = []
    for disk in instance.domain.devices.disks:
        device = disk.WhichOneof("device") or "disk"
        bus = getattr(disk, device).bus or NONE
        boot = str(disk.boot_order) if disk.HasField("boot_order") else NONE
        rows.append([disk.name, device, bus, boot, sources.get(disk.name, NONE)])
    return rows


def _volume_source(volume: vm_pb2.Volume) -> str:
    kind = volume.WhichOneof("volume_source")
    if kind == "container_disk":
        return f"containerDisk {volume.container_disk.image}"
    if kind == "host_disk":
        return f"hostDisk {volume.host_disk.path}"
    if kind == "image_file":
        return f"imageFile {volume.image_file.path}"
    if kind == "empty_disk":
        return f"emptyDisk {volume.empty_disk.capacity}"
    if kind == "cloud_init_no_cloud":
        return "cloudInitNoCloud"
    if kind == "cloud_init_config_drive":
        return "cloudInitConfigDrive"
    if kind == "secret":
        return f"secret {volume.secret.secret_name}"
    if kind == "config_map":
        return f"configMap {volume.config_map.name}"
    if kind == "service_account":
        return f"serviceAccount {volume.service_account.service_account_name}"
    if kind == "persistent_volume_claim":
        claim = volume.persistent_volume_claim
        return f"persistentVolumeClaim {claim.claim_name}" + (" (read-only)" * claim.read_only)
    if kind == "data_volume":
        return f"dataVolume {volume.data_volume.name}"
    return NONE


def _imported(vm: vm_pb2.VirtualMachine, volume: vm_pb2.Volume) -> str:
    """How a dataVolume's template fills it: ``http <url>, 10Gi``; empty without one."""
    if volume.WhichOneof("volume_source") != "data_volume":
        return ""
    for template in vm.spec.data_volume_templates:
        if template.metadata.name == volume.data_volume.name:
            spec = template.spec
            size = (spec.storage if spec.HasField("storage") else spec.pvc).resources
            kind = spec.source.WhichOneof("source") or "sourceRef"
            url = getattr(getattr(spec.source, kind, None), "url", "")
            return f"{kind}{' ' + url if url else ''}, {size.requests.get('storage', '?')}"
    return ""


def _section(title: str, headers: Sequence[str], rows: list[list[str]]) -> str:
    if not rows:
        return f"{title}:  {NONE}\n"
    table = render_table(headers, rows)
    return f"{title}:\n" + "".join(f"  {line}\n" for line in table.splitlines())


def _properties(fields: Sequence[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in fields) + 3  # "Label:" and two spaces
    return "".join(f"{label + ':':<{width}}{value}\n" for label, value in fields)


def describe_node(node: node_service_pb2.Node) -> str:
    """``vmctl node``: capacity, versions and VM counts."""
    gib = 1024**3
    counts = ", ".join(f"{phase}={n}" for phase, n in sorted(node.vm_counts.items()))
    return _properties(
        [
            ("Name", node.name or NONE),
            ("Virtualization", node.virt_type or NONE),
            ("CPU Model", node.cpu_model or NONE),
            ("CPUs", f"{node.cpu_allocatable} allocatable of {node.cpu_capacity}"),
            (
                "Memory",
                f"{node.memory_allocatable_bytes / gib:.1f}Gi allocatable of "
                f"{node.memory_capacity_bytes / gib:.1f}Gi",
            ),
            ("libvirt", node.libvirt_version or NONE),
            ("QEMU", node.qemu_version or NONE),
            ("Agent", node.agent_version or NONE),
            ("VMs", counts or NONE),
        ]
    )


def to_document(message: Message) -> dict[str, Any]:
    """The protobuf JSON mapping (camelCase: a KubeVirt-shaped document for a VM).

    A VM's phase is written as KubeVirt writes it ("Running", not "PHASE_RUNNING").
    """
    document: dict[str, Any] = json_format.MessageToDict(message)
    if isinstance(message, vm_pb2.VirtualMachine) and message.status.phase:
        document["status"]["phase"] = phase_name(message.status.phase)
    return document


def render_json(document: Any) -> str:
    return json.dumps(document, indent=2) + "\n"


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (cloud-init user data) as ``|`` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def render_yaml(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def error_sentence(error: AgentCallError, *, action: str, vm: str | None = None) -> str:
    """A sentence for a failed call: ``action`` is what was being done ("stop", "list VMs"),
    ``vm`` the ``namespace/name`` it was done to, if any."""
    code, message, agent = error.code, error.message, error.target
    what = f"{action} vm {vm}" if vm else action
    if code == grpc.StatusCode.NOT_FOUND and vm and action != "apply":
        return f"vm {vm} not found on agent {agent}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach agent {agent}: {message}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"timed out trying to {what} on agent {agent} (raise --timeout?)"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return f"agent {agent} refused to {what}: {message}"
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return f"cannot {what}: agent {agent} has a different VM of that name: {message}"
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return f"cannot {what} in its current state: {message}"
    if code == grpc.StatusCode.ABORTED:
        return f"cannot {what} now, another operation on it is in flight (try again): {message}"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"agent {agent} cannot {what} (not implemented): {message}"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return f"agent {agent} refused the client's credentials: {message}"
    return f"cannot {what} on agent {agent}: {message} ({code.name})"
