"""LibvirtHypervisor: the agent's one persistent libvirt connection (the only `import libvirt`).

One connection per process, libvirt's default event loop on its own thread, lifecycle
events handed to subscribers from a dispatcher thread (callbacks stay trivial), and a
reconnect loop with backoff when libvirtd goes away. Every libvirtError is translated once,
here, into the agent's error tree.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import libvirt

from agent.adapters.libvirt_codes import (
    BAD_CONFIG,
    CONNECTION_ERRORS,
    EVENT_DETAILS,
    EVENTS,
    NOT_FOUND,
    REASONS,
    STATES,
    start_event_loop,
)
from agent.adapters.libvirt_stats import all_domain_stats
from agent.errors import FailedPrecondition, InvalidSpec, NotFound, Unavailable
from agent.metrics.ports import DomainStats
from agent.naming import METADATA_KEY, METADATA_URI
from agent.ports import DomainEvent, DomainInfo, DomainState, HypervisorListener

__all__ = ["LibvirtHypervisor"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class LibvirtHypervisor:
    """A Hypervisor port on libvirt-python.

    Usage::

        hv = LibvirtHypervisor("qemu:///system")
        hv.open()            # connects (or keeps retrying in the background)
        hv.define(xml); hv.start("default_vm1", paused=True); hv.resume("default_vm1")
    """

    def __init__(
        self,
        uri: str,
        *,
        qemu_run_dir: str = "/run/libvirt/qemu",
        max_backoff: float = 5.0,
    ) -> None:
        self.uri = uri
        self.qemu_run_dir = qemu_run_dir
        self._max_backoff = max_backoff
        self._conn: Any = None
        self._lock = threading.Lock()
        self._lost = threading.Event()
        self._closed = threading.Event()
        self._listeners: list[HypervisorListener] = []
        # Domain events and connection changes (True/False) in the order they happened.
        self._events: queue.SimpleQueue[DomainEvent | bool | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._callback_ids: dict[int, int] = {}
        self._dead: list[Any] = []

    # -- connection -------------------------------------------------------------------

    def open(self, *, wait: bool = True) -> None:
        """Connect; with wait=False a failed first connect is retried in the background."""
        start_event_loop()
        for target, name in ((self._dispatch, "libvirt-dispatch"), (self._keep, "libvirt-keep")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        try:
            self._connect()
        except Unavailable:
            if wait:
                raise
            self._lost.set()

    def close(self) -> None:
        self._closed.set()
        self._lost.set()
        self._events.put(None)
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            self._forget(conn)

    def connected(self) -> bool:
        return self._conn is not None

    def _connect(self) -> None:
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise Unavailable(f"connecting to libvirt at {self.uri}: {exc}") from exc
        conn.registerCloseCallback(self._on_close, None)
        self._callback_ids[id(conn)] = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
        )
        with self._lock:
            self._conn = conn
        log.info("connected to libvirt", extra={"uri": self.uri})
        self._events.put(True)

    def _on_close(self, conn: Any, reason: int, opaque: Any) -> None:
        # Runs on the event loop thread (or a caller that saw the connection die): only
        # flag it; the keeper reconnects. A late report about an older connection that was
        # already replaced must not drop the live one.
        with self._lock:
            if conn is not self._conn:
                return
            self._conn = None
            self._dead.append(conn)  # closed by the keeper: not from inside libvirt's callback
            self._lost.set()

    def _forget(self, conn: Any) -> None:
        """Drop a dead connection's callbacks and close it, so no event arrives twice."""
        with contextlib.suppress(libvirt.libvirtError):
            conn.domainEventDeregisterAny(self._callback_ids.pop(id(conn), -1))
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    def _keep(self) -> None:
        """Reconnect with capped exponential backoff whenever the connection is lost."""
        while not self._closed.is_set():
            self._lost.wait()
            if self._closed.is_set():
                return
            self._events.put(False)
            delay = 0.2
            with self._lock:
                dead, self._dead = self._dead, []
            for conn in dead:
                self._forget(conn)
            self._lost.clear()  # before connecting: a close during the connect is not lost
            while not self._closed.is_set():
                try:
                    self._connect()
                    break
                except Unavailable as exc:
                    log.warning("libvirt unavailable, retrying in %.1fs: %s", delay, exc)
                    self._closed.wait(delay)
                    delay = min(delay * 2, self._max_backoff)

    def _on_lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        name = EVENTS.get(event, str(event))
        detail_name = EVENT_DETAILS.get(event, {}).get(detail, str(detail))
        self._events.put(DomainEvent(name=dom.name(), event=name, detail=detail_name))

    def _dispatch(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            for listener in list(self._listeners):
                try:
                    if isinstance(event, bool):
                        listener.on_connection(event)
                    else:
                        listener.on_domain_event(event)
                except Exception:
                    log.exception("hypervisor listener failed for %s", event)

    def subscribe(self, listener: HypervisorListener) -> None:
        self._listeners.append(listener)

    @contextlib.contextmanager
    def _call(self, what: str) -> Iterator[Any]:
        """Yield the connection; translate libvirt's errors into the agent's, once."""
        conn = self._conn
        if conn is None:
            raise Unavailable(f"{what}: libvirt at {self.uri} is not connected")
        try:
            yield conn
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            message = f"{what}: {exc.get_error_message()}"
            if code in NOT_FOUND:
                raise NotFound(message) from exc
            if code in CONNECTION_ERRORS and not _alive(conn):
                self._on_close(conn, 0, None)
                raise Unavailable(message) from exc
            if code in BAD_CONFIG:
                raise InvalidSpec("spec", message) from exc
            # Everything else (QEMU failing to start, a tap or file QEMU cannot open, an
            # operation the domain's state forbids) is the node refusing: keep libvirt's words.
            raise FailedPrecondition(message) from exc

    # -- catalog ----------------------------------------------------------------------

    def _info(self, dom: Any) -> DomainInfo:
        state_code, reason_code = dom.state()
        active = bool(dom.isActive())
        config_flags = libvirt.VIR_DOMAIN_XML_INACTIVE if dom.isPersistent() else 0
        return DomainInfo(
            name=dom.name(),
            uuid=dom.UUIDString(),
            state=STATES.get(state_code, DomainState.NOSTATE),
            reason=REASONS.get(state_code, {}).get(reason_code, "unknown"),
            config_xml=dom.XMLDesc(config_flags),
            live_xml=dom.XMLDesc(0) if active else "",
            pid=self._pid(dom.name()) if active else 0,
        )

    def _pid(self, name: str) -> int:
        try:
            with open(f"{self.qemu_run_dir}/{name}.pid") as handle:
                return int(handle.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def lookup(self, name: str) -> DomainInfo | None:
        with self._call(f"looking up domain {name}") as conn:
            try:
                dom = conn.lookupByName(name)
                return self._info(dom)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise

    def list_domains(self) -> list[DomainInfo]:
        with self._call("listing domains") as conn:
            infos = []
            for dom in conn.listAllDomains(0):
                try:
                    infos.append(self._info(dom))
                except libvirt.libvirtError as exc:
                    # Undefined between the list and the read: it is gone, not an error.
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
            return infos

    def define(self, xml: str) -> None:
        name = ET.fromstring(xml).findtext("name", "")
        with self._call(f"defining domain {name}") as conn:
            conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)

    def undefine(self, name: str) -> None:
        with self._call(f"undefining domain {name}") as conn:
            flags = libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return  # already gone: deleting a missing thing succeeds
                raise
            try:
                dom.undefineFlags(flags)
            except libvirt.libvirtError as exc:
                if not _flag_unsupported(exc):  # the test driver has no NVRAM flag
                    raise
                dom.undefine()

    def set_metadata(self, name: str, element_xml: str, *, live: bool) -> None:
        with self._call(f"updating metadata of domain {name}") as conn:
            dom = conn.lookupByName(name)
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
            if live and dom.isActive():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, element_xml, METADATA_KEY, METADATA_URI, flags
            )

    # -- power ------------------------------------------------------------------------

    def _domain_call(self, name: str, what: str, action: Callable[[Any], object]) -> None:
        self.with_domain(name, what, action)

    def with_domain(self, name: str, what: str, action: Callable[[Any], T]) -> T:
        """``action(virDomain)`` with libvirt's errors translated (for sibling adapters such
        as ``libvirt_migration``, which share this connection)."""
        with self._call(f"{what} domain {name}") as conn:
            return action(conn.lookupByName(name))

    def start(self, name: str, *, paused: bool = False) -> None:
        def create(dom: Any) -> None:
            if not paused:
                dom.create()
                return
            try:
                dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            except libvirt.libvirtError as exc:
                if not _flag_unsupported(exc):  # the test driver: create, then pause
                    raise
                dom.create()
                dom.suspend()

        self._domain_call(name, "starting", create)

    def shutdown(self, name: str) -> None:
        # Default method: QEMU uses the ACPI power button when no guest agent is configured.
        self._domain_call(name, "shutting down", lambda dom: dom.shutdown())

    def destroy(self, name: str) -> None:
        self._domain_call(name, "destroying", lambda dom: dom.destroy())

    def suspend(self, name: str) -> None:
        self._domain_call(name, "pausing", lambda dom: dom.suspend())

    def resume(self, name: str) -> None:
        self._domain_call(name, "resuming", lambda dom: dom.resume())

    def reboot(self, name: str) -> None:
        self._domain_call(name, "rebooting", lambda dom: dom.reboot(0))

    def all_domain_stats(self) -> list[DomainStats]:
        """Bulk stats of the running and paused domains (a metrics.DomainStatsSource)."""
        with self._call("reading domain stats") as conn:
            return all_domain_stats(conn)

    def versions(self) -> tuple[str, str]:
        with self._call("reading versions") as conn:
            return _version(conn.getLibVersion()), _version(conn.getVersion())


def _alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _flag_unsupported(exc: Any) -> bool:
    """libvirt refused a flag, not the call (drivers such as test:///default lack some)."""
    return exc.get_error_code() in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT)


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"
