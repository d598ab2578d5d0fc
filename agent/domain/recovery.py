"""Finishing a start a killed agent left half-done, when a restarted agent rebuilds its state.

``DomainSteps.start`` stores a ``starting`` mark before it creates the guest paused and
clears it once the guest runs. A mark found by the resync means the agent died in between:
the guest is off (never created), paused (created, never resumed; libvirt's state reason
is the same as a user's pause, hence the mark) or running (only the mark was left). The
``resumed`` mark, stored just before the resume, tells a guest that ran and went off since
(it crashed, or powered off) from one never created: the first is never booted again here,
so a ``Once`` VM cannot run twice; only its run strategy may restart it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Protocol

from agent.domain.restarts import should_restart
from agent.domain.steps import DomainSteps
from agent.domain.vmcache import VMRecord
from agent.naming import vm_key
from agent.ports import DomainState

__all__ = ["StartRecovery", "interrupted_start", "note_never_started"]

log = logging.getLogger(__name__)


class Operation(Protocol):
    """``VMService._operation``: the VM's lock, waited for up to ``wait`` seconds."""

    def __call__(
        self, domain: str, verb: str, *, wait: float = ...
    ) -> contextlib.AbstractContextManager[None]: ...


class Restart(Protocol):
    """``VMService._restart_later``: start the VM in the background after ``delay``."""

    def __call__(self, domain: str, *, delay: float) -> None: ...


def interrupted_start(record: VMRecord) -> bool:
    """A start was under way when the agent died (and nobody stopped the VM since)."""
    return record.books.starting and not record.books.halted


def note_never_started(domain: str, record: VMRecord) -> None:
    """Log that a VM defined but never started (an Apply cut short) is being started."""
    if not record.books.started_at:
        log.info(
            "repaired: vm %s was defined but never started (its apply was interrupted); "
            "starting it (runStrategy %s)",
            vm_key(domain),
            record.spec.run_strategy,
        )


class StartRecovery:
    """Finishes interrupted starts as the agent's own background work, under the VM's lock."""

    def __init__(
        self,
        steps: DomainSteps,
        spawn: Callable[[str, Callable[[], None]], None],
        lock: Operation,
        restart: Restart,
    ) -> None:
        self._steps = steps
        self._spawn = spawn
        self._lock = lock
        self._restart = restart

    def plan(self, domain: str, record: VMRecord) -> Callable[[], None] | None:
        """What a resync does for the VM once the network is reconciled (which would remove
        the plumbing of a VM it sees stopped): finish an interrupted start, or start a VM its
        run strategy wants up. None: nothing."""
        if interrupted_start(record):
            return functools.partial(self.finish_later, domain)
        if should_restart(record):
            note_never_started(domain, record)
            return functools.partial(self._restart, domain, delay=0.0)
        return None

    def finish_later(self, domain: str) -> None:
        def run() -> None:
            try:
                with self._lock(domain, "finish-start", wait=60.0):
                    done = self.finish(domain)
                    record = self._steps.refresh(domain)
                if done:
                    log.info("repaired: vm %s: %s", vm_key(domain), done)
                if record is not None and should_restart(record):  # (Once: never again)
                    self._restart(domain, delay=0.0)
            except Exception:
                log.exception("finishing the interrupted start of %s failed", domain)

        self._spawn(f"finish-start-{domain}", run)

    def finish(self, domain: str) -> str:
        """Finish the start if it is still marked (a Stop clears the mark); say what was done."""
        steps = self._steps
        info, spec, books = steps.require(domain)
        if not books.starting or books.halted:
            return ""
        if info.state == DomainState.SHUTOFF and books.resumed:
            # The guest ran and went off before the start was recorded (it crashed, or
            # powered off): not an interrupted start; its run strategy decides.
            cleared = dataclasses.replace(books, starting=False, resumed=False)
            steps.save_books(domain, spec, cleared)
            return "it ran and stopped before its start was recorded; cleared its starting mark"
        if info.state == DomainState.SHUTOFF:
            steps.start(domain)
            return "its start was interrupted before the guest was created; started it"
        done = "it was running; cleared its starting mark"
        if info.state == DomainState.PAUSED:
            # Plugging is idempotent: the taps, NAT and DHCP the first agent made stay.
            steps.network.plug(domain, spec, books.network)
            steps.hv.resume(domain)
            done = "it was left paused between create and resume; plugged it again and resumed it"
        finished = dataclasses.replace(books, starting=False, resumed=False)
        steps.save_books(domain, spec, finished, live=True)
        return done
