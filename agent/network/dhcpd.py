"""DhcpServer: answers each VM's DHCP requests on its tap, from a thread in the agent.

One UDP socket per tap, bound to port 67 with SO_BINDTODEVICE, so each socket only sees its
own guest and the agent needs no extra process (KubeVirt answers DHCP from inside its
launcher the same way). The sockets are opened in the caller's thread, so ``serve`` fails
at once for a missing tap, and owned by the server thread afterwards, which is the only one
that reads, replies and closes them.

Why not a supervised dnsmasq: the leases are fixed by the agent's allocations (one MAC, one
address per tap), so there is no lease database to keep, no config file to render and no
process to restart; a thread and ~150 lines do it, and the agent logs how long each guest
waited for its lease.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import agent.metrics.agent_metrics as agent_metrics
from agent.network.dhcp import DhcpMessage, Lease, MessageType, answer

__all__ = ["DhcpServer", "LeaseEvent"]

log = logging.getLogger(__name__)

SERVER_PORT = 67
CLIENT_PORT = 68
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
_RECV_SIZE = 4096
# A guest (or anything on its tap) sending from other MACs gets one log line per tap per
# interval, with the count since: a flood must not fill the log from the one DHCP thread.
_IGNORED_LOG_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """A guest got its lease: ``waited`` is seconds from its first DISCOVER to our ACK."""

    tap: str
    mac: str
    ip: str
    waited: float


def open_tap_socket(tap: str) -> socket.socket:
    """A UDP socket on port 67 that only sees traffic of ``tap``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, tap.encode())
        sock.bind(("0.0.0.0", SERVER_PORT))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def reply_address(request: DhcpMessage, source: tuple[str, int]) -> tuple[str, int]:
    """Where a reply goes (RFC 2131 4.1): to a configured client directly, else broadcast.

    The guest has no address yet while it asks, and the agent cannot add an ARP entry for
    it without raw sockets, so first leases are broadcast on the tap (which is the guest's
    alone).
    """
    if request.ciaddr != "0.0.0.0":
        return request.ciaddr, CLIENT_PORT
    return "255.255.255.255", CLIENT_PORT


class DhcpServer:
    """Serves one lease per tap until told to stop.

    Usage::

        server = DhcpServer()
        server.start()
        server.serve("va1a2b3c4d5e6f", Lease(mac=..., ip="10.250.0.2", prefix_len=16, ...))
        server.stop_serving("va1a2b3c4d5e6f")
        server.stop()

    ``open_socket`` and ``reply_to`` are injectable so that tests run it on loopback.
    """

    def __init__(
        self,
        *,
        open_socket: Callable[[str], socket.socket] = open_tap_socket,
        reply_to: Callable[[DhcpMessage, tuple[str, int]], tuple[str, int]] = reply_address,
        on_lease: Callable[[LeaseEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open_socket = open_socket
        self._reply_to = reply_to
        self._on_lease = on_lease
        self._clock = clock
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self._changes: queue.SimpleQueue[tuple[str, socket.socket | None]] = queue.SimpleQueue()
        self._sockets: dict[str, socket.socket] = {}  # owned by the server thread
        self._asked: dict[str, float] = {}  # mac -> first DISCOVER not yet answered by an ACK
        self.ignored_packets = 0  # from MACs a tap's lease is not for (a counter, for metrics)
        self._ignored_logged: dict[str, tuple[float, int]] = {}  # tap -> (last line, since)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dhcp", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        while not self._changes.empty():  # handed over but never picked up
            _, pending = self._changes.get_nowait()
            if pending is not None:
                pending.close()
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        with contextlib.suppress(OSError):
            os.close(self._wake_r)
            os.close(self._wake_w)

    def serve(self, tap: str, lease: Lease) -> None:
        """Answer ``lease.mac`` on ``tap`` (a new socket, or a new lease on the old one)."""
        with self._lock:
            known = tap in self._leases
            self._leases[tap] = lease
        if not known:
            try:
                sock = self._open_socket(tap)
            except OSError:
                with self._lock:
                    self._leases.pop(tap, None)
                raise
            self._changes.put((tap, sock))
            self._wake()

    def stop_serving(self, tap: str) -> None:
        with self._lock:
            if self._leases.pop(tap, None) is None:
                return
        self._changes.put((tap, None))
        self._wake()

    def serving(self) -> dict[str, Lease]:
        with self._lock:
            return dict(self._leases)

    # -- the server thread --------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select(timeout=5.0):
                    if key.data is None:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                        self._apply_changes(selector)
                    else:
                        self._receive(key.data, key.fileobj)  # type: ignore[arg-type]
        except Exception:
            log.exception("the DHCP server thread failed")
        finally:
            selector.close()

    def _apply_changes(self, selector: selectors.BaseSelector) -> None:
        while True:
            try:
                tap, sock = self._changes.get_nowait()
            except queue.Empty:
                return
            old = self._sockets.pop(tap, None)
            if old is not None:
                selector.unregister(old)
                old.close()
            if sock is not None:
                self._sockets[tap] = sock
                selector.register(sock, selectors.EVENT_READ, tap)
            else:
                self._ignored_logged.pop(tap, None)

    def _receive(self, tap: str, sock: socket.socket) -> None:
        try:
            data, source = sock.recvfrom(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. the tap went away under the socket
            log.warning("dhcp: reading on %s: %s", tap, exc)
            return
        with self._lock:
            lease = self._leases.get(tap)
        if lease is None:
            return
        try:
            request = DhcpMessage.decode(data)
        except ValueError as exc:
            log.debug("dhcp: ignoring a malformed packet on %s: %s", tap, exc)
            return
        now = self._clock()
        if request.type == MessageType.DISCOVER and request.chaddr == lease.mac:
            self._asked.setdefault(request.chaddr, now)
        reply = answer(request, lease)
        if reply is None:
            if request.chaddr != lease.mac:
                self._ignored(tap, request.chaddr, lease.mac, now)
            return
        try:
            sock.sendto(reply.encode(), self._reply_to(request, source))
        except OSError as exc:
            log.warning("dhcp: replying on %s: %s", tap, exc)
            return
        if reply.type == MessageType.ACK and reply.yiaddr != "0.0.0.0":
            self._leased(tap, lease, now)
        elif reply.type == MessageType.NAK:
            log.info("dhcp: NAK to %s on %s (asked for another address)", lease.mac, tap)

    def _ignored(self, tap: str, mac: str, expected: str, now: float) -> None:
        self.ignored_packets += 1
        last, since = self._ignored_logged.get(tap, (float("-inf"), 0))
        if now - last < _IGNORED_LOG_INTERVAL:
            self._ignored_logged[tap] = (last, since + 1)
            return
        self._ignored_logged[tap] = (now, 0)
        more = f" ({since} more from other MACs since the last line)" if since else ""
        log.info("dhcp: ignoring %s on %s: expecting %s%s", mac, tap, expected, more)

    def _leased(self, tap: str, lease: Lease, now: float) -> None:
        asked = self._asked.pop(lease.mac, now)
        event = LeaseEvent(tap=tap, mac=lease.mac, ip=lease.ip, waited=max(0.0, now - asked))
        agent_metrics.dhcp_lease()
        log.info(
            "dhcp: leased %s to %s on %s, %.1f ms after its first request",
            lease.ip, lease.mac, tap, event.waited * 1000,
            extra={"vm": lease.owner, "tap": tap, "mac": lease.mac, "ip": lease.ip,
                   "dhcp_wait_seconds": round(event.waited, 6)},
        )  # fmt: skip
        if self._on_lease is not None:
            self._on_lease(event)
