"""Starting VMs whose disks are claims: wait for missing claims, keep writers apart.

A VM whose claim is not on the node yet is not started: it stays defined and shows Pending
(reason ``WaitingForVolumeBinding``, KubeVirt's word for an unbound claim) with a
``DataVolumesReady`` condition naming the claims, and its ``starting`` mark is stored, so a
restarted agent's resync finishes the start again (``agent.domain.recovery``). The
agent checks every few seconds whether the claims are there and starts the VM then.

Two VMs may use one claim at the same time only when both disks are read-only or
shareable; the check runs at every start against the guests running on the node (their
live definitions) and the starts in flight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator

from agent.disks.claimdisks import ClaimUse, check_sharing, claim_uses
from agent.domain.files import VMFiles
from agent.domain.metadata import CorruptMetadata, read_metadata
from agent.errors import Conflict
from agent.models import Condition, Phase, VMSpec, VMStatus
from agent.ports import DomainCatalog, DomainState

__all__ = ["CLAIM_CHECK_SECONDS", "ClaimGate", "waiting_status"]

log = logging.getLogger(__name__)

CLAIM_CHECK_SECONDS = 5.0  # how often waiting VMs look for their claims
WAITING_REASON = "WaitingForVolumeBinding"


def waiting_status(status: VMStatus, message: str) -> VMStatus:
    """The status of a VM that waits for claims: Pending, saying which."""
    ready = Condition("Ready", False, reason=WAITING_REASON)
    volumes = Condition("DataVolumesReady", False, reason="ClaimPending", message=message)
    others = tuple(c for c in status.conditions if c.type not in ("Ready", "DataVolumesReady"))
    return dataclasses.replace(
        status,
        phase=Phase.PENDING,
        reason=WAITING_REASON,
        message=message,
        conditions=(ready, *others, volumes),
    )


def _message(missing: tuple[ClaimUse, ...]) -> str:
    claims = ", ".join(f"{u.key} (volume {u.volume!r})" for u in missing)
    return f"waiting for claim {claims} to appear on this node"


class ClaimGate:
    """What DomainSteps asks before a start; remembers the VMs that wait (in memory: the
    stored ``starting`` mark brings them back after a restart)."""

    def __init__(self, hv: DomainCatalog, files: VMFiles) -> None:
        self.hv = hv
        self.files = files
        self.waiting: dict[str, str] = {}  # domain → why it waits
        self._lock = threading.Lock()
        self._in_flight: dict[str, VMSpec] = {}  # starts past the check, not running yet

    def missing(self, domain: str, spec: VMSpec) -> bool:
        """Whether the VM must wait for a claim (then it is remembered as waiting)."""
        if not claim_uses(spec):
            self.waiting.pop(domain, None)
            return False
        missing = self.files.missing_claims(spec)
        if not missing:
            self.waiting.pop(domain, None)
            return False
        message = _message(missing)
        if self.waiting.get(domain) != message:
            log.info("vm %s: %s", spec.key, message)
        self.waiting[domain] = message
        return True

    def forget(self, domain: str) -> None:
        """The VM was stopped or deleted: it no longer waits."""
        self.waiting.pop(domain, None)

    @contextlib.contextmanager
    def starting(self, domain: str, spec: VMSpec) -> Iterator[None]:
        """Hold the VM's claims for a start: FailedPrecondition when another VM's use
        conflicts (checked and taken at once, so two starts cannot both pass)."""
        if not claim_uses(spec):
            yield
            return
        with self._lock:
            others = [s for d, s in self._in_flight.items() if d != domain]
            check_sharing(spec, [*others, *self._running(domain)])
            self._in_flight[domain] = spec
        try:
            yield
        finally:
            with self._lock:
                self._in_flight.pop(domain, None)

    def _running(self, domain: str) -> list[VMSpec]:
        """The specs the node's other guests run with (their live definitions)."""
        return self.others(domain, running_only=True)

    def others(self, domain: str, *, running_only: bool = False) -> list[VMSpec]:
        """The specs of the node's other defined VMs (live definitions when running)."""
        specs = []
        for info in self.hv.list_domains():
            if info.name == domain or (running_only and info.state == DomainState.SHUTOFF):
                continue
            try:
                parsed = read_metadata(info.live_xml or info.config_xml)
            except CorruptMetadata:
                continue
            if parsed is not None:
                specs.append(parsed[0])
        return specs

    def check(self, start: Callable[[str], None]) -> None:
        """Try the waiting VMs again (``start`` takes the VM's lock and starts it if it is
        still meant to start); a VM busy with a verb is tried next time."""
        for domain in sorted(self.waiting.copy()):  # (verbs change it meanwhile)
            try:
                start(domain)
            except Conflict:
                continue
            except Exception:
                log.exception("starting %s, which waited for its claims, failed", domain)

    def failed(self, domain: str, error: Exception) -> None:
        """A waiting VM's start failed once its claims were there (a claim another VM
        writes, an image the agent refuses): shown in its status and tried again, as the
        other VM may stop or the image be fixed."""
        message = f"cannot start yet: {error}"
        if self.waiting.get(domain) != message:
            log.warning("vm %s: %s", domain, message)
        self.waiting[domain] = message


class ClaimWatch:
    """A thread that calls ``check`` every ``interval`` seconds until stopped."""

    def __init__(self, check: Callable[[], None], interval: float = CLAIM_CHECK_SECONDS) -> None:
        self._check = check
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="claim-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._check()
            except Exception:
                log.exception("checking for claims failed")
