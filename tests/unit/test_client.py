"""AgentClient against a real in-process gRPC server serving the fake agent."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.api._gen.virtagent.v1 import vm_pb2, vm_service_pb2
from agent.app import server_credentials
from agent.client import AgentCallError, AgentClient, TLSOptions
from agent.config import Settings
from tests.unit.grpc_fake import FakeAgent, serve


@pytest.fixture
def fake() -> Iterator[FakeAgent]:
    yield FakeAgent()


@pytest.fixture
def target(fake: FakeAgent) -> Iterator[str]:
    server, port = serve(fake, "127.0.0.1:0")
    yield f"127.0.0.1:{port}"
    fake.release.set()
    server.stop(None)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(target: str, sleeps: list[float]) -> Iterator[AgentClient]:
    with AgentClient(target, timeout=5, sleep=sleeps.append) as agent:
        yield agent


def test_not_found_is_raised_as_agent_call_error(client: AgentClient, target: str) -> None:
    with pytest.raises(AgentCallError) as caught:
        client.get("default", "missing")

    error = caught.value
    assert (error.code, error.message, error.target) == (
        grpc.StatusCode.NOT_FOUND,
        "vm default/missing",
        target,
    )
    assert str(error) == f"agent {target}: NOT_FOUND: vm default/missing"


def test_unavailable_is_retried_with_the_same_request_id(
    client: AgentClient, fake: FakeAgent, sleeps: list[float]
) -> None:
    fake.add("web")
    fake.failures = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]

    vm = client.start("default", "web")

    assert vm.status.phase == vm_pb2.PHASE_RUNNING
    ids = [request.request_id for method, request in fake.calls]
    assert len(ids) == 3 and len(set(ids)) == 1
    assert uuid.UUID(ids[0]).version == 4
    assert len(sleeps) == 2
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2  # exponential, jittered


def test_given_request_id_is_sent(client: AgentClient, fake: FakeAgent) -> None:
    fake.add("web")
    client.start("default", "web", request_id="my-id")
    assert fake.calls[-1][1].request_id == "my-id"


def test_invalid_argument_is_not_retried(
    client: AgentClient, fake: FakeAgent, sleeps: list[float]
) -> None:
    fake.failures = [grpc.StatusCode.INVALID_ARGUMENT]

    with pytest.raises(AgentCallError) as caught:
        client.apply({"metadata": {"namespace": "default", "name": "web"}})

    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(fake.calls) == 1 and sleeps == []


def test_retries_are_bounded(target: str, fake: FakeAgent, sleeps: list[float]) -> None:
    fake.failures = [grpc.StatusCode.UNAVAILABLE] * 5
    with AgentClient(target, retries=2, sleep=sleeps.append) as client:
        with pytest.raises(AgentCallError) as caught:
            client.list("default")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(fake.calls) == 3 and len(sleeps) == 2


def test_deadline_is_applied(target: str, fake: FakeAgent) -> None:
    fake.hang = True
    with AgentClient(target, timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(AgentCallError) as caught:
            client.node()
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    assert fake.deadlines[0] is not None and fake.deadlines[0] < 0.4


def test_every_unary_call_carries_the_client_timeout(client: AgentClient, fake: FakeAgent) -> None:
    fake.add("web")
    client.get("default", "web")
    client.list("default")
    client.node()
    # The server sees the deadline as sent on the wire: gRPC rounds it up (coarsely).
    assert all(d is not None and 4 < d < 6 for d in fake.deadlines)


@pytest.mark.parametrize(
    ("grace", "spec_grace", "force", "expected"),
    [(20, None, False, 25), (None, 100, False, 105), (None, None, False, 35), (None, 100, True, 5)],
    ids=["given", "from-spec", "default", "force"],
)
def test_stop_deadline_covers_the_grace_period(
    client: AgentClient,
    fake: FakeAgent,
    grace: int | None,
    spec_grace: int | None,
    force: bool,
    expected: float,
) -> None:
    fake.add("web", vm_pb2.PHASE_RUNNING, grace=spec_grace)
    client.stop("default", "web", grace_period_seconds=grace, force=force)

    method, request = fake.calls[-1]
    assert method == "Stop" and request.force is force
    assert request.HasField("grace_period_seconds") is (grace is not None)
    deadline = fake.deadlines[-1]
    assert deadline is not None and expected - 1 < deadline < expected + 1.5


def test_apply_accepts_a_dict_and_reports_changes(client: AgentClient, fake: FakeAgent) -> None:
    document = {"metadata": {"namespace": "default", "name": "web"}, "spec": {}}
    assert client.apply(document).changed is True
    assert client.apply(document).changed is False
    assert fake.calls[0][1].request_id != fake.calls[1][1].request_id


def test_verbs_send_their_options(client: AgentClient, fake: FakeAgent) -> None:
    fake.add("web")
    assert client.pause("default", "web").status.phase == vm_pb2.PHASE_PAUSED
    assert client.resume("default", "web").status.phase == vm_pb2.PHASE_RUNNING
    client.restart("default", "web", hard=True)
    assert [m for m, _ in fake.calls] == ["Pause", "Resume", "Restart"]
    assert fake.calls[-1][1].hard is True
    assert all(request.request_id for _, request in fake.calls)


def test_list_delete_and_node(client: AgentClient, fake: FakeAgent) -> None:
    fake.add("a")
    fake.add("b")
    assert [vm.metadata.name for vm in client.list("default")] == ["a", "b"]
    client.delete("default", "a", grace_period_seconds=0)
    assert [vm.metadata.name for vm in client.list("default")] == ["b"]
    assert client.node().name == "node-1"


def test_watch_streams_snapshot_and_retries_before_the_first_event(
    client: AgentClient, fake: FakeAgent, sleeps: list[float]
) -> None:
    fake.add("web")
    fake.failures = [grpc.StatusCode.UNAVAILABLE]

    events = list(client.watch("default"))

    assert [e.type for e in events] == [
        vm_service_pb2.EVENT_TYPE_ADDED,
        vm_service_pb2.EVENT_TYPE_SYNCED,
    ]
    assert [m for m, _ in fake.calls] == ["Watch", "Watch"] and len(sleeps) == 1


def test_console_log_yields_bytes(client: AgentClient, fake: FakeAgent) -> None:
    assert (
        b"".join(client.console_log("default", "web", tail_lines=5)) == b"booting\n\x1b[0mlogin: "
    )
    request = fake.calls[0][1]
    assert (request.tail_lines, request.follow) == (5, False)


def test_closing_a_followed_stream_cancels_the_call(client: AgentClient, fake: FakeAgent) -> None:
    chunks = client.console_log("default", "web", follow=True)
    assert next(chunks) == b"booting\n"
    chunks.close()
    assert fake.cancelled.wait(5)


def test_stream_errors_are_mapped(client: AgentClient, fake: FakeAgent) -> None:
    fake.failures = [grpc.StatusCode.PERMISSION_DENIED]
    with pytest.raises(AgentCallError) as caught:
        list(client.console_log("default", "web"))
    assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_unix_socket_target(fake: FakeAgent, tmp_path: Path) -> None:
    server, _ = serve(fake, f"unix:{tmp_path}/agent.sock")
    try:
        with AgentClient(f"unix:{tmp_path}/agent.sock") as client:
            assert client.node().name == "node-1"
    finally:
        server.stop(None)


def test_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="both cert_file and key_file"):
        TLSOptions(cert_file="client.pem").credentials()


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory: Path) -> None:
    """A CA, a server certificate for agent.test and a client certificate (EC, 1 day)."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=test-ca", cwd=directory)  # fmt: skip
    for name, extension in (("server", "subjectAltName=DNS:agent.test"), ("client", "")):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=directory)  # fmt: skip
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "1", "-out", f"{name}.pem",
                "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip


