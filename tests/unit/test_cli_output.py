"""Golden tests of vmctl's rendering (agent.cli.output)."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import yaml
from google.protobuf import json_format

from agent.api._gen.virtagent.v1 import node_service_pb2, vm_pb2, vm_service_pb2
from agent.cli.output import (
    describe_node,
    describe_vm,
    error_sentence,
    format_age,
    phase_name,
    render_json,
    render_yaml,
    to_document,
    vm_table,
    watch_line,
)
from agent.client import AgentCallError

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def make_vm(
    name: str,
    *,
    namespace: str = "default",
    phase: vm_pb2.Phase.ValueType = vm_pb2.PHASE_RUNNING,
    age: timedelta | None = timedelta(minutes=5),
    ips: tuple[str, ...] = (),
    node: str = "node-1",
) -> vm_pb2.VirtualMachine:
    vm = json_format.ParseDict(
        {
            "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}"},
            "spec": {"runStrategy": "Always"},
            "status": {"nodeName": node, "reason": "Booted" if ips else ""},
        },
        vm_pb2.VirtualMachine(),
    )
    vm.status.phase = phase
    if age is not None:
        vm.metadata.creation_timestamp.FromDatetime(NOW - age)
    if ips:
        iface = vm.status.interfaces.add(name="default", mac="02:00:00:00:00:01")
        iface.ip_addresses.extend(ips)
        iface.published_ports.add(port=22, node_port=30022, protocol="TCP")
    return vm


def sample() -> list[vm_pb2.VirtualMachine]:
    return [
        make_vm("fedora-vm", ips=("10.200.0.5", "fd00::5")),
        make_vm("db", namespace="team-a", phase=vm_pb2.PHASE_STOPPED, age=timedelta(days=2)),
        make_vm("new", phase=vm_pb2.PHASE_UNSPECIFIED, age=None, node=""),
    ]


def test_table_golden() -> None:
    assert vm_table(sample(), NOW) == textwrap.dedent(
        """\
        NAMESPACE   NAME        PHASE     IP           NODE     AGE
        default     fedora-vm   Running   10.200.0.5   node-1   5m
        team-a      db          Stopped   <none>       node-1   2d
        default     new         <none>    <none>       <none>   <none>
        """
    )


def test_wide_table_golden() -> None:
    vms = [make_vm("web", ips=("10.200.0.5",)), make_vm("db", phase=vm_pb2.PHASE_PAUSED)]
    assert vm_table(vms, NOW, wide=True) == textwrap.dedent(
        """\
        NAMESPACE   NAME   PHASE     REASON   IP           NODE     STRATEGY   PORTS          AGE
        default     web    Running   Booted   10.200.0.5   node-1   Always     22:30022/TCP   5m
        default     db     Paused    <none>   <none>       node-1   Always     <none>         5m
        """
    )


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=0), "0s"),
        (timedelta(seconds=59), "59s"),
        (timedelta(minutes=5, seconds=30), "5m"),
        (timedelta(hours=3, minutes=59), "3h"),
        (timedelta(days=2, hours=23), "2d"),
        (timedelta(seconds=-10), "0s"),
    ],
    ids=["zero", "seconds", "minutes", "hours", "days", "clock-skew"],
)
def test_age(delta: timedelta, text: str) -> None:
    assert format_age(NOW - delta, NOW) == text


def test_phase_names() -> None:
    assert phase_name(vm_pb2.PHASE_RUNNING) == "Running"
    assert phase_name(vm_pb2.PHASE_SUCCEEDED) == "Succeeded"
    assert phase_name(vm_pb2.PHASE_UNSPECIFIED) == "<none>"


def test_json_is_the_protobuf_mapping_with_kubevirt_phase_names() -> None:
    vm = sample()[0]
    document = json.loads(render_json(to_document(vm)))
    assert document["metadata"]["creationTimestamp"] == "2024-05-01T11:55:00Z"
    assert document["status"]["phase"] == "Running"
    assert document["status"]["interfaces"][0]["ipAddresses"] == ["10.200.0.5", "fd00::5"]
    del document["status"]["phase"]
    expected = vm_pb2.VirtualMachine()
    expected.CopyFrom(vm)
    expected.status.ClearField("phase")
    assert json_format.ParseDict(document, vm_pb2.VirtualMachine()) == expected


def test_yaml_golden_with_block_strings() -> None:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.name = "web"
    volume = vm.spec.template.spec.volumes.add(name="cloudinit")
    volume.cloud_init_no_cloud.user_data = "#cloud-config\npassword: x\n"
    text = render_yaml(to_document(vm))
    assert text == textwrap.dedent(
        """\
        metadata:
          name: web
        spec:
          template:
            spec:
              volumes:
              - name: cloudinit
                cloudInitNoCloud:
                  userData: |
                    #cloud-config
                    password: x
        """
    )
    assert yaml.safe_load(text) == to_document(vm)


def test_watch_lines() -> None:
    event = vm_service_pb2.WatchVirtualMachinesResponse(
        type=vm_service_pb2.EVENT_TYPE_MODIFIED, vm=sample()[0]
    )
    synced = vm_service_pb2.WatchVirtualMachinesResponse(type=vm_service_pb2.EVENT_TYPE_SYNCED)
    assert watch_line(event, NOW) == (
        "2024-05-01T12:00:00Z  MODIFIED  default/fedora-vm                 Running    Booted"
    )
    assert watch_line(synced, NOW) == "2024-05-01T12:00:00Z  SYNCED    (snapshot complete)"


def test_describe_golden() -> None:
    vm = sample()[0]
    vm.metadata.labels["app"] = "web"
    vm.metadata.generation = 2
    vm.status.running_generation = 1
    vm.status.qemu_pid = 4242
    vm.status.started_at.FromDatetime(NOW - timedelta(minutes=4))
    vm.status.interfaces[0].tap_name = "tap1a2b3c4d"
    condition = vm.status.conditions.add(type="Ready", status="True")
    condition.last_transition_time.FromDatetime(NOW - timedelta(minutes=4))
    disk = vm.spec.template.spec.domain.devices.disks.add(name="root", boot_order=1)
    disk.disk.bus = "virtio"
    volume = vm.spec.template.spec.volumes.add(name="root")
    volume.container_disk.image = "quay.io/containerdisks/fedora:40"

    assert describe_vm(vm, NOW) == textwrap.dedent(
        """\
        Name:          fedora-vm
        Namespace:     default
        UID:           uid-fedora-vm
        Labels:        app=web
        Created:       2024-05-01T11:55:00Z (5m ago)
        Run Strategy:  Always
        Generation:    2 (running 1: restart to apply the newer spec)
        Node:          node-1
        Phase:         Running
        Reason:        Booted
        Message:       <none>
        Started:       2024-05-01T11:56:00Z (4m ago)
        Stopped:       <none>
        QEMU PID:      4242
        Conditions:
          TYPE    STATUS   REASON   MESSAGE   AGE
          Ready   True     <none>   <none>    4m
        Interfaces:
          NAME      MAC                 IPS                  TAP           PORTS
          default   02:00:00:00:00:01   10.200.0.5,fd00::5   tap1a2b3c4d   22:30022/TCP
        Disks:
          NAME   DEVICE   BUS      BOOT   SOURCE
          root   disk     virtio   1      containerDisk quay.io/containerdisks/fedora:40
        """
    )


def test_describe_node_golden() -> None:
    node = node_service_pb2.Node(
        name="node-1",
        cpu_capacity=16,
        cpu_allocatable=14,
        memory_capacity_bytes=64 * 1024**3,
        memory_allocatable_bytes=60 * 1024**3,
        libvirt_version="10.0.0",
        qemu_version="8.2.2",
        virt_type="kvm",
        cpu_model="EPYC-Milan",
        agent_version="0.1.0",
    )
    node.vm_counts["Running"] = 3
    node.vm_counts["Stopped"] = 1
    assert describe_node(node) == textwrap.dedent(
        """\
        Name:            node-1
        Virtualization:  kvm
        CPU Model:       EPYC-Milan
        CPUs:            14 allocatable of 16
        Memory:          60.0Gi allocatable of 64.0Gi
        libvirt:         10.0.0
        QEMU:            8.2.2
        Agent:           0.1.0
        VMs:             Running=3, Stopped=1
        """
    )


@pytest.mark.parametrize(
    ("code", "action", "vm", "sentence"),
    [
        (
            grpc.StatusCode.NOT_FOUND,
            "stop",
            "default/fedora-vm",
            "vm default/fedora-vm not found on agent 10.0.0.5:9090",
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "list VMs",
            None,
            "cannot reach agent 10.0.0.5:9090: detail",
        ),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "pause",
            "default/db",
            "cannot pause vm default/db in its current state: detail",
        ),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "stop",
            "default/db",
            "timed out trying to stop vm default/db on agent 10.0.0.5:9090 (raise --timeout?)",
        ),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "apply",
            "default/db",
            "agent 10.0.0.5:9090 refused to apply vm default/db: detail",
        ),
        (
            grpc.StatusCode.INTERNAL,
            "read the node",
            None,
            "cannot read the node on agent 10.0.0.5:9090: detail (INTERNAL)",
        ),
    ],
    ids=["not-found", "unavailable", "precondition", "deadline", "invalid", "other"],
)
def test_error_sentences(code: grpc.StatusCode, action: str, vm: str | None, sentence: str) -> None:
    error = AgentCallError(code, "detail", "10.0.0.5:9090")
    assert error_sentence(error, action=action, vm=vm) == sentence
