"""Cloud-init seeds: the files of a NoCloud ``cidata`` volume or of an OpenStack config
drive (``config-2``), and secrets read safely from the node.

NoCloud: ``meta-data`` carries ``instance-id`` (the VM uid, so cloud-init runs once per VM,
not per boot), ``local-hostname`` (the spec's hostname, else the VM name) and the
``accessCredentials`` SSH keys as ``public-keys``; ``user-data`` and ``network-config``
come from the spec or from secret files. Config drive: the same data as
``openstack/latest/meta_data.json`` (``uuid``, ``instance_id`` "<name>.<namespace>",
``hostname``, ``public_keys``), ``openstack/latest/user_data`` and
``openstack/latest/network_data.json``, as KubeVirt writes them. Secret files::

    <secrets-dir>/<namespace>/<secret name>/userdata       (or userData)
    <secrets-dir>/<namespace>/<secret name>/networkdata    (or networkData)

A secret path is resolved like every client path: no '..', no symlink anywhere on the way.
See https://cloudinit.readthedocs.io/en/latest/reference/datasources/nocloud.html and
https://cloudinit.readthedocs.io/en/latest/reference/datasources/configdrive.html.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from agent.disks.configfiles import ssh_public_keys
from agent.errors import InvalidSpec
from agent.models import CloudInitConfigDrive, CloudInitNoCloud, Propagation, VMSpec
from agent.paths import resolve_under_roots

__all__ = [
    "CONFIG_DRIVE_VOLUME_ID",
    "MAX_SECRET_BYTES",
    "VOLUME_ID",
    "NoCloudSeed",
    "config_drive_seed",
    "nocloud_seed",
]

VOLUME_ID = "cidata"
CONFIG_DRIVE_VOLUME_ID = "config-2"
_OPENSTACK = "openstack/latest"
MAX_SECRET_BYTES = 1024 * 1024  # far above cloud-init's practical limits; bounds the read


@dataclass(frozen=True, slots=True)
class NoCloudSeed:
    """The files of a seed (paths on the ISO); ``digest`` names the content (for the ISO's
    file name)."""

    files: dict[str, bytes]

    @property
    def digest(self) -> str:
        hasher = hashlib.sha256()
        for name in sorted(self.files):
            hasher.update(f"{name}\0{len(self.files[name])}\0".encode())
            hasher.update(self.files[name])
        return hasher.hexdigest()


def meta_data(vm: VMSpec, keys: dict[str, str] | None = None) -> bytes:
    """JSON (which is YAML too), so no value can break the document's syntax."""
    data: dict[str, object] = {"instance-id": vm.uid, "local-hostname": vm.hostname or vm.name}
    if keys:
        data["public-keys"] = keys
    return (json.dumps(data, indent=1) + "\n").encode()


def nocloud_seed(
    vm: VMSpec, source: CloudInitNoCloud, *, secrets_dir: str, field: str
) -> NoCloudSeed:
    """The seed's files; secret references are read from ``secrets_dir`` (see module doc)."""
    user_data, network = _user_and_network_data(vm, source, secrets_dir, field)
    keys = ssh_public_keys(vm, secrets_dir, Propagation.NO_CLOUD) if vm.access_credentials else {}
    files = {"meta-data": meta_data(vm, keys), "user-data": user_data}
    if network:
        files["network-config"] = network
    return NoCloudSeed(files)


def config_drive_seed(
    vm: VMSpec, source: CloudInitConfigDrive, *, secrets_dir: str, field: str
) -> NoCloudSeed:
    """The config drive's files (see module doc)."""
    user_data, network = _user_and_network_data(vm, source, secrets_dir, field)
    data: dict[str, object] = {
        "uuid": vm.uid,
        "instance_id": f"{vm.name}.{vm.namespace}",
        "hostname": vm.hostname or vm.name,
    }
    if vm.access_credentials:
        keys = ssh_public_keys(vm, secrets_dir, Propagation.CONFIG_DRIVE)
        if keys:
            data["public_keys"] = keys
    files = {
        f"{_OPENSTACK}/meta_data.json": (json.dumps(data, indent=1) + "\n").encode(),
        f"{_OPENSTACK}/user_data": user_data,
    }
    if network:
        files[f"{_OPENSTACK}/network_data.json"] = network
    return NoCloudSeed(files)


def _user_and_network_data(
    vm: VMSpec, source: CloudInitNoCloud | CloudInitConfigDrive, secrets_dir: str, field: str
) -> tuple[bytes, bytes]:
    user_data = source.user_data.encode()
    if source.user_data_secret:
        user_data = _secret(
            secrets_dir, vm.namespace, source.user_data_secret, ("userdata", "userData"),
            f"{field}.secretRef.name",
        )  # fmt: skip
    network = source.network_data.encode()
    if source.network_data_secret:
        network = _secret(
            secrets_dir, vm.namespace, source.network_data_secret, ("networkdata", "networkData"),
            f"{field}.networkDataSecretRef.name",
        )  # fmt: skip
    return user_data, network


def _secret(
    secrets_dir: str, namespace: str, name: str, keys: tuple[str, ...], field: str
) -> bytes:
    if not secrets_dir:
        raise InvalidSpec(field, "secret references are not enabled on this node (--secrets-dir)")
    problem = ""
    for key in keys:
        relative = f"{namespace}/{name}/{key}"
        if not os.path.lexists(os.path.join(secrets_dir, relative)):
            continue
        try:
            path = resolve_under_roots([secrets_dir], relative, field)
        except InvalidSpec as exc:
            problem = exc.problem
            break
        # O_NOFOLLOW: the final component cannot have become a symlink since the check.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
        if len(data) > MAX_SECRET_BYTES:
            raise InvalidSpec(field, f"secret {name!r} is larger than {MAX_SECRET_BYTES} bytes")
        return data
    raise InvalidSpec(
        field,
        problem or f"secret {name!r} has no {' or '.join(keys)} in namespace {namespace!r}",
    )
