"""Disks and images with the real agent, libvirtd, QEMU and test guest (issue 5).

A local registry (docker-registry in the world namespace at 192.0.2.1:5000, plain HTTP)
serves a containerdisk of the test guest's BIOS-bootable disk, built and pushed by
hack/build-containerdisk.sh. The session's agent is restarted for this module with the disk
flags (``--insecure-registry``, ``--host-disk-root``, a second ``--image-root`` holding the
symlink traps) and put back as it was afterwards.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.api._gen.virtagent.v1 import vm_pb2
from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from tests.system.agentproc import AgentProcess, guest_vm
from tests.testbed.nodebox import GuestImage, NodeBox, World
from tests.testbed.registry import LocalRegistry, layout_layers
from tests.testbed.wait import wait_for

READY = "VIRT-AGENT-READY"
REPO = "containerdisks/testguest"
INSTANCE = "spec.template.spec"
# Prints every virtio disk's serial and size (512-byte sectors) on the console.
DISK_PROBE = """#!/bin/sh
for d in /sys/block/vd*; do
  echo "VIRT-AGENT-DISK $(basename $d) serial=$(cat $d/serial 2>/dev/null) sectors=$(cat $d/size)"
done
"""


@dataclass
class Bed:
    """What this module's tests share: the registry, the pushed image and the node folders."""

    registry: LocalRegistry
    image: str  # registry/repo:tag of the test guest's containerdisk
    layers: list[str]
    host_root: Path  # --host-disk-root
    image_root: Path  # the second --image-root, with symlink traps
    outside: Path  # a folder outside every root, with files an attacker would want


@pytest.fixture(scope="module")
def bed(
    world: World, node: NodeBox, test_guest: GuestImage, agent_process: AgentProcess
) -> Iterator[Bed]:
    assert test_guest.disk is not None, "the test guest has no disk.qcow2"
    base = node.dir / "disks"
    host_root, image_root, outside = base / "host", base / "images", base / "outside"
    for folder in (host_root, image_root, outside):
        folder.mkdir(parents=True, mode=0o755)
    base.chmod(0o755)
    _make_traps(host_root, image_root, outside, test_guest)
    registry = LocalRegistry.start(world, node.dir / "registry")
    saved = list(agent_process.extra_args)
    try:
        layout = registry.push(test_guest.disk, REPO)
        agent_process.stop()
        agent_process.extra_args = [
            *saved,
            "--insecure-registry", registry.address,
            "--host-disk-root", str(host_root),
            "--image-root", str(image_root),
        ]  # fmt: skip
        agent_process.start()
        yield Bed(
            registry=registry,
            image=f"{registry.address}/{REPO}:latest",
            layers=layout_layers(layout),
            host_root=host_root,
            image_root=image_root,
            outside=outside,
        )
    finally:
        agent_process.stop()
        agent_process.extra_args = saved
        agent_process.start()
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)


def _make_traps(host_root: Path, image_root: Path, outside: Path, guest: GuestImage) -> None:
    """Symlinks from inside the roots to ``outside`` (the CVE-2022-1798 family's cases)."""
    shutil.copy(guest.kernel, outside / "vmlinuz")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(outside / "secret.qcow2"),
                    "1M"], check=True)  # fmt: skip
    (outside / "secret.img").write_bytes(b"\0" * 4096)
    for root in (host_root, image_root):
        (root / "linkdir").symlink_to(outside)  # a symlink on the way
        (root / "real").mkdir()
    (image_root / "evil.qcow2").symlink_to(outside / "secret.qcow2")  # a symlinked file
    (image_root / "evil-kernel").symlink_to(outside / "vmlinuz")
    (host_root / "evil.img").symlink_to(outside / "secret.img")
    # Dangling: DiskOrCreate must not create the target through it (GHSA-46xp-26xh-hpqh).
    (host_root / "dangling.img").symlink_to(outside / "created-through-link.img")


@pytest.fixture
def dagent(bed: Bed, agent: AgentProcess) -> AgentProcess:
    """The agent with the disk flags; every VM is deleted after the test."""
    return agent


def _with(doc: dict[str, Any], *, disks: list[Any], volumes: list[Any]) -> dict[str, Any]:
    instance = doc["spec"]["template"]["spec"]
    instance["domain"]["devices"]["disks"] = disks
    instance["volumes"] = volumes
    return doc


def container_disk_vm(name: str, image: str) -> dict[str, Any]:
    """BIOS boot from a containerDisk (no direct kernel boot), as a cloud image boots."""
    doc = guest_vm(name)
    del doc["spec"]["template"]["spec"]["domain"]["firmware"]
    return _with(
        doc,
        disks=[{"name": "root", "disk": {"bus": "virtio"}, "bootOrder": 1}],
        volumes=[{"name": "root", "containerDisk": {"image": image}}],
    )


