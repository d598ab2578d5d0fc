"""DHCPv4: packets byte for byte, the answers to each request, and the server on loopback."""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from agent.network.dhcp import DhcpMessage, Lease, MessageType, Option, answer
from agent.network.dhcpd import DhcpServer, LeaseEvent, reply_address
from tests.testbed.wait import wait_for

MAC = "52:54:00:12:34:56"
LEASE = Lease(
    mac=MAC,
    ip="10.250.0.7",
    prefix_len=16,
    router="10.250.0.1",
    server_id="10.250.0.1",
    dns=("192.0.2.53", "192.0.2.54"),
    mtu=1400,
    hostname="web",
    lease_seconds=86400,
    owner="default/web",
)


def raw_request(kind: int, *, mac: str = MAC, xid: int = 0x1234ABCD, extra: bytes = b"") -> bytes:
    """A client packet as udhcpc sends it, built by hand (not with the code under test)."""
    chaddr = bytes.fromhex(mac.replace(":", "")).ljust(16, b"\0")
    fixed = struct.pack("!BBBBIHH", 1, 1, 6, 0, xid, 3, 0x8000) + b"\0" * 16 + chaddr
    options = bytes((53, 1, kind)) + bytes((55, 4, 1, 3, 6, 26)) + extra + b"\xff"
    return fixed + b"\0" * 192 + b"\x63\x82\x53\x63" + options


def test_decode_reads_a_udhcpc_discover() -> None:
    message = DhcpMessage.decode(raw_request(1))
    assert message.op == 1 and message.xid == 0x1234ABCD and message.chaddr == MAC
    assert message.type == MessageType.DISCOVER and message.flags == 0x8000
    assert message.options[Option.PARAMETER_LIST] == bytes((1, 3, 6, 26))


@pytest.mark.parametrize(
    "data",
    [b"", raw_request(1)[:239], raw_request(1).replace(b"\x63\x82\x53\x63", b"\0\0\0\0")],
    ids=["empty", "no-cookie-room", "no-cookie"],
)
def test_decode_refuses_what_is_not_dhcp(data: bytes) -> None:
    with pytest.raises(ValueError):
        DhcpMessage.decode(data)


def test_decode_refuses_truncated_options() -> None:
    with pytest.raises(ValueError, match="truncated"):
        DhcpMessage.decode(raw_request(1)[:-1] + bytes((12, 10)) + b"abc")


def test_offer_bytes_carry_the_lease_and_options() -> None:
    offer = answer(DhcpMessage.decode(raw_request(1)), LEASE)
    assert offer is not None and offer.type == MessageType.OFFER
    data = offer.encode()
    assert len(data) >= 300
    assert data[0] == 2 and data[4:8] == struct.pack("!I", 0x1234ABCD)
    assert data[16:20] == bytes((10, 250, 0, 7))  # yiaddr
    assert data[28:34] == bytes.fromhex("525400123456")
    assert data[236:240] == b"\x63\x82\x53\x63"
    options = DhcpMessage.decode(data).options
    assert options[Option.SUBNET_MASK] == bytes((255, 255, 0, 0))
    assert options[Option.ROUTER] == bytes((10, 250, 0, 1))
    assert options[Option.SERVER_ID] == bytes((10, 250, 0, 1))
    assert options[Option.DNS] == bytes((192, 0, 2, 53, 192, 0, 2, 54))
    assert options[Option.INTERFACE_MTU] == struct.pack("!H", 1400)
    assert options[Option.HOSTNAME] == b"web"
    assert options[Option.LEASE_TIME] == struct.pack("!I", 86400)
    assert options[Option.RENEWAL_TIME] == struct.pack("!I", 43200)
    assert options[Option.BROADCAST] == bytes((10, 250, 255, 255))


def test_request_for_the_lease_is_acked() -> None:
    requested = bytes((50, 4, 10, 250, 0, 7, 54, 4, 10, 250, 0, 1))
    ack = answer(DhcpMessage.decode(raw_request(3, extra=requested)), LEASE)
    assert ack is not None and ack.type == MessageType.ACK and ack.yiaddr == "10.250.0.7"


def test_request_for_another_address_is_nakked() -> None:
    wrong = bytes((50, 4, 10, 250, 0, 99))
    nak = answer(DhcpMessage.decode(raw_request(3, extra=wrong)), LEASE)
    assert nak is not None and nak.type == MessageType.NAK and nak.yiaddr == "0.0.0.0"


