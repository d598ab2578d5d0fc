"""Helpers for the networking system tests: the node's side (nft, links, conntrack, HTTP)
and the VM documents they apply."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from tests.testbed.nodebox import NodeBox

__all__ = [
    "BRIDGE",
    "BRIDGE_GATEWAY",
    "BRIDGE_NETWORK",
    "CIDR",
    "DNS",
    "GATEWAY",
    "TABLE",
    "UPLINK_MTU",
    "conntrack_lines",
    "idle_vm",
    "net_vm",
    "node_get",
    "nft_elements",
    "nft_rule_count",
    "nft_spoof_drops",
    "nft_table",
    "run",
    "write_idle_disk",
]

CIDR = "10.250.0.0/16"
GATEWAY = "10.250.0.1"
DNS = "192.0.2.53"  # handed to guests only; nothing answers there
UPLINK_MTU = 1400
BRIDGE = "vbr0"
BRIDGE_NETWORK = "lab-lan"  # the operator's name for BRIDGE (--bridge-network)
BRIDGE_GATEWAY = "198.51.100.1"  # TEST-NET-2, only inside the node
TABLE = "virt_agent"

_HTTP_GET = r"""
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(sys.argv[1], timeout=float(sys.argv[2])) as r:
    sys.stdout.write(r.read().decode("utf-8", "replace"))
"""


def run(node: NodeBox, *argv: str, input: str | None = None) -> str:
    """Run a command inside the node; fail with its stderr when it fails."""
    proc = node.exec(list(argv), input=input)
    if proc.returncode != 0:
        raise AssertionError(f"`{' '.join(argv)}` in {node.name}: {proc.stderr.strip()}")
    return str(proc.stdout)


def node_get(node: NodeBox, host: str, port: int = 80, timeout: float = 5.0) -> str | None:
    """GET http://host:port/ from inside the node; None when it fails (refused, timeout)."""
    proc = node.exec(
        [sys.executable, "-c", _HTTP_GET, f"http://{host}:{port}/", str(timeout)],
        timeout=timeout + 15,
    )
    return str(proc.stdout) if proc.returncode == 0 else None


def nft_table(node: NodeBox, family: str = "inet", name: str = TABLE) -> list[dict[str, Any]]:
    proc = node.exec(["nft", "-j", "list", "table", family, name])
    if proc.returncode != 0:
        return []
    return [i for i in json.loads(proc.stdout)["nftables"] if "metainfo" not in i]


def nft_rule_count(node: NodeBox) -> int:
    return sum(1 for item in nft_table(node) if "rule" in item)


def nft_elements(node: NodeBox) -> dict[str, list[Any]]:
    """Set/map name → its elements, as nft prints them in JSON."""
    found: dict[str, list[Any]] = {}
    for item in nft_table(node):
        for kind in ("set", "map"):
            if kind in item:
                found[item[kind]["name"]] = item[kind].get("elem", [])
    return found


def nft_spoof_drops(node: NodeBox) -> int:
    """Packets counted by the agent's anti-spoofing drop (the last rule of ``from_guest``)."""
    for item in nft_table(node):
        rule = item.get("rule")
        if rule and rule["chain"] == "from_guest" and len(rule["expr"]) == 2:
            counter, verdict = rule["expr"]
            if "counter" in counter and "drop" in verdict:
                return int(counter["counter"]["packets"])
    raise AssertionError("no anti-spoofing drop rule in the agent's table")


def conntrack_lines(node: NodeBox, address: str) -> list[str]:
    text = run(node, "conntrack", "-L", "-f", "ipv4")
    return [line for line in text.splitlines() if re.search(rf"={re.escape(address)}\b", line)]


def _interface(ports: list[dict[str, Any]]) -> dict[str, Any]:
    iface: dict[str, Any] = {"name": "default", "masquerade": {}}
    if ports:
        iface["ports"] = ports
    return iface


def net_vm(
    name: str,
    namespace: str,
    *,
    seed: str,
    cores: int = 1,
    ports: list[dict[str, Any]] | None = None,
    bridge_mac: str = "",
) -> dict[str, Any]:
    """The test guest with a masquerade NIC (and optionally a bridge NIC on ``BRIDGE``).

    No ``hostname=`` on the kernel command line: the guest takes its name from DHCP.
    ``seed`` is the ISO (under an image root) whose user-data installs the exec CGI.
    """
    interfaces = [_interface(ports or [])]
    networks: list[dict[str, Any]] = [{"name": "default", "pod": {}}]
    if bridge_mac:
        interfaces.append({"name": "lan", "bridge": {}, "macAddress": bridge_mac})
        networks.append({"name": "lan", "multus": {"networkName": BRIDGE_NETWORK}})
    instance = {
        "domain": {
            "cpu": {"cores": cores},
            "memory": {"guest": "160Mi"},
            "firmware": {
                "kernelBoot": {
                    "kernelArgs": f"console=ttyS0 quiet no_timer_check token={name}",
                    "container": {"kernelPath": "vmlinuz", "initrdPath": "initrd.img"},
                }
            },
            "devices": {
                "disks": [{"name": "seed", "disk": {"bus": "virtio"}}],
                "interfaces": interfaces,
            },
        },
        "networks": networks,
        "volumes": [{"name": "seed", "imageFile": {"path": seed}}],
        "terminationGracePeriodSeconds": 0,
    }
    return {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"runStrategy": "Always", "template": {"spec": instance}},
    }


def idle_vm(name: str, namespace: str, *, disk: str) -> dict[str, Any]:
    """A VM that boots a one-sector disk into ``cli; hlt``: a running guest at no CPU cost,
    with a masquerade NIC publishing port 80."""
    instance = {
        "domain": {
            "cpu": {"cores": 1},
            "memory": {"guest": "32Mi"},
            "devices": {
                "disks": [{"name": "boot", "disk": {"bus": "virtio"}}],
                "interfaces": [_interface([{"name": "http", "port": 80}])],
            },
        },
        "networks": [{"name": "default", "pod": {}}],
        "volumes": [{"name": "boot", "imageFile": {"path": disk}}],
        "terminationGracePeriodSeconds": 0,
    }
    return {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"runStrategy": "Always", "template": {"spec": instance}},
    }


def write_idle_disk(path: Path) -> None:
    """A 1 MiB raw disk whose boot sector is ``cli; hlt; jmp $-3``."""
    sector = bytearray(512)
    sector[:4] = b"\xfa\xf4\xeb\xfd"
    sector[510:] = b"\x55\xaa"
    path.write_bytes(bytes(sector) + bytes(1024 * 1024 - 512))
