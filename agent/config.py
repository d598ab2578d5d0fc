"""Settings of the virt-agent daemon from flags, environment (VIRT_AGENT_*) and a config file.

Precedence: command-line flag > environment variable > config file > default. The config
file is YAML with the flags' long names as keys (``libvirt-uri: qemu:///system``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import yaml

from agent.disks.auth import CredentialsError, load_credentials
from agent.network.ipam import parse_cidr, parse_port_range

__all__ = ["ConfigError", "Settings", "load_settings"]


class ConfigError(Exception):
    """A setting is missing or wrong; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon needs to start."""

    listen: list[str] = field(default_factory=list)
    unix_socket: str = "/run/virt-agent/agent.sock"
    libvirt_uri: str = "qemu:///system"
    state_dir: str = "/var/lib/virt-agent"
    virt_type: str = "auto"
    image_root: list[str] = field(default_factory=list)
    log_format: str = "json"
    log_level: str = "info"
    node_name: str = field(default_factory=socket.gethostname)
    reflection: bool = True
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    insecure: bool = False
    qemu_run_dir: str = "/run/libvirt/qemu"
    reserved_memory: str = "1Gi"
    shutdown_grace_seconds: float = 30.0
    vm_network: bool = True
    vm_cidr: str = "10.250.0.0/16"
    node_port_range: str = "30000-32767"
    uplink: str = ""  # empty: the link of the default route
    dns: list[str] = field(default_factory=list)  # empty: /etc/resolv.conf's, not loopback
    # Disks and images (see agent.domain.files).
    host_disk_root: list[str] = field(default_factory=list)  # empty: no hostDisk volumes
    image_cache_dir: str = ""  # empty: <state-dir>/containerdisks
    secrets_dir: str = ""  # empty: <state-dir>/secrets
    registry_config: str = ""  # docker config.json with registry credentials
    registry_ca: str = ""  # CA bundle for HTTPS registries (default: the system's)
    insecure_registry: list[str] = field(default_factory=list)  # host:port over plain HTTP


_LISTS = {"listen", "image_root", "dns", "host_disk_root", "insecure_registry"}
_BOOLS = {"reflection", "insecure", "vm_network"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="virt-agent",
        description="Node virtualization agent: runs libvirt VMs for a control plane over gRPC.",
    )
    add = parser.add_argument
    add("--config", help="YAML file of settings (keys are the long flag names)")
    add(
        "--listen",
        action="append",
        help="host:port to serve gRPC on (repeatable); needs TLS or --insecure",
    )
    add(
        "--unix-socket",
        help="unix socket for node-local clients (default /run/virt-agent/agent.sock)",
    )
    add("--libvirt-uri", help="libvirt connection URI (default qemu:///system)")
    add("--state-dir", help="folder for per-VM files (default /var/lib/virt-agent)")
    add(
        "--virt-type",
        choices=["auto", "kvm", "qemu"],
        help="kvm, qemu (software emulation) or auto",
    )
    add(
        "--image-root",
        action="append",
        help="folder client image paths may point into (repeatable)",
    )
    add("--log-format", choices=["json", "text"], help="log line format (default json)")
    add("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    add("--node-name", help="name of this node (default: host name)")
    add(
        "--no-reflection",
        dest="reflection",
        action="store_const",
        const=False,
        help="turn off gRPC server reflection",
    )
    add("--tls-cert", help="server certificate (PEM) for --listen")
    add("--tls-key", help="server private key (PEM) for --listen")
    add("--tls-client-ca", help="CA bundle that client certificates must chain to (mTLS)")
    add(
        "--insecure",
        action="store_const",
        const=True,
        help="allow plaintext gRPC on --listen addresses",
    )
    add("--qemu-run-dir", help="where libvirt keeps QEMU pid files (default /run/libvirt/qemu)")
    add("--reserved-memory", help="memory kept back from VMs in allocatable (default 1Gi)")
    add(
        "--no-vm-network",
        dest="vm_network",
        action="store_const",
        const=False,
        help="no VM networking (taps, NAT, DHCP): VMs with interfaces are refused",
    )
    add("--vm-cidr", help="IPv4 network guest addresses come from (default 10.250.0.0/16)")
    add("--node-port-range", help="node ports for published guest ports (default 30000-32767)")
    add("--uplink", help="the node's outside link (default: the link of the default route)")
    add(
        "--dns",
        action="append",
        help="DNS server for guests (repeatable; default: /etc/resolv.conf's, not loopback)",
    )
    _disk_flags(add)
    return parser


def _disk_flags(add: Any) -> None:
    add(
        "--host-disk-root",
        action="append",
        help="folder hostDisk paths must be under (repeatable; none: hostDisk is refused)",
    )
    add("--image-cache-dir", help="container disk cache (default <state-dir>/containerdisks)")
    add(
        "--secrets-dir",
        help="cloud-init secretRef files: <dir>/<namespace>/<name>/userdata "
        "(default <state-dir>/secrets)",
    )
    add("--registry-config", help="registry credentials, docker config.json format")
    add("--registry-ca", help="CA bundle (PEM) for HTTPS registries (default: the system's)")
    add(
        "--insecure-registry",
        action="append",
        help="registry host:port reached over plain HTTP (repeatable)",
    )


def _coerce(name: str, value: Any) -> Any:
    if name in _LISTS:
        if isinstance(value, str):
            return [item for item in value.split(",") if item]
        if not isinstance(value, list):
            raise ConfigError(f"{name.replace('_', '-')}: must be a list")
        return [str(item) for item in value]
    if name in _BOOLS and isinstance(value, str):
        return value.lower() in ("1", "true", "yes", "on")
    return value


def load_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Parse flags, environment and config file into validated Settings."""
    environ = dict(os.environ if environ is None else environ)
    args = vars(_parser().parse_args(argv))
    values: dict[str, Any] = {}
    config_path = args.pop("config") or environ.get("VIRT_AGENT_CONFIG")
    if config_path:
        try:
            with open(config_path) as handle:
                loaded = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config file {config_path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_path}: must be a mapping of settings")
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            if name not in Settings.__dataclass_fields__:
                raise ConfigError(f"config file {config_path}: unknown setting {key!r}")
            values[name] = _coerce(name, value)
    for name in Settings.__dataclass_fields__:
        env_value = environ.get(f"VIRT_AGENT_{name.upper()}")
        if env_value is not None:
            values[name] = _coerce(name, env_value)
    for name, value in args.items():
        if value is not None:
            values[name] = value
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    if settings.virt_type not in ("auto", "kvm", "qemu"):
        raise ConfigError(f"virt-type: {settings.virt_type!r} is not auto, kvm or qemu")
    if settings.log_format not in ("json", "text"):
        raise ConfigError(f"log-format: {settings.log_format!r} is not json or text")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("tls-cert and tls-key: give both or neither")
    if settings.listen and not settings.tls_cert and not settings.insecure:
        raise ConfigError(
            "listen: serving gRPC on the network needs --tls-cert/--tls-key, "
            "or --insecure to accept plaintext"
        )
    if not settings.listen and not settings.unix_socket:
        raise ConfigError("listen/unix-socket: give at least one address to serve on")
    _validate_network(settings)
    if settings.registry_config:
        try:
            with open(settings.registry_config) as handle:
                load_credentials(handle.read())
        except (OSError, CredentialsError) as exc:
            raise ConfigError(f"registry-config: {settings.registry_config}: {exc}") from None
    for registry in settings.insecure_registry:
        if not registry or "/" in registry or registry != registry.strip():
            raise ConfigError(f"insecure-registry: {registry!r} is not host[:port]")
    for address in settings.listen:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"listen: {address!r} is not host:port")


def _validate_network(settings: Settings) -> None:
    try:
        parse_cidr(settings.vm_cidr)
    except ValueError as exc:
        raise ConfigError(f"vm-cidr: {exc}") from None
    try:
        parse_port_range(settings.node_port_range)
    except ValueError as exc:
        raise ConfigError(f"node-port-range: {exc}") from None
    for server in settings.dns:
        try:
            ipaddress.IPv4Address(server)
        except ValueError:
            raise ConfigError(f"dns: {server!r} is not an IPv4 address") from None
    if len(settings.uplink) > 15:
        raise ConfigError(f"uplink: {settings.uplink!r} is longer than an interface name")