def cache_entries(agent: AgentProcess) -> list[Path]:
    folder = agent.state_dir / "containerdisks" / "entries"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Watcher:
    """Collects a WatchVirtualMachines stream on a thread until stopped."""

    def __init__(self, agent: AgentProcess) -> None:
        self.events: list[tuple[int, vm_pb2.VirtualMachine]] = []
        self._call = agent.vms.WatchVirtualMachines(
            pb.WatchVirtualMachinesRequest(namespace="default"), timeout=600
        )
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        # The server registers the watch asynchronously: until SYNCED, events could be missed.
        assert self._synced.wait(15), "the watch stream never sent SYNCED"

    def _run(self) -> None:
        try:
            for event in self._call:
                if event.type == pb.EVENT_TYPE_SYNCED:
                    self._synced.set()
                    continue
                self.events.append((event.type, event.vm))
        except grpc.RpcError:
            pass  # cancelled by stop()

    def stop(self) -> None:
        self._call.cancel()
        self._thread.join(10)

    def wait(self, what: str, seen: Any, timeout: float = 15) -> None:
        """Wait until ``seen(events)`` holds (the stream delivers after the call returns)."""
        wait_for(lambda: seen(list(self.events)), timeout, message=what)

    def pull_progress(self, name: str) -> list[tuple[int, int]]:
        """(done, total) of every ImagePulling condition seen for ``name``."""
        seen = []
        for _, vm in self.events:
            if vm.metadata.name != name:
                continue
            for condition in vm.status.conditions:
                match = re.search(r"(\d+) of (\d+) bytes", condition.message)
                if condition.type == "ImagePulling" and match:
                    seen.append((int(match.group(1)), int(match.group(2))))
        return seen


def test_container_disk_boots_shares_the_cache_and_is_collected(
    dagent: AgentProcess, bed: Bed
) -> None:
    layer = bed.layers[0]
    watcher = Watcher(dagent)
    try:
        vm = dagent.apply(container_disk_vm("cd-a", bed.image), timeout=120)
        watcher.wait("cd-a running on the watch stream", lambda events: any(
            e[1].metadata.name == "cd-a" and e[1].status.phase == vm_pb2.PHASE_RUNNING
            for e in events))  # fmt: skip
    finally:
        watcher.stop()
    assert vm.status.phase == vm_pb2.PHASE_RUNNING
    # The pull showed in the VM's status while it ran: bytes done of total, up to all.
    progress = watcher.pull_progress("cd-a")
    assert progress, "no ImagePulling condition was seen on the watch stream"
    assert progress[0][0] < progress[0][1] and progress[-1][0] == progress[-1][1] > 0
    assert any(e[1].status.reason == "PullingImage" for e in watcher.events)

    [entry] = cache_entries(dagent)
    base = entry / "disk.img"
    assert stat.S_IMODE(base.stat().st_mode) == 0o444
    assert bed.registry.blob_gets(REPO, layer) == 1
    dagent.apply(container_disk_vm("cd-b", bed.image), timeout=120)
    assert bed.registry.blob_gets(REPO, layer) == 1, "the second VM downloaded the layer again"
    assert cache_entries(dagent) == [entry]
    assert sorted(os.listdir(entry / "users")) == ["default_cd-a", "default_cd-b"]

    dagent.wait_console("cd-a", READY, timeout=150)
    dagent.wait_console("cd-b", READY, timeout=150)
    # Each guest writes to its own overlay in its VM folder; the cached base is untouched.
    xml = dagent.node.virsh("dumpxml", "default_cd-a")
    assert str(dagent.state_dir / "vms" / "default_cd-a") in xml and str(base) in xml
    before = sha256_of(base)
    assert "<kernel>" not in xml  # booted by the image's own boot loader (BIOS, SYSLINUX)

    delete(dagent, "cd-a")
    assert not (dagent.state_dir / "vms" / "default_cd-a").exists()  # its overlay went with it
    assert cache_entries(dagent) == [entry] and os.listdir(entry / "users") == ["default_cd-b"]
    assert sha256_of(base) == before
    delete(dagent, "cd-b")
    assert cache_entries(dagent) == [], "the unused cache entry was not garbage-collected"
    assert not list((dagent.state_dir / "containerdisks" / "tmp").iterdir())


def delete(agent: AgentProcess, name: str) -> None:
    agent.vms.DeleteVirtualMachine(
        pb.DeleteVirtualMachineRequest(namespace="default", name=name, grace_period_seconds=0),
        timeout=60,
    )