@pytest.mark.skipif(  # allowed-skip: never in CI (CI is set there)
    shutil.which("openssl") is None and not os.environ.get("CI"), reason="needs openssl"
)
def test_mutual_tls(fake: FakeAgent, tmp_path: Path) -> None:
    make_certificates(tmp_path)

    # The agent's own TLS setup (--tls-cert, --tls-key, --tls-client-ca), as virt-agent builds it.
    settings = Settings(
        tls_cert=str(tmp_path / "server.pem"),
        tls_key=str(tmp_path / "server.key"),
        tls_client_ca=str(tmp_path / "ca.pem"),
    )
    server, port = serve(fake, "127.0.0.1:0", server_credentials(settings))
    tls = TLSOptions(
        ca_file=str(tmp_path / "ca.pem"),
        cert_file=str(tmp_path / "client.pem"),
        key_file=str(tmp_path / "client.key"),
        server_name="agent.test",
    )
    anonymous = TLSOptions(ca_file=str(tmp_path / "ca.pem"), server_name="agent.test")
    try:
        with AgentClient(f"127.0.0.1:{port}", tls=tls) as client:
            assert client.node().name == "node-1"
        with AgentClient(f"127.0.0.1:{port}", tls=anonymous, retries=0, timeout=5) as client:
            with pytest.raises(AgentCallError) as caught:
                client.node()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(None)
