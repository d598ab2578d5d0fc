"""Migration records on disk (``<state dir>/migrations/<id>.json``): a restarted agent finds
the migrations it was running and keeps ended ones queryable for their retention.

One small JSON file per migration, written atomically and durably (temporary file, fsync,
rename, fsync of the folder) when the record's state or outcome changes, never for each
progress sample: a record a restarted agent acts on must be the one last written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from typing import Any

from agent.migration.policy import MigrationOptions
from agent.migration.records import MigrationRecord
from agent.ports import JobSample

__all__ = ["MigrationStore"]

log = logging.getLogger(__name__)

_SUFFIX = ".json"


class MigrationStore:
    """Usage::

    store = MigrationStore("/var/lib/virt-agent/migrations")
    store.save(record); store.load() == [record]; store.delete(record.id)
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, mode=0o700, exist_ok=True)

    def save(self, record: MigrationRecord) -> None:
        data = dataclasses.asdict(record)
        path = self._path(record.id)
        partial = f"{path}.partial"
        try:
            # Owner-only: the spec may carry cloud-init user data.
            with open(partial, "w", opener=lambda p, f: os.open(p, f, 0o600)) as handle:
                json.dump(data, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
            self._sync_folder()  # (the rename itself, through a power cut)
        except OSError:
            # The record stays in memory; only a restart would lose it.
            log.exception("storing migration %s", record.id)

    def _sync_folder(self) -> None:
        folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def delete(self, migration_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(migration_id))

    def load(self) -> list[MigrationRecord]:
        """Every readable record; unreadable files are logged and removed."""
        records = []
        for name in sorted(os.listdir(self.folder)):
            path = os.path.join(self.folder, name)
            if not name.endswith(_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(path)  # a write cut short
                continue
            try:
                with open(path) as handle:
                    records.append(_record(json.load(handle)))
            except (OSError, ValueError, TypeError, KeyError):
                log.exception("migration record %s is unreadable; removed", path)
                with contextlib.suppress(OSError):
                    os.unlink(path)
        return records

    def _path(self, migration_id: str) -> str:
        if not migration_id or "/" in migration_id or migration_id.startswith("."):
            raise ValueError(f"migration id {migration_id!r} cannot name a file")
        return os.path.join(self.folder, migration_id + _SUFFIX)


def _record(data: dict[str, Any]) -> MigrationRecord:
    data["options"] = MigrationOptions(**data.get("options", {}))
    data["progress"] = JobSample(**data.get("progress", {}))
    return MigrationRecord(**data)
