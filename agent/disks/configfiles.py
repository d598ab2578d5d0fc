"""Secrets, config maps and service accounts as node files, read safely for config volumes.

A node agent has no API server to read objects from; whoever runs the node (a control
plane, an operator, a person) writes each object as a folder of key files under the
agent's ``--secrets-dir``, one folder per namespace::

    <secrets-dir>/<namespace>/<secret>/<key>                     secrets
    <secrets-dir>/<namespace>/_configmaps/<config map>/<key>     config maps
    <secrets-dir>/<namespace>/_serviceaccounts/<account>/<key>   service accounts
                                                (token, ca.crt, namespace: what a pod sees)

Object names are Kubernetes names, which cannot start with '_', so the three never collide;
cloud-init ``secretRef`` files (``<secret>/userdata``) are keys of a secret like any other.
Every component is opened with O_NOFOLLOW relative to its parent, so a symlink anywhere is
refused, never followed; a key is a regular file with a Kubernetes key name.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from agent.errors import InvalidSpec
from agent.models import (
    CloudInitConfigDrive,
    CloudInitNoCloud,
    ConfigKind,
    ConfigVolume,
    Propagation,
    VMSpec,
)

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_OBJECT_BYTES",
    "object_folder",
    "read_object",
    "require_object",
    "ssh_public_keys",
]

MAX_KEY_BYTES = 1024 * 1024  # a Kubernetes object holds at most 1 MiB in all
MAX_OBJECT_BYTES = 1024 * 1024
MAX_KEYS = 256

_FOLDERS = {
    ConfigKind.SECRET: "",
    ConfigKind.CONFIG_MAP: "_configmaps",
    ConfigKind.SERVICE_ACCOUNT: "_serviceaccounts",
}
_WHAT = {
    ConfigKind.SECRET: "secret",
    ConfigKind.CONFIG_MAP: "config map",
    ConfigKind.SERVICE_ACCOUNT: "service account",
}
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Kubernetes' key names; at most 64 characters, the longest Joliet name an ISO can carry.
_KEY = re.compile(r"[-._a-zA-Z0-9]{1,64}")


def _check_name(name: str, what: str, field: str) -> None:
    if not name or len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
        raise InvalidSpec(field, f"{name!r} is not a valid {what} name")


def object_folder(secrets_dir: str, namespace: str, kind: ConfigKind, name: str) -> str:
    """Where ``namespace/name`` of ``kind`` lives (nothing checked or touched)."""
    parts = [os.path.abspath(secrets_dir), namespace, _FOLDERS[kind], name]
    return os.path.join(*[p for p in parts if p])


def read_object(
    secrets_dir: str, namespace: str, kind: ConfigKind, name: str, field: str
) -> dict[str, bytes] | None:
    """The object's keys and their bytes; None when its folder is not there.

    Raises InvalidSpec naming ``field`` for bad names, symlinks, a key that is not a regular
    file or not a key name, and objects too large.
    """
    what = _WHAT[kind]
    if not secrets_dir:
        raise InvalidSpec(field, f"{what} objects are not enabled on this node (--secrets-dir)")
    _check_name(namespace, "namespace", field)
    _check_name(name, what, field)
    label = f"{what} {namespace}/{name}"
    parts = [p for p in (namespace, _FOLDERS[kind], name) if p]
    try:
        with _folder(os.path.abspath(secrets_dir), parts, label, field) as fd:
            return _keys(fd, label, field)
    except FileNotFoundError:
        return None


@contextmanager
def _folder(root: str, parts: list[str], label: str, field: str) -> Iterator[int]:
    """An fd of ``root/parts...``, each component opened with O_NOFOLLOW under its parent."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(parts):
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                where = os.path.join(root, *parts[: index + 1])
                raise InvalidSpec(
                    field, f"{label}: {where} is a symlink or not a folder, which is not allowed"
                ) from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _keys(fd: int, label: str, field: str) -> dict[str, bytes]:
    names = sorted(n for n in os.listdir(fd) if not n.startswith(".."))  # kubelet's own
    if len(names) > MAX_KEYS:
        raise InvalidSpec(field, f"{label} has {len(names)} keys; at most {MAX_KEYS} allowed")
    keys: dict[str, bytes] = {}
    total = 0
    for name in names:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode) or not _KEY.fullmatch(name):
            raise InvalidSpec(
                field,
                f"{label}: {name!r} is not a key (a regular file named with at most 64 "
                "letters, digits or '-._'; no symlinks or folders)",
            )
        key_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        with os.fdopen(key_fd, "rb") as handle:
            data = handle.read(MAX_KEY_BYTES + 1)
        total += len(data)
        if total > MAX_OBJECT_BYTES:
            raise InvalidSpec(field, f"{label} is larger than {MAX_OBJECT_BYTES} bytes")
        keys[name] = data
    return keys


def require_object(
    secrets_dir: str, namespace: str, kind: ConfigKind, name: str, field: str
) -> dict[str, bytes]:
    """Like read_object, but a missing object is an error naming it and where it was looked
    for: ``secret team-a/db-creds not found under /var/lib/virt-agent/secrets``."""
    keys = read_object(secrets_dir, namespace, kind, name, field)
    if keys is None:
        raise InvalidSpec(
            field,
            f"{_WHAT[kind]} {namespace}/{name} not found under {os.path.abspath(secrets_dir)} "
            f"(expected {object_folder(secrets_dir, namespace, kind, name)}/<key files>)",
        )
    return keys


def ssh_public_keys(vm: VMSpec, secrets_dir: str, propagation: Propagation) -> dict[str, str]:
    """The keys of every ``accessCredentials`` secret propagated by ``propagation``, numbered
    "0", "1", ... in order (KubeVirt's ``public-keys`` / ``public_keys`` meta data map): each
    non-empty key file of a secret is one entry."""
    found: dict[str, str] = {}
    for index, credential in enumerate(vm.access_credentials):
        if credential.propagation != propagation:
            continue
        field = f"spec.template.spec.accessCredentials[{index}].sshPublicKey.source.secret"
        keys = require_object(
            secrets_dir, vm.namespace, ConfigKind.SECRET, credential.secret_name, field
        )
        for name, data in keys.items():
            try:
                text = data.decode().strip()
            except UnicodeDecodeError:
                raise InvalidSpec(
                    field, f"secret {credential.secret_name} key {name!r} is not UTF-8 text"
                ) from None
            if text:
                found[str(len(found))] = text
    return found


def reads_node_objects(vm: VMSpec) -> bool:
    """Whether the VM's disks are made from node files a control plane may change between
    starts: config volumes, SSH keys, cloud-init secret references."""
    if vm.access_credentials:
        return True
    for volume in vm.volumes:
        source = volume.source
        if isinstance(source, ConfigVolume):
            return True
        if isinstance(source, (CloudInitNoCloud, CloudInitConfigDrive)) and (
            source.user_data_secret or source.network_data_secret
        ):
            return True
    return False
