"""A VM with KubeVirt machine settings boots: features, clock, SMBIOS serial, a USB tablet,
an i6300esb watchdog and an e1000e NIC, with the real agent, libvirtd and QEMU (TCG).

The test guest's kernel (Debian's cloud kernel) has no e1000e and no i6300esb driver, so
the guest is reached over its virtio NIC and the e1000e NIC and the watchdog are checked in
the domain libvirt runs (the live XML lists the devices QEMU was started with)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from agent.api._gen.virtagent.v1 import vm_pb2
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from tests.system.agentproc import AgentProcess, guest_vm
from tests.system.netbed import node_get
from tests.testbed.wait import wait_for

BRIDGE = "vbrhw0"
NETWORK = "hw-lan"  # the operator's name for BRIDGE
IGNITION = '{"ignition": {"version": "3.3.0"}}'


@pytest.fixture
def bridge(agent: AgentProcess) -> Iterator[str]:
    """A host bridge in the node for the e1000e NIC (bridge binding), on the operator's list
    of bridge networks as ``NETWORK``: the agent runs with ``--bridge-network`` meanwhile."""
    agent.node.exec(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
    agent.node.exec(["ip", "link", "set", BRIDGE, "up"], check=True)
    allow = ["--bridge-network", f"{NETWORK}={BRIDGE}"]
    agent.stop()
    agent.extra_args.extend(allow)
    agent.start()
    try:
        yield NETWORK
    finally:
        agent.delete_all()
        agent.stop()
        del agent.extra_args[-len(allow) :]
        agent.start()
        agent.node.exec(["ip", "link", "del", BRIDGE])


def hardware_vm(bridge: str) -> dict[str, object]:
    doc = guest_vm(
        "hardware",
        interfaces=[
            {"name": "default", "masquerade": {}},
            {"name": "lan", "bridge": {}, "model": "e1000e"},
        ],
        networks=[
            {"name": "default", "pod": {}},
            {"name": "lan", "multus": {"networkName": bridge}},
        ],
    )
    domain = doc["spec"]["template"]["spec"]["domain"]  # type: ignore[index]
    domain["features"] = {"acpi": {}, "apic": {}, "smm": {"enabled": True}}
    domain["clock"] = {
        "timezone": "Europe/Berlin",
        "timer": {"hpet": {"present": False}, "pit": {"tickPolicy": "delay"}, "rtc": {}},
    }
    domain["firmware"]["serial"] = "HW-0001"
    devices = domain["devices"]
    devices["inputs"] = [{"name": "tablet", "type": "tablet", "bus": "usb"}]
    devices["watchdog"] = {"name": "wd", "i6300esb": {"action": "reset"}}
    devices["disks"] = [{"name": "tray", "cdrom": {"bus": "sata"}}]  # an empty drive
    doc["spec"]["template"]["spec"]["ignitionData"] = IGNITION  # type: ignore[index]
    return doc


def test_vm_with_hardware_settings_boots_and_runs_them(agent: AgentProcess, bridge: str) -> None:
    vm = agent.apply(hardware_vm(bridge))
    assert vm.status.phase == vm_pb2.PHASE_RUNNING
    agent.wait_console("hardware", "VIRT-AGENT-READY")
    address = vm.status.interfaces[0].ip_addresses[0]
    page = wait_for(lambda: node_get(agent.node, address), 30, message="the guest's page")
    assert "hostname=hardware" in page

    live = ET.fromstring(agent.node.virsh("dumpxml", "default_hardware"))
    assert live.find("features/smm").get("state") == "on"  # type: ignore[union-attr]
    clock = live.find("clock")
    assert clock is not None and clock.get("timezone") == "Europe/Berlin"
    timers = {t.get("name"): t.attrib for t in clock.iter("timer")}
    assert timers["hpet"]["present"] == "no" and timers["pit"]["tickpolicy"] == "delay"
    assert live.findtext("sysinfo/system/entry[@name='serial']") == "HW-0001"
    assert [(i.get("type"), i.get("bus")) for i in live.iter("input")].count(("tablet", "usb")) == 1
    watchdog = live.find("devices/watchdog")
    assert watchdog is not None and watchdog.attrib["model"] == "i6300esb"
    assert watchdog.attrib["action"] == "reset" and watchdog.find("alias") is not None
    models = [i.find("model").get("type") for i in live.iter("interface")]  # type: ignore[union-attr]
    assert models == ["virtio", "e1000e"]
    fw_cfg = live.find("sysinfo[@type='fwcfg']/entry[@name='opt/com.coreos/config']")
    assert fw_cfg is not None
    assert agent.node.exec(["cat", fw_cfg.attrib["file"]]).stdout == IGNITION
    (cdrom,) = [d for d in live.iter("disk") if d.get("device") == "cdrom"]
    assert cdrom.find("source") is None and cdrom.find("alias") is not None
    assert agent.node.virsh("domstate", "default_hardware").strip() == "running"


def test_tpm_and_persistent_uefi_variables_survive_a_restart(agent: AgentProcess) -> None:
    doc = guest_vm("secure")
    domain = doc["spec"]["template"]["spec"]["domain"]  # type: ignore[index]
    domain["firmware"]["bootloader"] = {"efi": {"persistent": True, "secureBoot": False}}
    domain["devices"]["tpm"] = {"persistent": True}
    agent.apply(doc)
    agent.wait_console("secure", "VIRT-AGENT-READY", timeout=180)

    live = ET.fromstring(agent.node.virsh("dumpxml", "default_secure"))
    tpm = live.find("devices/tpm")
    assert tpm is not None and tpm.find("alias") is not None  # QEMU runs it
    assert tpm.find("backend").get("type") == "emulator"  # type: ignore[union-attr]
    nvram = live.findtext("os/nvram")
    assert nvram and agent.node.exec(["test", "-s", nvram]).returncode == 0

    ref = pb.StopVirtualMachineRequest(namespace="default", name="secure", force=True)
    agent.vms.StopVirtualMachine(ref, timeout=60)
    assert agent.node.exec(["test", "-s", nvram]).returncode == 0  # kept while stopped
    agent.vms.StartVirtualMachine(
        pb.StartVirtualMachineRequest(namespace="default", name="secure"), timeout=60
    )
    agent.wait_console("secure", "VIRT-AGENT-READY", count=2, timeout=180)
    restarted = ET.fromstring(agent.node.virsh("dumpxml", "default_secure"))
    assert restarted.findtext("os/nvram") == nvram
    agent.delete_all()
    assert agent.node.exec(["test", "-e", nvram]).returncode != 0  # removed with the VM
