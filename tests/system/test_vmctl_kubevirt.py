"""vmctl apply of a real-looking KubeVirt VirtualMachine: containerDisk from a registry,
a masquerade interface with a declared port, cloud-init NoCloud; reached over the network."""

from __future__ import annotations

import json
from pathlib import Path

from tests.system.agentproc import AgentProcess
from tests.system.test_disks import Bed, bed  # noqa: F401 - the registry and disk-flag agent
from tests.system.test_vmctl import vmctl
from tests.testbed.nodebox import World
from tests.testbed.wait import wait_for

KUBEVIRT_VM = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: fedora-like
  labels:
    kubevirt.io/os: linux
spec:
  runStrategy: Always
  template:
    metadata:
      labels:
        kubevirt.io/domain: fedora-like
    spec:
      domain:
        cpu:
          cores: 1
        devices:
          disks:
            - name: containerdisk
              disk:
                bus: virtio
            - name: cloudinitdisk
              disk:
                bus: virtio
          interfaces:
            - name: default
              masquerade: {{}}
              ports:
                - name: http
                  port: 80
        resources:
          requests:
            memory: 256Mi
      networks:
        - name: default
          pod: {{}}
      terminationGracePeriodSeconds: 30
      volumes:
        - name: containerdisk
          containerDisk:
            image: {image}
        - name: cloudinitdisk
          cloudInitNoCloud:
            userData: |
              #!/bin/sh
              echo "hello from user-data"
"""


def test_kubevirt_yaml_runs_and_is_reachable(
    bed: Bed,  # noqa: F811
    agent: AgentProcess,
    world: World,
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "vm.yaml"
    manifest.write_text(KUBEVIRT_VM.format(image=bed.image))
    applied = vmctl(agent, "apply", "-f", str(manifest), timeout=300)
    assert applied.returncode == 0, applied.stderr
    agent.wait_console("fedora-like", "VIRT-AGENT-READY", timeout=120)
    assert "hello from user-data" in agent.console("fedora-like")

    document = json.loads(vmctl(agent, "get", "fedora-like", "-o", "json").stdout)
    assert document["status"]["phase"] == "Running"
    interface = document["status"]["interfaces"][0]
    address = interface["ipAddresses"][0]
    assert address.startswith("10.")
    published = interface["publishedPorts"][0]
    assert published["port"] == 80 and published["nodePort"] > 0

    # From the outside world, through the node's uplink address and the published port.
    page = wait_for(
        lambda: world.http_get(agent.node.uplink_ip, published["nodePort"], timeout=3),
        60,
        message="the guest's page through the node port",
        ignore=(Exception,),
    )
    assert "hostname=fedora-like" in page

    assert vmctl(agent, "stop", "fedora-like", "--wait", timeout=120).returncode == 0
    assert vmctl(agent, "delete", "fedora-like", "--wait", timeout=120).returncode == 0
    assert vmctl(agent, "get", "fedora-like").returncode == 1
