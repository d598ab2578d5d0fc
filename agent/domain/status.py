"""Pure rules that turn what libvirt reports into a VM's phase, reason and conditions."""

from __future__ import annotations

import dataclasses

from agent.models import Condition, Phase, VMStatus
from agent.ports import DomainInfo, DomainState

__all__ = ["ACTIVE_PHASES", "NETWORK_BROKEN", "derive_status", "with_network_broken"]

# Phases in which a QEMU process may exist for the VM (Pending also while it waits to start,
# its domain shut off: ``VMStatus.guest`` tells).
ACTIVE_PHASES = frozenset({Phase.RUNNING, Phase.PAUSED, Phase.PENDING, Phase.MIGRATING})

# A running VM whose NIC no longer reaches the node (its tap was deleted under QEMU).
NETWORK_BROKEN = "NetworkBroken"

# libvirt shut-off reasons → (phase, reason shown to users).
_SHUTOFF = {
    "shutdown": (Phase.SUCCEEDED, "Shutdown"),
    "destroyed": (Phase.STOPPED, "Destroyed"),
    "crashed": (Phase.FAILED, "Crashed"),
    "failed": (Phase.FAILED, "Crashed"),
    "migrated": (Phase.SUCCEEDED, "Migrated"),
    "saved": (Phase.STOPPED, "Saved"),
    "daemon": (Phase.FAILED, "Crashed"),
}


def derive_status(
    info: DomainInfo,
    *,
    generation: int,
    running_generation: int,
    spec_pending: bool = False,
    node_name: str,
    started_at: float = 0.0,
    stopped_at: float = 0.0,
    never_started: bool = False,
    starting: bool = False,
) -> VMStatus:
    """The status clients see, from the domain's state and reason and the agent's books."""
    phase, reason = _phase(info, never_started=never_started)
    if starting and phase in (Phase.PAUSED, Phase.STOPPED):
        phase, reason = Phase.PENDING, "Starting"  # created paused while being plumbed
    running = phase in (Phase.RUNNING, Phase.PAUSED, Phase.MIGRATING, Phase.PENDING)
    conditions = [
        Condition("Ready", phase == Phase.RUNNING, reason="" if phase == Phase.RUNNING else reason),
        Condition(
            "Paused", phase == Phase.PAUSED, reason="PausedByUser" if phase == Phase.PAUSED else ""
        ),
    ]
    if running and spec_pending:
        conditions.append(
            Condition(
                "RestartRequired",
                True,
                reason="SpecChanged",
                message="the spec changed while the VM was running; a hard restart applies it",
            )
        )
    return VMStatus(
        phase=phase,
        reason=reason,
        conditions=tuple(conditions),
        node_name=node_name,
        qemu_pid=info.pid if running else 0,
        guest=info.state != DomainState.SHUTOFF,
        started_at=started_at if running else 0.0,
        stopped_at=0.0 if running else stopped_at,
        generation=generation,
        running_generation=running_generation if running else 0,
    )


def with_network_broken(status: VMStatus, why: str) -> VMStatus:
    """The status with a NetworkBroken condition saying ``why`` and how to recover."""
    broken = Condition(NETWORK_BROKEN, True, reason="TapDeleted", message=why)
    return dataclasses.replace(status, conditions=(*status.conditions, broken))


def _phase(info: DomainInfo, *, never_started: bool) -> tuple[Phase, str]:
    state, reason = info.state, info.reason
    if reason == "postcopy_failed":  # (paused, or running on a target since libvirt 8.5)
        return Phase.FAILED, "PostCopyFailed"  # its memory is split between two nodes
    if state in (DomainState.RUNNING, DomainState.BLOCKED, DomainState.SHUTDOWN):
        return Phase.RUNNING, "ShuttingDown" if state == DomainState.SHUTDOWN else "Booted"
    if state == DomainState.PAUSED:
        if reason in ("migration", "postcopy"):
            return Phase.MIGRATING, "Migrating"
        if reason == "starting_up":
            return Phase.PENDING, "Starting"
        if reason in ("ioerror", "watchdog", "crashed"):
            return Phase.PAUSED, reason.title().replace("_", "")
        return Phase.PAUSED, "Paused"
    if state == DomainState.CRASHED:
        return Phase.FAILED, "Crashed"
    if state == DomainState.PMSUSPENDED:
        return Phase.PAUSED, "GuestSuspended"
    if state == DomainState.SHUTOFF:
        if never_started:
            return Phase.STOPPED, "Defined"
        return _SHUTOFF.get(reason, (Phase.STOPPED, "Stopped"))
    return Phase.UNKNOWN, reason or "Unknown"
