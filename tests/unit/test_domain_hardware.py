"""Machine settings (features, clock, SMBIOS, inputs, video, watchdog, I/O threads, NIC
models, shareable disks) from KubeVirt fields to domain XML: golden files checked by
libvirt's schema, and the parser's refusals."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from agent.domain.capabilities import NodeSupport, require_node_support
from agent.domain.plan import HostPlan
from agent.domain.xml import build_domain, domain_xml
from agent.errors import FailedPrecondition, InvalidSpec
from agent.models import DiskBacking, NicBacking, VMSpec
from agent.naming import domain_name
from agent.network.plan import queues_for
from agent.spec import parse_vm, render_vm
from tests.unit.golden_files import GOLDEN, assert_golden

UID = "6b1f7c1e-4a4e-4f5e-9a57-3a1d2f8f0c11"
STATE = "/var/lib/virt-agent/vms/" + UID
DOMAIN = "spec.template.spec.domain"

WINDOWS_FEATURES = {
    "acpi": {},
    "apic": {},
    "smm": {},
    "hyperv": {
        "relaxed": {},
        "vapic": {},
        "vpindex": {},
        "spinlocks": {"spinlocks": 8191},
        "synic": {},
        "synictimer": {"direct": {}},
        "frequencies": {},
        "tlbflush": {},
        "ipi": {},
        "reset": {},
        "runtime": {},
        "reenlightenment": {},
        "vendorid": {"vendorid": "KVMKVMKVM"},
    },
}
WINDOWS_CLOCK = {
    "utc": {},
    "timer": {
        "hpet": {"present": False},
        "pit": {"tickPolicy": "delay"},
        "rtc": {"tickPolicy": "catchup"},
        "hyperv": {},
    },
}


def _vm(domain: dict[str, Any], **instance: Any) -> VMSpec:
    return parse_vm(
        {
            "metadata": {"namespace": "tenant-a", "name": "hw", "uid": UID},
            "spec": {"template": {"spec": {"domain": domain, **instance}}},
        }
    )


def _windows() -> tuple[VMSpec, HostPlan]:
    """A Windows VM as KubeVirt's common templates write it, with I/O threads."""
    spec = _vm(
        {
            "cpu": {"cores": 2},
            "memory": {"guest": "4Gi"},
            "features": WINDOWS_FEATURES,
            "clock": WINDOWS_CLOCK,
            "firmware": {"uuid": UID, "serial": "WIN-0001"},
            "ioThreadsPolicy": "shared",
            "devices": {
                "inputs": [{"name": "tablet", "type": "tablet", "bus": "usb"}],
                "video": {"type": "virtio"},
                "blockMultiQueue": True,
                "disks": [
                    {"name": "root", "disk": {"bus": "virtio"}, "dedicatedIOThread": True},
                    {"name": "data", "disk": {"bus": "virtio"}},
                    {"name": "drivers", "cdrom": {"bus": "sata"}},
                ],
                "interfaces": [{"name": "default", "masquerade": {}, "model": "e1000e"}],
            },
        },
        volumes=[
            {"name": "root", "imageFile": {"path": "images/win.qcow2"}},
            {"name": "data", "emptyDisk": {"capacity": "10Gi"}},
            {"name": "drivers", "imageFile": {"path": "iso/virtio-win.iso"}},
        ],
        networks=[{"name": "default", "pod": {}}],
    )
    plan = HostPlan(
        domain_name=domain_name(spec.namespace, spec.name),
        uuid=spec.uid,
        virt_type="kvm",
        disks=(
            DiskBacking("root", f"{STATE}/root.qcow2"),
            DiskBacking("data", f"{STATE}/data.qcow2"),
            DiskBacking("drivers", "/var/lib/virt-agent/images/iso/virtio-win.iso", "raw"),
        ),
        nics=(NicBacking("default", tap="va-6b1f7c1e-0", mac="52:54:00:6b:1f:7c"),),
    )
    return spec, plan


def _watchdog_tablet() -> tuple[VMSpec, HostPlan]:
    """A Linux VM under TCG: watchdog, virtio tablet, VGA, time zone, rtl8139, shared disk."""
    spec = _vm(
        {
            "memory": {"guest": "512Mi"},
            "features": {"acpi": {}, "apic": {"endOfInterrupt": True}, "kvm": {"hidden": True}},
            "clock": {"timezone": "Europe/Berlin", "timer": {"rtc": {"track": "guest"}}},
            "devices": {
                "autoattachGraphicsDevice": True,
                "inputs": [{"name": "tablet", "type": "tablet", "bus": "virtio"}],
                "watchdog": {"name": "wd", "i6300esb": {"action": "poweroff"}},
                "networkInterfaceMultiqueue": False,
                "disks": [{"name": "shared", "disk": {}, "shareable": True, "cache": "none"}],
                "interfaces": [{"name": "lan", "bridge": {}, "model": "rtl8139"}],
            },
        },
        volumes=[{"name": "shared", "hostDisk": {"path": "/data/shared.img", "type": "Disk"}}],
        networks=[{"name": "lan", "multus": {"networkName": "br-lan"}}],
        ignitionData='{"ignition": {"version": "3.3.0"}}',
    )
    plan = HostPlan(
        domain_name=domain_name(spec.namespace, spec.name),
        uuid=spec.uid,
        ignition=f"{STATE}/ignition.json",
        disks=(DiskBacking("shared", "/data/shared.img", "raw"),),
        nics=(NicBacking("lan", tap="va-6b1f7c1e-0", mac="52:54:00:6b:1f:7c"),),
    )
    return spec, plan


