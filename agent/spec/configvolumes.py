"""Parsing and rendering of config volumes (cloud-init NoCloud and config drive, secret,
configMap, serviceAccount) and of ``accessCredentials`` (SSH keys through cloud-init)."""

from __future__ import annotations

import base64
import re
from typing import Any

from agent.errors import InvalidSpec
from agent.models import (
    CloudInitConfigDrive,
    CloudInitNoCloud,
    ConfigKind,
    ConfigVolume,
    Propagation,
    SSHKeyCredential,
    VMSpec,
)
from agent.spec.limits import MAX_USER_DATA_BYTES
from agent.spec.reader import Node, check_text, one_of, validate_name

__all__ = [
    "check_access_credentials",
    "parse_access_credential",
    "parse_cloud_init",
    "parse_config_drive",
    "parse_config_map",
    "parse_secret",
    "parse_service_account",
    "render_access_credential",
    "render_config_source",
]

MAX_ACCESS_CREDENTIALS = 16
# Kubernetes object names (secrets, config maps, service accounts): DNS-1123 subdomains.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# An ISO 9660 volume identifier as KubeVirt's examples use them (cidata, config-2, OEMDRV);
# 16 characters at most, the longest the ISO writer takes.
_VOLUME_LABEL = re.compile(r"[A-Za-z0-9_.-]{1,16}")


def object_name(node: Node, key: str, what: str) -> str:
    """A Kubernetes object name at ``key``: required, a DNS-1123 subdomain."""
    name = node.get(key, str, "")
    if not name:
        raise InvalidSpec(node.at(key), f"is required (the {what}'s name)")
    if len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
        raise InvalidSpec(
            node.at(key),
            f"{name!r} is not a valid {what} name (lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, at most 253 characters)",
        )
    return name


