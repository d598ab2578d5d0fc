"""vmctl end to end: argument parsing, --dry-run, exit codes, and commands against a fake agent."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from agent.api._gen.virtagent.v1 import vm_pb2, vm_service_pb2, vm_service_pb2_grpc
from agent.cli.main import main

COMMANDS = [
    "apply",
    "get",
    "list",
    "describe",
    "start",
    "stop",
    "restart",
    "pause",
    "unpause",
    "delete",
    "watch",
    "console",
    "node",
]

MANIFEST = textwrap.dedent(
    """\
    apiVersion: kubevirt.io/v1
    kind: VirtualMachine
    metadata:
      name: web
    spec:
      running: false
      template:
        spec:
          domain:
            resources:
              requests:
                memory: 512Mi
            devices:
              disks:
                - name: root
                  disk: {bus: virtio}
          volumes:
            - name: root
              containerDisk:
                image: registry:5000/web:1
    """
)


class FakeVMs(vm_service_pb2_grpc.VirtualMachineServiceServicer):
    """Just enough of the agent for the commands: VMs in a dict, scripted watch events."""

    def __init__(self) -> None:
        self.vms: dict[tuple[str, str], vm_pb2.VirtualMachine] = {}
        self.calls: list[str] = []
        self.later: list[vm_service_pb2.WatchVirtualMachinesResponse] = []
        self.after_start = vm_pb2.PHASE_RUNNING

    def add(self, name: str, phase: vm_pb2.Phase.ValueType, namespace: str = "default") -> None:
        vm = vm_pb2.VirtualMachine()
        vm.metadata.namespace, vm.metadata.name = namespace, name
        vm.status.phase = phase
        self.vms[(namespace, name)] = vm

    def _vm(self, request: Any, context: Any) -> vm_pb2.VirtualMachine:
        vm = self.vms.get((request.namespace, request.name))
        if vm is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such vm")
        assert vm is not None  # abort raised
        return vm

    def ApplyVirtualMachine(self, request: Any, context: Any) -> Any:
        self.calls.append("apply")
        key = (request.vm.metadata.namespace, request.vm.metadata.name)
        changed = key not in self.vms
        vm = vm_pb2.VirtualMachine()
        vm.CopyFrom(request.vm)
        vm.metadata.generation = 1
        self.vms[key] = vm
        return vm_service_pb2.ApplyVirtualMachineResponse(vm=vm, changed=changed)

    def GetVirtualMachine(self, request: Any, context: Any) -> Any:
        self.calls.append("get")
        return vm_service_pb2.GetVirtualMachineResponse(vm=self._vm(request, context))

    def ListVirtualMachines(self, request: Any, context: Any) -> Any:
        self.calls.append(f"list {request.namespace!r}")
        vms = [v for (ns, _), v in sorted(self.vms.items()) if request.namespace in ("", ns)]
        return vm_service_pb2.ListVirtualMachinesResponse(vms=vms)

    def WatchVirtualMachines(self, request: Any, context: Any) -> Iterator[Any]:
        self.calls.append("watch")
        for vm in list(self.vms.values()):
            yield vm_service_pb2.WatchVirtualMachinesResponse(
                type=vm_service_pb2.EVENT_TYPE_ADDED, vm=vm
            )
        yield vm_service_pb2.WatchVirtualMachinesResponse(type=vm_service_pb2.EVENT_TYPE_SYNCED)
        yield from self.later

    def StartVirtualMachine(self, request: Any, context: Any) -> Any:
        self.calls.append("start")
        vm = self._vm(request, context)
        vm.status.phase = self.after_start
        return vm_service_pb2.StartVirtualMachineResponse(vm=vm)

    def StopVirtualMachine(self, request: Any, context: Any) -> Any:
        self.calls.append(f"stop force={request.force} grace={request.grace_period_seconds}")
        vm = self._vm(request, context)
        if vm.status.phase != vm_pb2.PHASE_RUNNING:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "vm is not running")
        vm.status.phase = vm_pb2.PHASE_STOPPED
        return vm_service_pb2.StopVirtualMachineResponse(vm=vm)

    def RestartVirtualMachine(self, request: Any, context: Any) -> Any:
        self.calls.append(f"restart hard={request.hard}")
        return vm_service_pb2.RestartVirtualMachineResponse(vm=self._vm(request, context))

    def PauseVirtualMachine(self, request: Any, context: Any) -> Any:
        self.calls.append("pause")
        vm = self._vm(request, context)
        vm.status.phase = vm_pb2.PHASE_PAUSED
        return vm_service_pb2.PauseVirtualMachineResponse(vm=vm)

    def ResumeVirtualMachine(self, request: Any, context: Any) -> Any:
        self.calls.append("resume")
        vm = self._vm(request, context)
        vm.status.phase = vm_pb2.PHASE_RUNNING
        return vm_service_pb2.ResumeVirtualMachineResponse(vm=vm)

    def DeleteVirtualMachine(self, request: Any, context: Any) -> Any:
        self.calls.append("delete")
        self.vms.pop((request.namespace, request.name), None)
        return vm_service_pb2.DeleteVirtualMachineResponse()

    def GetConsoleLog(self, request: Any, context: Any) -> Iterator[Any]:
        self.calls.append(f"console tail={request.tail_lines} follow={request.follow}")
        yield vm_service_pb2.GetConsoleLogResponse(data=b"\x1b[0mlogin: ")


@pytest.fixture
def fake() -> FakeVMs:
    return FakeVMs()


@pytest.fixture
def agent(fake: FakeVMs) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    vm_service_pb2_grpc.add_VirtualMachineServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def run(agent: str, *args: str) -> int:
    return main(["--agent", agent, "--timeout", "5", *args])


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f"    {command} " in out
    assert "migrate" not in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: vmctl {command}")
    assert "--agent ADDR" in out and "--namespace" in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["get", "--bogus"],
        ["stop"],
        ["get", "-o", "xml"],
        ["stop", "x", "--hard"],
    ],
    ids=["no-command", "unknown-command", "unknown-flag", "missing-name", "bad-output", "bad-flag"],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2


def test_dry_run_prints_the_vm_and_calls_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "web.yaml"
    manifest.write_text(MANIFEST + "---\n" + MANIFEST.replace("name: web", "name: db"))

    code = main(
        ["--agent", "127.0.0.1:1", "-n", "team-a", "apply", "-f", str(manifest), "--dry-run"]
    )

    assert code == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"] for d in documents] == [
        {"namespace": "team-a", "name": "web"},
        {"namespace": "team-a", "name": "db"},
    ]
    assert documents[0]["spec"]["runStrategy"] == "Halted"
    disk = documents[0]["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]
    assert disk == {"name": "root", "disk": {"bus": "virtio"}}


def test_unmappable_manifest_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "gpu.yaml"
    manifest.write_text(MANIFEST.replace("disks:", "gpus: [{name: g}]\n          disks:"))

    assert main(["apply", "-f", str(manifest), "--dry-run"]) == 2
    assert capsys.readouterr().err == (
        "vmctl: spec.template.spec.domain.devices.gpus: field is not supported by virt-agent\n"
    )


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apply", "-f", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.startswith(f"vmctl: cannot read {tmp_path}/nope.yaml")


def test_apply_then_get(
    agent: str, fake: FakeVMs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "web.yaml"
    manifest.write_text(MANIFEST)

    assert run(agent, "apply", "-f", str(manifest)) == 0
    assert run(agent, "apply", "-f", str(manifest)) == 0
    assert capsys.readouterr().out == "vm default/web created\nvm default/web unchanged\n"
    assert run(agent, "get", "web", "-o", "json") == 0
    assert '"name": "web"' in capsys.readouterr().out


def test_vmi_is_started_after_apply(
    agent: str, fake: FakeVMs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = yaml.safe_load(MANIFEST)
    vmi = {**spec, "kind": "VirtualMachineInstance", "spec": spec["spec"]["template"]["spec"]}
    manifest = tmp_path / "vmi.yaml"
    manifest.write_text(yaml.safe_dump(vmi))

    assert run(agent, "apply", "-f", str(manifest)) == 0

    assert fake.calls == ["apply", "start"]
    assert fake.vms[("default", "web")].spec.run_strategy == "Manual"
    assert capsys.readouterr().out == "vm default/web created and started\n"


def test_list_table_and_namespaces(
    agent: str, fake: FakeVMs, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add("web", vm_pb2.PHASE_RUNNING)
    fake.add("db", vm_pb2.PHASE_STOPPED, namespace="team-a")

    assert run(agent, "list", "-A") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "PHASE", "IP", "NODE", "AGE"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["default", "web", "Running"],
        ["team-a", "db", "Stopped"],
    ]
    assert run(agent, "get", "-n", "empty") == 0
    assert capsys.readouterr().err == "vmctl: no VMs found in namespace empty\n"
    assert fake.calls == ["list ''", "list 'empty'"]


def test_not_found_is_a_sentence_and_exit_1(agent: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(agent, "describe", "ghost") == 1
    assert capsys.readouterr().err == f"vmctl: vm default/ghost not found on agent {agent}\n"


def test_failed_precondition_is_explained(
    agent: str, fake: FakeVMs, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add("web", vm_pb2.PHASE_STOPPED)
    assert run(agent, "stop", "web", "--grace-period", "0") == 1
    assert capsys.readouterr().err == (
        "vmctl: cannot stop vm default/web in its current state: vm is not running\n"
    )


def test_stop_force_and_wait(agent: str, fake: FakeVMs, capsys: pytest.CaptureFixture[str]) -> None:
    fake.add("web", vm_pb2.PHASE_RUNNING)

    assert run(agent, "stop", "web", "--force", "--wait") == 0

    assert fake.calls[-2:] == ["stop force=True grace=0", "watch"]
    assert capsys.readouterr().out == (
        "vm default/web stopped (phase Stopped)\nvm default/web is Stopped\n"
    )


def test_start_wait_follows_the_watch(
    agent: str, fake: FakeVMs, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add("web", vm_pb2.PHASE_STOPPED)
    fake.after_start = vm_pb2.PHASE_PENDING
    running = vm_pb2.VirtualMachine()
    running.metadata.namespace, running.metadata.name = "default", "web"
    running.status.phase = vm_pb2.PHASE_RUNNING
    fake.later = [
        vm_service_pb2.WatchVirtualMachinesResponse(
            type=vm_service_pb2.EVENT_TYPE_MODIFIED, vm=running
        )
    ]

    assert run(agent, "start", "web", "--wait") == 0
    assert capsys.readouterr().out == (
        "vm default/web started (phase Pending)\nvm default/web is Running\n"
    )


def test_wait_fails_when_the_watch_ends_first(
    agent: str, fake: FakeVMs, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add("web", vm_pb2.PHASE_STOPPED)
    fake.after_start = vm_pb2.PHASE_PENDING

    assert run(agent, "start", "web", "--wait", "--wait-timeout", "5") == 1
    assert "the agent ended the watch before vm default/web was Running" in (
        capsys.readouterr().err
    )


def test_pause_unpause_restart(
    agent: str, fake: FakeVMs, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add("web", vm_pb2.PHASE_RUNNING)
    assert run(agent, "pause", "web", "--wait") == 0
    assert run(agent, "unpause", "web") == 0
    assert run(agent, "restart", "web", "--hard") == 0
    assert fake.calls == ["pause", "watch", "resume", "restart hard=True"]
    assert capsys.readouterr().out == (
        "vm default/web paused (phase Paused)\n"
        "vm default/web is Paused\n"
        "vm default/web unpaused (phase Running)\n"
        "vm default/web restarted (phase Running)\n"
    )


def test_delete_wait(agent: str, fake: FakeVMs, capsys: pytest.CaptureFixture[str]) -> None:
    fake.add("web", vm_pb2.PHASE_RUNNING)
    assert run(agent, "delete", "web", "--grace-period", "0", "--wait") == 0
    assert capsys.readouterr().out == "vm default/web deleted\nvm default/web is deleted\n"


def test_console_writes_bytes(agent: str, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert run(agent, "console", "web", "--tail", "20") == 0
    assert capsysbinary.readouterr().out == b"\x1b[0mlogin: "


def test_watch_prints_one_line_per_event(
    agent: str, fake: FakeVMs, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add("web", vm_pb2.PHASE_RUNNING)
    assert run(agent, "watch") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1:4] for line in lines] == [
        ["ADDED", "default/web", "Running"],
        ["SYNCED", "(snapshot", "complete)"],
    ]


def test_unreachable_agent_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    socket = f"unix:{tmp_path}/none.sock"
    assert main(["--agent", socket, "--timeout", "1", "node"]) == 1
    assert capsys.readouterr().err.startswith(f"vmctl: cannot reach agent {socket}: ")


def test_agent_from_environment(
    monkeypatch: pytest.MonkeyPatch, agent: str, fake: FakeVMs, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VMCTL_AGENT", agent)
    fake.add("web", vm_pb2.PHASE_PAUSED)
    assert main(["get", "web"]) == 0
    assert "Paused" in capsys.readouterr().out
