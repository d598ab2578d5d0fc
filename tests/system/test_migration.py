"""Live migration between two agents on two nodes in a box (issue 10).

node-a (192.0.2.11) and node-b (192.0.2.12) share a world bridge; each runs libvirtd with a
TCP listener and its own agent serving gRPC on its uplink address. Both agents use one VM
network (10.250.0.0/16) with a pool of their own. ``MIGRATION_TEST_LOGS=1`` prints the
agents' log tails after each test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from agent.api._gen.virtagent.v1 import migration_service_pb2 as mpb
from agent.api._gen.virtagent.v1 import vm_pb2
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from agent.cli.main import main as vmctl_main
from agent.client import AgentCallError, AgentClient
from tests.system.agentproc import AgentProcess, guest_vm
from tests.system.guest_exec import EXEC_USER_DATA, guest_exec
from tests.system.netbed import CIDR, DNS, nft_elements
from tests.testbed.nodebox import GuestImage, NodeBox, TestbedError, TwoNodes
from tests.testbed.registry import LocalRegistry
from tests.testbed.wait import wait_for

READY = "VIRT-AGENT-READY"
PORT = 7443
POOLS = {"node-a": "10.250.1.0/24", "node-b": "10.250.2.0/24"}
UPTIME = re.compile(r"uptime=([\d.]+)")


@dataclass
class Pair:
    nodes: TwoNodes
    a: AgentProcess
    b: AgentProcess

    def client(self, agent: AgentProcess) -> AgentClient:
        return AgentClient(f"unix:{agent.socket}", timeout=30)

    def address(self, agent: AgentProcess) -> str:
        return f"{agent.node.uplink_ip}:{PORT}"


def _agent(
    node: NodeBox, guest: GuestImage, test: str, extra: list[str], tls: Path | None
) -> AgentProcess:
    """An agent of its own for one test, in the node's folder (QEMU's user reaches it);
    plaintext gRPC, or mutual TLS with the certificates in ``tls``."""
    secure = ["--insecure"]
    if tls is not None:
        secure = ["--tls-cert", str(tls / f"{node.name}.pem"), "--tls-key"]
        secure += [str(tls / f"{node.name}.key"), "--tls-client-ca", str(tls / "ca.pem")]
        secure += ["--authz-config", str(tls / "authz.yaml")]
    args = ["--listen", f"{node.uplink_ip}:{PORT}", *secure, "--vm-cidr", CIDR]
    args += ["--node-vm-pool", POOLS[node.name], "--dns", DNS, *extra]
    return AgentProcess(node=node, guest=guest, dir=node.dir / "agents" / test, extra_args=args)


@pytest.fixture
def registry(two_nodes: TwoNodes, tmp_path: Path) -> Iterator[LocalRegistry]:
    """A registry in the world both nodes pull from."""
    local = LocalRegistry.start(two_nodes.world, tmp_path / "registry")
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def one_at_a_time() -> None:
    """The pair's agents move one VM out at a time (--max-outbound-migrations 1)."""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    """A CA, one certificate per node for its uplink address (server and client use), and
    authorization rules that make the nodes each other's peers (migration calls only)."""
    folder = tmp_path / "tls"
    folder.mkdir()
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=migration-test-ca", cwd=folder)  # fmt: skip
    for name, address in (("node-a", "192.0.2.11"), ("node-b", "192.0.2.12")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        (folder / f"{name}.ext").write_text(f"subjectAltName=IP:{address}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-out", f"{name}.pem",
                 "-extfile", f"{name}.ext", cwd=folder)  # fmt: skip
    (folder / "authz.yaml").write_text(
        "rules:\n"
        "  - {identity: 'IP:192.0.2.11', role: peer}\n"
        "  - {identity: 'IP:192.0.2.12', role: peer}\n"
    )
    return folder


@pytest.fixture
def pair(
    two_nodes: TwoNodes, test_guest: GuestImage, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Pair]:
    extra: list[str] = []
    if "registry" in request.fixturenames:
        extra = ["--insecure-registry", request.getfixturevalue("registry").address]
    if "one_at_a_time" in request.fixturenames:
        extra += ["--max-outbound-migrations", "1"]
    tls = (
        request.getfixturevalue("certificates") if "certificates" in request.fixturenames else None
    )
    a = _agent(two_nodes.a, test_guest, tmp_path.name, extra, tls)
    b = _agent(two_nodes.b, test_guest, tmp_path.name, extra, tls)
    a.start()
    try:
        b.start()
        try:
            yield Pair(two_nodes, a, b)
        finally:
            for agent in (a, b):
                if os.environ.get("MIGRATION_TEST_LOGS"):
                    print(f"--- {agent.node.name}\n{agent.log_tail(80)}")
                if agent.proc is not None:
                    agent.delete_all()
            b.stop()
    finally:
        a.stop()


def web_vm(name: str) -> dict[str, object]:
    interfaces = [{"name": "default", "masquerade": {}, "ports": [{"port": 80}]}]
    return guest_vm(name, interfaces=interfaces)


def page(pair: Pair, node: NodeBox, node_port: int) -> str:
    return pair.nodes.world.http_get(node.uplink_ip, node_port, timeout=5)


def uptime(text: str) -> float:
    found = UPTIME.search(text)
    assert found, f"no uptime in the guest's page: {text!r}"
    return float(found.group(1))


def run_to_end(client: AgentClient, migration_id: str) -> list[mpb.Migration]:
    updates = list(client.watch_migration(migration_id, timeout=240))
    assert updates and updates[-1].state in (
        mpb.MIGRATION_STATE_SUCCEEDED,
        mpb.MIGRATION_STATE_FAILED,
        mpb.MIGRATION_STATE_CANCELLED,
    ), updates[-1:]
    return updates


class Poller:
    """Asks for the guest's page through each node (a thread each), as clients of both nodes
    would, and keeps the times of the answers (to measure the gap at the switch-over)."""

    def __init__(self, pair: Pair, node_port: int) -> None:
        self.pair = pair
        self.node_port = node_port
        self.answers: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(node,), daemon=True)
            for node in (pair.a.node, pair.b.node)
        ]

    def __enter__(self) -> Poller:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, node: NodeBox) -> None:
        while not self._stop.is_set():
            try:
                self.pair.nodes.world.http_get(node.uplink_ip, self.node_port, timeout=0.5)
            except TestbedError:
                continue
            self.answers.append((time.monotonic(), node.name))

    def longest_gap(self) -> float:
        times = sorted(t for t, _ in self.answers)
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def domains(node: NodeBox) -> str:
    return str(node.exec(["virsh", "-c", node.libvirt_uri, "list", "--all", "--name"]).stdout)


