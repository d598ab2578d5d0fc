"""Golden tests for VMSpec → domain XML, checked by libvirt's own parser and schema."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from agent.domain.metadata import (
    CorruptMetadata,
    bookkeeping_from_json,
    bookkeeping_to_json,
    metadata_element,
    metadata_payload,
    parse_metadata,
    read_metadata,
)
from agent.domain.plan import HostPlan
from agent.domain.xml import build_domain, domain_xml
from agent.models import (
    Bookkeeping,
    DiskBacking,
    NicAllocation,
    NicBacking,
    Port,
    VMAllocation,
    VMSpec,
)
from agent.naming import METADATA_URI, domain_name, parse_domain_name
from agent.spec import parse_vm
from tests.unit.golden_files import GOLDEN, assert_golden

UID = "6b1f7c1e-4a4e-4f5e-9a57-3a1d2f8f0c11"
STATE = "/var/lib/virt-agent/vms/" + UID
BOOKKEEPING = Bookkeeping(generation=3, created_at=1700000000.5, node_name="node-a")
ALLOCATION = VMAllocation(
    namespace="default",
    group=7,
    nics=(
        NicAllocation(
            name="default",
            binding="masquerade",
            tap="va0123456789ab",
            mac="52:54:00:00:00:01",
            ip="10.250.0.5",
            ports=(Port(port=22, protocol="TCP", name="ssh", node_port=30022),),
        ),
    ),
)


def _vm(name: str, domain: dict[str, Any], **instance: Any) -> VMSpec:
    return parse_vm(
        {
            "metadata": {"namespace": "tenant-a", "name": name, "uid": UID},
            "spec": {"template": {"spec": {"domain": domain, **instance}}},
        }
    )


def _minimal_bios() -> tuple[VMSpec, HostPlan]:
    spec = _vm(
        "minimal",
        {"memory": {"guest": "256Mi"}, "devices": {"disks": [{"name": "root", "disk": {}}]}},
        volumes=[{"name": "root", "imageFile": {"path": "images/debian.qcow2"}}],
    )
    plan = HostPlan(
        domain_name=domain_name(spec.namespace, spec.name),
        uuid=spec.uid,
        disks=(DiskBacking("root", f"{STATE}/root.qcow2"),),
    )
    return spec, plan


def _kernel_boot() -> tuple[VMSpec, HostPlan]:
    spec = _vm(
        "tiny",
        {
            "memory": {"guest": "128Mi"},
            "firmware": {
                "kernelBoot": {
                    "kernelArgs": "console=ttyS0 panic=-1 quiet",
                    "container": {"kernelPath": "guest/vmlinuz", "initrdPath": "guest/initrd"},
                }
            },
            "devices": {"interfaces": [{"name": "default", "masquerade": {}}]},
        },
        networks=[{"name": "default", "pod": {}}],
    )
    plan = HostPlan(
        domain_name=domain_name(spec.namespace, spec.name),
        uuid=spec.uid,
        emulator="/usr/bin/qemu-system-x86_64",
        kernel="/var/lib/virt-agent/images/guest/vmlinuz",
        initrd="/var/lib/virt-agent/images/guest/initrd",
        nics=(NicBacking("default", tap="va-6b1f7c1e-0", mac="52:54:00:6b:1f:7c", mtu=1500),),
        console_log=f"{STATE}/console.log",
        metadata=metadata_element(spec, BOOKKEEPING),
    )
    return spec, plan


def _multiqueue_sata_scsi() -> tuple[VMSpec, HostPlan]:
    spec = _vm(
        "big",
        {
            "cpu": {"sockets": 1, "cores": 2, "threads": 2, "model": "Skylake-Client"},
            "memory": {"guest": "1Gi"},
            "machine": {"type": "pc-q35-7.2"},
            "devices": {
                "disks": [
                    {"name": "install", "cdrom": {"bus": "sata"}, "bootOrder": 2},
                    {
                        "name": "data",
                        "disk": {"bus": "scsi"},
                        "bootOrder": 1,
                        "serial": "DATA-01",
                        "cache": "none",
                    },
                    {"name": "seed", "disk": {"bus": "virtio", "readonly": True}},
                ],
                "interfaces": [
                    {"name": "default", "masquerade": {}, "ports": [{"port": 22}]},
                    {"name": "lan", "bridge": {}, "macAddress": "02:00:00:00:00:02"},
                ],
            },
        },
        volumes=[
            {"name": "install", "imageFile": {"path": "iso/installer.iso"}},
            {"name": "data", "emptyDisk": {"capacity": "10Gi"}},
            {"name": "seed", "cloudInitNoCloud": {"userData": "#cloud-config\n"}},
        ],
        networks=[
            {"name": "default", "pod": {}},
            {"name": "lan", "multus": {"networkName": "br-lan"}},
        ],
    )
    plan = HostPlan(
        domain_name=domain_name(spec.namespace, spec.name),
        uuid=spec.uid,
        disks=(
            DiskBacking("install", "/var/lib/virt-agent/images/iso/installer.iso", "raw"),
            DiskBacking("data", f"{STATE}/data.qcow2"),
            DiskBacking("seed", f"{STATE}/cidata.iso", "raw"),
        ),
        nics=(
            NicBacking("default", tap="va-6b1f7c1e-0", mac="52:54:00:6b:1f:7c", queues=4),
            NicBacking("lan", tap="va-6b1f7c1e-1", mac="02:00:00:00:00:02", mtu=9000),
        ),
        console_log=f"{STATE}/console.log",
    )
    return spec, plan


def _efi_autoselect() -> tuple[VMSpec, HostPlan]:
    spec = _vm(
        "uefi",
        {
            "memory": {"guest": "512Mi"},
            "firmware": {"bootloader": {"efi": {}}},
            "devices": {"disks": [{"name": "root", "disk": {}}]},
        },
        volumes=[{"name": "root", "containerDisk": {"image": "registry:5000/debian:12"}}],
    )
    plan = HostPlan(
        domain_name=domain_name(spec.namespace, spec.name),
        uuid=spec.uid,
        disks=(DiskBacking("root", f"{STATE}/root.qcow2"),),
    )
    return spec, plan


def _efi_secure_kvm() -> tuple[VMSpec, HostPlan]:
    spec = _vm(
        "secure",
        {
            "cpu": {"cores": 2},
            "memory": {"guest": "1Gi"},
            "firmware": {"bootloader": {"efi": {"secureBoot": True}}},
            "devices": {
                "disks": [{"name": "root", "disk": {}}],
                "interfaces": [{"name": "default", "masquerade": {}}],
            },
        },
        volumes=[{"name": "root", "imageFile": {"path": "images/win.qcow2"}}],
        networks=[{"name": "default", "pod": {}}],
    )
    plan = HostPlan(
        domain_name=domain_name(spec.namespace, spec.name),
        uuid=spec.uid,
        virt_type="kvm",
        efi_loader="/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
        efi_vars_template="/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
        efi_vars=f"{STATE}/efi_vars.fd",
        disks=(DiskBacking("root", f"{STATE}/root.qcow2"),),
        nics=(NicBacking("default", tap="va-6b1f7c1e-0", mac="52:54:00:6b:1f:7c", queues=2),),
    )
    return spec, plan


CASES = {
    "minimal_bios": _minimal_bios,
    "kernel_boot_nic_console": _kernel_boot,
    "multiqueue_sata_scsi_boot_order": _multiqueue_sata_scsi,
    "efi_autoselect": _efi_autoselect,
    "efi_secure_kvm": _efi_secure_kvm,
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_golden(case: str) -> None:
    spec, plan = CASES[case]()
    assert_golden(f"{case}.xml", domain_xml(spec, plan))


@pytest.fixture(scope="module")
def test_driver() -> Iterator[Any]:
    libvirt = pytest.importorskip("libvirt")
    conn = libvirt.open("test:///default")
    try:
        yield conn
    finally:
        conn.close()


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_golden_is_valid_libvirt_xml(case: str, test_driver: Any) -> None:
    import libvirt

    text = (GOLDEN / f"{case}.xml").read_text()
    # VALIDATE checks the XML against libvirt's RelaxNG schema, on top of its parser.
    dom = test_driver.defineXMLFlags(text, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
    try:
        assert dom.name() == ET.fromstring(text).findtext("name")
        stored = read_metadata(dom.XMLDesc(0))
        expected = read_metadata(text)
        assert stored == expected
    finally:
        dom.undefine()


def test_output_is_deterministic_and_leaves_the_plan_untouched() -> None:
    spec, plan = _kernel_boot()
    assert isinstance(plan.metadata, ET.Element)
    before = ET.tostring(plan.metadata)
    assert domain_xml(spec, plan) == domain_xml(spec, plan)
    assert ET.tostring(plan.metadata) == before


def test_metadata_given_as_text() -> None:
    spec, plan = _minimal_bios()
    text = metadata_payload(spec, BOOKKEEPING).replace("<vm>", f'<vm xmlns="{METADATA_URI}">')
    domain = build_domain(
        spec, HostPlan(domain_name="x_y", uuid="", disks=plan.disks, metadata=text)
    )
    assert domain.find(f"metadata/{{{METADATA_URI}}}vm") is not None


@pytest.mark.parametrize(
    ("virt_type", "model", "mode", "model_text"),
    [
        ("qemu", "", "custom", None),
        ("kvm", "", "host-model", None),
        ("qemu", "Skylake-Client", "custom", "Skylake-Client"),
        ("kvm", "host-passthrough", "host-passthrough", None),
        ("qemu", "host-passthrough", "maximum", None),
        ("qemu", "host-model", "host-model", None),
    ],
    ids=["tcg-default", "kvm-default", "named", "kvm-passthrough", "tcg-passthrough", "host-model"],
)
def test_cpu_mode(virt_type: str, model: str, mode: str, model_text: str | None) -> None:
    cpu = {"cores": 2, "model": model} if model else {"cores": 2}
    spec = _vm("cpu", {"cpu": cpu, "memory": {"guest": "128Mi"}})
    element = build_domain(spec, HostPlan(domain_name="a_b", uuid="", virt_type=virt_type))
    assert element.find("cpu") is not None
    assert element.find("cpu").get("mode") == mode  # type: ignore[union-attr]
    assert element.findtext("cpu/model") == model_text
    assert element.find("cpu/topology").attrib == {  # type: ignore[union-attr]
        "sockets": "1",
        "cores": "2",
        "threads": "1",
    }
    assert element.findtext("vcpu") == "2"


def test_many_disks_get_libvirt_names() -> None:
    disks = [{"name": f"d{i}", "disk": {"bus": "sata" if i % 2 else "virtio"}} for i in range(60)]
    volumes = [{"name": f"d{i}", "emptyDisk": {"capacity": "1Mi"}} for i in range(60)]
    spec = _vm("many", {"memory": {"guest": "128Mi"}, "devices": {"disks": disks}}, volumes=volumes)
    backings = tuple(DiskBacking(f"d{i}", f"/d/{i}.qcow2") for i in range(60))
    domain = build_domain(spec, HostPlan(domain_name="a_b", uuid="", disks=backings))
    names = [t.get("dev") for t in domain.iter("target") if t.get("bus") is not None]
    assert names[:4] == ["vda", "sda", "vdb", "sdb"]
    assert names[50:54] == ["vdz", "sdz", "vdaa", "sdaa"]
    assert len(set(names)) == 60


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"disks": ()}, "no backing for disk 'root'"),
        ({"nics": ()}, "no tap for interface 'default'"),
        ({"kernel": ""}, "no kernel path"),
        (
            {"disks": (DiskBacking("root", "/r"), DiskBacking("other", "/o"))},
            "does not declare: ['other']",
        ),
    ],
    ids=["missing-disk", "missing-nic", "missing-kernel", "extra-disk"],
)
def test_plan_must_match_spec(change: dict[str, Any], message: str) -> None:
    nics = (NicBacking("default", tap="va-0", mac="52:54:00:00:00:01"),)
    spec = _vm(
        "tiny",
        {
            "memory": {"guest": "128Mi"},
            "firmware": {"kernelBoot": {"container": {"kernelPath": "k"}}},
            "devices": {
                "disks": [{"name": "root", "disk": {}}],
                "interfaces": [{"name": "default", "masquerade": {}}],
            },
        },
        volumes=[{"name": "root", "emptyDisk": {"capacity": "1Gi"}}],
        networks=[{"name": "default", "pod": {}}],
    )
    fields: dict[str, Any] = {
        "domain_name": "a_b",
        "uuid": "",
        "kernel": "/k",
        "disks": (DiskBacking("root", "/r"),),
        "nics": nics,
    }
    fields.update(change)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_domain(spec, HostPlan(**fields))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DiskBacking("d", "relative.qcow2"), "not absolute"),
        (lambda: DiskBacking("d", "/d.vmdk", "vmdk"), "not qcow2 or raw"),
        (lambda: NicBacking("n", tap="a-very-long-tap-name", mac=""), "not 1-15 chars"),
        (lambda: NicBacking("n", tap="t", mac="", queues=0), "at least 1"),
        (lambda: HostPlan(domain_name="a", uuid="", virt_type="xen"), "virt_type"),
        (
            lambda: HostPlan(domain_name="a", uuid="", disks=(DiskBacking("d", "/a"),) * 2),
            "twice",
        ),
    ],
    ids=["relative-path", "bad-format", "long-tap", "zero-queues", "bad-virt-type", "dup-disk"],
)
def test_plan_validation(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tenant-a_vm-1", ("tenant-a", "vm-1")),
        ("default_a", ("default", "a")),
        ("no-separator", None),
        ("a_b_c", None),
        ("_name", None),
        ("ns_", None),
        ("Upper_case", None),
        ("ns_" + "x" * 64, None),
    ],
    ids=["plain", "short", "no-separator", "two-separators", "no-ns", "no-name", "upper", "long"],
)
def test_parse_domain_name(text: str, expected: tuple[str, str] | None) -> None:
    assert parse_domain_name(text) == expected


def test_domain_name_round_trips() -> None:
    assert parse_domain_name(domain_name("kube-system", "vm-0")) == ("kube-system", "vm-0")


# -- metadata ---------------------------------------------------------------------------


def _domain_with(metadata: ET.Element | str | None) -> str:
    spec, plan = _minimal_bios()
    fields = {"domain_name": plan.domain_name, "uuid": plan.uuid, "disks": plan.disks}
    return domain_xml(spec, HostPlan(**fields, metadata=metadata))  # type: ignore[arg-type]


def test_metadata_round_trip() -> None:
    spec, _ = _multiqueue_sata_scsi()
    bookkeeping = Bookkeeping(
        generation=7,
        created_at=1700000000.25,
        started_at=1700000100.0,
        last_reason="Booted",
        node_name="node-b",
        halted=True,
        network=ALLOCATION,
    )
    assert read_metadata(_domain_with(metadata_element(spec, bookkeeping))) == (spec, bookkeeping)


def test_metadata_read_by_namespace_not_prefix() -> None:
    spec, _ = _minimal_bios()
    text = ET.tostring(metadata_element(spec, BOOKKEEPING), encoding="unicode")
    renamed = text.replace("va:", "other:").replace("xmlns:va", "xmlns:other")
    assert read_metadata(_domain_with(renamed)) == (spec, BOOKKEEPING)


@pytest.mark.parametrize(
    "metadata",
    [None, '<app:info xmlns:app="https://example.com/app"><app:x>1</app:x></app:info>'],
    ids=["no-metadata", "foreign-namespace"],
)
def test_metadata_not_ours(metadata: str | None) -> None:
    assert read_metadata(_domain_with(metadata)) is None


def test_metadata_payload_for_set_metadata() -> None:
    spec, _ = _minimal_bios()
    payload = metadata_payload(spec, BOOKKEEPING)
    assert "xmlns" not in payload and payload.startswith("<vm><spec>")
    assert parse_metadata(payload) == (spec, BOOKKEEPING)


def test_set_metadata_through_libvirt(test_driver: Any) -> None:
    import libvirt

    spec, _ = _minimal_bios()
    dom = test_driver.defineXML(_domain_with(None))
    try:
        later = Bookkeeping(generation=4, created_at=1.0, started_at=2.0, network=ALLOCATION)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT,
            metadata_payload(spec, later),
            "va",
            METADATA_URI,
            flags,
        )
        assert read_metadata(dom.XMLDesc(0)) == (spec, later)
        element = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_URI, flags)
        assert parse_metadata(element) == (spec, later)
    finally:
        dom.undefine()


def test_bookkeeping_json_is_canonical() -> None:
    bookkeeping = Bookkeeping(generation=1, created_at=2.0)
    text = bookkeeping_to_json(bookkeeping)
    assert text == (
        '{"created_at":2.0,"generation":1,"halted":false,'
        '"last_reason":"","node_name":"","started_at":0.0,"stopped_at":0.0}'
    )
    assert bookkeeping_from_json(text) == bookkeeping


def test_a_start_under_way_is_stored_and_read_back() -> None:
    bookkeeping = Bookkeeping(generation=1, created_at=2.0, started_at=3.0, starting=True)
    assert '"starting":true' in bookkeeping_to_json(bookkeeping)
    assert bookkeeping_from_json(bookkeeping_to_json(bookkeeping)) == bookkeeping


def test_network_allocation_round_trip() -> None:
    bookkeeping = Bookkeeping(generation=1, created_at=2.0, network=ALLOCATION)
    assert bookkeeping_from_json(bookkeeping_to_json(bookkeeping)) == bookkeeping


def test_allocation_stored_by_agents_before_the_typed_field_is_read() -> None:
    text = (
        '{"generation":1,"created_at":2.0,"extra":{"network":{"namespace":"default","group":7,'
        '"nics":[{"name":"default","binding":"masquerade","tap":"va0123456789ab",'
        '"mac":"52:54:00:00:00:01","ip":"10.250.0.5","bridge":"","ports":[["TCP",22,30022,"ssh"]]}]}}}'
    )
    assert bookkeeping_from_json(text).network == ALLOCATION


def test_bookkeeping_ignores_unknown_keys() -> None:
    text = '{"generation": 2, "created_at": 5, "from_the_future": true}'
    assert bookkeeping_from_json(text) == Bookkeeping(generation=2, created_at=5.0)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"created_at": 1}',
        '{"generation": true, "created_at": 1}',
        '{"generation": 1, "created_at": "yesterday"}',
        '{"generation": 1, "created_at": 1, "network": {"nics": [{"name": "x"}]}}',
        '{"generation": 1, "created_at": 1, "network": []}',
    ],
    ids=[
        "not-json",
        "not-object",
        "no-generation",
        "bool-generation",
        "str-time",
        "nic-without-tap",
        "list-network",
    ],
)
def test_bookkeeping_rejects_corrupt_state(text: str) -> None:
    with pytest.raises(CorruptMetadata):
        bookkeeping_from_json(text)


@pytest.mark.parametrize(
    ("vm", "message"),
    [
        ("<vm><state>{}</state></vm>", "no spec"),
        ("<vm><spec>{</spec><state>{}</state></vm>", "spec is not JSON"),
        ('<vm><spec>{"metadata": {}}</spec><state>{}</state></vm>', "no longer parses"),
    ],
    ids=["no-spec", "bad-json", "invalid-spec"],
)
def test_corrupt_metadata_is_an_error_not_foreign(vm: str, message: str) -> None:
    with pytest.raises(CorruptMetadata, match=message):
        parse_metadata(vm)
