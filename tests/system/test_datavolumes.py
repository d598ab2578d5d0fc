"""dataVolumeTemplates with the real agent, libvirtd, QEMU and test guest (issue 16).

The agent imports each template's claim under ``--claim-root`` before the VM starts: from
the local registry (the test guest's containerdisk, as tests/system/test_disks.py pushes
it), from an HTTP server this module runs in the world namespace (the guest's disk as a
gzip-compressed qcow2 with its sha256), or blank. The guests boot from their imported
claims and serve their page through a node port; a blank claim shows in the guest with
its size.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from tests.system.agentproc import AgentProcess, guest_vm
from tests.system.test_disks import DISK_PROBE, Watcher
from tests.system.test_vmctl import vmctl
from tests.testbed.nodebox import GuestImage, NodeBox, World
from tests.testbed.registry import LocalRegistry
from tests.testbed.wait import wait_for

REPO = "containerdisks/testguest"
HTTP_PORT = 8081
MiB = 1024 * 1024


@dataclass
class DVBed:
    image_url: str  # docker://registry/repo:tag of the test guest's containerdisk
    http_url: str  # the guest's disk, qcow2.gz
    checksum: str
    claims: Path  # --claim-root
    http_log: Path


# Serves a folder; under /slow/ the same files trickle (64 KiB every 0.2 s), so that an
# import is still running when the test kills the agent.
_FILE_SERVER = r"""
import http.server, os, sys, time