def links(node: NodeBox) -> str:
    return str(node.exec(["ip", "-o", "link", "show"]).stdout)


def test_a_running_guest_moves_to_the_other_node_and_keeps_its_address(pair: Pair) -> None:
    a, b = pair.a, pair.b
    a.apply(web_vm("mover"))
    a.wait_console("mover", READY, timeout=150)
    before = a.wait_phase("mover", vm_pb2.PHASE_RUNNING)
    nic = before.status.interfaces[0]
    ip, tap, node_port = nic.ip_addresses[0], nic.tap_name, nic.published_ports[0].node_port
    assert ip.startswith("10.250.1.")  # from node-a's pool
    uptime_before = uptime(page(pair, a.node, node_port))
    console_before = a.console("mover")

    with pair.client(a) as client, Poller(pair, node_port) as poller:
        started = client.migrate("default", "mover", pair.address(b))
        assert started.id and started.state in (
            mpb.MIGRATION_STATE_PENDING,
            mpb.MIGRATION_STATE_PREPARING,
            mpb.MIGRATION_STATE_RUNNING,
        )
        updates = run_to_end(client, started.id)
        final = updates[-1]
        assert final.state == mpb.MIGRATION_STATE_SUCCEEDED, final.message
        assert final.target_node == "node-b" and final.source_node == "node-a"
        assert any(u.progress.data_processed_bytes > 0 for u in updates), "no progress seen"
        print(f"migration took {final.end_time.ToSeconds() - final.start_time.ToSeconds()} s, "
              f"downtime {final.downtime_ms} ms, {len(updates)} watch updates")  # fmt: skip
        assert [m.id for m in client.list_migrations()] == [started.id]
        wait_for(
            lambda: any(node == "node-b" for _, node in poller.answers),
            30,
            0.2,
            "the guest's page to answer through node-b",
        )
    gap = poller.longest_gap()
    print(f"a client polling the page saw the longest gap of {gap:.2f} s at the switch-over")
    assert any(node == "node-a" for _, node in poller.answers)

    after = b.wait_phase("mover", vm_pb2.PHASE_RUNNING, timeout=30)
    assert after.metadata.uid == before.metadata.uid
    assert after.metadata.generation == before.metadata.generation
    moved = after.status.interfaces[0]
    assert list(moved.ip_addresses) == [ip] and moved.mac == nic.mac and moved.tap_name == tap
    assert after.status.node_name == "node-b"
    # No reboot: one boot on the source's console, none on the target's, uptime kept counting.
    assert console_before.count(READY) == 1
    assert READY not in b.console("mover")
    uptime_after = uptime(page(pair, b.node, moved.published_ports[0].node_port))
    assert uptime_after > uptime_before
    # The target knows the migration too.
    with pair.client(b) as client:
        record = client.get_migration(started.id)
        assert record.role == mpb.MIGRATION_ROLE_TARGET
        assert record.state == mpb.MIGRATION_STATE_SUCCEEDED

    # Nothing of it is left on node-a.
    with pytest.raises(grpc.RpcError) as gone:
        a.get("mover")
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert "default_mover" not in domains(a.node)
    assert tap not in links(a.node)
    assert not (a.state_dir / "vms" / "default_mover").exists()
    assert ip not in str(nft_elements(a.node))
    assert ip in str(nft_elements(b.node)) and tap in links(b.node)


