"""Readiness and liveness probes: parsing (agent/spec/probes.py), the runner's timing and
actions (agent/domain/probes.py) on a fake clock and checker, and the socket prober."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from agent.adapters.probing import SocketProber
from agent.domain.probes import ProbeRunner
from agent.domain.vmcache import VMCache, VMRecord
from agent.errors import InvalidSpec
from agent.models import Bookkeeping, InterfaceStatus, Phase, VMStatus
from agent.probe import Probe
from agent.spec import parse_vm, render_vm
from tests.unit.fake_clock import FakeClock

INSTANCE = "spec.template.spec"


def _doc(**probes: Any) -> dict[str, Any]:
    instance = {"domain": {"memory": {"guest": "128Mi"}}, **probes}
    return {"metadata": {"namespace": "d", "name": "web"}, "spec": {"template": {"spec": instance}}}


def test_probes_parse_with_kubernetes_defaults_and_round_trip() -> None:
    vm = parse_vm(
        _doc(
            readinessProbe={"httpGet": {"port": 80, "path": "/health"}, "periodSeconds": 2},
            livenessProbe={"tcpSocket": {"port": 22}, "failureThreshold": 5},
        )
    )
    assert vm.readiness_probe == Probe("httpGet", 80, "/health", period_seconds=2)
    assert vm.liveness_probe == Probe("tcpSocket", 22, failure_threshold=5)
    assert parse_vm(render_vm(vm)) == vm


@pytest.mark.parametrize(
    ("probe", "field", "problem"),
    [
        ({"exec": {"command": ["true"]}}, "readinessProbe.exec", "needs a guest agent"),
        ({"guestAgentPing": {}}, "readinessProbe.guestAgentPing", "needs a guest agent"),
        ({}, "readinessProbe", "exactly one of tcpSocket, httpGet"),
        ({"tcpSocket": {"port": 0}}, "readinessProbe.tcpSocket.port", "between 1 and 65535"),
        ({"tcpSocket": {"port": 1, "host": "x"}}, "tcpSocket.host", "must be empty"),
        ({"httpGet": {"port": 1, "path": "no-slash"}}, "httpGet.path", "absolute path"),
        ({"httpGet": {"port": 1, "scheme": "HTTPS"}}, "httpGet.scheme", "only HTTP"),
        ({"tcpSocket": {"port": 1}, "periodSeconds": 99999}, "periodSeconds", "between 1"),
    ],
    ids=["exec", "guest-agent-ping", "no-action", "port", "host", "path", "https", "period"],
)
def test_bad_probes_are_named(probe: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_vm(_doc(readinessProbe=probe))
    assert caught.value.field.endswith(field) and problem in caught.value.problem


def test_a_liveness_probe_needs_success_threshold_one() -> None:
    with pytest.raises(InvalidSpec, match="livenessProbe.successThreshold"):
        parse_vm(_doc(livenessProbe={"tcpSocket": {"port": 1}, "successThreshold": 2}))


class FakeSteps:
    def __init__(self) -> None:
        self.refreshed: list[str] = []

    def refresh(self, domain: str) -> None:
        self.refreshed.append(domain)


class FakeService:
    """What the runner uses of VMService: the registry, refresh and hard restart."""

    def __init__(self) -> None:
        self.cache = VMCache()
        self.steps = FakeSteps()
        self.restarts: list[tuple[str, str, bool]] = []

    def restart(self, namespace: str, name: str, *, hard: bool) -> None:
        self.restarts.append((namespace, name, hard))


class ScriptedChecker:
    def __init__(self) -> None:
        self.answers: dict[int, bool] = {}
        self.calls: list[tuple[int, str]] = []

    def check(self, probe: Probe, address: str) -> bool:
        self.calls.append((probe.port, address))
        return self.answers.get(probe.port, False)


def _running(service: FakeService, **probes: Any) -> None:
    spec = parse_vm(_doc(**probes))
    status = VMStatus(
        phase=Phase.RUNNING,
        started_at=100.0,
        interfaces=(InterfaceStatus("default", ip_addresses=("10.250.0.5",)),),
    )
    service.cache.put("d_web", VMRecord(spec, Bookkeeping(1, 1.0), status))


@pytest.fixture
def setup() -> Iterator[tuple[FakeService, ScriptedChecker, FakeClock, ProbeRunner]]:
    service, checker, clock = FakeService(), ScriptedChecker(), FakeClock()
    yield service, checker, clock, ProbeRunner(service, checker, clock)  # type: ignore[arg-type]


def test_readiness_waits_the_initial_delay_then_flips_ready_and_republishes(
    setup: tuple[FakeService, ScriptedChecker, FakeClock, ProbeRunner],
) -> None:
    service, checker, clock, runner = setup
    probe = {"httpGet": {"port": 80}, "initialDelaySeconds": 5, "periodSeconds": 2}
    _running(service, readinessProbe=probe)
    runner.tick()
    clock.advance(4)
    runner.tick()
    assert checker.calls == [] and not runner.ready("d_web")
    checker.answers[80] = True
    clock.advance(1)
    runner.tick()
    assert checker.calls == [(80, "10.250.0.5")]
    assert runner.ready("d_web") and service.steps.refreshed == ["d_web"]
    checker.answers[80] = False
    for _ in range(3):  # failureThreshold 3, every periodSeconds
        clock.advance(2)
        runner.tick()
    assert not runner.ready("d_web") and service.steps.refreshed == ["d_web", "d_web"]


def test_liveness_failures_in_a_row_hard_restart_the_vm(
    setup: tuple[FakeService, ScriptedChecker, FakeClock, ProbeRunner],
) -> None:
    service, checker, clock, runner = setup
    _running(service, livenessProbe={"tcpSocket": {"port": 22}, "failureThreshold": 2})
    runner.tick()
    checker.answers[22] = True
    clock.advance(10)
    runner.tick()
    checker.answers[22] = False
    clock.advance(10)
    runner.tick()
    assert service.restarts == []  # one failure of two
    clock.advance(10)
    runner.tick()
    assert service.restarts == [("d", "web", True)]


def test_stopped_vms_and_vms_without_probes_are_not_probed(
    setup: tuple[FakeService, ScriptedChecker, FakeClock, ProbeRunner],
) -> None:
    service, checker, _, runner = setup
    _running(service)
    runner.tick()
    assert checker.calls == []


@pytest.fixture
def web_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200 if self.path == "/ok" else 500)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_socket_prober_on_loopback(web_server: int) -> None:
    prober = SocketProber()
    assert prober.check(Probe("httpGet", web_server, "/ok"), "127.0.0.1")
    assert not prober.check(Probe("httpGet", web_server, "/broken"), "127.0.0.1")
    assert prober.check(Probe("tcpSocket", web_server), "127.0.0.1")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = unused.getsockname()[1]
    assert not prober.check(Probe("tcpSocket", closed), "127.0.0.1")
