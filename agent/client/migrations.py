"""The MigrationService calls of ``agent.client.AgentClient`` (a mixin, to keep modules small)."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Generator
from typing import Any

from agent.api._gen.virtagent.v1 import migration_service_pb2 as mpb

__all__ = ["MigrationCalls"]

_ON_TIMEOUT = {
    "": mpb.MIGRATION_TIMEOUT_ACTION_UNSPECIFIED,
    "abort": mpb.MIGRATION_TIMEOUT_ACTION_ABORT,
    "post-copy": mpb.MIGRATION_TIMEOUT_ACTION_POST_COPY,
}


class MigrationCalls:
    """Live migration: ``migrate`` on the source agent returns at once; ``watch_migration``
    follows it. Zero options mean the agent's defaults."""

    _migrations: Any  # MigrationServiceStub, set by AgentClient

    def _unary(self, rpc: Any, request: Any, *, timeout: float | None = None) -> Any:
        raise NotImplementedError

    def _stream(
        self, rpc: Any, request: Any, *, timeout: float | None
    ) -> Generator[Any, None, None]:
        raise NotImplementedError

    def migrate(
        self,
        namespace: str,
        name: str,
        target_agent: str,
        *,
        bandwidth_mib: int = 0,
        max_downtime_ms: int = 0,
        post_copy: bool = False,
        auto_converge: bool = False,
        parallel_connections: int = 0,
        progress_timeout_seconds: int = 0,
        completion_timeout_per_gib_seconds: int = 0,
        on_timeout: str = "",
        request_id: str | None = None,
    ) -> mpb.Migration:
        """Start moving a running VM of this agent's node to the node of ``target_agent``."""
        if on_timeout not in _ON_TIMEOUT:
            raise ValueError(f"on_timeout {on_timeout!r} is not abort or post-copy")
        options = mpb.MigrationOptions(
            bandwidth_mib_per_second=bandwidth_mib,
            max_downtime_ms=max_downtime_ms,
            allow_post_copy=post_copy,
            allow_auto_converge=auto_converge,
            parallel_connections=parallel_connections,
            progress_timeout_seconds=progress_timeout_seconds,
            completion_timeout_per_gib_seconds=completion_timeout_per_gib_seconds,
            on_timeout=_ON_TIMEOUT[on_timeout],
        )
        request = mpb.MigrateVirtualMachineRequest(
            namespace=namespace,
            name=name,
            target_agent=target_agent,
            options=options,
            request_id=request_id or str(uuid.uuid4()),
        )
        response = self._unary(self._migrations.MigrateVirtualMachine, request)
        migration: mpb.Migration = response.migration
        return migration

    def get_migration(self, migration_id: str) -> mpb.Migration:
        request = mpb.GetMigrationRequest(migration_id=migration_id)
        migration: mpb.Migration = self._unary(self._migrations.GetMigration, request).migration
        return migration

    def list_migrations(self, namespace: str = "", name: str = "") -> builtins.list[mpb.Migration]:
        request = mpb.ListMigrationsRequest(namespace=namespace, name=name)
        return list(self._unary(self._migrations.ListMigrations, request).migrations)

    def watch_migration(
        self, migration_id: str, *, timeout: float | None = None
    ) -> Generator[mpb.Migration, None, None]:
        """The migration now, then on every change until it ends (then the stream closes)."""
        request = mpb.WatchMigrationRequest(migration_id=migration_id)
        for item in self._stream(self._migrations.WatchMigration, request, timeout=timeout):
            yield item.migration

    def cancel_migration(self, migration_id: str) -> mpb.Migration:
        request = mpb.CancelMigrationRequest(migration_id=migration_id)
        migration: mpb.Migration = self._unary(self._migrations.CancelMigration, request).migration
        return migration

    def update_migration(
        self,
        migration_id: str,
        *,
        bandwidth_mib: int | None = None,
        max_downtime_ms: int | None = None,
    ) -> mpb.Migration:
        request = mpb.UpdateMigrationRequest(migration_id=migration_id)
        if bandwidth_mib is not None:
            request.bandwidth_mib_per_second = bandwidth_mib
        if max_downtime_ms is not None:
            request.max_downtime_ms = max_downtime_ms
        migration: mpb.Migration = self._unary(self._migrations.UpdateMigration, request).migration
        return migration

    # Agent to agent (the source agent calls these on the target).

    def prepare_migration_target(
        self, request: mpb.PrepareMigrationTargetRequest, *, timeout: float | None = None
    ) -> mpb.PrepareMigrationTargetResponse:
        response: mpb.PrepareMigrationTargetResponse = self._unary(
            self._migrations.PrepareMigrationTarget, request, timeout=timeout
        )
        return response

    def finish_migration_target(
        self, migration_id: str, *, succeeded: bool, message: str
    ) -> mpb.FinishMigrationTargetResponse:
        request = mpb.FinishMigrationTargetRequest(
            migration_id=migration_id, succeeded=succeeded, message=message
        )
        response: mpb.FinishMigrationTargetResponse = self._unary(
            self._migrations.FinishMigrationTarget, request
        )
        return response
