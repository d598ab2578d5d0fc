"""What a person sees during ``--wait``: the bar, bytes done of total, rate, time left, phase
lines; redrawn in place on a terminal, plain lines otherwise; fed by the status the agent
publishes while it pulls (agent/domain/pullstatus.py)."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.api._gen.virtagent.v1 import migration_service_pb2 as mpb
from agent.api._gen.virtagent.v1 import vm_pb2, vm_service_pb2
from agent.api.convert import vm_to_proto
from agent.cli.main import main
from agent.cli.migrate import progress_line
from agent.cli.output import describe_vm
from agent.cli.progress import LiveLine, Transfer, VMProgress, bar, transfers
from agent.disks.ports import PullProgress
from agent.domain.pullstatus import PullStatusPublisher
from agent.domain.vmcache import VMCache
from agent.imageref import parse_reference
from agent.models import ContainerDisk, Disk, VMSpec, Volume
from tests.unit.grpc_fake import FakeAgent, serve

IMAGE = "registry:5000/web:1"
MIB = 1 << 20


def pulling(
    done: int, total: int = 100 * MIB, phase: int = vm_pb2.PHASE_PENDING
) -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.namespace, vm.metadata.name = "default", "web"
    vm.status.phase = phase  # type: ignore[assignment]
    vm.status.reason = "PullingImage"
    vm.status.conditions.add(
        type="ImagePulling", status="True", reason="Pulling",
        message=f"volume root: {IMAGE}: {done} of {total} bytes",
    )  # fmt: skip
    return vm


def running() -> vm_pb2.VirtualMachine:
    vm = vm_pb2.VirtualMachine()
    vm.metadata.namespace, vm.metadata.name = "default", "web"
    vm.status.phase = vm_pb2.PHASE_RUNNING
    vm.status.reason = "Booted"
    return vm


def feed(tty: bool, series: list[tuple[float, vm_pb2.VirtualMachine]]) -> str:
    out = io.StringIO()
    now = [0.0]
    progress = VMProgress(LiveLine(out, tty=tty), "default/web", clock=lambda: now[0])
    for at, vm in series:
        now[0] = at
        progress.update(vm)
    progress.end()
    return out.getvalue()


# Ten seconds of pulling at 5 MiB/s, then the VM boots.
SERIES = [(float(t), pulling(t * 5 * MIB)) for t in range(21)] + [(21.0, running())]


def test_bar_is_clamped_and_proportional() -> None:
    assert bar(0.0, 8) == "[........]"
    assert bar(0.5, 8) == "[####....]"
    assert bar(1.7, 8) == "[########]"


def test_a_terminal_gets_one_redrawn_line_with_rate_and_time_left() -> None:
    text = feed(True, SERIES)
    assert text.startswith("vm default/web: Pending (PullingImage)\n")
    assert text.endswith("vm default/web: Running (Booted)\n")
    redraws = text.split("\r")[1:]
    assert len(redraws) == 21  # every update redraws the line
    middle = redraws[10]
    assert middle.startswith(
        f"volume root {IMAGE} [############............] 50.0 MiB of 100.0 MiB"
    )
    assert "5.0 MiB/s, 0:10 left" in middle
    assert middle.endswith("\x1b[K")  # erases what a longer previous line left
    assert "100.0 MiB of 100.0 MiB, 5.0 MiB/s\x1b[K\n" in redraws[-1]  # no time left at the end


def test_plain_output_has_no_control_characters_and_a_line_per_tenth() -> None:
    text = feed(False, SERIES)
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "vm default/web: Pending (PullingImage)"
    assert lines[-1] == "vm default/web: Running (Booted)"
    progress = lines[1:-1]
    assert len(progress) == 11  # 0%, 10%, ..., 100%
    assert progress[0].endswith("0 B of 100.0 MiB")  # no rate yet from a single sample
    assert progress[5].endswith("50.0 MiB of 100.0 MiB, 5.0 MiB/s, 0:10 left")


def test_a_restarted_pull_measures_its_rate_afresh() -> None:
    text = feed(False, [(0.0, pulling(90 * MIB)), (1.0, pulling(0)), (3.0, pulling(20 * MIB))])
    assert text.splitlines()[-1].endswith("20.0 MiB of 100.0 MiB, 10.0 MiB/s, 0:08 left")


def test_the_agents_pull_status_is_what_vmctl_reads() -> None:
    cache = VMCache()
    spec = VMSpec(namespace="default", name="web", uid="u1", disks=(Disk("root"),),
                  volumes=(Volume("root", ContainerDisk(parse_reference(IMAGE))),))  # fmt: skip
    PullStatusPublisher(cache, node_name="n1").pulling(
        "default_web", spec, PullProgress("root", IMAGE, 3 * MIB, 48 * MIB)
    )
    record = cache.get("default_web")
    assert record is not None
    assert transfers(vm_to_proto(record)) == [Transfer("root", IMAGE, 3 * MIB, 48 * MIB)]


MANIFEST = textwrap.dedent(
    f"""\
    apiVersion: kubevirt.io/v1
    kind: VirtualMachine
    metadata: {{name: web}}
    spec:
      running: true
      template:
        spec:
          domain:
            memory: {{guest: 64Mi}}
            devices:
              disks: [{{name: root, disk: {{bus: virtio}}}}]
          volumes: [{{name: root, containerDisk: {{image: "{IMAGE}"}}}}]
    """
)


@pytest.fixture
def agent() -> Iterator[tuple[str, FakeAgent]]:
    fake = FakeAgent()
    server, port = serve(fake, "127.0.0.1:0")
    yield f"127.0.0.1:{port}", fake
    server.stop(None)


def test_apply_wait_shows_the_pull_then_waits_for_running(
    agent: tuple[str, FakeAgent], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, fake = agent
    modified = vm_service_pb2.EVENT_TYPE_MODIFIED
    fake.later = [
        vm_service_pb2.WatchVirtualMachinesResponse(type=modified, vm=vm)
        for vm in (pulling(0), pulling(50 * MIB), pulling(100 * MIB), running())
    ]
    path = tmp_path / "vm.yaml"
    path.write_text(MANIFEST)

    code = main(["--agent", address, "--insecure", "--timeout", "5", "apply", "-f", str(path),
                 "--wait", "--wait-timeout", "10"])  # fmt: skip

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out == "vm default/web created\nvm default/web is Running\n"
    err = captured.err.splitlines()
    assert "\r" not in captured.err  # captured output is not a terminal
    assert err[0] == "vm default/web: Pending (PullingImage)"
    assert [line.split(" [")[0] for line in err[1:4]] == [f"volume root {IMAGE}"] * 3
    assert "100.0 MiB of 100.0 MiB" in err[3]
    assert err[-1] == "vm default/web: Running (Booted)"


def test_migrate_wait_draws_the_same_bar() -> None:
    migration = mpb.Migration(state=mpb.MIGRATION_STATE_RUNNING)
    migration.progress.data_processed_bytes = 128 * MIB
    migration.progress.data_total_bytes = 256 * MIB
    assert f"Running   {bar(0.5)} 128/256 MiB" in progress_line(migration)


def test_describe_names_config_volumes() -> None:
    vm = running()
    for name, kind in (("creds", "secret"), ("app", "config_map"), ("sa", "service_account")):
        vm.spec.template.spec.domain.devices.disks.add(name=name)
        volume = vm.spec.template.spec.volumes.add(name=name)
        getattr(volume, kind).SetInParent()
    vm.spec.template.spec.volumes[0].secret.secret_name = "db-creds"
    vm.spec.template.spec.volumes[1].config_map.name = "app-config"
    vm.spec.template.spec.volumes[2].service_account.service_account_name = "default"
    text = describe_vm(vm, datetime.now(UTC))
    for shown in ("secret db-creds", "configMap app-config", "serviceAccount default"):
        assert shown in text
