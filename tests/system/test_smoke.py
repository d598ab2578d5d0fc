"""Smoke test of the test bed: the test guest boots in a node in a box.

libvirt-python in the test process talks to the node's private libvirtd through its socket
(`node.libvirt_uri`); the guest boots by direct kernel boot under TCG (`type='qemu'`: KVM
guests hang on the build machines) and its serial console is logged to a file in the node's
folder, which the test reads.
"""

from __future__ import annotations

import secrets
from xml.sax.saxutils import escape

import libvirt
import pytest

from tests.testbed.nodebox import GuestImage, NodeBox
from tests.testbed.wait import wait_for, wait_for_console

pytestmark = pytest.mark.system

BOOT_TIMEOUT = 60.0


def direct_boot_xml(name: str, guest: GuestImage, cmdline: str, console_log: str) -> str:
    """A minimal TCG domain: 256 MiB, 1 vCPU, kernel + initrd, serial console to a file."""
    return f"""
<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{escape(str(guest.kernel))}</kernel>
    <initrd>{escape(str(guest.initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'>
      <source path='{escape(console_log)}'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def test_guest_boots_to_ready(node: NodeBox, test_guest: GuestImage) -> None:
    name = f"smoke-{secrets.token_hex(3)}"
    console = node.dir / "consoles" / f"{name}.log"
    console.parent.mkdir(exist_ok=True)
    conn = libvirt.open(node.libvirt_uri)
    try:
        dom = conn.defineXML(
            direct_boot_xml(name, test_guest, "console=ttyS0 token=smoke", str(console))
        )
        try:
            dom.create()
            assert dom.isActive()
            line = wait_for_console(console, GuestImage.READY_MARKER, BOOT_TIMEOUT)
            assert line.strip() == GuestImage.READY_MARKER
        finally:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        wait_for(
            lambda: name not in [d.name() for d in conn.listAllDomains()],
            10,
            message=f"domain {name} to disappear",
        )
    finally:
        conn.close()