def test_refusals_name_the_problem_and_change_nothing(pair: Pair) -> None:
    a, b = pair.a, pair.b
    a.apply(guest_vm("halted", run_strategy="Halted"))
    with pair.client(a) as client:
        for name, code in (("missing", "NOT_FOUND"), ("halted", "FAILED_PRECONDITION")):
            with pytest.raises(AgentCallError) as refused:
                client.migrate("default", name, pair.address(b))
            assert refused.value.code.name == code, refused.value
        with pytest.raises(AgentCallError) as bad:
            client.migrate("default", "halted", pair.address(b), post_copy=True, auto_converge=True)
        assert bad.value.code.name == "INVALID_ARGUMENT" and "post_copy" in bad.value.message
        # the call itself fails, before anything is made: a target that is the VM's own
        # node, one nobody answers at, one that refuses (a VM of that name runs there)
        a.apply(web_vm("stay"))
        b.apply(guest_vm("stay", run_strategy="Halted"))
        a.wait_phase("stay", vm_pb2.PHASE_RUNNING, timeout=60)
        for target, code, words in (
            (pair.address(a), "FAILED_PRECONDITION", "own node"),
            (f"192.0.2.99:{PORT}", "UNAVAILABLE", "192.0.2.99"),
            (pair.address(b), "FAILED_PRECONDITION", "already exists on node node-b"),
        ):
            began = time.monotonic()
            with pytest.raises(AgentCallError) as refused:
                client.migrate("default", "stay", target)
            took = time.monotonic() - began
            print(f"refused in {took:.1f} s: {refused.value.code.name} {refused.value.message}")
            assert refused.value.code.name == code and words in refused.value.message
        assert client.list_migrations() == []  # no migration was started
    assert a.wait_phase("stay", vm_pb2.PHASE_RUNNING, timeout=30)
    assert a.get("stay").status.phase == vm_pb2.PHASE_RUNNING
    assert [vm.metadata.name for vm in b.vms.ListVirtualMachines(
        pb.ListVirtualMachinesRequest(), timeout=10).vms] == ["stay"]  # fmt: skip
    assert not (b.state_dir / "migrations").exists() or not list(
        (b.state_dir / "migrations").iterdir()
    )


