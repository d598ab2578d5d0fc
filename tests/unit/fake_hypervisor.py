"""FakeHypervisor: a stateful, in-memory ``Hypervisor`` that behaves like libvirt + QEMU.

Domains live by name with their config XML (what ``define`` stored), live XML (a copy
taken at start), state and reason, and move between states as libvirt's do: start
(optionally paused), suspend/resume, the ACPI button, destroy, a crash. Every change emits
the lifecycle events ``LibvirtHypervisor`` would, with the same names and details, to
listeners' ``on_domain_event``, synchronously on the calling thread once the fake's lock is
released (or held back until ``flush_events`` with ``hold_events``). ``set_metadata``
replaces the agent's element in the config and/or live XML as ``virDomainSetMetadata``
does, so ``agent.domain.metadata.read_metadata`` reads what the agent stored.

Faults are injected by name: ``fail_next``, ``ignore_acpi``, ``slow_shutdown``, ``crash``,
``hold`` (block a call until released), ``kill_agent_at`` (the agent dies at a call).
Every call is recorded with its fake time.
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from agent.errors import FailedPrecondition, InvalidSpec, NotFound
from agent.naming import METADATA_URI
from agent.ports import DomainEvent, DomainInfo, DomainState, HypervisorListener
from tests.unit.fake_clock import FakeClock

__all__ = ["AgentKilled", "Call", "FakeHypervisor", "Hold"]

log = logging.getLogger(__name__)

_ACTIVE = (DomainState.RUNNING, DomainState.PAUSED, DomainState.SHUTDOWN)
_HOLD_LIMIT_SECONDS = 10.0  # a held call never blocks a broken test forever


class AgentKilled(BaseException):  # noqa: N818 (it is what happened, not an error)
    """The agent was killed (``kill -9``) at this call: no ``except Exception`` of the agent
    runs, so nothing is undone; libvirt and the guest carry on as they were."""


@dataclass(frozen=True, slots=True)
class Call:
    """One call the code under test made: fake monotonic time, method, domain name."""

    at: float
    method: str
    name: str


@dataclass
class _Domain:
    name: str
    uuid: str
    config: ET.Element
    live: ET.Element | None = None
    state: DomainState = DomainState.SHUTOFF
    reason: str = "unknown"
    pid: int = 0
    persistent: bool = True
    off_pending: bool = False  # a slow guest is on its way down


@dataclass
class Hold:
    """A call stopped at its start: ``reached`` is set when it gets there, ``release()``
    lets it go on."""

    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


class FakeHypervisor:
    """Usage::

    clock = FakeClock()
    hv = FakeHypervisor(clock)
    hv.subscribe(service)
    hv.ignore_acpi("default_web")          # or hv.slow_shutdown("default_web", 7)
    hv.fail_next("start", FailedPrecondition("qemu died"))
    hv.crash("default_web")
    [c.method for c in hv.calls_on("default_web")]
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.up = True
        self.hold_events = False
        self.calls: list[Call] = []
        self.events: list[DomainEvent] = []  # everything emitted, in order
        self._domains: dict[str, _Domain] = {}
        self._lock = threading.RLock()
        self._listeners: list[HypervisorListener] = []
        self._outbox: list[DomainEvent] = []
        self._held_events: list[DomainEvent] = []
        self._failures: dict[str, list[BaseException]] = {}
        self._holds: dict[str, Hold] = {}
        self._acpi: dict[str, float | None] = {}  # name → seconds to power off; None: ignored
        self._pids = itertools.count(1000)

    # -- faults and test controls ---------------------------------------------------------

    def fail_next(self, method: str, error: Exception) -> None:
        """The next call of ``method`` raises ``error`` and changes nothing."""
        self._failures.setdefault(method, []).append(error)

    def kill_agent_at(self, method: str) -> None:
        """The agent dies as it makes the next call of ``method`` (which does not happen)."""
        self._failures.setdefault(method, []).append(AgentKilled(method))

    def hold(self, method: str) -> Hold:
        """The next call of ``method`` blocks (on its caller's thread) until released."""
        gate = Hold()
        self._holds[method] = gate
        return gate

    def ignore_acpi(self, name: str) -> None:
        """The guest never reacts to the power button."""
        self._acpi[name] = None

    def slow_shutdown(self, name: str, seconds: float) -> None:
        """The guest powers off ``seconds`` of fake time after it first sees the button."""
        self._acpi[name] = seconds

    def crash(self, name: str) -> None:
        """QEMU dies under the guest (on_crash=destroy): shut off, reason crashed."""
        self._power_off(name, reason="crashed", events=[("stopped", "crashed")])

    def guest_poweroff(self, name: str) -> None:
        """The guest shuts itself down (e.g. ``poweroff`` inside it)."""
        self._power_off(
            name, reason="shutdown", events=[("shutdown", "guest"), ("stopped", "shutdown")]
        )

    def flush_events(self) -> None:
        """Deliver the events held back while ``hold_events`` was set."""
        with self._lock:
            held, self._held_events = self._held_events, []
        self._deliver(held)

    def calls_on(self, name: str, *methods: str) -> list[Call]:
        return [c for c in self.calls if c.name == name and (not methods or c.method in methods)]

    def names(self) -> set[str]:
        with self._lock:
            return set(self._domains)

    # -- the port: catalog ----------------------------------------------------------------

    def lookup(self, name: str) -> DomainInfo | None:
        with self._call("lookup", name):
            dom = self._domains.get(name)
            return self._info(dom) if dom else None

    def list_domains(self) -> list[DomainInfo]:
        with self._call("list_domains", ""):
            return [self._info(dom) for dom in self._domains.values()]

    def define(self, xml: str) -> None:
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            raise InvalidSpec("spec", f"defining domain: {exc}") from exc
        name = root.findtext("name", "")
        with self._call("define", name):
            if not name:
                raise InvalidSpec("spec", "defining domain: missing name")
            dom = self._domains.get(name)
            given = root.findtext("uuid", "")
            if dom is not None and given and given != dom.uuid:
                raise FailedPrecondition(
                    f"defining domain {name}: domain '{name}' already exists with uuid {dom.uuid}"
                )
            if dom is None:
                dom = _Domain(name=name, uuid=given or str(uuid.uuid4()), config=root)
                self._domains[name] = dom
                self._emit(name, "defined", "0")
            else:
                dom.config, dom.persistent = root, True
                self._emit(name, "defined", "1")

    def undefine(self, name: str) -> None:
        with self._call("undefine", name):
            dom = self._domains.get(name)
            if dom is None:
                return
            if dom.state in _ACTIVE:
                dom.persistent = False  # libvirt: a running domain becomes transient
            else:
                del self._domains[name]
            self._emit(name, "undefined", "0")

    def set_metadata(self, name: str, element_xml: str, *, live: bool) -> None:
        with self._call("set_metadata", name):
            dom = self._require(name)
            element = _namespaced(ET.fromstring(element_xml))
            targets = [dom.config]
            if live and dom.live is not None:
                targets.append(dom.live)
            for root in targets:
                _replace_metadata(root, copy.deepcopy(element))

    # -- the port: power ------------------------------------------------------------------

    def start(self, name: str, *, paused: bool = False) -> None:
        with self._call("start", name):
            dom = self._require(name)
            if dom.state in _ACTIVE:
                raise FailedPrecondition(f"starting domain {name}: domain is already running")
            dom.live = copy.deepcopy(dom.config)
            dom.pid = next(self._pids)
            dom.off_pending = False
            self._emit(name, "started", "booted")
            if paused:
                dom.state, dom.reason = DomainState.PAUSED, "user"
                self._emit(name, "suspended", "paused")
            else:
                dom.state, dom.reason = DomainState.RUNNING, "booted"

    def resume(self, name: str) -> None:
        with self._call("resume", name):
            dom = self._require(name)
            if dom.state != DomainState.PAUSED:
                raise FailedPrecondition(f"resuming domain {name}: domain is not paused")
            dom.state, dom.reason = DomainState.RUNNING, "unpaused"
            self._emit(name, "resumed", "unpaused")

    def suspend(self, name: str) -> None:
        with self._call("suspend", name):
            dom = self._require_active(name, "pausing")
            if dom.state == DomainState.RUNNING:
                dom.state, dom.reason = DomainState.PAUSED, "user"
                self._emit(name, "suspended", "paused")

    def shutdown(self, name: str) -> None:
        """The ACPI power button: what happens next is up to the guest."""
        with self._call("shutdown", name):
            dom = self._require_active(name, "shutting down")
            if dom.state == DomainState.PAUSED:
                return  # a paused guest cannot see the button
            behaviour = self._acpi.get(name, 0.0)
            if behaviour is None or dom.off_pending:
                return
            dom.off_pending = True
            if behaviour > 0:
                self.clock.call_later(behaviour, lambda: self._acpi_poweroff(name))
                return
            self._power_off_locked(
                dom, "shutdown", [("shutdown", "finished"), ("stopped", "shutdown")]
            )

    def destroy(self, name: str) -> None:
        with self._call("destroy", name):
            dom = self._require_active(name, "destroying")
            self._power_off_locked(dom, "destroyed", [("stopped", "destroyed")])

    def reboot(self, name: str) -> None:
        with self._call("reboot", name):
            self._require_active(name, "rebooting")  # libvirt sends no lifecycle event

    # -- the port: link -------------------------------------------------------------------

    def connected(self) -> bool:
        return self.up

    def subscribe(self, listener: HypervisorListener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: HypervisorListener) -> None:
        self._listeners.remove(listener)

    def reconnect(self) -> None:
        """libvirtd went away and came back: listeners hear both, as from the adapter."""
        for connected in (False, True):
            self.up = connected
            for listener in list(self._listeners):
                listener.on_connection(connected)

    def versions(self) -> tuple[str, str]:
        return "10.0.0", "8.2.0"

    # -- internals ------------------------------------------------------------------------

    class _CallContext:
        def __init__(self, hv: FakeHypervisor, method: str, name: str) -> None:
            self.hv, self.method, self.name = hv, method, name

        def __enter__(self) -> None:
            hv = self.hv
            hv.calls.append(Call(hv.clock.monotonic(), self.method, self.name))
            gate = hv._holds.pop(self.method, None)
            if gate is not None:
                gate.reached.set()
                if not gate.released.wait(_HOLD_LIMIT_SECONDS):
                    raise TimeoutError(f"held {self.method} was never released")
            failures = hv._failures.get(self.method)
            if failures:
                raise failures.pop(0)
            hv._lock.acquire()

        def __exit__(self, *exc: object) -> None:
            hv = self.hv
            outbox, hv._outbox = hv._outbox, []
            hv._lock.release()
            hv._deliver(outbox)

    def _call(self, method: str, name: str) -> FakeHypervisor._CallContext:
        return FakeHypervisor._CallContext(self, method, name)

    def _deliver(self, events: list[DomainEvent]) -> None:
        if self.hold_events:
            with self._lock:
                self._held_events.extend(events)
            return
        for event in events:
            for listener in list(self._listeners):
                try:
                    listener.on_domain_event(event)
                except Exception:  # as the adapter's dispatcher: one bad handler is logged
                    log.exception("domain event handler failed for %s", event)

    def _emit(self, name: str, event: str, detail: str) -> None:
        """Queue an event (the lock is held); it goes out when the call ends."""
        emitted = DomainEvent(name=name, event=event, detail=detail)
        self.events.append(emitted)
        self._outbox.append(emitted)

    def _require(self, name: str) -> _Domain:
        dom = self._domains.get(name)
        if dom is None:
            raise NotFound(f"domain {name}: Domain not found")
        return dom

    def _require_active(self, name: str, what: str) -> _Domain:
        dom = self._require(name)
        if dom.state not in _ACTIVE:
            raise FailedPrecondition(f"{what} domain {name}: domain is not running")
        return dom

    def _acpi_poweroff(self, name: str) -> None:
        dom = self._domains.get(name)
        if dom is not None and dom.off_pending:
            self._power_off(
                name, reason="shutdown", events=[("shutdown", "finished"), ("stopped", "shutdown")]
            )

    def _power_off(self, name: str, *, reason: str, events: list[tuple[str, str]]) -> None:
        with self._call("(guest)", name):
            dom = self._require_active(name, "stopping")
            self._power_off_locked(dom, reason, events)

    def _power_off_locked(self, dom: _Domain, reason: str, events: list[tuple[str, str]]) -> None:
        dom.state, dom.reason = DomainState.SHUTOFF, reason
        dom.live, dom.pid, dom.off_pending = None, 0, False
        for event, detail in events:
            self._emit(dom.name, event, detail)
        if not dom.persistent:
            del self._domains[dom.name]

    def _info(self, dom: _Domain) -> DomainInfo:
        config = dom.config if dom.persistent or dom.live is None else dom.live
        return DomainInfo(
            name=dom.name,
            uuid=dom.uuid,
            state=dom.state,
            reason=dom.reason,
            config_xml=ET.tostring(config, encoding="unicode"),
            live_xml=ET.tostring(dom.live, encoding="unicode") if dom.live is not None else "",
            pid=dom.pid,
        )


def _namespaced(element: ET.Element) -> ET.Element:
    """libvirt puts the element and its children into the metadata namespace."""
    for node in element.iter():
        if not node.tag.startswith("{"):
            node.tag = f"{{{METADATA_URI}}}{node.tag}"
    return element


def _replace_metadata(root: ET.Element, element: ET.Element) -> None:
    """One element per namespace in ``<metadata>``: the new one replaces the old."""
    container = root.find("metadata")
    if container is None:
        container = ET.SubElement(root, "metadata")
    for old in list(container):
        if old.tag.startswith(f"{{{METADATA_URI}}}"):
            container.remove(old)
    container.append(element)
