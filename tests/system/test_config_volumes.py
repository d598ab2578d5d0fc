"""Config volumes with the real agent, libvirtd, QEMU and test guest (issue 16).

The node files a control plane would write go under the agent's secrets folder
(``<state-dir>/secrets``, the default ``--secrets-dir``): secrets at
``<namespace>/<name>/<key>``, config maps at ``<namespace>/_configmaps/<name>/<key>``. The
test guest acts on a config drive as on a NoCloud seed (hack/test-guest/init): it takes its
host name from ``meta_data.json`` and runs ``user_data``; the user data scripts here read
the other ISOs and print what they find on the console.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.system.agentproc import AgentProcess, guest_vm

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZpcnQtYWdlbnQtdGVzdA tester@node"
# Mounts every other ISO9660 disk and prints its files, and whether the kernel sees the
# disk as read-only; then the config drive's SSH keys.
READ_DISKS = r"""#!/bin/sh
mkdir -p /mnt/v
for d in /sys/block/vd*; do
  dev=/dev/${d##*/}
  serial=$(cat "$d/serial" 2>/dev/null)
  if ! error=$(mount -t iso9660 -o ro "$dev" /mnt/v 2>&1); then
    echo "VIRT-AGENT-NOMOUNT $dev serial=$serial ro=$(cat "$d/ro") $error"
    dmesg | tail -n 3
    continue
  fi
  for f in /mnt/v/*; do
    [ -f "$f" ] && echo "VIRT-AGENT-FILE serial=$serial ro=$(cat "$d/ro") ${f##*/}=$(cat "$f")"
  done
  if [ -f /mnt/v/openstack/latest/meta_data.json ]; then
    grep -o 'ssh-ed25519 [^"]*' /mnt/v/openstack/latest/meta_data.json |
      sed 's/^/VIRT-AGENT-SSHKEY /'
  fi
  umount /mnt/v
done
"""


def _node_file(agent: AgentProcess, relative: str, data: str) -> None:
    path = agent.state_dir / "secrets" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)


def _with(doc: dict[str, Any], disks: list[Any], volumes: list[Any]) -> dict[str, Any]:
    instance = doc["spec"]["template"]["spec"]
    instance["domain"]["devices"]["disks"] = disks
    instance["volumes"] = volumes
    return doc


def _volume_label(iso: Path) -> str:
    """The ISO 9660 volume identifier: 32 bytes at offset 40 of sector 16."""
    with iso.open("rb") as handle:
        handle.seek(16 * 2048 + 40)
        return handle.read(32).decode().rstrip()


def test_a_config_drive_guest_reads_its_user_data_and_meta_data(agent: AgentProcess) -> None:
    _node_file(agent, "default/my-pub-key/key1", SSH_KEY + "\n")
    doc = _with(
        guest_vm("drive"),
        disks=[{"name": "cfg", "disk": {"bus": "virtio"}, "serial": "CFG1"}],
        volumes=[{"name": "cfg", "cloudInitConfigDrive": {"userData": READ_DISKS}}],
    )
    instance = doc["spec"]["template"]["spec"]
    instance["hostname"] = "from-config-drive"
    instance["accessCredentials"] = [
        {
            "sshPublicKey": {
                "source": {"secret": {"secretName": "my-pub-key"}},
                "propagationMethod": {"configDrive": {}},
            }
        }
    ]
    agent.apply(doc)
    text = agent.wait_console("drive", "VIRT-AGENT-USERDATA rc=0", timeout=180)
    # meta_data.json's hostname, and user_data run by the guest: both from the config drive.
    assert "VIRT-AGENT-CLOUDINIT hostname=from-config-drive source=configdrive" in text
    assert f"VIRT-AGENT-SSHKEY {SSH_KEY}" in text
    [iso] = (agent.state_dir / "vms" / "default_drive").glob("cfg-*.iso")
    assert _volume_label(iso) == "config-2"


def test_secret_and_config_map_volumes_are_read_only_files_in_the_guest(
    agent: AgentProcess,
) -> None:
    _node_file(agent, "default/db-creds/username", "admin")
    _node_file(agent, "default/db-creds/password", "s3cret")
    _node_file(agent, "default/_configmaps/app-config/app.conf", "port=5432")
    doc = _with(
        guest_vm("secretvol"),
        disks=[
            {"name": "seed", "disk": {"bus": "virtio"}},
            {"name": "creds", "disk": {"bus": "virtio"}, "serial": "CREDS1"},
            {"name": "app", "disk": {"bus": "virtio"}, "serial": "APP1"},
        ],
        volumes=[
            {"name": "seed", "cloudInitNoCloud": {"userData": READ_DISKS}},
            {"name": "creds", "secret": {"secretName": "db-creds"}},
            {"name": "app", "configMap": {"name": "app-config", "volumeLabel": "APPCFG"}},
        ],
    )
    agent.apply(doc)
    # (The init's marker once the script ended; the seed's own files are printed too.)
    text = agent.wait_console("secretvol", "VIRT-AGENT-USERDATA rc=0", timeout=180)
    files = set(re.findall(r"VIRT-AGENT-FILE (serial=\S+ ro=\d \S+)", text))
    assert {
        "serial=CREDS1 ro=1 username=admin",
        "serial=CREDS1 ro=1 password=s3cret",
        "serial=APP1 ro=1 app.conf=port=5432",
    } <= files, text
    [app] = (agent.state_dir / "vms" / "default_secretvol").glob("app-*.iso")
    assert _volume_label(app) == "APPCFG"


def test_a_missing_secret_is_refused_by_name_and_nothing_is_left(agent: AgentProcess) -> None:
    doc = _with(
        guest_vm("nosecret"),
        disks=[{"name": "creds", "disk": {"bus": "virtio"}}],
        volumes=[{"name": "creds", "secret": {"secretName": "absent-creds"}}],
    )
    with pytest.raises(grpc.RpcError) as refused:
        agent.apply(doc)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "spec.template.spec.volumes[0].secret" in details
    assert "secret default/absent-creds not found under" in details
    assert not (agent.state_dir / "vms" / "default_nosecret").exists()
