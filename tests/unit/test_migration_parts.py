"""Migration pieces without libvirt: the target's definition, which disks are copied, the
records and their watchers, the progress line of vmctl."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent.api._gen.virtagent.v1 import migration_service_pb2 as mpb
from agent.cli.migrate import progress_line
from agent.errors import NotFound
from agent.metrics.agent_metrics import REGISTRY
from agent.migration.records import MigrationBook, MigrationRecord, State
from agent.migration.xml import copied_disks, for_target
from agent.naming import METADATA_URI
from agent.spec import parse_vm

SOURCE = f"""<domain type='qemu'><name>default_web</name>
<metadata><va:vm xmlns:va="{METADATA_URI}"><va:spec>source</va:spec></va:vm>
<other xmlns="urn:x">kept</other></metadata>
<os><type>hvm</type><kernel>/a/images/vmlinuz</kernel><initrd>/a/images/initrd</initrd></os>
<devices>
<disk type='file' device='disk'><source file='/a/vms/default_web/root.qcow2'/>
<target dev='vda' bus='virtio'/><address type='pci' slot='0x04'/></disk>
<disk type='file' device='cdrom'><source file='/a/vms/default_web/seed.iso'/>
<target dev='sda' bus='sata'/><readonly/></disk>
<serial type='pty'><log file='/a/vms/default_web/console.log' append='on'/></serial>
</devices></domain>"""
TARGET = f"""<domain type='qemu'><name>default_web</name>
<metadata><va:vm xmlns:va="{METADATA_URI}"><va:spec>target</va:spec></va:vm></metadata>
<os><type>hvm</type><kernel>/b/images/vmlinuz</kernel><initrd>/b/images/initrd</initrd></os>
<devices>
<disk type='file' device='disk'><source file='/b/vms/default_web/root.qcow2'/>
<target dev='vda' bus='virtio'/></disk>
<disk type='file' device='cdrom'><source file='/b/vms/default_web/seed.iso'/>
<target dev='sda' bus='sata'/><readonly/></disk>
<serial type='pty'><log file='/b/vms/default_web/console.log' append='on'/></serial>
</devices></domain>"""


def test_the_target_gets_the_source_definition_with_its_own_paths_and_metadata() -> None:
    moved = ET.fromstring(for_target(SOURCE, TARGET))
    assert moved.findtext("os/kernel") == "/b/images/vmlinuz"
    assert moved.findtext("os/initrd") == "/b/images/initrd"
    sources = [d.find("source").get("file") for d in moved.iterfind("devices/disk")]  # type: ignore[union-attr]
    assert sources == ["/b/vms/default_web/root.qcow2", "/b/vms/default_web/seed.iso"]
    assert moved.find("devices/serial/log").get("file") == "/b/vms/default_web/console.log"  # type: ignore[union-attr]
    # the guest's hardware stays: device addresses come from the source
    assert moved.find("devices/disk/address").get("slot") == "0x04"  # type: ignore[union-attr]
    spec = moved.findall(f"metadata/{{{METADATA_URI}}}vm/{{{METADATA_URI}}}spec")
    assert [e.text for e in spec] == ["target"]
    assert moved.findtext("metadata/{urn:x}other") == "kept"


def test_only_the_vms_own_writable_disks_are_copied() -> None:
    vm = parse_vm(
        {
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {
                "template": {
                    "spec": {
                        "domain": {
                            "memory": {"guest": "64Mi"},
                            "devices": {
                                "disks": [
                                    {"name": "root", "disk": {}},
                                    {"name": "seed", "cdrom": {"bus": "sata"}},
                                ]
                            },
                        },
                        "volumes": [
                            {"name": "root", "emptyDisk": {"capacity": "1Gi"}},
                            {"name": "seed", "cloudInitNoCloud": {"userData": "#cloud-config"}},
                        ],
                    }
                }
            },
        }
    )
    assert copied_disks(vm, TARGET) == ("vda",)  # the seed is a read-only cdrom here


def record(**changes: object) -> MigrationRecord:
    fields: dict[str, object] = {
        "id": "m1", "namespace": "default", "name": "web", "uid": "u", "role": "source",
        "state": State.PENDING, "source_node": "a", "started_at": 10.0,
    }  # fmt: skip
    fields.update(changes)
    return MigrationRecord(**fields)  # type: ignore[arg-type]


def test_records_end_once_and_are_forgotten_after_the_retention() -> None:
    now = [100.0]
    book = MigrationBook(retention=60, clock=lambda: now[0])
    book.add(record())
    assert book.active_for("default_web", "source") is not None
    labels = {"role": "source", "outcome": "failed"}
    counted = REGISTRY.get_sample_value("virt_agent_migrations_total", labels) or 0.0
    ended = book.update("m1", state=State.FAILED, message="refused")
    assert ended.ended_at == 100.0 and book.active_for("default_web", "source") is None
    assert REGISTRY.get_sample_value("virt_agent_migrations_total", labels) == counted + 1
    # a late monitor update cannot revive it
    assert book.update("m1", state=State.RUNNING).state == State.FAILED
    now[0] = 161.0
    assert book.list() == []
    with pytest.raises(NotFound, match="migration 'm1' not found"):
        book.get("m1")


def test_a_watcher_wakes_on_each_change() -> None:
    book = MigrationBook()
    first = book.add(record())
    threading.Timer(0.05, lambda: book.update("m1", state=State.RUNNING)).start()
    changed = book.wait_change("m1", first.version, timeout=10)
    assert changed.state == State.RUNNING and changed.version > first.version


def test_vmctl_progress_line() -> None:
    migration = mpb.Migration(
        state=mpb.MIGRATION_STATE_RUNNING,
        progress=mpb.MigrationProgress(
            data_total_bytes=256 << 20,
            data_processed_bytes=128 << 20,
            data_remaining_bytes=128 << 20,
            memory_iteration=2,
            dirty_rate_bytes_per_second=3 << 20,
        ),
    )
    assert progress_line(migration) == (
        "Running   [############............] 128/256 MiB, 128 MiB left, iteration 2, dirty 3 MiB/s"
    )


def test_the_target_refuses_a_vm_its_free_memory_cannot_hold() -> None:
    from types import SimpleNamespace

    from agent.errors import FailedPrecondition
    from agent.migration.admission import check_memory
    from agent.models import Phase
    from agent.ports import HostFacts

    running = SimpleNamespace(
        spec=SimpleNamespace(memory_bytes=3 << 30, namespace="default", name="db"),
        status=SimpleNamespace(phase=Phase.RUNNING),
    )
    stopped = SimpleNamespace(
        spec=SimpleNamespace(memory_bytes=8 << 30, namespace="default", name="old"),
        status=SimpleNamespace(phase=Phase.STOPPED),
    )
    service = SimpleNamespace(
        node_name="node-b", cache=SimpleNamespace(records=lambda: [running, stopped])
    )
    host = SimpleNamespace(facts=lambda: HostFacts("node-b", 4, 8 << 30, "qemu64"))
    fits = SimpleNamespace(memory_bytes=4 << 30, key="default/web")
    check_memory(service, host, 1 << 30, fits)  # type: ignore[arg-type]
    with pytest.raises(FailedPrecondition, match=r"needs 5120 MiB, 4096 MiB of 7168 MiB"):
        big = SimpleNamespace(memory_bytes=5 << 30, key="default/web")
        check_memory(service, host, 1 << 30, big)  # type: ignore[arg-type]
    # prepared for an incoming migration, not arrived yet: counted (once it runs: once)
    with pytest.raises(FailedPrecondition, match=r"needs 4096 MiB, 3072 MiB of 7168 MiB"):
        check_memory(service, host, 1 << 30, fits, [("default_x", 1 << 30)])  # type: ignore[arg-type]
    check_memory(service, host, 1 << 30, fits, [("default_db", 3 << 30)])  # type: ignore[arg-type]


def test_the_target_refuses_a_host_disk_it_does_not_share(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from agent.errors import FailedPrecondition
    from agent.migration.admission import check_host_disks

    (tmp_path / "shared.img").write_bytes(b"\0" * 4096)
    service = SimpleNamespace(
        node_name="node-b",
        files=SimpleNamespace(support=SimpleNamespace(host_disk_roots=(str(tmp_path),))),
    )

    def vm(path: str, kind: str) -> object:
        return parse_vm(
            {
                "metadata": {"namespace": "default", "name": "web"},
                "spec": {"template": {"spec": {
                    "domain": {"memory": {"guest": "64Mi"},
                               "devices": {"disks": [{"name": "data", "disk": {}}]}},
                    "volumes": [{"name": "data", "hostDisk": {
                        "path": str(tmp_path / path), "type": kind, "capacity": "1Mi"}}],
                }}},
            }
        )  # fmt: skip

    check_host_disks(service, vm("shared.img", "Disk"))  # type: ignore[arg-type]
    for kind in ("Disk", "DiskOrCreate"):  # never created afresh on the target
        with pytest.raises(FailedPrecondition, match=r"volumes\[0\]\.hostDisk\.path.*'data'"):
            check_host_disks(service, vm("elsewhere.img", kind))  # type: ignore[arg-type]
    assert not (tmp_path / "elsewhere.img").exists()


def test_stored_records_are_owner_only_written_at_state_changes_and_read_back(
    tmp_path: Path,
) -> None:
    import os
    import stat

    from agent.migration.store import MigrationStore
    from agent.ports import JobSample

    store = MigrationStore(str(tmp_path / "migrations"))
    book = MigrationBook(store=store)
    book.add(record(metadata_xml="<vm/>"))
    path = tmp_path / "migrations" / "m1.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    book.update("m1", state=State.RUNNING)
    written = path.stat().st_mtime_ns
    book.update("m1", state=State.RUNNING, progress=JobSample(data_processed=5))
    assert path.stat().st_mtime_ns == written  # a progress sample is not written
    (tmp_path / "migrations" / "broken.json").write_text("{")
    (tmp_path / "migrations" / "cut.json.partial").write_text("{")
    again = MigrationBook(store=MigrationStore(str(tmp_path / "migrations")))
    [running] = again.load()
    assert (running.id, running.state, running.metadata_xml) == ("m1", State.RUNNING, "<vm/>")
    assert sorted(p.name for p in (tmp_path / "migrations").iterdir()) == ["m1.json"]


def test_a_migration_id_that_cannot_name_a_file_is_refused(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from agent.errors import InvalidSpec
    from agent.migration.target import IncomingMigrations

    service = SimpleNamespace(node_name="node-b")
    incoming = IncomingMigrations(
        service,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        MigrationBook(),
        address="192.0.2.12",
    )
    for bad in ("", "../../etc/x", ".hidden", "a" * 65):
        with pytest.raises(InvalidSpec, match="migration_id"):
            incoming.prepare(bad, "<vm/>", "node-a", 1, vm=("default", "web"))


def test_a_stored_record_is_synced_to_disk_file_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import stat

    from agent.migration.store import MigrationStore

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # (a spy: what was made durable)
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    store = MigrationStore(str(tmp_path / "migrations"))
    monkeypatch.setattr(os, "fsync", fsync)
    store.save(record())
    assert synced == ["file", "folder"]


def test_a_slow_disk_does_not_hold_up_readers_of_the_records(tmp_path: Path) -> None:
    from agent.migration.store import MigrationStore

    class SlowStore(MigrationStore):
        def __init__(self, folder: str) -> None:
            super().__init__(folder)
            self.writing, self.go_on = threading.Event(), threading.Event()

        def save(self, record: MigrationRecord) -> None:
            self.writing.set()
            assert self.go_on.wait(10)
            super().save(record)

    store = SlowStore(str(tmp_path / "migrations"))
    book = MigrationBook(store=store)
    writer = threading.Thread(target=book.add, args=(record(),))
    writer.start()
    assert store.writing.wait(10)
    assert [r.id for r in book.list()] == ["m1"]  # answered while the write is under way
    store.go_on.set()
    writer.join(10)
    assert [r.id for r in MigrationBook(store=MigrationStore(store.folder)).load()] == ["m1"]