def _utc_offset() -> tuple[VMSpec, HostPlan]:
    """Also an empty CD-ROM drive (a cdrom disk without a volume)."""
    spec = _vm(
        {
            "memory": {"guest": "256Mi"},
            "features": {"acpi": {"enabled": False}, "smm": {"enabled": False}},
            "clock": {"utc": {"offsetSeconds": -3600}, "timer": {"kvm": {"present": True}}},
            "devices": {
                "video": {"type": "bochs"},
                "autoattachGraphicsDevice": False,
                "disks": [{"name": "tray", "cdrom": {"bus": "sata"}}],
            },
        }
    )
    return spec, HostPlan(domain_name=domain_name(spec.namespace, spec.name), uuid=spec.uid)


def _tpm_efi() -> tuple[VMSpec, HostPlan]:
    spec = _vm(
        {
            "memory": {"guest": "1Gi"},
            "firmware": {"bootloader": {"efi": {"persistent": True}}},
            "devices": {"tpm": {"persistent": True}},
        }
    )
    return spec, HostPlan(domain_name=domain_name(spec.namespace, spec.name), uuid=spec.uid)


CASES = {
    "hardware_windows_hyperv_iothreads": _windows,
    "hardware_watchdog_tablet_timezone": _watchdog_tablet,
    "hardware_utc_offset_no_acpi": _utc_offset,
    "hardware_tpm_efi_persistent": _tpm_efi,
}


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    spec, plan = CASES[case]()
    assert_golden(f"{case}.xml", domain_xml(spec, plan))


@pytest.fixture(scope="module")
def test_driver() -> Iterator[Any]:
    libvirt = pytest.importorskip("libvirt")  # allowed-skip: libvirt-python is in CI's venv
    conn = libvirt.open("test:///default")
    try:
        yield conn
    finally:
        conn.close()


