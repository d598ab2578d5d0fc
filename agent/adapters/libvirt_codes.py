"""libvirt's numeric codes as the agent's names, and libvirt's one event loop per process."""

from __future__ import annotations

import threading

import libvirt

from agent.ports import DomainState

__all__ = [
    "BAD_CONFIG",
    "CONNECTION_ERRORS",
    "EVENTS",
    "EVENT_DETAILS",
    "NOT_FOUND",
    "REASONS",
    "STATES",
    "start_event_loop",
]


STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: DomainState.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PMSUSPENDED,
}


def _constants(prefix: str) -> dict[int, str]:
    """Map libvirt's enum values to lower-case names, e.g. VIR_DOMAIN_SHUTOFF_CRASHED → crashed."""
    names = {}
    for attr in dir(libvirt):
        if attr.startswith(prefix) and not attr.endswith("_LAST"):
            value = getattr(libvirt, attr)
            if isinstance(value, int):
                names[value] = attr[len(prefix) :].lower()
    return names


REASONS = {
    libvirt.VIR_DOMAIN_RUNNING: _constants("VIR_DOMAIN_RUNNING_"),
    libvirt.VIR_DOMAIN_PAUSED: _constants("VIR_DOMAIN_PAUSED_"),
    libvirt.VIR_DOMAIN_SHUTOFF: _constants("VIR_DOMAIN_SHUTOFF_"),
    libvirt.VIR_DOMAIN_SHUTDOWN: _constants("VIR_DOMAIN_SHUTDOWN_"),
    libvirt.VIR_DOMAIN_CRASHED: _constants("VIR_DOMAIN_CRASHED_"),
}
# Spelled out: the VIR_DOMAIN_EVENT_ prefix also covers every detail and event-id constant.
EVENTS = {
    getattr(libvirt, f"VIR_DOMAIN_EVENT_{name.upper()}"): name
    for name in (
        "defined",
        "undefined",
        "started",
        "suspended",
        "resumed",
        "stopped",
        "shutdown",
        "pmsuspended",
        "crashed",
    )
}
EVENT_DETAILS = {
    libvirt.VIR_DOMAIN_EVENT_STARTED: _constants("VIR_DOMAIN_EVENT_STARTED_"),
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: _constants("VIR_DOMAIN_EVENT_SUSPENDED_"),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: _constants("VIR_DOMAIN_EVENT_RESUMED_"),
    libvirt.VIR_DOMAIN_EVENT_STOPPED: _constants("VIR_DOMAIN_EVENT_STOPPED_"),
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: _constants("VIR_DOMAIN_EVENT_SHUTDOWN_"),
    libvirt.VIR_DOMAIN_EVENT_CRASHED: _constants("VIR_DOMAIN_EVENT_CRASHED_"),
}

# Errors that mean "the connection is gone", not "the request was wrong".
CONNECTION_ERRORS = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_AUTH_FAILED,
}
NOT_FOUND = {libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_DOMAIN_METADATA}
BAD_CONFIG = {
    libvirt.VIR_ERR_XML_ERROR,
    libvirt.VIR_ERR_XML_DETAIL,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    libvirt.VIR_ERR_INVALID_ARG,
}

_event_loop_lock = threading.Lock()
_event_loop_started = False


def start_event_loop() -> None:
    """Run libvirt's default event loop on a daemon thread, once per process."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        # Errors reach us as exceptions; libvirt's default handler would also print them.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True
