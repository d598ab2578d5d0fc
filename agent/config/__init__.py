"""Settings of the virt-agent daemon from flags, environment (VIRT_AGENT_*) and a config file.

Precedence: command-line flag > environment variable > config file > default. The config
file is YAML with the flags' long names as keys (``libvirt-uri: qemu:///system``); a key
without a value keeps the default.

Every value is converted to the type of its ``Settings`` field and checked where it is read,
so a wrong one stops the daemon at startup naming the setting and its source
(``vm-network: 'ture' is not one of true/false/1/0/yes/no/on/off (from VIRT_AGENT_VM_NETWORK)``)
instead of failing later inside grpc or silently meaning something else. ``check_files``
then opens the files the settings name; it is separate because a configuration can be valid
for a node other than the one reading it (the DaemonSet's ConfigMap, for one).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import yaml

from agent.config.errors import ConfigError
from agent.config.flags import VIRT_TYPES, parser
from agent.config.networks import (
    bridge_pairs,
    check_bridge_networks,
    check_interface_name,
    check_ip_network,
    check_ipv4_network,
)
from agent.config.statedir import check_state_dir
from agent.config.values import (
    each,
    host_port,
    ipv4,
    not_negative,
    one_of,
    optional,
    positive,
    registry,
    to_bool,
    to_float,
    to_int,
    to_list,
    to_str,
)
from agent.defaults import PULL_TIMEOUT_SECONDS, UNIX_SOCKET
from agent.disks.auth import CredentialsError, load_credentials
from agent.logs import FORMATS, LEVELS
from agent.network.ipam import parse_cidr, parse_pool, parse_port_range
from agent.quantity import parse_quantity

__all__ = [
    "ConfigError",
    "Settings",
    "bridge_networks",
    "check_files",
    "check_state_dir",
    "load_settings",
]


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon needs to start."""

    listen: list[str] = field(default_factory=list)
    unix_socket: str = UNIX_SOCKET
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
    authz_config: str = ""  # client identities → roles (agent.api.authz); empty: all control-plane
    insecure: bool = False
    qemu_run_dir: str = "/run/libvirt/qemu"
    qemu_user: str = "libvirt-qemu"  # qemu.conf's user: it must reach <state-dir>; "": no check
    reserved_memory: int = 1024**3  # bytes
    shutdown_grace_seconds: float = 30.0
    # No unary call runs longer (the longest graceful stop is 3600 s).
    max_call_seconds: float = 3900.0
    watch_history: int = 1000  # changes kept for watches that resume (agent.domain.watchhistory)
    # Backpressure: past these, calls are refused with RESOURCE_EXHAUSTED (agent/api/slots.py,
    # admission.py); health checks always get in.
    max_watch_streams: int = 16
    max_mutating_calls: int = 32
    max_calls: int = 256
    resync_interval: float = 60.0  # seconds between periodic resyncs; 0: none
    vm_network: bool = True
    vm_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.250.0.0/16")
    node_vm_pool: str = ""  # empty: the whole --vm-cidr (one node, or no migration)
    # Not Kubernetes' NodePort range (30000-32767, DNAT-ed by kube-proxy at the same hook
    # priority) and below Linux's ephemeral ports (32768-60999): no collision with either.
    node_port_range: tuple[int, int] = (24000, 24999)
    uplink: str = ""  # empty: the link of the default route
    bridge_network: list[str] = field(default_factory=list)  # NAME=BRIDGE; none: no bridges
    egress_deny: list[str] = field(default_factory=list)  # CIDRs guests may not reach
    egress_allow: list[str] = field(default_factory=list)  # exceptions (link-local is denied)
    dns: list[str] = field(default_factory=list)  # empty: /etc/resolv.conf's, not loopback
    # Disks and images (see agent.domain.files).
    host_disk_root: list[str] = field(default_factory=list)  # empty: no hostDisk volumes
    # <root>/<namespace>/<claim>/disk.img (agent.disks.claims); empty: no claim volumes.
    claim_root: list[str] = field(default_factory=list)
    image_cache_dir: str = ""  # empty: <state-dir>/containerdisks
    pull_timeout: float = PULL_TIMEOUT_SECONDS  # a whole container disk pull or HTTP download
    # Non-public networks DataVolume HTTP imports may download from (agent.adapters.download).
    import_allow_cidr: list[str] = field(default_factory=list)
    max_image_size: int = 64 * 1024**3  # bytes: a container disk's disk file, expanded
    max_image_ratio: int = 1100  # expanded over compressed; 0: off (see LayerLimits)
    secrets_dir: str = ""  # empty: <state-dir>/secrets
    registry_config: str = ""  # docker config.json with registry credentials
    registry_ca: str = ""  # CA bundle for HTTPS registries (default: the system's)
    insecure_registry: list[str] = field(default_factory=list)  # host:port over plain HTTP
    # Metrics (see agent.metrics): off unless an address is given.
    metrics_listen: str = ""
    metrics_insecure: bool = False
    # Live migration (see agent.migration).
    migration: bool = True
    migration_address: str = ""  # empty: the uplink's address
    max_outbound_migrations: int = 2
    max_inbound_migrations: int = 2
    # libvirt's TLS: the target's libvirtd over qemu+tls, the stream with VIR_MIGRATE_TLS.
    migration_tls: bool = False


# Settings naming files the daemon reads at startup (see check_files).
_FILES = (
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "authz_config",
    "registry_ca",
    "registry_config",
)


# -- converting one value to its setting's type ---------------------------------------------

