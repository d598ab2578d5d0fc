"""vmctl end to end: argument parsing, --dry-run, exit codes, and commands against a fake agent."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from agent.api._gen.virtagent.v1 import vm_pb2, vm_service_pb2
from agent.cli.main import main
from tests.unit.grpc_fake import FakeAgent, serve

COMMANDS = [
    "apply",
    "validate",
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
    "migrate",
    "migrations",
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


@pytest.fixture
def fake() -> FakeAgent:
    return FakeAgent()


@pytest.fixture
def agent(fake: FakeAgent) -> Iterator[str]:
    server, port = serve(fake, "127.0.0.1:0")
    yield f"127.0.0.1:{port}"
    server.stop(None)


def run(agent: str, *args: str) -> int:
    return main(["--agent", agent, "--insecure", "--timeout", "5", *args])


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f"    {command} " in out


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
    agent: str, fake: FakeAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "web.yaml"
    manifest.write_text(MANIFEST)

    assert run(agent, "apply", "-f", str(manifest)) == 0
    assert run(agent, "apply", "-f", str(manifest)) == 0
    assert capsys.readouterr().out == "vm default/web created\nvm default/web unchanged\n"
    assert run(agent, "get", "web", "-o", "json") == 0
    assert '"name": "web"' in capsys.readouterr().out


def test_vmi_is_applied_as_once_with_no_separate_start(
    agent: str, fake: FakeAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = yaml.safe_load(MANIFEST)
    vmi = {**spec, "kind": "VirtualMachineInstance", "spec": spec["spec"]["template"]["spec"]}
    manifest = tmp_path / "vmi.yaml"
    manifest.write_text(yaml.safe_dump(vmi))

    assert run(agent, "apply", "-f", str(manifest)) == 0

    # The intent to run is stored with the VM (Once): the agent starts it, vmctl does not.
    assert fake.said() == ["apply"]
    assert fake.vms[("default", "web")].spec.run_strategy == "Once"
    assert capsys.readouterr().out == "vm default/web created\n"


def test_list_table_and_namespaces(
    agent: str, fake: FakeAgent, capsys: pytest.CaptureFixture[str]
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
    assert fake.said() == ["list ''", "list 'empty'"]


def test_not_found_is_a_sentence_and_exit_1(agent: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(agent, "describe", "ghost") == 1
    assert capsys.readouterr().err == f"vmctl: vm default/ghost not found on agent {agent}\n"


def test_failed_precondition_is_explained(
    agent: str, fake: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add("web", vm_pb2.PHASE_STOPPED)
    assert run(agent, "stop", "web", "--grace-period", "0") == 1
    assert capsys.readouterr().err == (
        "vmctl: cannot stop vm default/web in its current state: vm is not running\n"
    )


def test_stop_force_and_wait(
    agent: str, fake: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add("web", vm_pb2.PHASE_RUNNING)

    assert run(agent, "stop", "web", "--force", "--wait") == 0

    assert fake.said()[-2:] == ["stop force=True grace=0", "watch"]
    assert capsys.readouterr().out == (
        "vm default/web stopped (phase Stopped)\nvm default/web is Stopped\n"
    )


def test_start_wait_follows_the_watch(
    agent: str, fake: FakeAgent, capsys: pytest.CaptureFixture[str]
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
    agent: str, fake: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add("web", vm_pb2.PHASE_STOPPED)
    fake.after_start = vm_pb2.PHASE_PENDING

    assert run(agent, "start", "web", "--wait", "--wait-timeout", "5") == 1
    assert "the agent ended the watch before vm default/web was Running" in (
        capsys.readouterr().err
    )


def test_pause_unpause_restart(
    agent: str, fake: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add("web", vm_pb2.PHASE_RUNNING)
    assert run(agent, "pause", "web", "--wait") == 0
    assert run(agent, "unpause", "web") == 0
    assert run(agent, "restart", "web", "--hard") == 0
    assert fake.said() == ["pause", "watch", "resume", "restart hard=True"]
    assert capsys.readouterr().out == (
        "vm default/web paused (phase Paused)\n"
        "vm default/web is Paused\n"
        "vm default/web unpaused (phase Running)\n"
        "vm default/web restarted (phase Running)\n"
    )


def test_delete_wait(agent: str, fake: FakeAgent, capsys: pytest.CaptureFixture[str]) -> None:
    fake.add("web", vm_pb2.PHASE_RUNNING)
    assert run(agent, "delete", "web", "--grace-period", "0", "--wait") == 0
    assert capsys.readouterr().out == "vm default/web deleted\nvm default/web is deleted\n"


def test_console_writes_bytes(agent: str, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert run(agent, "console", "web", "--tail", "20") == 0
    assert capsysbinary.readouterr().out == b"booting\n\x1b[0mlogin: "


def test_watch_prints_one_line_per_event(
    agent: str, fake: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add("web", vm_pb2.PHASE_RUNNING)
    assert run(agent, "watch") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1:4] for line in lines] == [
        ["ADDED", "default/web", "Running"],
        ["SYNCED", "(snapshot", "complete)"],
    ]


def _change(vm: vm_pb2.VirtualMachine, phase: int, version: int) -> Any:
    changed = vm_pb2.VirtualMachine()
    changed.CopyFrom(vm)
    changed.status.phase = phase  # type: ignore[assignment]
    return vm_service_pb2.WatchVirtualMachinesResponse(
        type=vm_service_pb2.EVENT_TYPE_MODIFIED, vm=changed, resource_version=version
    )


def _events(out: str) -> list[list[str]]:
    return [line.split()[1:4] for line in out.splitlines()]


def test_watch_resumes_a_lost_stream_without_repeating_an_event(
    agent: str, fake: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    web = fake.add("web", vm_pb2.PHASE_RUNNING)
    fake.later = [_change(web, vm_pb2.PHASE_PAUSED, 5), _change(web, vm_pb2.PHASE_RUNNING, 6)]
    fake.watch_ends = [grpc.StatusCode.UNAVAILABLE]
    assert run(agent, "watch") == 0
    assert _events(capsys.readouterr().out) == [
        ["ADDED", "default/web", "Running"],
        ["SYNCED", "(snapshot", "complete)"],
        ["MODIFIED", "default/web", "Paused"],
        ["MODIFIED", "default/web", "Running"],
    ]
    assert [r.resource_version for m, r in fake.calls if m == "Watch"] == [0, 6]


def test_watch_relists_when_the_agent_cannot_resume_and_shows_what_changed(
    agent: str, fake: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    web = fake.add("web", vm_pb2.PHASE_RUNNING)
    fake.add("db", vm_pb2.PHASE_RUNNING)
    fake.later = [_change(web, vm_pb2.PHASE_PAUSED, 5)]
    fake.watch_ends = [grpc.StatusCode.UNAVAILABLE]
    fake.watch_floor = 100  # the agent restarted meanwhile

    def meanwhile() -> None:  # what happened while the watch was away
        fake.later = []
        del fake.vms[("default", "db")]

    fake.before_watch = [lambda: None, lambda: None, meanwhile]
    assert run(agent, "watch") == 0
    assert _events(capsys.readouterr().out) == [
        ["ADDED", "default/db", "Running"],
        ["ADDED", "default/web", "Running"],
        ["SYNCED", "(snapshot", "complete)"],
        ["MODIFIED", "default/web", "Paused"],
        ["MODIFIED", "default/web", "Running"],
        ["DELETED", "default/db", "Running"],
    ]
    assert [r.resource_version for m, r in fake.calls if m == "Watch"] == [0, 5, 0]


def test_unreachable_agent_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    socket = f"unix:{tmp_path}/none.sock"
    assert main(["--agent", socket, "--timeout", "1", "node"]) == 1
    assert capsys.readouterr().err.startswith(f"vmctl: cannot reach agent {socket}: ")


def test_agent_from_environment(
    monkeypatch: pytest.MonkeyPatch, agent: str, fake: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VMCTL_AGENT", agent)
    fake.add("web", vm_pb2.PHASE_PAUSED)
    assert main(["get", "web", "--insecure"]) == 0
    assert "Paused" in capsys.readouterr().out


def test_plaintext_to_a_network_address_needs_insecure(
    agent: str, fake: FakeAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--agent", agent, "get"]) == 2
    err = capsys.readouterr().err
    assert "plaintext" in err and "--insecure" in err and "--ca-file" in err
    assert fake.calls == []  # refused before anything was sent
    assert main(["--agent", agent, "--insecure", "get"]) == 0  # said on purpose: allowed


def test_insecure_with_tls_files_is_refused(
    agent: str, fake: FakeAgent, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "ca.pem").write_text("not used")
    argv = ["--agent", agent, "--insecure", "--ca-file", str(tmp_path / "ca.pem"), "get"]
    assert main(argv) == 2
    assert "--insecure" in capsys.readouterr().err
    assert fake.calls == []


def test_unix_sockets_need_no_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    socket = f"unix:{tmp_path}/none.sock"
    assert main(["--agent", socket, "--timeout", "1", "node"]) == 1  # tried, not refused
    assert "cannot reach agent" in capsys.readouterr().err


def test_an_apply_that_pulls_images_gets_the_pull_deadline_others_the_call_deadline(
    agent: str, fake: FakeAgent, tmp_path: Path
) -> None:
    # The agent answers an Apply once its disks are ready: a pull must not meet --timeout.
    pulls = tmp_path / "pulls.yaml"
    pulls.write_text(MANIFEST)
    spec = yaml.safe_load(MANIFEST)
    spec["metadata"]["name"] = "local"
    spec["spec"]["template"]["spec"]["volumes"] = [
        {"name": "root", "emptyDisk": {"capacity": "1Gi"}}
    ]
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump(spec))

    assert run(agent, "apply", "-f", str(pulls), "--pull-timeout", "900") == 0
    assert run(agent, "apply", "-f", str(local), "--pull-timeout", "900") == 0

    pulled, plain = fake.deadlines
    assert pulled is not None and 800 < pulled <= 900
    assert plain is not None and plain < 10  # run() passes --timeout 5
