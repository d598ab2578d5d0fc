"""The daemon's command-line flags (``virt-agent --help``); values are checked in
``agent.config``, which also reads them from the environment and a config file."""

from __future__ import annotations

import argparse
from typing import Any

from agent.defaults import UNIX_SOCKET
from agent.logs import FORMATS, LEVELS

__all__ = ["VIRT_TYPES", "parser"]

VIRT_TYPES = ("auto", "kvm", "qemu")


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="virt-agent",
        description="Node virtualization agent: runs libvirt VMs for a control plane over gRPC.",
    )
    add = result.add_argument
    add("--config", help="YAML file of settings (keys are the long flag names)")
    add(
        "--listen",
        action="append",
        help="host:port to serve gRPC on (repeatable); needs TLS or --insecure",
    )
    add(
        "--unix-socket",
        help=f"unix socket for node-local clients (default {UNIX_SOCKET})",
    )
    add("--libvirt-uri", help="libvirt connection URI (default qemu:///system)")
    add("--state-dir", help="folder for per-VM files (default /var/lib/virt-agent)")
    add(
        "--virt-type",
        choices=VIRT_TYPES,
        help="kvm, qemu (software emulation) or auto",
    )
    add(
        "--image-root",
        action="append",
        help="folder client image paths may point into (repeatable)",
    )
    add("--log-format", choices=FORMATS, help="log line format (default json)")
    add("--log-level", choices=LEVELS, help="default info")
    add("--node-name", help="name of this node (default: host name)")
    add(
        "--no-reflection",
        dest="reflection",
        action="store_const",
        const=False,
        help="turn off gRPC server reflection",
    )
    _api_flags(add)
    add("--qemu-run-dir", help="where libvirt keeps QEMU pid files (default /run/libvirt/qemu)")
    add("--reserved-memory", help="memory kept back from VMs in allocatable (default 1Gi)")
    _network_flags(add)
    _disk_flags(add)
    _metrics_flags(add)
    _migration_flags(add)
    return result


def _metrics_flags(add: Any) -> None:
    add(
        "--metrics-listen",
        help="host:port to serve /metrics, /healthz and /readyz on (default: off); HTTPS with "
        "--tls-cert/--tls-key (client certificates checked with --tls-client-ca)",
    )
    add(
        "--metrics-insecure",
        action="store_const",
        const=True,
        help="serve --metrics-listen over plain HTTP",
    )


def _api_flags(add: Any) -> None:
    add(
        "--max-call-seconds",
        help="server-side deadline of every unary call; past it the call is cancelled "
        "(default 3900: the longest graceful stop and then some)",
    )
    add(
        "--watch-history",
        help="how many recent VM changes the agent keeps for watches that resume from a "
        "resource version (default 1000; at most 8 MiB of them); older: OUT_OF_RANGE, re-list",
    )
    add(
        "--max-watch-streams",
        help="watch streams open at once (VM and migration watches); more: RESOURCE_EXHAUSTED "
        "(default 16)",
    )
    add(
        "--max-mutating-calls",
        help="Apply/Start/Stop/Delete/... calls running at once; more: RESOURCE_EXHAUSTED "
        "(default 32)",
    )
    add(
        "--max-calls",
        help="calls in progress or waiting for a thread; more: RESOURCE_EXHAUSTED, health "
        "checks excepted (default 256)",
    )
    add("--tls-cert", help="server certificate (PEM) for --listen")
    add("--tls-key", help="server private key (PEM) for --listen")
    add("--tls-client-ca", help="CA bundle that client certificates must chain to (mTLS)")
    add(
        "--authz-config",
        help="YAML rules mapping client certificate identities to roles and namespaces "
        "(reloaded when it changes; default: every mTLS client is control-plane)",
    )
    add(
        "--insecure",
        action="store_const",
        const=True,
        help="allow plaintext gRPC on --listen addresses",
    )


