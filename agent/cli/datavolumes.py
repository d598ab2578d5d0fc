"""Map a KubeVirt VirtualMachine's ``spec.dataVolumeTemplates`` (CDI DataVolumes) to the
agent's templates.

Kept: ``metadata.name``, the size (``spec.storage`` or ``spec.pvc``
``resources.requests.storage``) and ``spec.source`` (blank, registry, http, pvc; other CDI
sources are refused by their path). ``spec.sourceRef`` is passed on: the agent refuses it
with a message saying a DataSource cannot be resolved on a node. Dropped and listed in
``Manifest.ignored``, because they only mean something to a cluster's storage: access
modes, storage class, volume mode, preallocation, priority class, limits, and the
template's ``apiVersion``/``kind``/labels/``status``. Annotations are dropped (CDI's are
cluster hints) except ``virt-agent.io/delete-with-vm``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor

from agent.api._gen.virtagent.v1 import vm_pb2
from agent.cli.yamlpath import ManifestError
from agent.cli.yamlpath import join as _join
from agent.cli.yamlpath import mapping as _mapping
from agent.cli.yamlpath import only as _only
from agent.cli.yamlpath import string as _str
from agent.datavolume import DELETE_WITH_VM_ANNOTATION

__all__ = ["map_data_volume_templates"]

Copy = Callable[[Any, Descriptor, str], dict[str, Any]]

_DROPPED_TEMPLATE = ("apiVersion", "kind", "status")
_DROPPED_METADATA = ("labels", "creationTimestamp", "namespace")
_DROPPED_SPEC = ("preallocation", "priorityClassName")
_DROPPED_STORAGE = ("accessModes", "storageClassName", "volumeMode", "dataSource")
_DROPPED_STORAGE_SOURCES = ("dataSourceRef", "selector")


def map_data_volume_templates(value: Any, path: str, copy: Copy) -> tuple[list[Any], list[str]]:
    """The templates as the agent reads them, and the paths dropped on the way."""
    if not isinstance(value, list):
        raise ManifestError(path, "must be a list")
    ignored: list[str] = []
    out = [_template(item, f"{path}[{i}]", copy, ignored) for i, item in enumerate(value)]
    return out, ignored


def _template(value: Any, path: str, copy: Copy, ignored: list[str]) -> dict[str, Any]:
    node = _mapping(value, path)
    _only(node, path, {"metadata", "spec", *_DROPPED_TEMPLATE})
    ignored.extend(_join(path, key) for key in _DROPPED_TEMPLATE if key in node)
    meta_path = _join(path, "metadata")
    meta = _mapping(node.get("metadata"), meta_path)
    _only(meta, meta_path, {"name", "annotations", *_DROPPED_METADATA})
    ignored.extend(_join(meta_path, key) for key in _DROPPED_METADATA if key in meta)
    metadata: dict[str, Any] = {"name": _str(meta.get("name", ""), _join(meta_path, "name"))}
    annotations = _mapping(meta.get("annotations"), _join(meta_path, "annotations"))
    if DELETE_WITH_VM_ANNOTATION in annotations:
        value_path = f"{meta_path}.annotations.{DELETE_WITH_VM_ANNOTATION}"
        flag = _str(annotations[DELETE_WITH_VM_ANNOTATION], value_path)
        metadata["annotations"] = {DELETE_WITH_VM_ANNOTATION: flag}
    spec_path = _join(path, "spec")
    spec = _mapping(node.get("spec"), spec_path)
    _only(spec, spec_path, {"storage", "pvc", "source", "sourceRef", "contentType", *_DROPPED_SPEC})
    ignored.extend(_join(spec_path, key) for key in _DROPPED_SPEC if key in spec)
    content = spec.get("contentType")
    if content is not None and _str(content, _join(spec_path, "contentType")) != "kubevirt":
        raise ManifestError(
            _join(spec_path, "contentType"), "only kubevirt (a disk image) is imported"
        )
    out: dict[str, Any] = {}
    for key in ("storage", "pvc"):
        if key in spec:
            out[key] = _storage(spec[key], _join(spec_path, key), ignored)
    for key, message in (
        ("source", vm_pb2.DataVolumeImportSource.DESCRIPTOR),
        ("sourceRef", vm_pb2.DataVolumeSourceRef.DESCRIPTOR),
    ):
        if spec.get(key) is not None:
            out[key] = copy(spec[key], message, _join(spec_path, key))
    return {"metadata": metadata, "spec": out}


def _storage(value: Any, path: str, ignored: list[str]) -> dict[str, Any]:
    node = _mapping(value, path)
    dropped = (*_DROPPED_STORAGE, *_DROPPED_STORAGE_SOURCES)
    _only(node, path, {"resources", *dropped})
    ignored.extend(_join(path, key) for key in dropped if key in node)
    resources_path = _join(path, "resources")
    resources = _mapping(node.get("resources"), resources_path)
    _only(resources, resources_path, {"requests", "limits"})
    if "limits" in resources:
        ignored.append(_join(resources_path, "limits"))
    requests_path = _join(resources_path, "requests")
    requests = _mapping(resources.get("requests"), requests_path)
    _only(requests, requests_path, {"storage"})
    if "storage" not in requests:
        return {}
    size = requests["storage"]
    if isinstance(size, int) and not isinstance(size, bool):
        size = str(size)
    text = _str(size, _join(requests_path, "storage"))
    return {"resources": {"requests": {"storage": text}}}
