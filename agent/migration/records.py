"""Migration records: what each migration is doing or did, kept for a while after it ends.

Thread-safe; watchers wait on ``wait_change``. Both ends keep their own record (role source
or target) with the same id.
"""

from __future__ import annotations

import builtins
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import agent.metrics.agent_metrics as agent_metrics
from agent.errors import NotFound
from agent.migration.policy import MigrationOptions
from agent.ports import JobSample

if TYPE_CHECKING:
    from agent.migration.store import MigrationStore

__all__ = ["ENDED", "MigrationBook", "MigrationRecord", "State"]


class State:
    """Where a migration is (the proto's MigrationState, by name)."""

    PENDING = "Pending"
    PREPARING = "Preparing"
    RUNNING = "Running"
    POST_COPY = "PostCopy"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


# What the monitor changes every poll: not worth a write unless the state changes too.
_MONITORED = frozenset({"progress", "allowed_downtime_ms", "state"})
ENDED = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
SOURCE = "source"
TARGET = "target"


@dataclass(frozen=True, slots=True)
class MigrationRecord:
    id: str
    namespace: str
    name: str
    uid: str
    role: str  # "source" or "target"
    state: str
    source_node: str
    target_node: str = ""
    target_agent: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    options: MigrationOptions = field(default_factory=MigrationOptions)
    progress: JobSample = field(default_factory=JobSample)
    allowed_downtime_ms: int = 0
    downtime_ms: int = 0
    message: str = ""
    # The VM's spec and books as the domain metadata carries them (this node's allocation on
    # the target): what a restarted agent needs to finish or undo the migration.
    metadata_xml: str = ""
    version: int = 0  # grows with every change, for watchers

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    @property
    def domain(self) -> str:
        return f"{self.namespace}_{self.name}"


class MigrationBook:
    """Records by id; ended ones are forgotten after ``retention`` seconds. With a
    ``store``, every change of state is written to disk and ``load`` reads them back."""

    def __init__(
        self,
        *,
        retention: float = 3600.0,
        clock: Callable[[], float] = time.time,
        store: MigrationStore | None = None,
    ) -> None:
        self._records: dict[str, MigrationRecord] = {}
        self._changed = threading.Condition()
        self._retention = retention
        self._clock = clock
        self._store = store
        self._writing = threading.Lock()  # disk writes, outside ``_changed`` (fsync is slow)
        self._written: dict[str, int] = {}  # id → version last stored (never older over newer)

    def load(self) -> builtins.list[MigrationRecord]:
        """Read the stored records (after a restart); returns those that had not ended."""
        if self._store is None:
            return []
        with self._changed:
            for record in self._store.load():
                self._records[record.id] = record
            self._prune()
            return [r for r in self._records.values() if not r.ended]

    def add(self, record: MigrationRecord) -> MigrationRecord:
        with self._changed:
            self._prune()
            self._records[record.id] = record
            self._changed.notify_all()
        self._save(record)
        return record

    def update(self, migration_id: str, **changes: object) -> MigrationRecord:
        """Change fields of a record; an ended one gets its end time."""
        with self._changed:
            record = self._require(migration_id)
            if record.ended and "state" in changes:
                return record  # the end is final (a late cancel or monitor update)
            new = dataclasses.replace(record, **changes, version=record.version + 1)  # type: ignore[arg-type]
            if new.ended and not new.ended_at:
                new = dataclasses.replace(new, ended_at=self._clock())
                agent_metrics.migration_ended(
                    new.role, new.state.lower(), new.ended_at - new.started_at
                )
            self._records[migration_id] = new
            store = new.state != record.state or bool(set(changes) - _MONITORED)
            self._changed.notify_all()
        if store:
            self._save(new)
        return new

    def get(self, migration_id: str) -> MigrationRecord:
        with self._changed:
            return self._require(migration_id)

    def find(self, migration_id: str) -> MigrationRecord | None:
        with self._changed:
            return self._records.get(migration_id)

    def list(self, namespace: str = "", name: str = "") -> list[MigrationRecord]:
        with self._changed:
            self._prune()
            records = [
                r
                for r in self._records.values()
                if (not namespace or r.namespace == namespace) and (not name or r.name == name)
            ]
        return sorted(records, key=lambda r: r.started_at, reverse=True)

    def active_for(self, domain: str, role: str) -> MigrationRecord | None:
        """The migration of ``domain`` in ``role`` that has not ended, if any."""
        with self._changed:
            for record in self._records.values():
                if record.domain == domain and record.role == role and not record.ended:
                    return record
        return None

    def outgoing_progress(self) -> builtins.list[tuple[str, JobSample]]:
        """(domain, latest job stats) of every migration running away from this node."""
        with self._changed:
            return [
                (r.domain, r.progress)
                for r in self._records.values()
                if r.role == SOURCE and r.state in (State.RUNNING, State.POST_COPY)
            ]

    def wait_change(self, migration_id: str, version: int, timeout: float) -> MigrationRecord:
        """The record once its version is past ``version`` (or as it is after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                record = self._require(migration_id)
                remaining = deadline - time.monotonic()
                if record.version > version or remaining <= 0:
                    return record
                self._changed.wait(remaining)

    def _require(self, migration_id: str) -> MigrationRecord:
        record = self._records.get(migration_id)
        if record is None:
            raise NotFound(f"migration {migration_id!r} not found")
        return record

    def _save(self, record: MigrationRecord) -> None:
        """Store ``record`` unless a newer version of it is stored already (two changes
        racing to the disk)."""
        if self._store is None:
            return
        with self._writing:
            if self._written.get(record.id, -1) >= record.version:
                return
            self._store.save(record)
            self._written[record.id] = record.version

    def _prune(self) -> None:
        cutoff = self._clock() - self._retention
        for key in [k for k, r in self._records.items() if r.ended and r.ended_at < cutoff]:
            del self._records[key]
            self._written.pop(key, None)
            if self._store is not None:
                self._store.delete(key)
