"""Readiness and liveness probes of running VMs, run by the agent against each guest's
address (KubeVirt's probes with Kubernetes' timing): readiness feeds the Ready condition,
``failureThreshold`` liveness failures in a row hard-restart the VM, as KubeVirt restarts a
VMI whose liveness probe fails.

One thread probes every VM in turn each tick; a probe waits at most its timeoutSeconds.
State starts over whenever a VM (re)starts, so initialDelaySeconds counts from its boot.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from agent.domain.clock import SYSTEM_CLOCK
from agent.errors import AgentError
from agent.models import Phase, VMSpec
from agent.naming import domain_name, parse_domain_name
from agent.ports import Clock
from agent.probe import Probe

if TYPE_CHECKING:
    from agent.domain.lifecycle import VMService

__all__ = ["ProbeChecker", "ProbeRunner"]

log = logging.getLogger(__name__)
_TICK = 1.0


class ProbeChecker(Protocol):
    """Runs one probe against an address: True on success."""

    def check(self, probe: Probe, address: str) -> bool: ...


@dataclass
class _Counts:
    next_at: float
    successes: int = 0
    failures: int = 0


@dataclass
class _VMProbes:
    started_at: float
    ready: bool = False
    readiness: _Counts | None = None
    liveness: _Counts | None = None
    done: set[str] = field(default_factory=set)


class ProbeRunner:
    """Usage: ``runner = ProbeRunner(service, checker); runner.start() ... runner.stop()``;
    the service's refresh asks ``runner.ready(domain)`` for VMs with a readiness probe."""

    def __init__(self, service: VMService, checker: ProbeChecker, clock: Clock = SYSTEM_CLOCK):
        self.service = service
        self.checker = checker
        self.clock = clock
        self._vms: dict[str, _VMProbes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ready(self, domain: str) -> bool:
        with self._lock:
            state = self._vms.get(domain)
            return state is not None and state.ready

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="probes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the prober must outlive one bad pass
                log.exception("probe pass failed")
            self._stop.wait(_TICK)

    def tick(self) -> None:
        """One pass over the VM cache: probe what is due, act on the results."""
        now = self.clock.monotonic()
        seen = set()
        for record in self.service.cache.records():
            spec, status = record.spec, record.status
            domain = domain_name(spec.namespace, spec.name)
            probes = (spec.readiness_probe, spec.liveness_probe)
            address = next((ip for i in status.interfaces for ip in i.ip_addresses), "")
            if status.phase != Phase.RUNNING or probes == (None, None) or not address:
                continue
            seen.add(domain)
            self._probe(domain, spec, status.started_at, address, now)
        with self._lock:
            for gone in set(self._vms) - seen:
                del self._vms[gone]

    def _probe(
        self, domain: str, spec: VMSpec, started_at: float, address: str, now: float
    ) -> None:
        with self._lock:
            state = self._vms.get(domain)
            if state is None or state.started_at != started_at:
                state = self._vms[domain] = _VMProbes(started_at)
        if spec.readiness_probe is not None:
            state.readiness = state.readiness or _first(spec.readiness_probe, now)
            ready = self._run_probe(spec.readiness_probe, state.readiness, address, now)
            if ready is not None and ready != state.ready:
                with self._lock:
                    state.ready = ready
                log.info("vm %s readiness: %s", domain, "ready" if ready else "not ready")
                self.service.steps.refresh(domain)  # republish with the new Ready condition
        if spec.liveness_probe is not None:
            state.liveness = state.liveness or _first(spec.liveness_probe, now)
            alive = self._run_probe(spec.liveness_probe, state.liveness, address, now)
            if alive is False:
                self._restart(domain)

    def _run_probe(self, probe: Probe, counts: _Counts, address: str, now: float) -> bool | None:
        """Probe when due; returns the new verdict once a threshold is crossed, else None."""
        if now < counts.next_at:
            return None
        counts.next_at = now + probe.period_seconds
        if self.checker.check(probe, address):
            counts.successes, counts.failures = counts.successes + 1, 0
            return True if counts.successes >= probe.success_threshold else None
        counts.successes, counts.failures = 0, counts.failures + 1
        return False if counts.failures >= probe.failure_threshold else None

    def _restart(self, domain: str) -> None:
        names = parse_domain_name(domain)
        if names is None:
            return
        log.warning("vm %s failed its liveness probe: hard restart", domain)
        with self._lock:
            self._vms.pop(domain, None)
        try:
            self.service.restart(*names, hard=True)
        except AgentError as exc:
            log.warning("vm %s: restart after a failed liveness probe failed: %s", domain, exc)


def _first(probe: Probe, now: float) -> _Counts:
    return _Counts(next_at=now + probe.initial_delay_seconds)