def _decoded(node: Node, plain: str, encoded: str) -> str:
    text = node.get(plain, str, "", max_length=MAX_USER_DATA_BYTES)
    data = node.get(encoded, str, "", max_length=MAX_USER_DATA_BYTES * 4 // 3 + 4)
    if text and data:
        raise InvalidSpec(node.path, f"set only one of {plain}, {encoded}")
    if data:
        try:
            text = base64.b64decode(data, validate=True).decode()
        except ValueError:  # bad base64, text that is not ASCII, bytes that are not UTF-8
            raise InvalidSpec(node.at(encoded), "is not base64 of UTF-8 text") from None
        check_text(node.at(encoded), text, MAX_USER_DATA_BYTES)
    if len(text.encode()) > MAX_USER_DATA_BYTES:
        raise InvalidSpec(
            node.at(encoded if data else plain), f"is larger than {MAX_USER_DATA_BYTES} bytes"
        )
    return text


def _secret_name(node: Node, key: str) -> str:
    ref = node.child(key)
    if ref is None:
        return ""
    name = validate_name(ref.at("name"), ref.get("name", str, ""))
    ref.done()
    return name


def _cloud_init_fields(node: Node) -> dict[str, str]:
    fields = {
        "user_data": _decoded(node, "userData", "userDataBase64"),
        "network_data": _decoded(node, "networkData", "networkDataBase64"),
        "user_data_secret": _secret_name(node, "secretRef"),
        "network_data_secret": _secret_name(node, "networkDataSecretRef"),
    }
    # Network data alone is enough, as in KubeVirt: the seed then has an empty user data.
    if not any(fields.values()):
        raise InvalidSpec(node.path, "needs userData, userDataBase64, secretRef or network data")
    return fields


def parse_cloud_init(node: Node) -> CloudInitNoCloud:
    return CloudInitNoCloud(**_cloud_init_fields(node))


def parse_config_drive(node: Node) -> CloudInitConfigDrive:
    return CloudInitConfigDrive(**_cloud_init_fields(node))


def _config(node: Node, kind: ConfigKind, key: str, what: str) -> ConfigVolume:
    name = object_name(node, key, what)
    optional = node.get("optional", bool, False)
    label = node.get("volumeLabel", str, "")
    if label and not _VOLUME_LABEL.fullmatch(label):
        raise InvalidSpec(
            node.at("volumeLabel"),
            f"{label!r} must be 1-16 letters, digits or '_.-' (an ISO volume label)",
        )
    return ConfigVolume(kind, name, volume_label=label, optional=optional)


def parse_secret(node: Node) -> ConfigVolume:
    return _config(node, ConfigKind.SECRET, "secretName", "secret")


def parse_config_map(node: Node) -> ConfigVolume:
    return _config(node, ConfigKind.CONFIG_MAP, "name", "config map")


def parse_service_account(node: Node) -> ConfigVolume:
    name = object_name(node, "serviceAccountName", "service account")
    return ConfigVolume(ConfigKind.SERVICE_ACCOUNT, name)


def _no_guest_agent(node: Node) -> Propagation:
    raise InvalidSpec(
        node.path,
        "is not supported by virt-agent (it has no guest agent channel): "
        "use noCloud or configDrive",
    )


def parse_access_credential(node: Node) -> SSHKeyCredential:
    """One ``accessCredentials`` item: an ``sshPublicKey`` from a secret."""
    ssh = node.child("sshPublicKey")
    if ssh is None:
        raise InvalidSpec(node.path, "needs sshPublicKey (userPassword is not supported)")
    source = ssh.child("source") or Node(ssh.at("source"), {})
    secret = source.child("secret")
    if secret is None:
        raise InvalidSpec(source.at("secret"), "is required")
    name = object_name(secret, "secretName", "secret")
    secret.done()
    source.done()
    method = ssh.child("propagationMethod") or Node(ssh.at("propagationMethod"), {})
    propagation = one_of(
        method,
        {
            "noCloud": lambda n: Propagation.NO_CLOUD,
            "configDrive": lambda n: Propagation.CONFIG_DRIVE,
            "qemuGuestAgent": _no_guest_agent,
        },
    )
    if propagation is None:
        raise InvalidSpec(method.path, "needs noCloud or configDrive")
    method.done()
    ssh.done()
    node.done()
    return SSHKeyCredential(name, propagation)


def check_access_credentials(vm: VMSpec, path: str) -> None:
    """A propagation needs a cloud-init volume of its kind to carry the keys; one service
    account volume at most (it has one token)."""
    kinds = {type(v.source) for v in vm.volumes}
    wanted = {
        Propagation.NO_CLOUD: (CloudInitNoCloud, "cloudInitNoCloud"),
        Propagation.CONFIG_DRIVE: (CloudInitConfigDrive, "cloudInitConfigDrive"),
    }
    for index, credential in enumerate(vm.access_credentials):
        kind, name = wanted[credential.propagation]
        if kind not in kinds:
            raise InvalidSpec(
                f"{path}.accessCredentials[{index}].sshPublicKey.propagationMethod",
                f"{credential.propagation.value} needs a {name} volume to carry the keys",
            )
    accounts = [
        v.name
        for v in vm.volumes
        if isinstance(v.source, ConfigVolume) and v.source.kind == ConfigKind.SERVICE_ACCOUNT
    ]
    if len(accounts) > 1:
        raise InvalidSpec(f"{path}.volumes", "at most one serviceAccount volume is allowed")


def render_config_source(
    source: CloudInitNoCloud | CloudInitConfigDrive | ConfigVolume,
) -> tuple[str, dict[str, Any]]:
    """The volume key and body of a config source (what the parsers above read)."""
    if isinstance(source, ConfigVolume):
        if source.kind == ConfigKind.SERVICE_ACCOUNT:
            return source.kind.value, {"serviceAccountName": source.name}
        key = "secretName" if source.kind == ConfigKind.SECRET else "name"
        body: dict[str, Any] = {key: source.name}
        if source.optional:
            body["optional"] = True
        if source.volume_label:
            body["volumeLabel"] = source.volume_label
        return source.kind.value, body
    fields = {"userData": source.user_data, "networkData": source.network_data}
    cloud: dict[str, Any] = {k: v for k, v in fields.items() if v}
    if source.user_data_secret:
        cloud["secretRef"] = {"name": source.user_data_secret}
    if source.network_data_secret:
        cloud["networkDataSecretRef"] = {"name": source.network_data_secret}
    if isinstance(source, CloudInitNoCloud):
        return "cloudInitNoCloud", cloud
    return "cloudInitConfigDrive", cloud


def render_access_credential(credential: SSHKeyCredential) -> dict[str, Any]:
    return {
        "sshPublicKey": {
            "source": {"secret": {"secretName": credential.secret_name}},
            "propagationMethod": {credential.propagation.value: {}},
        }
    }