class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        slow = self.path.startswith("/slow/")
        name = os.path.basename(self.path)
        path = os.path.join(sys.argv[3], name)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        data = open(path, "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        step = 64 * 1024 if slow else len(data)
        for start in range(0, len(data), step):
            self.wfile.write(data[start:start + step])
            if slow:
                time.sleep(0.2)

http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"""


class FileServer:
    """An HTTP server in the world namespace serving one folder (see _FILE_SERVER)."""

    def __init__(self, world: World, folder: Path, log: Path) -> None:
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", world.netns, sys.executable, "-c", _FILE_SERVER,
                 world.ip, str(HTTP_PORT), str(folder)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
        wait_for(
            lambda: world.http_get(world.ip, HTTP_PORT, timeout=2, path="/ready.txt"),
            20,
            message="the world's file server",
            ignore=(Exception,),
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def dvbed(
    world: World, node: NodeBox, test_guest: GuestImage, agent_process: AgentProcess
) -> Iterator[DVBed]:
    assert test_guest.disk is not None, "the test guest has no disk.qcow2"
    base = node.dir / "datavolumes"
    claims, served = base / "claims", base / "served"
    for folder in (claims, served):
        folder.mkdir(parents=True, mode=0o755)
    base.chmod(0o755)
    packed = gzip.compress(Path(test_guest.disk).read_bytes(), compresslevel=1)
    (served / "guest.qcow2.gz").write_bytes(packed)
    (served / "ready.txt").write_text("ready")
    registry = LocalRegistry.start(world, base / "registry")
    server = FileServer(world, served, base / "http.log")
    saved = list(agent_process.extra_args)
    try:
        registry.push(test_guest.disk, REPO)
        agent_process.stop()
        agent_process.extra_args = [
            *saved, "--insecure-registry", registry.address, "--claim-root", str(claims),
            # The world's file server has a non-public (test) address: allowed by name.
            "--import-allow-cidr", f"{world.ip}/32",
        ]  # fmt: skip
        agent_process.start()
        yield DVBed(
            image_url=f"docker://{registry.address}/{REPO}:latest",
            http_url=f"http://{world.ip}:{HTTP_PORT}/guest.qcow2.gz",
            checksum="sha256:" + hashlib.sha256(packed).hexdigest(),
            claims=claims,
            http_log=base / "http.log",
        )
    finally:
        agent_process.stop()
        agent_process.extra_args = saved
        agent_process.start()
        server.stop()
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def dvagent(dvbed: DVBed, agent: AgentProcess) -> AgentProcess:
    """The agent with --claim-root; every VM is deleted after the test."""
    return agent


def template(name: str, size: str, source: dict[str, Any], **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    storage = {"resources": {"requests": {"storage": size}}}
    return {"metadata": meta, "spec": {"storage": storage, "source": source}}


def dv_vm(
    name: str, templates: list[dict[str, Any]], extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """BIOS boot from the first template's claim, a masquerade NIC publishing port 80, and
    the other templates as disks with their names as serials."""
    doc = guest_vm(name, interfaces=[{"name": "default", "masquerade": {},
                                      "ports": [{"name": "http", "port": 80}]}])  # fmt: skip
    instance = doc["spec"]["template"]["spec"]
    del instance["domain"]["firmware"]
    names = [t["metadata"]["name"] for t in templates]
    disks: list[dict[str, Any]] = [{"name": names[0], "disk": {"bus": "virtio"}, "bootOrder": 1}]
    disks += [{"name": n, "disk": {"bus": "virtio"}, "serial": n.upper()} for n in names[1:]]
    volumes: list[dict[str, Any]] = [{"name": n, "dataVolume": {"name": n}} for n in names]
    for volume in extra:
        disks.append({"name": volume, "disk": {"bus": "virtio"}})
        volumes.append({"name": volume, "cloudInitNoCloud": {"secretRef": {"name": "dv-probe"}}})
    instance["domain"]["devices"]["disks"] = disks
    instance["volumes"] = volumes
    doc["spec"]["dataVolumeTemplates"] = templates
    return doc


def page_of(agent: AgentProcess, world: World, name: str) -> str:
    vm = agent.get(name)
    [published] = vm.status.interfaces[0].published_ports
    return wait_for(
        lambda: world.http_get(agent.node.uplink_ip, published.node_port, timeout=3),
        180,
        message=f"{name}'s page through its node port",
        ignore=(Exception,),
    )


def delete(agent: AgentProcess, name: str) -> None:
    agent.vms.DeleteVirtualMachine(
        pb.DeleteVirtualMachineRequest(namespace="default", name=name, grace_period_seconds=0),
        timeout=60,
    )


def test_registry_and_blank_data_volumes_boot_and_the_blank_one_has_its_size(
    dvagent: AgentProcess, dvbed: DVBed, world: World
) -> None:
    secret = dvagent.state_dir / "secrets" / "default" / "dv-probe" / "userdata"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(DISK_PROBE)
    templates = [
        template("reg-root", "1Gi", {"registry": {"url": dvbed.image_url}}),
        template("scratch", "96Mi", {"blank": {}}, **{"virt-agent.io/delete-with-vm": "true"}),
    ]
    dvagent.apply(dv_vm("dv-reg", templates, ("seed",)), timeout=300)
    root_claim = dvbed.claims / "default" / "reg-root" / "disk.img"
    scratch = dvbed.claims / "default" / "scratch" / "disk.img"
    assert root_claim.stat().st_size == 1024 * MiB  # grown to the requested size
    # The image, its format pinned raw at publish and the importing VM's mark: no temporaries.
    assert sorted(p.name for p in root_claim.parent.iterdir()) == [
        ".virt-agent-format",
        ".virt-agent-owner",
        "disk.img",
    ]
    assert scratch.stat().st_size == 96 * MiB and scratch.stat().st_blocks * 512 < MiB

    text = dvagent.wait_console("dv-reg", "VIRT-AGENT-USERDATA rc=0", timeout=240)
    assert re.search(r"VIRT-AGENT-DISK vd\w+ serial=SCRATCH sectors=196608\b", text), text
    assert "hostname=dv-reg" in page_of(dvagent, world, "dv-reg")

    delete(dvagent, "dv-reg")
    assert root_claim.exists(), "a DataVolume's claim outlives its VM by default"
    assert not scratch.parent.exists(), "the delete-with-vm claim was kept"


def test_http_data_volume_is_downloaded_once_checked_and_boots(
    dvagent: AgentProcess, dvbed: DVBed, world: World
) -> None:
    source = {"http": {"url": dvbed.http_url, "checksum": dvbed.checksum}}
    doc = dv_vm("dv-http", [template("http-root", "1Gi", source)])
    gets_before = dvbed.http_log.read_text().count("GET /guest.qcow2.gz")
    watcher = Watcher(dvagent)
    try:
        dvagent.apply(doc, timeout=300)
    finally:
        watcher.stop()
    # The download showed in the VM's status while it ran, as a pull does.
    progress = watcher.pull_progress("dv-http")
    assert progress and progress[-1][0] == progress[-1][1] > 0
    claim = dvbed.claims / "default" / "http-root" / "disk.img"
    inode = claim.stat().st_ino
    assert "hostname=dv-http" in page_of(dvagent, world, "dv-http")

    dvagent.apply(doc, timeout=60)  # a second Apply never imports again
    assert claim.stat().st_ino == inode
    assert dvbed.http_log.read_text().count("GET /guest.qcow2.gz") == gets_before + 1


def test_a_bad_checksum_fails_the_apply_and_leaves_no_claim(
    dvagent: AgentProcess, dvbed: DVBed
) -> None:
    source = {"http": {"url": dvbed.http_url, "checksum": "sha256:" + "0" * 64}}
    with pytest.raises(grpc.RpcError) as caught:
        dvagent.apply(dv_vm("dv-bad", [template("bad-root", "1Gi", source)]), timeout=300)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
    details = caught.value.details()
    assert "spec.dataVolumeTemplates[0] (DataVolume bad-root)" in details
    assert "checksum mismatch" in details
    folder = dvbed.claims / "default" / "bad-root"
    assert not folder.exists() or list(folder.iterdir()) == []
    assert "default_dv-bad" not in dvagent.node.virsh("list", "--all", "--name")


def test_an_import_cut_by_an_agent_kill_restarts_cleanly(
    dvagent: AgentProcess, dvbed: DVBed, world: World
) -> None:
    slow = dvbed.http_url.replace("/guest.qcow2.gz", "/slow/guest.qcow2.gz")
    doc = dv_vm("dv-cut", [template("cut-root", "1Gi", {"http": {"url": slow}})])
    folder = dvbed.claims / "default" / "cut-root"
    failed: list[BaseException] = []

    def apply() -> None:
        try:
            dvagent.apply(doc, timeout=300)
        except grpc.RpcError as exc:
            failed.append(exc)

    applying = threading.Thread(target=apply, daemon=True)
    applying.start()
    partial = folder / ".disk.img.download"
    wait_for(lambda: partial.exists() and partial.stat().st_size > 0, 120,
             message="the download under way")  # fmt: skip
    dvagent.stop(signal.SIGKILL)
    applying.join(30)
    assert failed, "the Apply did not fail when its agent was killed"
    assert not (folder / "disk.img").exists() and partial.exists()

    dvagent.start()  # the restarted agent removes what the cut import left
    assert [p.name for p in folder.iterdir()] == []
    assert "an import interrupted by an agent restart" in dvagent.log_path.read_text()
    doc["spec"]["dataVolumeTemplates"][0]["spec"]["source"]["http"]["url"] = dvbed.http_url
    dvagent.apply(doc, timeout=300)  # imports again, from scratch, and boots
    assert sorted(p.name for p in folder.iterdir()) == [
        ".virt-agent-format",
        ".virt-agent-owner",
        "disk.img",
    ]
    assert "hostname=dv-cut" in page_of(dvagent, world, "dv-cut")


KUBEVIRT_DV_VM = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: vmctl-dv
spec:
  running: true
  dataVolumeTemplates:
  - apiVersion: cdi.kubevirt.io/v1beta1
    kind: DataVolume
    metadata:
      name: vmctl-root
    spec:
      pvc:
        accessModes: [ReadWriteOnce]
        resources:
          requests:
            storage: 1Gi
        storageClassName: local
      source:
        http:
          url: {url}
  template:
    spec:
      domain:
        devices:
          disks:
          - name: root
            disk: {{bus: virtio}}
          interfaces:
          - name: default
            masquerade: {{}}
            ports: [{{name: http, port: 80}}]
        resources:
          requests:
            memory: 256Mi
      networks:
      - name: default
        pod: {{}}
      volumes:
      - name: root
        dataVolume:
          name: vmctl-root
"""


def test_vmctl_apply_wait_shows_the_import_and_the_vm_runs(
    dvagent: AgentProcess, dvbed: DVBed, world: World, tmp_path: Path
) -> None:
    slow = dvbed.http_url.replace("/guest.qcow2.gz", "/slow/guest.qcow2.gz")
    manifest = tmp_path / "vm.yaml"
    manifest.write_text(KUBEVIRT_DV_VM.format(url=slow))
    applied = vmctl(
        dvagent, "--timeout", "300", "apply", "-f", str(manifest), "--wait", timeout=600
    )
    assert applied.returncode == 0, applied.stderr
    # Plain lines (not a terminal): the import as a transfer of the template's volume.
    assert re.search(rf"volume vmctl-root {re.escape(slow)} .* of ", applied.stderr), applied.stderr
    assert "storageClassName" in applied.stderr + applied.stdout  # named as ignored
    assert "hostname=vmctl-dv" in page_of(dvagent, world, "vmctl-dv")
    described = vmctl(dvagent, "describe", "vmctl-dv").stdout
    assert f"dataVolume vmctl-root (http {slow}, 1Gi)" in described