@pytest.mark.parametrize("case", CASES)
def test_golden_is_valid_libvirt_xml(case: str, test_driver: Any) -> None:
    import libvirt

    text = (GOLDEN / f"{case}.xml").read_text()
    dom = test_driver.defineXMLFlags(text, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
    try:
        assert dom.name() == ET.fromstring(text).findtext("name")
    finally:
        dom.undefine()


@pytest.mark.parametrize("case", CASES)
def test_render_round_trips(case: str) -> None:
    spec, _ = CASES[case]()
    rendered = render_vm(spec)
    assert parse_vm(rendered) == spec
    assert render_vm(parse_vm(rendered)) == rendered


def test_windows_settings_reach_the_domain() -> None:
    domain = build_domain(*_windows())
    hyperv = domain.find("features/hyperv")
    assert hyperv is not None and hyperv.find("spinlocks").get("retries") == "8191"  # type: ignore[union-attr]
    assert domain.findtext("iothreads") == "2"
    drivers = [d.find("driver").attrib for d in domain.iter("disk")]  # type: ignore[union-attr]
    assert [(d.get("iothread"), d.get("queues")) for d in drivers] == [
        ("2", "2"),
        ("1", "2"),
        (None, None),
    ]
    assert domain.find("devices/interface/model").get("type") == "e1000e"  # type: ignore[union-attr]
    assert domain.find("devices/interface/driver") is None  # one queue: not virtio


def test_emulated_nics_and_multiqueue_off_get_one_queue() -> None:
    spec, _ = _windows()
    assert queues_for(spec, "default") == 1
    watchdog, _ = _watchdog_tablet()
    assert queues_for(watchdog, "lan") == 1


def test_firmware_uuid_becomes_the_uid() -> None:
    document = render_vm(_windows()[0])
    del document["metadata"]["uid"]
    document["spec"]["template"]["spec"]["domain"]["firmware"]["uuid"] = UID.upper()
    assert parse_vm(document).uid == UID


SECURE_BOOT = {"bootloader": {"efi": {"secureBoot": True}}}
EMPTY_VOLUME = {"volumes": [{"name": "r", "emptyDisk": {"capacity": "1Gi"}}]}


def _disk(fields: dict[str, Any]) -> dict[str, Any]:
    return {"devices": {"disks": [{"name": "r", **fields}]}}


def _refusal(domain: dict[str, Any], **instance: Any) -> str:
    with pytest.raises(InvalidSpec) as caught:
        _vm({"memory": {"guest": "256Mi"}, **domain}, **instance)
    return caught.value.field


@pytest.mark.parametrize(
    ("domain", "instance", "field"),
    [
        (
            {"features": {"hyperv": {"spinlocks": {"spinlocks": 10}}}},
            {},
            "hyperv.spinlocks.spinlocks",
        ),
        ({"features": {"hyperv": {"vendorid": {"vendorid": "x" * 13}}}}, {}, "vendorid"),
        ({"features": {"hyperv": {"evil": {}}}}, {}, "features.hyperv.evil"),
        ({"features": {"hyperv": {"tlbflush": {"direct": {}}}}}, {}, "tlbflush.direct"),
        (
            {
                "features": {"smm": {"enabled": False}},
                "firmware": {"bootloader": {"efi": {"secureBoot": True}}},
            },
            {},
            "features.smm",
        ),  # fmt: skip
        ({"clock": {"timezone": "../../etc/passwd"}}, {}, "clock.timezone"),
        ({"clock": {"timezone": "UTC", "utc": {}}}, {}, "clock"),
        ({"clock": {"utc": {"offsetSeconds": 10**7}}}, {}, "clock.utc.offsetSeconds"),
        ({"clock": {"timer": {"pit": {"tickPolicy": "fast"}}}}, {}, "timer.pit.tickPolicy"),
        ({"firmware": {"uuid": "not-a-uuid"}}, {}, "firmware.uuid"),
        ({"firmware": {"serial": "bad\nserial"}}, {}, "firmware.serial"),
        ({"ioThreadsPolicy": "supplementalPool"}, {}, "ioThreadsPolicy"),
        ({"devices": {"inputs": [{"name": "k", "type": "keyboard"}]}}, {}, "inputs[0].type"),
        ({"devices": {"inputs": [{"name": "t", "bus": "ps2"}]}}, {}, "inputs[0].bus"),
        ({"devices": {"watchdog": {"name": "w"}}}, {}, "devices.watchdog"),
        ({"devices": {"watchdog": {"name": "w", "i6300esb": {"action": "dump"}}}}, {}, "action"),
        ({"devices": {"video": {"type": "qxl"}}}, {}, "video.type"),
        (
            {"devices": {"disks": [{"name": "r", "shareable": True}]}},
            {"volumes": [{"name": "r", "emptyDisk": {"capacity": "1Gi"}}]},
            "disks[0].shareable",
        ),  # fmt: skip
        (
            {
                "devices": {
                    "disks": [{"name": "r", "disk": {"bus": "sata"}, "dedicatedIOThread": True}]
                }
            },
            {"volumes": [{"name": "r", "emptyDisk": {"capacity": "1Gi"}}]},
            "dedicatedIOThread",
        ),  # fmt: skip
    ],
)
def test_bad_settings_are_named(domain: dict[str, Any], instance: Any, field: str) -> None:
    assert _refusal(domain, **instance).endswith(field)


def test_firmware_uuid_must_match_the_uid() -> None:
    other = "00000000-0000-4000-8000-000000000001"
    assert _refusal({"firmware": {"uuid": other}}) == f"{DOMAIN}.firmware.uuid"


def test_only_a_cdrom_may_go_without_a_volume() -> None:
    assert _utc_offset()[0].disks[0].device == "cdrom"
    field = _refusal({"devices": {"disks": [{"name": "data", "disk": {}}]}})
    assert field == f"{DOMAIN}.devices.disks[0].name"


def test_a_disabled_tpm_is_no_tpm() -> None:
    spec = _vm({"memory": {"guest": "256Mi"}, "devices": {"tpm": {"enabled": False}}})
    assert spec.hardware.tpm is None


@pytest.mark.parametrize(
    ("support", "virt_type", "field"),
    [
        (NodeSupport(swtpm=False), "kvm", "devices.tpm: needs swtpm"),
        (NodeSupport(uefi_firmware=False), "kvm", "firmware.bootloader.efi: needs OVMF"),
        (NodeSupport(), "qemu", None),
        (NodeSupport(), "kvm", None),
    ],
    ids=["no-swtpm", "no-ovmf", "tcg-has-both", "kvm-has-both"],
)
def test_tpm_and_uefi_need_their_packages(
    support: NodeSupport, virt_type: str, field: str | None
) -> None:
    spec, _ = _tpm_efi()
    if field is None:
        require_node_support(spec, virt_type, support)
        return
    with pytest.raises(FailedPrecondition, match=f"^{DOMAIN}.{field}"):
        require_node_support(spec, virt_type, support)