_CONVERTERS: dict[object, Callable[[object], Any]] = {
    str: to_str,
    int: to_int,
    float: to_float,
    bool: to_bool,
    list[str]: to_list,
    ipaddress.IPv4Network: lambda value: parse_cidr(to_str(value)),
    tuple[int, int]: lambda value: parse_port_range(to_str(value)),
}
# By field type; a field of a type with no converter fails here, at import.
_CONVERT = {name: _CONVERTERS[hint] for name, hint in get_type_hints(Settings).items()}
# Settings whose type does not say how they are written.
_CONVERT["reserved_memory"] = lambda value: parse_quantity(to_str(value))
_CONVERT["max_image_size"] = lambda value: parse_quantity(to_str(value))


# -- checking one setting's value ---------------------------------------------------------


def bridge_networks(settings: Settings) -> tuple[tuple[str, str], ...]:
    """The operator's bridge networks as (name, host bridge) pairs, in the order given."""
    return bridge_pairs(settings.bridge_network)


# Each raises ValueError saying what is wrong with the value.
_CHECKS: dict[str, Callable[[Any], object]] = {
    "virt_type": one_of(VIRT_TYPES),
    "log_format": one_of(FORMATS),
    "log_level": one_of(LEVELS),
    "max_image_ratio": not_negative,
    "pull_timeout": positive,
    "shutdown_grace_seconds": not_negative,
    "max_call_seconds": positive,
    "watch_history": positive,
    "max_watch_streams": positive,
    "max_mutating_calls": positive,
    "max_calls": positive,
    "resync_interval": not_negative,
    "node_vm_pool": optional(lambda value: ipaddress.IPv4Network(value, strict=True)),
    "migration_address": optional(ipv4),
    "max_outbound_migrations": positive,
    "max_inbound_migrations": positive,
    "dns": each(ipv4),
    "uplink": check_interface_name,
    "bridge_network": check_bridge_networks,
    "egress_deny": each(check_ipv4_network),
    "egress_allow": each(check_ipv4_network),
    "import_allow_cidr": each(check_ip_network),
    "listen": each(host_port),
    "metrics_listen": lambda value: host_port(value) if value else None,
    "insecure_registry": each(registry),
}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _setting(name: str, value: object, source: str) -> Any:
    """``value`` as the type of setting ``name``, checked; ConfigError names both."""
    try:
        converted = _CONVERT[name](value)
        if name in _CHECKS:
            _CHECKS[name](converted)
    except ValueError as exc:
        raise ConfigError(f"{_flag(name)}: {exc} (from {source})") from None
    return converted


# -- sources ------------------------------------------------------------------------------


def load_settings(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Parse flags, environment and config file into checked Settings (files: check_files)."""
    environ = dict(os.environ if environ is None else environ)
    args = vars(parser().parse_args(argv))
    config_path = args.pop("config") or environ.get("VIRT_AGENT_CONFIG")
    values = _from_file(config_path) if config_path else {}
    values.update(_from_environment(environ))
    values.update(_from_flags(args))
    settings = Settings(**values)
    _validate(settings)
    return settings


def _from_file(path: str) -> dict[str, Any]:
    try:
        with open(path) as handle:
            loaded = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: must be a mapping of settings")
    values: dict[str, Any] = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if name not in _CONVERT:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        if value is not None:
            values[name] = _setting(name, value, f"config file {path}")
    return values


def _from_environment(environ: dict[str, str]) -> dict[str, Any]:
    variables = {name: f"VIRT_AGENT_{name.upper()}" for name in _CONVERT}
    return {
        name: _setting(name, environ[variable], variable)
        for name, variable in variables.items()
        if variable in environ
    }


def _from_flags(args: dict[str, Any]) -> dict[str, Any]:
    # argparse leaves flags that were not given as None.
    return {
        name: _setting(name, value, f"--{_flag(name)}")
        for name, value in args.items()
        if value is not None
    }


def _validate(settings: Settings) -> None:
    """Rules joining several settings (each value alone was checked where it was read)."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("tls-cert and tls-key: give both or neither")
    if settings.listen and not settings.tls_cert and not settings.insecure:
        raise ConfigError(
            "listen: serving gRPC on the network needs --tls-cert/--tls-key, "
            "or --insecure to accept plaintext"
        )
    if settings.metrics_listen and not settings.tls_cert and not settings.metrics_insecure:
        raise ConfigError(
            "metrics-listen: serving metrics needs --tls-cert/--tls-key, "
            "or --metrics-insecure for plain HTTP"
        )
    if settings.authz_config and not settings.tls_client_ca:
        raise ConfigError(
            "authz-config: roles are given to client certificates; it needs --tls-client-ca"
        )
    if settings.node_vm_pool:
        try:
            parse_pool(settings.node_vm_pool, settings.vm_cidr)
        except ValueError as exc:
            raise ConfigError(f"node-vm-pool: {exc}") from None
    if not settings.listen and not settings.unix_socket:
        raise ConfigError("listen/unix-socket: give at least one address to serve on")


def check_files(settings: Settings) -> None:
    """Raise ConfigError unless every file the settings name can be read on this node, and
    ``registry-config`` holds credentials."""
    for name in _FILES:
        path = getattr(settings, name)
        if path:
            _readable(name, path)
    if settings.registry_config:
        try:
            with open(settings.registry_config) as handle:
                load_credentials(handle.read())
        except (OSError, UnicodeDecodeError, CredentialsError) as exc:
            raise ConfigError(f"registry-config: {settings.registry_config}: {exc}") from None


def _readable(name: str, path: str) -> None:
    # Opening is what the daemon does later; os.access() would pass a folder, for one.
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{_flag(name)}: cannot read {path}: {exc.strerror}") from None