def test_a_cancelled_migration_leaves_the_guest_running_on_the_source(
    pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = pair.a, pair.b
    a.apply(web_vm("slow"))
    a.wait_console("slow", READY, timeout=150)
    before = a.wait_phase("slow", vm_pb2.PHASE_RUNNING)
    node_port = before.status.interfaces[0].published_ports[0].node_port
    with pair.client(a) as client:
        started = client.migrate("default", "slow", pair.address(b), bandwidth_mib=1)
        wait_for(
            lambda: client.get_migration(started.id).progress.data_processed_bytes > 0,
            60,
            0.2,
            "the throttled migration to make progress",
        )
        assert a.get("slow").status.phase == vm_pb2.PHASE_MIGRATING
        with pytest.raises(AgentCallError) as again:
            client.migrate("default", "slow", pair.address(b))
        assert again.value.code.name == "ALREADY_EXISTS" and started.id in again.value.message
        with pytest.raises(AgentCallError) as busy:  # the VM is held while it moves
            client.stop("default", "slow", force=True)
        assert busy.value.code.name == "ABORTED" and "migration" in busy.value.message
        vmctl = ["--agent", f"unix:{a.socket}"]
        assert vmctl_main([*vmctl, "migrate", "--cancel", started.id]) == 0
        final = run_to_end(client, started.id)[-1]
        assert vmctl_main([*vmctl, "migrations"]) == 0
        listed = capsys.readouterr().out
        assert f"{started.id}  default/slow" in listed and "Cancelled" in listed, listed
        assert final.state == mpb.MIGRATION_STATE_CANCELLED, final.message
    assert a.wait_phase("slow", vm_pb2.PHASE_RUNNING, timeout=30)
    assert uptime(page(pair, a.node, node_port)) > 0
    wait_for(lambda: "default_slow" not in domains(b.node), 30, 0.3, "no domain on node-b")
    assert not (b.state_dir / "vms" / "default_slow").exists()
    assert before.status.interfaces[0].tap_name not in links(b.node)


def started_slow(pair: Pair, client: AgentClient, name: str, **options: object) -> str:
    """A throttled migration of a booted guest, once it moves data; returns its id."""
    pair.a.apply(web_vm(name))
    pair.a.wait_console(name, READY, timeout=150)
    pair.a.wait_phase(name, vm_pb2.PHASE_RUNNING)
    started = client.migrate("default", name, pair.address(pair.b), bandwidth_mib=1, **options)  # type: ignore[arg-type]

    def moving() -> bool:
        now = client.get_migration(started.id)
        assert not now.end_time.seconds, f"the migration ended: {now.message}"
        return now.progress.data_processed_bytes > 0

    wait_for(moving, 60, 0.2, "the throttled migration to make progress")
    return started.id


def assert_stayed_on_a(pair: Pair, name: str, node_port: int) -> None:
    assert pair.a.wait_phase(name, vm_pb2.PHASE_RUNNING, timeout=30)
    assert uptime(page(pair, pair.a.node, node_port)) > 0
    assert f"default_{name}" in domains(pair.a.node)


def assert_b_clean(pair: Pair, name: str, tap: str, timeout: float = 60) -> None:
    b = pair.b
    wait_for(
        lambda: (
            f"default_{name}" not in domains(b.node)
            and not (b.state_dir / "vms" / f"default_{name}").exists()
            and tap not in links(b.node)
        ),
        timeout,
        0.5,
        f"node-b to have no domain, files or tap of {name}",
    )


def test_a_migration_out_of_time_is_aborted_and_the_guest_stays(pair: Pair) -> None:
    with pair.client(pair.a) as client:
        # 1 MiB/s for a 256 MiB guest cannot finish within 5 s per GiB (the minimum is 1 GiB)
        migration_id = started_slow(pair, client, "late", completion_timeout_per_gib_seconds=5)
        final = run_to_end(client, migration_id)[-1]
    assert final.state == mpb.MIGRATION_STATE_FAILED
    assert "completion timeout" in final.message, final.message
    vm = pair.a.get("late")
    nic = vm.status.interfaces[0]
    assert_stayed_on_a(pair, "late", nic.published_ports[0].node_port)
    assert_b_clean(pair, "late", nic.tap_name)


def test_a_migration_that_makes_no_progress_is_aborted_and_the_guest_stays(pair: Pair) -> None:
    """The stream stalls (node-b drops QEMU's migration ports, inside its own namespace):
    no progress for the progress timeout → aborted, the guest stays on node-a."""
    table = ["inet", "migration_test_stall"]
    with pair.client(pair.a) as client:
        migration_id = started_slow(pair, client, "stuck", progress_timeout_seconds=10)
        node = pair.b.node
        try:
            for argv in (
                ["add", "table", *table],
                ["add", "chain", *table, "input", "{ type filter hook input priority -10 ; }"],
                ["add", "rule", *table, "input", "tcp", "dport", "49152-49215", "drop"],
            ):
                node.exec(["nft", *argv], check=True)
            final = run_to_end(client, migration_id)[-1]
        finally:
            node.exec(["nft", "delete", "table", *table])
    assert final.state == mpb.MIGRATION_STATE_FAILED
    assert "progress timeout" in final.message, final.message
    print(f"stalled migration: {final.message}")
    nic = pair.a.get("stuck").status.interfaces[0]
    assert_stayed_on_a(pair, "stuck", nic.published_ports[0].node_port)
    assert_b_clean(pair, "stuck", nic.tap_name, timeout=120)


def test_the_target_libvirtd_dying_fails_the_migration_and_b_is_cleaned_after(pair: Pair) -> None:
    with pair.client(pair.a) as client:
        migration_id = started_slow(pair, client, "orphan")
        pair.b.node.stop_libvirtd()
        try:
            final = run_to_end(client, migration_id)[-1]
        finally:
            pair.b.node.start_daemons()
    assert final.state == mpb.MIGRATION_STATE_FAILED and final.message, final
    print(f"failure reason: {final.message}")
    nic = pair.a.get("orphan").status.interfaces[0]
    assert_stayed_on_a(pair, "orphan", nic.published_ports[0].node_port)
    assert_b_clean(pair, "orphan", nic.tap_name, timeout=120)


DATA = "MIGRATED-DATA-42"


def disk_vm(name: str, image: str) -> dict[str, object]:
    """BIOS boot from a containerDisk, an empty disk (serial DATA1) and a cloud-init seed that
    installs the exec CGI."""
    doc = web_vm(name)
    instance = doc["spec"]["template"]["spec"]  # type: ignore[index]
    del instance["domain"]["firmware"]
    instance["domain"]["devices"]["disks"] = [
        {"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1},
        {"name": "data", "disk": {"bus": "virtio"}, "serial": "DATA1"},
        {"name": "seed", "disk": {"bus": "virtio"}},
    ]
    instance["volumes"] = [
        {"name": "root", "containerDisk": {"image": image}},
        {"name": "data", "emptyDisk": {"capacity": "64Mi"}},
        {"name": "seed", "cloudInitNoCloud": {"userData": EXEC_USER_DATA}},
    ]
    return doc


FIND_DATA_DISK = (
    'for d in /sys/block/vd*; do [ "$(cat $d/serial)" = DATA1 ] && echo /dev/${d##*/}; done'
)


def test_a_container_disk_vm_migrates_with_the_data_on_its_empty_disk(
    registry: LocalRegistry, pair: Pair, test_guest: GuestImage
) -> None:
    assert test_guest.disk is not None
    registry.push(test_guest.disk, "containerdisks/guest")
    a, b = pair.a, pair.b
    a.apply(disk_vm("keeper", f"{registry.address}/containerdisks/guest:latest"))
    a.wait_console("keeper", "VIRT-AGENT-USERDATA rc=0", timeout=240)
    ip = a.wait_phase("keeper", vm_pb2.PHASE_RUNNING).status.interfaces[0].ip_addresses[0]
    device = guest_exec(a.node, ip, FIND_DATA_DISK).output.strip()
    assert device.startswith("/dev/vd"), device
    wrote = guest_exec(a.node, ip, f"printf {DATA} | dd of={device} conv=fsync 2>&1; sync")
    assert wrote.status == 0, wrote.output

    with pair.client(a) as client:
        started = client.migrate("default", "keeper", pair.address(b))
        final = run_to_end(client, started.id)[-1]
    assert final.state == mpb.MIGRATION_STATE_SUCCEEDED, final.message
    b.wait_phase("keeper", vm_pb2.PHASE_RUNNING, timeout=30)
    # read past the guest's page cache: the bytes come from node-b's copy of the disk
    read = guest_exec(
        b.node, ip, f"echo 3 > /proc/sys/vm/drop_caches; dd if={device} bs=16 count=1 2>/dev/null"
    )
    assert read.output.startswith(DATA), read.output
    vm_dir = b.state_dir / "vms" / "default_keeper"
    assert sorted(p.name.split("-")[0] for p in vm_dir.glob("*.qcow2")) == ["data", "root"]
    assert not (a.state_dir / "vms" / "default_keeper").exists()


def running_here(agent: AgentProcess, name: str) -> bool:
    state = agent.node.exec(["virsh", "-c", agent.node.libvirt_uri, "domstate", f"default_{name}"])
    return state.returncode == 0 and state.stdout.strip() == "running"


def test_the_source_agent_dying_mid_way_leaves_exactly_one_running_copy(pair: Pair) -> None:
    """kill -9 of the source agent during a throttled migration, restarted at once: it
    finds the migration again (its stored record, libvirt's job and domain state), follows
    it to its end, and the guest runs exactly once."""
    a, b = pair.a, pair.b
    with pair.client(a) as client:
        migration_id = started_slow(pair, client, "lonely")
    a.stop(signal.SIGKILL)
    a.start()
    with pair.client(a) as client:
        back = wait_for(
            lambda: client.get_migration(migration_id), 30, 0.5, "the record after the restart",
            ignore=(AgentCallError,),
        )  # fmt: skip
        print(f"after the restart: {mpb.MigrationState.Name(back.state)} {back.message!r}")
        if not back.end_time.seconds:  # libvirtd still moves it: followed, sped up to finish
            client.update_migration(migration_id, bandwidth_mib=64)
        mine = wait_for(
            lambda: (m := client.get_migration(migration_id)).end_time.seconds and m,
            240,
            0.5,
            "the restarted source to end the migration",
        )
    with pair.client(b) as client:
        theirs = wait_for(
            lambda: (m := client.get_migration(migration_id)).end_time.seconds and m,
            120,
            0.5,
            "node-b to end the migration",
        )
    print(f"source: {mpb.MigrationState.Name(mine.state)} {mine.message!r}; "
          f"target: {mpb.MigrationState.Name(theirs.state)} {theirs.message!r}")  # fmt: skip
    on_a, on_b = running_here(a, "lonely"), running_here(b, "lonely")
    assert on_a != on_b, (on_a, on_b)
    assert mine.role == mpb.MIGRATION_ROLE_SOURCE and mine.state == theirs.state
    if on_b:
        assert mine.state == mpb.MIGRATION_STATE_SUCCEEDED
        assert b.get("lonely").status.phase == vm_pb2.PHASE_RUNNING
        with pytest.raises(grpc.RpcError):  # the source no longer shows (or starts) it ...
            a.get("lonely")
        folder = a.state_dir / "vms" / "default_lonely"  # ... and removed its folder
        wait_for(lambda: not folder.exists(), 30, 0.3, "the source to remove the VM folder")
    else:
        assert mine.state == mpb.MIGRATION_STATE_FAILED and mine.message
        assert a.wait_phase("lonely", vm_pb2.PHASE_RUNNING, timeout=30)
        assert_b_clean(pair, "lonely", a.get("lonely").status.interfaces[0].tap_name)
    assert (running_here(a, "lonely"), running_here(b, "lonely")) == (on_a, on_b)


def test_the_target_agent_dying_mid_way_adopts_the_guest_after_its_restart(pair: Pair) -> None:
    """kill -9 of the target agent during a throttled migration, restarted at once: it
    finds the incoming migration in its stored records and adopts the guest that arrives."""
    a, b = pair.a, pair.b
    with pair.client(a) as client:
        migration_id = started_slow(pair, client, "newcomer")
        b.stop(signal.SIGKILL)
        b.start()
        client.update_migration(migration_id, bandwidth_mib=64)
        mine = run_to_end(client, migration_id)[-1]
    with pair.client(b) as client:
        theirs = wait_for(
            lambda: (m := client.get_migration(migration_id)).end_time.seconds and m,
            120,
            0.5,
            "the restarted target to end the migration",
        )
    print(f"source: {mpb.MigrationState.Name(mine.state)} {mine.message!r}; "
          f"target: {mpb.MigrationState.Name(theirs.state)} {theirs.message!r}")  # fmt: skip
    assert theirs.role == mpb.MIGRATION_ROLE_TARGET
    on_a, on_b = running_here(a, "newcomer"), running_here(b, "newcomer")
    assert on_a != on_b, (on_a, on_b)
    assert (
        mine.state
        == theirs.state
        == (mpb.MIGRATION_STATE_SUCCEEDED if on_b else mpb.MIGRATION_STATE_FAILED)
    )
    if on_b:
        assert b.wait_phase("newcomer", vm_pb2.PHASE_RUNNING, timeout=30)
        with pytest.raises(grpc.RpcError):
            a.get("newcomer")
    else:
        nic = a.get("newcomer").status.interfaces[0]
        assert_stayed_on_a(pair, "newcomer", nic.published_ports[0].node_port)
        assert_b_clean(pair, "newcomer", nic.tap_name, timeout=120)


_NODE_CALL = """
import sys
from agent.client import AgentCallError, AgentClient, TLSOptions
ca, cert, key = (arg or None for arg in sys.argv[2:5])
tls = TLSOptions(ca_file=ca, cert_file=cert, key_file=key)
try:
    with AgentClient(sys.argv[1], timeout=10, retries=0, tls=tls) as client:
        client.node()
    print("OK")
except AgentCallError as exc:
    print(exc.code.name)
"""


def node_call(node: NodeBox, target: str, tls: Path, cert: str) -> str:
    """GetNode on ``target`` from inside ``node``, as a client with certificate ``cert`` ("":
    none); the status code's name."""
    files = [str(tls / "ca.pem"), str(tls / f"{cert}.pem") if cert else ""]
    files.append(str(tls / f"{cert}.key") if cert else "")
    argv = [sys.executable, "-c", _NODE_CALL, target, *files]
    return str(node.exec(argv, cwd=str(Path(__file__).resolve().parents[2])).stdout).strip()


def test_agents_serving_mutual_tls_as_peers_migrate_with_their_certificates(
    certificates: Path, pair: Pair
) -> None:
    a, b = pair.a, pair.b
    a.apply(web_vm("sealed"))
    a.wait_phase("sealed", vm_pb2.PHASE_RUNNING, timeout=60)
    # node-b turns a client without a certificate away, and gives node-a's certificate no
    # more than the peer role (the migration calls) ...
    assert node_call(a.node, pair.address(b), certificates, "") == "UNAVAILABLE"
    assert node_call(a.node, pair.address(b), certificates, "node-a") == "PERMISSION_DENIED"
    # ... which is enough for node-a's agent to move a VM there
    with pair.client(a) as client:
        started = client.migrate("default", "sealed", pair.address(b))
        final = run_to_end(client, started.id)[-1]
    assert final.state == mpb.MIGRATION_STATE_SUCCEEDED, final.message
    assert b.wait_phase("sealed", vm_pb2.PHASE_RUNNING, timeout=30)


def test_post_copy_when_allowed_finishes_on_b_or_is_refused_where_qemu_cannot(
    pair: Pair,
) -> None:
    """Out of time, an allowed post-copy takes over. Where node-b's QEMU cannot do
    post-copy (its user has no userfaultfd, as on the CI machines so far) the call is
    refused up front naming that, and nothing changes."""
    a, b = pair.a, pair.b
    a.apply(web_vm("pushed"))
    a.wait_console("pushed", READY, timeout=150)
    before = a.wait_phase("pushed", vm_pb2.PHASE_RUNNING)
    nic = before.status.interfaces[0]
    with pair.client(a) as client:
        try:
            started = client.migrate(
                "default", "pushed", pair.address(b), bandwidth_mib=1, post_copy=True,
                on_timeout="post-copy", completion_timeout_per_gib_seconds=5,
            )  # fmt: skip
        except AgentCallError as refused:
            print(f"post-copy refused: {refused.code.name} {refused.message}")
            assert refused.code.name == "FAILED_PRECONDITION", refused
            assert "options.post_copy: node node-b cannot run post-copy" in refused.message
            assert "userfaultfd" in refused.message
            assert client.list_migrations() == []
            assert_stayed_on_a(pair, "pushed", nic.published_ports[0].node_port)
            assert_b_clean(pair, "pushed", nic.tap_name, timeout=5)
            return
        updates = run_to_end(client, started.id)
    final = updates[-1]
    print(f"post-copy: {mpb.MigrationState.Name(final.state)} {final.message}")
    if final.state == mpb.MIGRATION_STATE_SUCCEEDED:
        assert any(u.state == mpb.MIGRATION_STATE_POST_COPY for u in updates)
        moved = b.wait_phase("pushed", vm_pb2.PHASE_RUNNING, timeout=60)
        assert uptime(page(pair, b.node, moved.status.interfaces[0].published_ports[0].node_port))
        assert "default_pushed" not in domains(a.node)
        return
    assert final.state == mpb.MIGRATION_STATE_FAILED
    assert "Postcopy is not supported" in final.message, final.message
    assert_stayed_on_a(pair, "pushed", nic.published_ports[0].node_port)
    assert_b_clean(pair, "pushed", nic.tap_name)


def test_a_migration_beyond_the_nodes_limit_waits_pending(one_at_a_time: None, pair: Pair) -> None:
    a = pair.a
    a.apply(web_vm("second"))
    with pair.client(a) as client:
        first = started_slow(pair, client, "first")
        a.wait_phase("second", vm_pb2.PHASE_RUNNING, timeout=60)
        second = client.migrate("default", "second", pair.address(pair.b))
        assert client.get_migration(second.id).state == mpb.MIGRATION_STATE_PENDING
        assert a.get("second").status.phase == vm_pb2.PHASE_RUNNING  # not moving yet
        client.cancel_migration(first)
        assert run_to_end(client, first)[-1].state == mpb.MIGRATION_STATE_CANCELLED
        final = run_to_end(client, second.id)[-1]
    assert final.state == mpb.MIGRATION_STATE_SUCCEEDED, final.message
    assert pair.b.wait_phase("second", vm_pb2.PHASE_RUNNING, timeout=30)
    assert a.wait_phase("first", vm_pb2.PHASE_RUNNING, timeout=30)
