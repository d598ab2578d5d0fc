"""An outgoing migration found again by a restarted source agent (from its stored record):
follow libvirt's job while it runs, then read the outcome from the domain's state.

libvirtd carries a peer-to-peer migration on without the agent. When its job has ended:
no domain here (libvirt undefines the source only on success) or one shut off with reason
"migrated" → the guest moved: remove what the node keeps of it, Succeeded; a domain still
defined and shut off for any other reason (crashed, powered off) never left → Failed, the
VM kept as it is; the domain paused by a failed post-copy → Failed, the VM too; the guest
still running here → Failed, and the target removes its preparations. A record that never
reached libvirt (Pending, Preparing) ends Failed without touching the VM. Nothing is
undefined on a guess: only what libvirt itself says has left.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

from agent.domain.metadata import parse_metadata
from agent.errors import AgentError, Conflict, Unavailable
from agent.migration.monitor import Control, clean_source
from agent.migration.records import MigrationRecord, State
from agent.naming import vm_key
from agent.ports import DomainInfo, DomainState, JobSample

if TYPE_CHECKING:
    from agent.migration.source import OutgoingMigrations

__all__ = ["resume_outgoing"]

log = logging.getLogger(__name__)

_RETRY_SECONDS = 0.5
_JOB_ERROR_PATIENCE = 30.0  # seconds of errors reading libvirt's job before giving up


def resume_outgoing(
    outgoing: OutgoingMigrations, record: MigrationRecord, control: Control
) -> None:
    """Follow ``record``'s migration to its end (run on a thread of its own)."""
    book, service, domain = outgoing.book, outgoing.service, record.domain
    try:
        spec, books = parse_metadata(record.metadata_xml)
    except Exception as exc:
        book.update(record.id, state=State.FAILED, message=f"agent restarted; record: {exc}")
        return
    if record.state in (State.PENDING, State.PREPARING):
        _never_started(outgoing, record)
        return
    while not service.hv.connected():
        time.sleep(_RETRY_SECONDS)
    with _held(outgoing, domain):
        service.steps.migrating.add(domain)
        try:
            info = _follow_job(outgoing, record, control)
            if info is None or _moved(info):
                clean_source(service, domain, spec, books)
                downtime, final = _tell_target(outgoing, record, succeeded=True, message="")
                changes: dict[str, object] = {"downtime_ms": downtime}
                if final.data_processed:
                    changes["progress"] = final
                message = "finished by libvirt while the agent restarted"
                book.update(record.id, state=State.SUCCEEDED, message=message, **changes)
                log.info("vm %s migrated to %s (followed after a restart)", vm_key(domain),
                         record.target_node)  # fmt: skip
                return
            message = _failure(record, info, control)
            _tell_target(outgoing, record, succeeded=False, message=message)
            state = State.CANCELLED if control.cancelled.is_set() else State.FAILED
            book.update(record.id, state=state, message=message)
        finally:
            service.steps.migrating.discard(domain)
            with contextlib.suppress(Exception):
                service.steps.refresh(domain)


def _moved(info: DomainInfo) -> bool:
    """Whether libvirt says the guest left though its domain is still here: with
    UNDEFINE_SOURCE a migrated domain is gone, unless that undefine failed (shut off with
    reason "migrated")."""
    return info.state == DomainState.SHUTOFF and info.reason == "migrated"


def _never_started(outgoing: OutgoingMigrations, record: MigrationRecord) -> None:
    """The agent stopped before libvirt's job started: the VM never left; it stays as it is
    (running or stopped meanwhile) and the target removes its preparations."""
    message = (
        f"the agent restarted before the migration started ({record.state}); the vm stays "
        f"on {record.source_node} as it is"
    )
    _tell_target(outgoing, record, succeeded=False, message=message)
    outgoing.book.update(record.id, state=State.FAILED, message=message)


def _follow_job(
    outgoing: OutgoingMigrations, record: MigrationRecord, control: Control
) -> DomainInfo | None:
    """Publish libvirt's job stats until the job is gone; the domain as it is then. Errors
    reading the job (other than libvirtd away) are retried for ``_JOB_ERROR_PATIENCE``
    seconds of the injected clock, then raised: the job's end is never guessed from one."""
    failing_since: float | None = None
    while True:
        try:
            if control.cancelled.is_set():
                outgoing.migrator.abort(record.domain)
            sample = outgoing.migrator.job_stats(record.domain)
            if sample is None:
                return outgoing.service.hv.lookup(record.domain)
        except Unavailable:
            time.sleep(_RETRY_SECONDS)  # libvirtd is away; its job state is read once back
            continue
        except AgentError as exc:  # a state-change lock timeout, an internal error, ...
            now = outgoing.monotonic()
            failing_since = now if failing_since is None else failing_since
            if now - failing_since > _JOB_ERROR_PATIENCE:
                raise AgentError(f"reading libvirt's migration job kept failing: {exc}") from exc
            log.warning("reading the job of migration %s failed (retried): %s", record.id, exc)
            time.sleep(outgoing.poll_interval)
            continue
        failing_since = None
        control.post_copy = control.post_copy or sample.post_copy
        state = State.POST_COPY if control.post_copy else State.RUNNING
        outgoing.book.update(record.id, progress=sample, state=state)
        time.sleep(outgoing.poll_interval)


def _failure(record: MigrationRecord, info: DomainInfo, control: Control) -> str:
    if info.reason == "postcopy_failed" or control.post_copy:
        return (
            f"post-copy failed while the agent restarted; the guest's memory is split between "
            f"{record.source_node} and {record.target_node}, it cannot run on: vm failed"
        )
    if control.cancelled.is_set():
        return "cancelled"
    if info.state == DomainState.SHUTOFF:
        return (
            f"the guest shut off on {record.source_node} ({info.reason}) during the migration "
            "while the agent restarted; it did not move: the vm is kept there, stopped"
        )
    return (
        "the agent restarted during the migration and libvirt's job ended without it: the "
        f"guest still runs on {record.source_node}"
    )


def _tell_target(
    outgoing: OutgoingMigrations, record: MigrationRecord, *, succeeded: bool, message: str
) -> tuple[int, JobSample]:
    if not record.target_agent:
        return 0, JobSample()
    try:
        target = outgoing.agents.connect(record.target_agent)
        try:
            return target.finish(record.id, succeeded=succeeded, message=message)
        finally:
            target.close()
    except Exception as exc:  # it follows the domain on its own
        log.warning("telling the target how migration %s ended failed: %s", record.id, exc)
        return 0, JobSample()


def _held(outgoing: OutgoingMigrations, domain: str) -> contextlib.ExitStack:
    """The VM's lock (a client's call may hold it for a moment at start-up)."""
    stack = contextlib.ExitStack()
    while True:
        try:
            stack.enter_context(outgoing.service.exclusive(domain, "migration"))
            return stack
        except Conflict:
            time.sleep(_RETRY_SECONDS)
