"""Ports of the migration core: the other node's agent (the hypervisor's migration job is
``agent.ports.Migrator``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from agent.ports import JobSample

__all__ = ["MigrationTarget", "PreparedTarget", "TargetAgents"]


@dataclass(frozen=True, slots=True)
class PreparedTarget:
    """The target agent's answer to PrepareMigrationTarget."""

    libvirt_uri: str
    migration_uri: str
    node_name: str
    domain_xml: str  # the definition the target built for the VM (its paths and metadata)


class MigrationTarget(Protocol):
    """The target node's agent, as the source sees it."""

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
        """Ready the target (``validate_only``: only its checks, nothing made, an answer
        naming its node alone); ``digests`` pins containerDisk volumes to manifests."""
        ...

    def finish(self, migration_id: str, *, succeeded: bool, message: str) -> tuple[int, JobSample]:
        """Tell the target how it ended; returns the downtime (ms, 0: unknown) and final
        statistics it saw."""
        ...

    def close(self) -> None: ...


class TargetAgents(Protocol):
    """Opens a connection to the agent at ``address`` (host:port) with the node's TLS."""

    def connect(self, address: str) -> MigrationTarget: ...