def _network_flags(add: Any) -> None:
    add(
        "--resync-interval",
        help="seconds between resyncs that put back deleted routes, neighbours, sysctls, "
        "taps and the nft table (default 60; 0: off)",
    )
    add(
        "--no-vm-network",
        dest="vm_network",
        action="store_const",
        const=False,
        help="no VM networking (taps, NAT, DHCP): VMs with interfaces are refused",
    )
    add("--vm-cidr", help="IPv4 network guest addresses come from (default 10.250.0.0/16)")
    add(
        "--node-vm-pool",
        help="subnet of --vm-cidr this node hands guest addresses out from "
        "(default: all of --vm-cidr; give each node its own when VMs migrate)",
    )
    add("--node-port-range", help="node ports for published guest ports (default 24000-24999)")
    add("--uplink", help="the node's outside link (default: the link of the default route)")
    add(
        "--egress-deny",
        action="append",
        metavar="CIDR",
        help="a network guests may not reach (repeatable; link-local, the cloud metadata "
        "service's, is always denied)",
    )
    add(
        "--egress-allow",
        action="append",
        metavar="CIDR",
        help="an exception to the denied networks (repeatable)",
    )
    add(
        "--bridge-network",
        action="append",
        metavar="NAME=BRIDGE",
        help="a host bridge VMs may join as multus network NAME (repeatable; "
        "none: bridge binding is refused)",
    )
    add(
        "--dns",
        action="append",
        help="DNS server for guests (repeatable; default: /etc/resolv.conf's, not loopback)",
    )


def _migration_flags(add: Any) -> None:
    add(
        "--no-migration",
        dest="migration",
        action="store_const",
        const=False,
        help="refuse live migrations in and out of this node",
    )
    add(
        "--migration-address",
        help="this node's address for incoming migration streams (default: the uplink's)",
    )
    add("--max-outbound-migrations", help="migrations leaving this node at once (default 2)")
    add("--max-inbound-migrations", help="migrations arriving on this node at once (default 2)")
    add(
        "--migration-tls",
        action="store_const",
        const=True,
        help="migrate over libvirt's TLS: qemu+tls:// to the target's libvirtd and the "
        "migration stream encrypted (VIR_MIGRATE_TLS); see docs/migration.md",
    )


def _disk_flags(add: Any) -> None:
    add(
        "--qemu-user",
        help="the user libvirt runs QEMU as (qemu.conf; default libvirt-qemu): it must be "
        "able to reach --state-dir, checked at start; empty: no check",
    )
    add(
        "--host-disk-root",
        action="append",
        help="folder hostDisk paths must be under (repeatable; none: hostDisk is refused)",
    )
    add(
        "--claim-root",
        action="append",
        help="folder holding persistent volume claims as <namespace>/<claim>/disk.img, a file "
        "or a block device (repeatable; none: persistentVolumeClaim and dataVolume are refused)",
    )
    add("--image-cache-dir", help="container disk cache (default <state-dir>/containerdisks)")
    add(
        "--pull-timeout",
        help="seconds a container disk pull or a DataVolume download may take in all "
        "(default 1800)",
    )
    add(
        "--import-allow-cidr",
        action="append",
        help="non-public network DataVolume http imports may download from (repeatable; "
        "default: public addresses only; the node's own addresses are always refused)",
    )
    add("--max-image-size", help="largest disk file a container disk may hold (default 64Gi)")
    add(
        "--max-image-ratio",
        help="largest disk file size over its compressed layer size (default 1100; 0: off)",
    )
    add(
        "--secrets-dir",
        help="node files of secrets (<dir>/<namespace>/<name>/<key>), config maps "
        "(<namespace>/_configmaps/<name>/<key>) and service accounts "
        "(<namespace>/_serviceaccounts/<name>/<key>) (default <state-dir>/secrets)",
    )
    add("--registry-config", help="registry credentials, docker config.json format")
    add("--registry-ca", help="CA bundle (PEM) for HTTPS registries (default: the system's)")
    add(
        "--insecure-registry",
        action="append",
        help="registry host:port reached over plain HTTP (repeatable)",
    )
