"""Parse and render ``spec.dataVolumeTemplates``: claims the agent imports on its node."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from agent.datavolume import (
    DELETE_WITH_VM_ANNOTATION,
    BlankImport,
    DataVolumeTemplate,
    HttpImport,
    ImportSource,
    PvcClone,
    RegistryImport,
)
from agent.errors import InvalidSpec
from agent.imageref import BadReference, parse_reference
from agent.quantity import format_bytes
from agent.spec.reader import Node, one_of, quantity, validate_name

__all__ = ["MAX_TEMPLATES", "parse_data_volume_templates", "render_data_volume_template"]

MAX_TEMPLATES = 16
_MIN_SIZE = 1024 * 1024
_MAX_SIZE = 64 * 1024**4  # 64 TiB
_CHECKSUM = re.compile(r"(md5|sha1|sha256|sha512):([0-9a-f]+)")
_DIGEST_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
_SOURCES = "blank, registry, http or pvc"


def parse_data_volume_templates(spec: Node, namespace: str) -> tuple[DataVolumeTemplate, ...]:
    """Every template of ``spec.dataVolumeTemplates``; names are unique."""
    templates = tuple(
        _template(n, namespace) for n in spec.items("dataVolumeTemplates", MAX_TEMPLATES)
    )
    seen: set[str] = set()
    for index, template in enumerate(templates):
        if template.name in seen:
            field = f"{spec.at('dataVolumeTemplates')}[{index}].metadata.name"
            raise InvalidSpec(field, f"{template.name!r} is the name of an earlier template")
        seen.add(template.name)
    return templates


def _template(node: Node, namespace: str) -> DataVolumeTemplate:
    meta = node.child("metadata") or Node(node.at("metadata"), {})
    name = validate_name(meta.at("name"), meta.get("name", str, ""))
    delete_with_vm = _annotations(meta)
    meta.done()
    spec = node.child("spec")
    if spec is None:
        raise InvalidSpec(node.at("spec"), "is required (a storage size and a source)")
    size = _size(spec)
    if spec.child("sourceRef") is not None:
        raise InvalidSpec(
            spec.at("sourceRef"),
            "a DataSource cannot be resolved on a node (it is a cluster object): "
            f"give the template a source ({_SOURCES}) instead",
        )
    source_node = spec.child("source")
    if source_node is None:
        raise InvalidSpec(spec.at("source"), f"is required: one of {_SOURCES}")
    source = _source(source_node, namespace)
    source_node.done()
    spec.done()
    node.done()
    return DataVolumeTemplate(name, size, source, delete_with_vm)


def _annotations(meta: Node) -> bool:
    annotations = meta.get("annotations", dict, {})
    for key, value in annotations.items():
        field = f"{meta.at('annotations')}.{key}"
        if key != DELETE_WITH_VM_ANNOTATION:
            raise InvalidSpec(field, f"is not supported (only {DELETE_WITH_VM_ANNOTATION})")
        if value not in ("true", "false"):
            raise InvalidSpec(field, f'must be "true" or "false", not {str(value)[:40]!r}')
    return annotations.get(DELETE_WITH_VM_ANNOTATION) == "true"


def _size(spec: Node) -> int:
    """``storage.resources.requests.storage`` (or the older ``pvc.…``), checked."""
    present = [key for key in ("storage", "pvc") if key in spec.data]
    spec.allowed.update({"storage", "pvc"})
    if len(present) != 1:
        raise InvalidSpec(spec.path, "set exactly one of storage, pvc (with a storage size)")
    storage = spec.child(present[0])
    assert storage is not None
    resources = storage.child("resources") or Node(storage.at("resources"), {})
    requests = resources.child("requests") or Node(resources.at("requests"), {})
    size = quantity(requests, "storage")
    field = requests.at("storage")
    requests.done()
    resources.done()
    storage.done()
    if size is None:
        raise InvalidSpec(field, "is required: the size of the claim, such as 10Gi")
    if not _MIN_SIZE <= size <= _MAX_SIZE:
        raise InvalidSpec(field, "must be between 1Mi and 64Ti")
    return size


def _source(node: Node, namespace: str) -> ImportSource:
    def pvc(child: Node) -> ImportSource:
        return _pvc(child, namespace)

    sources = {"blank": _blank, "registry": _registry, "http": _http, "pvc": pvc}
    others = [key for key in node.data if key not in sources]
    if others:
        raise InvalidSpec(
            node.at(str(others[0])), f"is not a source this agent imports (use {_SOURCES})"
        )
    source = one_of(node, sources)
    if source is None:
        raise InvalidSpec(node.path, f"needs one of {_SOURCES}")
    return source


def _blank(node: Node) -> ImportSource:
    return BlankImport()


def _registry(node: Node) -> ImportSource:
    url = node.get("url", str, "")
    if not url.startswith("docker://"):
        raise InvalidSpec(node.at("url"), "must be a docker:// URL such as docker://reg/repo:tag")
    try:
        parse_reference(url.removeprefix("docker://"))
    except BadReference as exc:
        raise InvalidSpec(node.at("url"), f"{url!r}: {exc}") from None
    if node.child("secretRef") is not None:
        raise InvalidSpec(
            node.at("secretRef"),
            "registry credentials come from the node's registry configuration, not a secret",
        )
    pull_method = node.get("pullMethod", str, "") or "node"
    if pull_method not in ("pod", "node"):
        raise InvalidSpec(node.at("pullMethod"), "must be pod or node")
    return RegistryImport(url=url, pull_method=pull_method)


def _http(node: Node) -> ImportSource:
    url = node.get("url", str, "")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        raise InvalidSpec(node.at("url"), "must be an http:// or https:// URL")
    if "@" in urlsplit(url).netloc:
        raise InvalidSpec(
            node.at("url"),
            "credentials in the URL are refused (they would show in status and logs): "
            "put them in a node secret named by secretRef",
        )
    checksum = node.get("checksum", str, "")
    match = _CHECKSUM.fullmatch(checksum)
    if checksum and (match is None or len(match.group(2)) != _DIGEST_LENGTHS[match.group(1)]):
        raise InvalidSpec(
            node.at("checksum"), "must be sha256:<64 hex digits> (or md5, sha1, sha512)"
        )
    secret = ""
    ref = node.child("secretRef")
    if ref is not None:
        secret = validate_name(ref.at("name"), ref.get("name", str, ""))
        ref.done()
    return HttpImport(url=url, checksum=checksum, secret_ref=secret)


def _pvc(node: Node, namespace: str) -> ImportSource:
    other = node.get("namespace", str, "") or namespace
    name = validate_name(node.at("name"), node.get("name", str, ""))
    if other != namespace:
        raise InvalidSpec(
            node.at("namespace"),
            f"{other!r}: only a claim of the VM's own namespace ({namespace!r}) can be cloned",
        )
    return PvcClone(namespace=namespace, name=name)


def render_data_volume_template(template: DataVolumeTemplate) -> dict[str, Any]:
    """The canonical document of a template (what ``parse_data_volume_templates`` reads)."""
    meta: dict[str, Any] = {"name": template.name}
    if template.delete_with_vm:
        meta["annotations"] = {DELETE_WITH_VM_ANNOTATION: "true"}
    source = template.source
    rendered: dict[str, Any] = {}
    if isinstance(source, RegistryImport):
        rendered = {"url": source.url, "pullMethod": source.pull_method}
    elif isinstance(source, HttpImport):
        rendered = {"url": source.url}
        if source.checksum:
            rendered["checksum"] = source.checksum
        if source.secret_ref:
            rendered["secretRef"] = {"name": source.secret_ref}
    elif isinstance(source, PvcClone):
        rendered = {"namespace": source.namespace, "name": source.name}
    storage = {"resources": {"requests": {"storage": format_bytes(template.size_bytes)}}}
    return {
        "metadata": meta,
        "spec": {"storage": storage, "source": {template.source_kind: rendered}},
    }
