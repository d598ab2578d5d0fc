"""Migrations: the node's MigrationService behind the gRPC servicer (both ends, one book)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from agent.migration.policy import MigrationOptions
from agent.migration.ports import PreparedTarget
from agent.migration.records import SOURCE, MigrationBook, MigrationRecord
from agent.migration.source import OutgoingMigrations
from agent.migration.target import IncomingMigrations
from agent.ports import JobSample

__all__ = ["Migrations"]

_WATCH_WAIT_SECONDS = 5.0


class Migrations:
    """Outgoing and incoming migrations and their records.

    Usage::

        record = migrations.migrate("default", "web", "10.0.0.12:9090", MigrationOptions())
        for update in migrations.watch(record.id):
            print(update.state, update.progress.data_remaining)
    """

    def __init__(
        self, book: MigrationBook, outgoing: OutgoingMigrations, incoming: IncomingMigrations
    ) -> None:
        self.book = book
        self.outgoing = outgoing
        self.incoming = incoming

    def migrate(
        self,
        namespace: str,
        name: str,
        target_agent: str,
        options: MigrationOptions,
        request_id: str = "",
    ) -> MigrationRecord:
        return self.outgoing.start(namespace, name, target_agent, options, request_id)

    def get(self, migration_id: str) -> MigrationRecord:
        return self.book.get(migration_id)

    def list(self, namespace: str = "", name: str = "") -> list[MigrationRecord]:
        return self.book.list(namespace, name)

    def watch(
        self, migration_id: str, alive: Callable[[], bool] | None = None
    ) -> Iterator[MigrationRecord]:
        """The record now, then on every change, until it has ended."""
        record = self.book.get(migration_id)
        yield record
        while not record.ended:
            if alive is not None and not alive():
                return
            newer = self.book.wait_change(migration_id, record.version, _WATCH_WAIT_SECONDS)
            if newer.version != record.version:
                yield newer
            record = newer

    def cancel(self, migration_id: str) -> MigrationRecord:
        return self.outgoing.cancel(migration_id)

    def update(
        self, migration_id: str, *, bandwidth_mib: int | None, max_downtime_ms: int | None
    ) -> MigrationRecord:
        return self.outgoing.update(
            migration_id, bandwidth_mib=bandwidth_mib, max_downtime_ms=max_downtime_ms
        )

    def prepare(
        self,
        migration_id: str,
        metadata_xml: str,
        source_node: str,
        memory_bytes: int,
        *,
        vm: tuple[str, str],
        validate_only: bool = False,
        post_copy: bool = False,
        digests: Mapping[str, str] | None = None,
    ) -> PreparedTarget:
        return self.incoming.prepare(
            migration_id, metadata_xml, source_node, memory_bytes, vm=vm,
            validate_only=validate_only, post_copy=post_copy, digests=digests,
        )  # fmt: skip

    def recover(self) -> None:
        """Find the migrations a previous agent process left unfinished (stored records)
        and follow each to its end; before the first resync."""
        for record in self.book.load():
            if record.role == SOURCE:
                self.outgoing.follow(record)
            else:
                self.incoming.recover(record)

    def finish(self, migration_id: str, *, succeeded: bool, message: str) -> tuple[int, JobSample]:
        return self.incoming.finish(migration_id, succeeded=succeeded, message=message)