def test_tampered_blob_fails_the_vm_and_leaves_no_cache_entry(
    dagent: AgentProcess, bed: Bed, tmp_path: Path
) -> None:
    disk = tmp_path / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8M"], check=True)
    layout = bed.registry.push(disk, "containerdisks/tampered", "v1")
    [layer] = layout_layers(layout)
    blob = bed.registry.blob_path(layer)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content: only the digest can tell
    blob.write_bytes(bytes(data))

    image = f"{bed.registry.address}/containerdisks/tampered:v1"
    watcher = Watcher(dagent)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            dagent.apply(container_disk_vm("tampered", image), timeout=60)
        watcher.wait(
            "the stand-in's DELETED event",
            lambda events: any(
                t == pb.EVENT_TYPE_DELETED and vm.metadata.name == "tampered" for t, vm in events
            ),
        )
    finally:
        watcher.stop()
    error = caught.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert f"{INSTANCE}.volumes[0].containerDisk.image" in error.details()
    assert layer in error.details() and "digest" in error.details()
    # Watchers saw the VM fail with the reason before it went away.
    failed = [vm for _, vm in watcher.events if vm.status.reason == "ImagePullFailed"]
    assert failed and layer in failed[0].status.message
    assert cache_entries(dagent) == []
    assert not list((dagent.state_dir / "containerdisks" / "tmp").iterdir())
    assert not (dagent.state_dir / "vms" / "default_tampered").exists()
    assert "default_tampered" not in dagent.node.virsh("list", "--all", "--name")
    with pytest.raises(grpc.RpcError) as missing:
        dagent.get("tampered")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_cloud_init_user_data_runs_and_sets_the_host_name(dagent: AgentProcess) -> None:
    doc = guest_vm("ci")
    doc["spec"]["template"]["spec"]["hostname"] = "from-meta-data"
    user_data = "#!/bin/sh\necho VIRT-AGENT-HELLO from $(hostname)\n"
    _with(
        doc,
        disks=[{"name": "seed", "disk": {"bus": "virtio"}}],
        volumes=[{"name": "seed", "cloudInitNoCloud": {"userData": user_data}}],
    )
    vm = dagent.apply(doc)
    text = dagent.wait_console("ci", "VIRT-AGENT-USERDATA rc=0")
    assert "VIRT-AGENT-CLOUDINIT hostname=from-meta-data" in text
    assert "VIRT-AGENT-HELLO from from-meta-data" in text
    seeds = list((dagent.state_dir / "vms" / "default_ci").glob("seed-cidata-*.iso"))
    assert len(seeds) == 1
    assert vm.metadata.uid.encode() in seeds[0].read_bytes()  # instance-id is the VM's uid


def test_empty_and_host_disks_have_their_sizes_and_disk_or_create_creates_once(
    dagent: AgentProcess, bed: Bed
) -> None:
    # The probe script comes from a secretRef file under the node's secrets folder.
    secret = dagent.state_dir / "secrets" / "default" / "disk-probe" / "userdata"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(DISK_PROBE)
    (bed.host_root / "vm").mkdir(exist_ok=True)
    host_file = bed.host_root / "vm" / "data.img"

    def probe_vm(capacity: str) -> dict[str, Any]:
        return _with(
            guest_vm("probe"),
            disks=[
                {"name": "seed", "disk": {"bus": "virtio"}},
                {"name": "scratch", "disk": {"bus": "virtio"}, "serial": "EMPTY1"},
                {"name": "data", "disk": {"bus": "virtio"}, "serial": "HOST1"},
            ],
            volumes=[
                {"name": "seed", "cloudInitNoCloud": {"secretRef": {"name": "disk-probe"}}},
                {"name": "scratch", "emptyDisk": {"capacity": "96Mi"}},
                {"name": "data", "hostDisk": {"path": str(host_file), "type": "DiskOrCreate",
                                              "capacity": capacity}},
            ],
        )  # fmt: skip

    dagent.apply(probe_vm("32Mi"))
    text = dagent.wait_console("probe", "VIRT-AGENT-USERDATA rc=0")
    assert re.search(r"VIRT-AGENT-DISK vd\w+ serial=EMPTY1 sectors=196608\b", text), text
    assert re.search(r"VIRT-AGENT-DISK vd\w+ serial=HOST1 sectors=65536\b", text), text
    assert host_file.stat().st_size == 32 * 1024 * 1024
    inode = host_file.stat().st_ino

    delete(dagent, "probe")
    assert host_file.exists(), "a host disk outlives its VM"
    with host_file.open("r+b") as handle:
        handle.write(b"KEEP-ME")
    dagent.apply(probe_vm("48Mi"))  # DiskOrCreate again: the file is there, so it is used
    assert host_file.stat().st_ino == inode
    assert host_file.stat().st_size == 32 * 1024 * 1024
    assert host_file.read_bytes()[:7] == b"KEEP-ME"


