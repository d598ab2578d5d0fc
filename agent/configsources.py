"""Config volumes and access credentials of a VM spec: cloud-init config drives, secrets,
config maps, service accounts and SSH keys, as plain frozen dataclasses.

They are read from node files (see ``agent.disks.configfiles``); ``agent.models`` makes them
part of a VM's volume sources.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "CloudInitConfigDrive",
    "ConfigKind",
    "ConfigVolume",
    "Propagation",
    "SSHKeyCredential",
]


@dataclass(frozen=True, slots=True)
class CloudInitConfigDrive:
    """An OpenStack config drive (a ``config-2`` ISO) made from user data and network data."""

    user_data: str = ""
    network_data: str = ""
    user_data_secret: str = ""
    network_data_secret: str = ""


class ConfigKind(enum.StrEnum):
    """The kind of node object a config volume shows to the guest (KubeVirt's field name)."""

    SECRET = "secret"
    CONFIG_MAP = "configMap"
    SERVICE_ACCOUNT = "serviceAccount"


@dataclass(frozen=True, slots=True)
class ConfigVolume:
    """A secret, config map or service account of the VM's namespace as a read-only ISO
    with one file per key."""

    kind: ConfigKind
    name: str
    volume_label: str = ""  # the ISO's volume label; KubeVirt's default is none
    optional: bool = False  # a missing object gives an empty ISO instead of an error


class Propagation(enum.StrEnum):
    """How SSH keys reach the guest: the cloud-init volume's meta data."""

    NO_CLOUD = "noCloud"
    CONFIG_DRIVE = "configDrive"


@dataclass(frozen=True, slots=True)
class SSHKeyCredential:
    """Every key of a secret as an authorized SSH key (KubeVirt accessCredentials)."""

    secret_name: str
    propagation: Propagation