def test_silence_for_other_macs_other_servers_and_releases() -> None:
    assert answer(DhcpMessage.decode(raw_request(1, mac="52:54:00:66:66:66")), LEASE) is None
    other_server = bytes((54, 4, 192, 0, 2, 99))
    assert answer(DhcpMessage.decode(raw_request(3, extra=other_server)), LEASE) is None
    assert answer(DhcpMessage.decode(raw_request(7)), LEASE) is None


def test_infinite_lease_has_no_renewal_times() -> None:
    lease = Lease(MAC, "10.250.0.7", 16, "10.250.0.1", "10.250.0.1")
    offer = answer(DhcpMessage.decode(raw_request(1)), lease)
    assert offer is not None
    assert offer.options[Option.LEASE_TIME] == b"\xff\xff\xff\xff"
    assert Option.RENEWAL_TIME not in offer.options and Option.DNS not in offer.options


def test_replies_are_broadcast_until_the_guest_has_an_address() -> None:
    discover = DhcpMessage.decode(raw_request(1))
    assert reply_address(discover, ("0.0.0.0", 68)) == ("255.255.255.255", 68)
    renew = DhcpMessage(op=1, xid=1, chaddr=MAC, ciaddr="10.250.0.7")
    assert reply_address(renew, ("10.250.0.7", 68)) == ("10.250.0.7", 68)


# -- the server thread, on loopback sockets instead of taps ----------------------------------


@pytest.fixture
def loopback_server() -> Iterator[tuple[DhcpServer, dict[str, int], list[LeaseEvent]]]:
    ports: dict[str, int] = {}
    events: list[LeaseEvent] = []
    leased = threading.Event()

    def open_socket(tap: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        ports[tap] = sock.getsockname()[1]
        return sock

    def on_lease(event: LeaseEvent) -> None:
        events.append(event)
        leased.set()

    server = DhcpServer(
        open_socket=open_socket, reply_to=lambda request, source: source, on_lease=on_lease
    )
    server.start()
    try:
        yield server, ports, events
    finally:
        server.stop()


def exchange(port: int, packet: bytes, timeout: float = 2.0) -> DhcpMessage | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(timeout)
        client.sendto(packet, ("127.0.0.1", port))
        try:
            return DhcpMessage.decode(client.recv(4096))
        except TimeoutError:
            return None


def test_server_leases_and_reports_the_wait(
    loopback_server: tuple[DhcpServer, dict[str, int], list[LeaseEvent]],
) -> None:
    server, ports, events = loopback_server
    server.serve("va0000000000aa", LEASE)
    offer = exchange(ports["va0000000000aa"], raw_request(1))
    assert offer is not None and offer.type == MessageType.OFFER
    ack = exchange(ports["va0000000000aa"], raw_request(3, extra=bytes((50, 4, 10, 250, 0, 7))))
    assert ack is not None and ack.type == MessageType.ACK
    # The lease is reported (with how long the guest waited) once the ACK is out.
    wait_for(lambda: len(events) == 1, timeout=5, message="no lease event")
    assert events[0].ip == "10.250.0.7" and events[0].waited >= 0.0
    assert exchange(ports["va0000000000aa"], raw_request(1, mac="52:54:00:00:00:01"), 0.3) is None


def test_server_stops_answering_a_tap_it_no_longer_serves(
    loopback_server: tuple[DhcpServer, dict[str, int], list[LeaseEvent]],
) -> None:
    server, ports, _ = loopback_server
    server.serve("va0000000000bb", LEASE)
    port = ports["va0000000000bb"]
    assert exchange(port, raw_request(1)) is not None
    server.stop_serving("va0000000000bb")
    assert server.serving() == {}
    assert exchange(port, raw_request(1), 0.3) is None


def test_packets_from_unknown_macs_are_counted_and_logged_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    ports: dict[str, int] = {}

    def open_socket(tap: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        ports[tap] = sock.getsockname()[1]
        return sock

    server = DhcpServer(
        open_socket=open_socket, reply_to=lambda request, source: source, clock=lambda: now[0]
    )
    server.start()
    caplog.set_level(logging.INFO, logger="agent.network.dhcpd")
    try:
        server.serve("va0000000000cc", LEASE)
        port = ports["va0000000000cc"]
        stranger = raw_request(1, mac="52:54:00:00:00:01")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for _ in range(50):
                client.sendto(stranger, ("127.0.0.1", port))
            wait_for(lambda: server.ignored_packets == 50, timeout=10, message="50 ignored")
            now[0] += 61.0  # a minute later, one more: one more line, saying how many were not
            client.sendto(stranger, ("127.0.0.1", port))
            wait_for(lambda: server.ignored_packets == 51, timeout=10, message="51 ignored")
    finally:
        server.stop()
    lines = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "49 more" in lines[1]