# (name, field path, how the spec sets it, value). Every one must be refused by name with
# INVALID_ARGUMENT, and nothing may be created: no domain, no VM folder, no file.
def _attacks(bed: Bed) -> list[tuple[str, str, str, str]]:
    o, h, i = bed.outside, bed.host_root, bed.image_root
    volumes = f"{INSTANCE}.volumes[0]"
    kernel = f"{INSTANCE}.domain.firmware.kernelBoot.container"
    cases = []
    for kind, field in (("imageFile", f"{volumes}.imageFile.path"),
                        ("kernelPath", f"{kernel}.kernelPath"),
                        ("initrdPath", f"{kernel}.initrdPath")):  # fmt: skip
        target = "vmlinuz" if kind != "imageFile" else "secret.qcow2"
        final = "evil-kernel" if kind != "imageFile" else "evil.qcow2"
        cases += [
            (f"{kind}-dotdot", field, kind, f"real/../../outside/{target}"),
            (f"{kind}-outside", field, kind, str(o / target)),
            (f"{kind}-symlinked-dir", field, kind, f"linkdir/{target}"),
            (f"{kind}-symlinked-file", field, kind, final),
            (f"{kind}-absolute-symlinked-dir", field, kind, str(i / "linkdir" / target)),
        ]
    field = f"{volumes}.hostDisk.path"
    cases += [
        ("hostDisk-dotdot", field, "hostDisk", f"{h}/real/../../outside/new.img"),
        ("hostDisk-outside", field, "hostDisk", str(o / "new.img")),
        ("hostDisk-symlinked-dir", field, "hostDisk", str(h / "linkdir" / "new.img")),
        ("hostDisk-symlinked-file", field, "hostDisk", str(h / "evil.img")),
        ("hostDisk-dangling-symlink", field, "hostDisk", str(h / "dangling.img")),
        ("containerDisk-path-dotdot", f"{volumes}.containerDisk.path", "containerDiskPath",
         "disk/../../etc/shadow"),
    ]  # fmt: skip
    return cases


def _attack_vm(kind: str, value: str, image: str) -> dict[str, Any]:
    doc = guest_vm("attack")
    container = doc["spec"]["template"]["spec"]["domain"]["firmware"]["kernelBoot"]["container"]
    if kind in ("kernelPath", "initrdPath"):
        container[kind] = value
        return doc
    volume: dict[str, Any] = {
        "imageFile": {"imageFile": {"path": value}},
        "hostDisk": {"hostDisk": {"path": value, "type": "DiskOrCreate", "capacity": "1Mi"}},
        "containerDiskPath": {"containerDisk": {"image": image, "path": value}},
    }[kind]
    return _with(doc, disks=[{"name": "d", "disk": {"bus": "virtio"}}],
                 volumes=[{"name": "d", **volume}])  # fmt: skip


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_mode, p.lstat().st_size) for p in folder.rglob("*")}


def test_path_attacks_are_refused_by_field_and_create_nothing(
    dagent: AgentProcess, bed: Bed
) -> None:
    before = {root: _tree(root) for root in (bed.outside, bed.host_root, bed.image_root)}
    secret = (bed.outside / "secret.img").read_bytes()
    failures = []
    for name, field, kind, value in _attacks(bed):
        try:
            dagent.apply(_attack_vm(kind, value, bed.image), timeout=30)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT or field not in exc.details():
                failures.append(f"{name}: {exc.code()} {exc.details()}")
        else:
            failures.append(f"{name}: {value!r} was accepted")
            delete(dagent, "attack")
        if (dagent.state_dir / "vms" / "default_attack").exists():
            failures.append(f"{name}: the VM folder was left behind")
    assert not failures, "\n".join(failures)
    assert {root: _tree(root) for root in before} == before, "a file appeared or changed"
    assert not (bed.outside / "created-through-link.img").exists()
    assert (bed.outside / "secret.img").read_bytes() == secret
    assert "default_attack" not in dagent.node.virsh("list", "--all", "--name")


def test_an_unknown_image_and_a_bad_reference_are_refused_clearly(
    dagent: AgentProcess, bed: Bed
) -> None:
    missing = f"{bed.registry.address}/containerdisks/nothing-here:v1"
    with pytest.raises(grpc.RpcError) as caught:
        dagent.apply(container_disk_vm("nothing", missing), timeout=60)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not found" in caught.value.details() and "containerDisk.image" in caught.value.details()
    with pytest.raises(grpc.RpcError) as bad:
        dagent.apply(container_disk_vm("bad", "Registry:5000/UPPER/case:tag"), timeout=30)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{INSTANCE}.volumes[0].containerDisk.image" in bad.value.details()
    assert cache_entries(dagent) == []
