"""FakeMigrator: libvirt's migration job on the FakeHypervisor, and FakeTargets: the target
agents a source talks to, recording what they were asked.

``migrate`` blocks until the test ends the job: ``succeed`` (the domain leaves the fake
hypervisor, as libvirt's UNDEFINE_SOURCE does), ``fail`` (it keeps running) or
``fail_in_post_copy`` (paused with reason postcopy_failed, as libvirt leaves a source whose
post-copy broke). ``job`` sets the stats ``job_stats`` answers meanwhile; ``stats_errors``
makes it fail first (libvirt's transient errors).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.errors import AgentError, FailedPrecondition
from agent.migration.ports import PreparedTarget
from agent.naming import METADATA_URI
from agent.ports import DomainState, JobSample, MigrationJob
from tests.unit.fake_hypervisor import FakeHypervisor

__all__ = ["FakeMigrator", "FakeTargets"]

_LIMIT_SECONDS = 10.0


class FakeMigrator:
    def __init__(self, hv: FakeHypervisor) -> None:
        self.hv = hv
        self.jobs: dict[str, JobSample] = {}
        self.started: list[MigrationJob] = []
        self.aborted: list[str] = []
        self.stats_errors: list[AgentError] = []  # raised, one per call, by job_stats first
        self.running = threading.Event()
        self._ended = threading.Event()
        self._outcome: AgentError | None = None

    # -- test controls --------------------------------------------------------------------

    def job(self, domain: str, sample: JobSample | None) -> None:
        if sample is None:
            self.jobs.pop(domain, None)
        else:
            self.jobs[domain] = sample

    def succeed(self, domain: str) -> None:
        """The guest moved: libvirt undefines the source domain."""
        self.jobs.pop(domain, None)
        with self.hv._lock:
            self.hv._domains.pop(domain, None)
        self._end(None)

    def fail(self, domain: str, message: str) -> None:
        self.jobs.pop(domain, None)
        self._end(FailedPrecondition(message))

    def fail_in_post_copy(self, domain: str, message: str) -> None:
        self.jobs.pop(domain, None)
        with self.hv._lock:
            dom = self.hv._domains[domain]
            dom.state, dom.reason = DomainState.PAUSED, "postcopy_failed"
        self._end(FailedPrecondition(message))

    def _end(self, outcome: AgentError | None) -> None:
        self._outcome = outcome
        self._ended.set()

    # -- the port -------------------------------------------------------------------------

    def migratable_xml(self, name: str) -> tuple[str, str]:
        info = self.hv.lookup(name)
        assert info is not None
        return info.live_xml or info.config_xml, info.config_xml

    def migrate(self, name: str, job: MigrationJob) -> None:
        self.started.append(job)
        self.jobs[name] = JobSample(data_total=1 << 20, data_remaining=1 << 20)
        self.running.set()
        if not self._ended.wait(_LIMIT_SECONDS):
            raise FailedPrecondition("the test never ended the fake migration")
        if self._outcome is not None:
            raise self._outcome

    def job_stats(self, name: str) -> JobSample | None:
        if self.stats_errors:
            raise self.stats_errors.pop(0)
        return self.jobs.get(name)

    def completed(self, name: str) -> tuple[int, JobSample]:
        return 42, JobSample(data_processed=1 << 20)

    def abort(self, name: str) -> None:
        self.aborted.append(name)

    def set_max_downtime(self, name: str, milliseconds: int) -> None:
        pass

    def set_max_speed(self, name: str, mib_per_second: int) -> None:
        pass

    def start_post_copy(self, name: str) -> None:
        pass


@dataclass
class FakeTargets:
    """TargetAgents whose target answers (or refuses with ``refusal``) and records calls."""

    node_name: str = "node-b"
    libvirt_uri: str = "qemu+tcp://192.0.2.12/system"
    refusal: AgentError | None = None
    prepared: list[dict[str, object]] = field(default_factory=list)
    finished: list[tuple[str, bool, str]] = field(default_factory=list)

    def connect(self, address: str) -> FakeTargets:
        return self

    def prepare(
        self,
        migration_id: str,
        namespace: str,
        name: str,
        metadata_xml: str,
        memory_bytes: int,
        *,
        validate_only: bool = False,
        post_copy: bool = False,
        digests: Mapping[str, str] | None = None,
    ) -> PreparedTarget:
        self.prepared.append(
            {"id": migration_id, "validate_only": validate_only, "post_copy": post_copy,
             "digests": dict(digests or {})}
        )  # fmt: skip
        if self.refusal is not None:
            raise self.refusal
        if validate_only:
            return PreparedTarget("", "", self.node_name, "")
        return PreparedTarget(self.libvirt_uri, "tcp://192.0.2.12", self.node_name, _TARGET_XML)

    def finish(self, migration_id: str, *, succeeded: bool, message: str) -> tuple[int, JobSample]:
        self.finished.append((migration_id, succeeded, message))
        return (42, JobSample(data_processed=1 << 20)) if succeeded else (0, JobSample())

    def close(self) -> None:
        pass


_TARGET_XML = f"""<domain type='qemu'><name>default_web</name>
<metadata><va:vm xmlns:va="{METADATA_URI}"><va:spec>target</va:spec></va:vm>
</metadata><os><type>hvm</type></os><devices/></domain>"""
