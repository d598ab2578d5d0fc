"""Run shell commands in the test guest over HTTP, for network tests.

The test guest runs a NoCloud ``user-data`` script (from any ISO9660 disk with a
``meta-data`` file) after its network is up. The script here installs a CGI program,
``/cgi-bin/exec``, into the guest's busybox httpd: a POSTed body runs as ``sh`` and the reply
is its output plus ``EXEC-RC=<status>``. The node reaches every guest directly through its
/32 route, so tests can make a guest fetch things, ping, or forge its addresses, without any
published port and without depending on the guest's egress.

The seed ISO is written here (plain ISO 9660, no Rock Ridge: Linux shows ``META-DATA.;1``
as ``meta-data``), so the tests need no ISO tool. It is attached as an ``imageFile`` disk.
"""

from __future__ import annotations

import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.testbed.nodebox import NodeBox

__all__ = ["EXEC_USER_DATA", "ExecResult", "guest_exec", "write_seed_iso"]

SECTOR = 2048

EXEC_USER_DATA = r"""#!/bin/sh
cat > /var/www/cgi-bin/exec <<'EOF'
#!/bin/sh
f=/tmp/exec.$$
head -c "${CONTENT_LENGTH:-0}" > "$f.sh"
sh "$f.sh" > "$f.out" 2>&1
rc=$?
printf 'Content-Type: text/plain\r\n\r\n'
cat "$f.out"
echo "EXEC-RC=$rc"
rm -f "$f.sh" "$f.out"
EOF
chmod 755 /var/www/cgi-bin/exec
"""

# POST stdin to a URL from inside the node, print the body (no proxy: the traffic stays in
# the test's namespaces).
_POST = r"""
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
request = urllib.request.Request(sys.argv[1], data=sys.stdin.buffer.read(), method="POST")
with opener.open(request, timeout=float(sys.argv[2])) as reply:
    sys.stdout.write(reply.read().decode("utf-8", "replace"))
"""


@dataclass(frozen=True)
class ExecResult:
    """What a command printed (stdout and stderr together) and its exit status."""

    output: str
    status: int

    @property
    def ok(self) -> bool:
        return self.status == 0


def guest_exec(node: NodeBox, guest_ip: str, script: str, timeout: float = 30.0) -> ExecResult:
    """Run ``script`` with ``sh`` in the guest at ``guest_ip``; raises if the call fails."""
    url = f"http://{guest_ip}/cgi-bin/exec"
    proc = node.exec(
        [sys.executable, "-c", _POST, url, str(timeout)], input=script, timeout=timeout + 15
    )
    if proc.returncode != 0:
        raise RuntimeError(f"exec in guest {guest_ip} failed: {proc.stderr.strip()[-500:]}")
    body, marker, status = proc.stdout.rpartition("EXEC-RC=")
    if not marker:
        raise RuntimeError(f"exec in guest {guest_ip}: no exit status in {proc.stdout!r}")
    return ExecResult(body, int(status.strip()))


# --------------------------------------------------------------------------- ISO 9660


def write_seed_iso(path: Path, files: dict[str, bytes], label: str = "CIDATA") -> None:
    """An ISO 9660 image with ``files`` in its root (names as Linux will show them)."""
    names = sorted(files)
    data_start = 21  # 16 system area, PVD, terminator, L and M path tables, root dir
    extents = {}
    next_sector = data_start
    for name in names:
        extents[name] = next_sector
        next_sector += max(1, -(-len(files[name]) // SECTOR))
    total = next_sector
    now = time.gmtime(0)
    image = bytearray(total * SECTOR)

    root = _dir_record(b"\x00", 20, SECTOR, now, directory=True)
    image[16 * SECTOR : 17 * SECTOR] = _pvd(label, total, root)
    image[17 * SECTOR : 17 * SECTOR + 7] = b"\xffCD001\x01"
    path_entry = struct.pack("<BBIH", 1, 0, 20, 1) + b"\x00\x00"
    image[18 * SECTOR : 18 * SECTOR + 10] = path_entry
    image[19 * SECTOR : 19 * SECTOR + 10] = struct.pack(">BBIH", 1, 0, 20, 1) + b"\x00\x00"
    records = root + _dir_record(b"\x01", 20, SECTOR, now, directory=True)
    for name in names:
        identifier = name.upper().encode("ascii") + b".;1"
        records += _dir_record(identifier, extents[name], len(files[name]), now)
    if len(records) > SECTOR:
        raise ValueError("too many files for a one-sector root directory")
    image[20 * SECTOR : 20 * SECTOR + len(records)] = records
    for name in names:
        start = extents[name] * SECTOR
        image[start : start + len(files[name])] = files[name]
    path.write_bytes(bytes(image))


def _both16(value: int) -> bytes:
    return struct.pack("<H", value) + struct.pack(">H", value)


def _both32(value: int) -> bytes:
    return struct.pack("<I", value) + struct.pack(">I", value)


def _dir_record(
    identifier: bytes, extent: int, size: int, when: time.struct_time, *, directory: bool = False
) -> bytes:
    length = 33 + len(identifier) + (1 - len(identifier) % 2)  # padded to an even length
    date = bytes((when.tm_year - 1900, when.tm_mon, when.tm_mday, 0, 0, 0, 0))
    record = (
        bytes((length, 0))
        + _both32(extent)
        + _both32(size)
        + date
        + bytes((2 if directory else 0, 0, 0))
        + _both16(1)
        + bytes((len(identifier),))
        + identifier
    )
    return record.ljust(length, b"\x00")


def _pvd(label: str, total_sectors: int, root_record: bytes) -> bytes:
    stamp = b"1970010100000000\x00"
    never = b"0000000000000000\x00"
    pvd = (
        b"\x01CD001\x01\x00"
        + b"LINUX".ljust(32)
        + label.upper().encode("ascii").ljust(32)
        + b"\x00" * 8
        + _both32(total_sectors)
        + b"\x00" * 32
        + _both16(1)
        + _both16(1)
        + _both16(SECTOR)
        + _both32(10)  # path table size: the root's entry
        + struct.pack("<I", 18)
        + struct.pack("<I", 0)
        + struct.pack(">I", 19)
        + struct.pack(">I", 0)
        + root_record
        + b" " * 128 * 4  # volume set, publisher, preparer, application
        + b" " * 37 * 3  # copyright, abstract, bibliographic files
        + stamp
        + stamp
        + never
        + stamp
        + b"\x01\x00"
    )
    assert len(pvd) == 883, len(pvd)
    return pvd.ljust(SECTOR, b"\x00")
