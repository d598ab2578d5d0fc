"""DHCPv4 (RFC 2131/2132) for one guest per tap: packet encoding, decoding and the answer.

Pure: ``DhcpMessage.decode`` / ``encode`` and ``answer(request, lease)``; the sockets and the
thread are in ``agent.network.dhcpd``. Like KubeVirt's server, it only answers the MAC it
expects on that tap, offers the one address the VM was allocated, and hands out the options
a guest needs: subnet mask (the VM CIDR's, so the gateway is on-link), router, DNS servers,
MTU, host name and lease times.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass, field

__all__ = ["DhcpMessage", "Lease", "MessageType", "Option", "answer"]

BOOTREQUEST = 1
BOOTREPLY = 2
HTYPE_ETHERNET = 1
MAGIC_COOKIE = b"\x63\x82\x53\x63"
_FIXED = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # 236 bytes before the cookie
_MIN_LENGTH = 300  # BOOTP minimum; some clients drop shorter replies
INFINITE = 0xFFFFFFFF


class Option(enum.IntEnum):
    """The options this server reads or writes."""

    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    BROADCAST = 28
    INTERFACE_MTU = 26
    REQUESTED_IP = 50
    LEASE_TIME = 51
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_LIST = 55
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    CLIENT_ID = 61
    END = 255


class MessageType(enum.IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


@dataclass(frozen=True, slots=True)
class DhcpMessage:
    """A BOOTP/DHCP packet; addresses as dotted strings, ``chaddr`` as ``aa:bb:..``."""

    op: int
    xid: int
    chaddr: str
    flags: int = 0
    secs: int = 0
    ciaddr: str = "0.0.0.0"
    yiaddr: str = "0.0.0.0"
    siaddr: str = "0.0.0.0"
    giaddr: str = "0.0.0.0"
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def type(self) -> MessageType | None:
        raw = self.options.get(Option.MESSAGE_TYPE, b"")
        try:
            return MessageType(raw[0]) if len(raw) == 1 else None
        except ValueError:
            return None

    def address_option(self, option: Option) -> str:
        raw = self.options.get(option, b"")
        return str(ipaddress.IPv4Address(raw)) if len(raw) == 4 else ""

    @classmethod
    def decode(cls, data: bytes) -> DhcpMessage:
        """Parse a packet; raises ValueError when it is not a well-formed DHCP message."""
        if len(data) < _FIXED.size + len(MAGIC_COOKIE):
            raise ValueError(f"{len(data)} bytes is too short for DHCP")
        op, htype, hlen, _hops, xid, secs, flags, ci, yi, si, gi, ch, _sname, _file = (
            _FIXED.unpack_from(data)
        )
        if htype != HTYPE_ETHERNET or hlen != 6:
            raise ValueError(f"hardware type {htype}/{hlen} is not Ethernet")
        if data[_FIXED.size : _FIXED.size + 4] != MAGIC_COOKIE:
            raise ValueError("no DHCP magic cookie")
        options = _decode_options(data[_FIXED.size + 4 :])
        return cls(
            op=op,
            xid=xid,
            chaddr=":".join(f"{b:02x}" for b in ch[:6]),
            flags=flags,
            secs=secs,
            ciaddr=_ip(ci),
            yiaddr=_ip(yi),
            siaddr=_ip(si),
            giaddr=_ip(gi),
            options=options,
        )

    def encode(self) -> bytes:
        chaddr = bytes.fromhex(self.chaddr.replace(":", "")).ljust(16, b"\0")
        fixed = _FIXED.pack(
            self.op, HTYPE_ETHERNET, 6, 0, self.xid, self.secs, self.flags,
            _packed(self.ciaddr), _packed(self.yiaddr), _packed(self.siaddr),
            _packed(self.giaddr), chaddr, b"", b"",
        )  # fmt: skip
        body = bytearray(fixed + MAGIC_COOKIE)
        for code, value in self.options.items():
            for start in range(0, max(len(value), 1), 255):  # RFC 3396: long options split
                chunk = value[start : start + 255]
                body += bytes((code, len(chunk))) + chunk
        body.append(Option.END)
        if len(body) < _MIN_LENGTH:
            body += b"\0" * (_MIN_LENGTH - len(body))
        return bytes(body)


@dataclass(frozen=True, slots=True)
class Lease:
    """What one guest NIC is told; ``owner`` names the VM in logs."""

    mac: str
    ip: str
    prefix_len: int
    router: str
    server_id: str
    dns: tuple[str, ...] = ()
    mtu: int = 0
    hostname: str = ""
    lease_seconds: int = INFINITE
    owner: str = ""


def answer(request: DhcpMessage, lease: Lease) -> DhcpMessage | None:
    """The reply to ``request`` from the guest holding ``lease``; None to stay silent.

    Silent for other MACs (a guest cannot obtain a lease for another), for replies, for
    requests meant for another server and for DECLINE/RELEASE. A REQUEST for any other
    address gets a NAK, so a guest holding a stale lease starts over.
    """
    if request.op != BOOTREQUEST or request.chaddr != lease.mac.lower():
        return None
    kind = request.type
    if kind == MessageType.DISCOVER:
        return _reply(request, lease, MessageType.OFFER)
    if kind == MessageType.REQUEST:
        server = request.address_option(Option.SERVER_ID)
        if server and server != lease.server_id:
            return None  # the guest chose another server's offer
        wanted = request.address_option(Option.REQUESTED_IP) or request.ciaddr
        if wanted not in ("", "0.0.0.0", lease.ip):
            return _nak(request, lease)
        return _reply(request, lease, MessageType.ACK)
    if kind == MessageType.INFORM:
        return _reply(request, lease, MessageType.ACK, inform=True)
    return None


def _reply(
    request: DhcpMessage, lease: Lease, kind: MessageType, *, inform: bool = False
) -> DhcpMessage:
    network = ipaddress.IPv4Network(f"{lease.ip}/{lease.prefix_len}", strict=False)
    options: dict[int, bytes] = {
        Option.MESSAGE_TYPE: bytes((kind,)),
        Option.SERVER_ID: _packed(lease.server_id),
    }
    if not inform:
        options[Option.LEASE_TIME] = struct.pack("!I", lease.lease_seconds)
        if lease.lease_seconds != INFINITE:
            options[Option.RENEWAL_TIME] = struct.pack("!I", lease.lease_seconds // 2)
            options[Option.REBINDING_TIME] = struct.pack("!I", lease.lease_seconds * 7 // 8)
    options[Option.SUBNET_MASK] = network.netmask.packed
    options[Option.BROADCAST] = network.broadcast_address.packed
    options[Option.ROUTER] = _packed(lease.router)
    if lease.dns:
        options[Option.DNS] = b"".join(_packed(server) for server in lease.dns)
    if lease.mtu:
        options[Option.INTERFACE_MTU] = struct.pack("!H", lease.mtu)
    if lease.hostname:
        options[Option.HOSTNAME] = lease.hostname.encode("ascii", "replace")[:63]
    return DhcpMessage(
        op=BOOTREPLY,
        xid=request.xid,
        chaddr=request.chaddr,
        flags=request.flags,
        ciaddr=request.ciaddr,
        yiaddr="0.0.0.0" if inform else lease.ip,
        siaddr=lease.server_id,
        giaddr=request.giaddr,
        options=options,
    )


def _nak(request: DhcpMessage, lease: Lease) -> DhcpMessage:
    return DhcpMessage(
        op=BOOTREPLY,
        xid=request.xid,
        chaddr=request.chaddr,
        flags=request.flags,
        giaddr=request.giaddr,
        options={
            Option.MESSAGE_TYPE: bytes((MessageType.NAK,)),
            Option.SERVER_ID: _packed(lease.server_id),
        },
    )


def _decode_options(data: bytes) -> dict[int, bytes]:
    options: dict[int, bytes] = {}
    index = 0
    while index < len(data):
        code = data[index]
        if code == Option.END:
            break
        if code == Option.PAD:
            index += 1
            continue
        if index + 1 >= len(data):
            raise ValueError("option truncated")
        length = data[index + 1]
        value = data[index + 2 : index + 2 + length]
        if len(value) != length:
            raise ValueError(f"option {code} truncated")
        options[code] = options.get(code, b"") + value  # RFC 3396: concatenate repeats
        index += 2 + length
    return options


def _ip(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def _packed(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed
