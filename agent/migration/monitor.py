"""The source's watch over a running migration: job stats every poll, published and fed to
the policy, whose decisions it applies; and the removal of what the source keeps of a VM
that left."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from agent.domain.lifecycle import VMService
from agent.errors import FailedPrecondition
from agent.migration.policy import Abort, Decision, Policy, SetDowntime, StartPostCopy
from agent.migration.records import MigrationBook, State
from agent.models import Bookkeeping, VMSpec
from agent.naming import vm_key
from agent.ports import DomainState, Migrator

__all__ = ["Control", "clean_source", "watch_job"]

log = logging.getLogger(__name__)


@dataclass
class Control:
    """What callers may ask of a running migration (read by its thread), and what its
    monitor saw."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    policy: Policy | None = None
    abort_reason: str = ""
    post_copy: bool = False  # the job entered post-copy: the source no longer has the guest


def watch_job(
    book: MigrationBook,
    migrator: Migrator,
    migration_id: str,
    control: Control,
    done: threading.Event,
    poll: float,
) -> None:
    """Until ``done``: read the job stats every ``poll`` seconds, publish them and apply
    the policy."""
    domain = book.get(migration_id).domain
    while not done.wait(poll):
        try:
            if control.cancelled.is_set():  # a cancel that came before the job existed
                migrator.abort(domain)
            sample = migrator.job_stats(domain)
            if sample is None:
                continue
            control.post_copy = control.post_copy or sample.post_copy
            state = State.POST_COPY if control.post_copy else State.RUNNING
            if control.policy is None:  # (followed after a restart: publish only)
                book.update(migration_id, progress=sample, state=state)
                continue
            decisions = control.policy.observe(sample)
            book.update(
                migration_id,
                progress=sample,
                allowed_downtime_ms=control.policy.downtime_ms,
                state=state,
            )
            for decision in decisions:
                _apply(book, migrator, migration_id, domain, control, decision)
        except Exception:
            log.exception("monitoring migration %s", migration_id)


def _apply(
    book: MigrationBook,
    migrator: Migrator,
    migration_id: str,
    domain: str,
    control: Control,
    decision: Decision,
) -> None:
    if isinstance(decision, SetDowntime):
        migrator.set_max_downtime(domain, decision.milliseconds)
    elif isinstance(decision, StartPostCopy):
        log.info("migration %s: switching to post-copy: %s", migration_id, decision.reason)
        migrator.start_post_copy(domain)
        control.post_copy = True
        book.update(migration_id, state=State.POST_COPY, message=decision.reason)
    elif isinstance(decision, Abort):
        log.warning("migration %s: aborting: %s", migration_id, decision.reason)
        control.abort_reason = decision.reason
        migrator.abort(domain)


def clean_source(service: VMService, domain: str, spec: VMSpec, books: Bookkeeping) -> None:
    """The guest runs on the target: remove what this node still has of it."""
    current = service.steps.read(domain)
    if current is not None and current[0].state != DomainState.SHUTOFF:
        raise FailedPrecondition(f"vm {vm_key(domain)} still runs here after its migration")
    try:
        service.network.unplug(domain, spec, books.network)
    except Exception:
        log.exception("unplugging the migrated %s failed; reconcile removes it", domain)
    if current is not None:
        service.hv.undefine(domain)
    service.files.remove(domain)
    service.cache.remove(domain)
