"""Map KubeVirt manifests (``kubevirt.io/v1`` VirtualMachine / VirtualMachineInstance) to
``virtagent.v1.VirtualMachine`` messages.

The agent's spec messages carry KubeVirt's field names, so most of a manifest is copied as
is; this module walks every key against the proto descriptors and rejects what the agent
does not support by its YAML path (``spec.template.spec.domain.devices.gpus: field is not
supported by virt-agent``) instead of letting it vanish. Values are type-checked on the way;
the agent validates the meaning (sizes, names, references) when the VM is applied.

Rules:

- ``metadata.name``, ``namespace`` (default: the CLI's ``--namespace``), ``labels`` and
  ``uid`` are kept. ``spec.template.metadata.labels`` are merged into the VM's labels (the
  VM's own win on a clash).
- VirtualMachine: ``spec.running`` true/false becomes runStrategy Always/Halted;
  ``spec.runStrategy`` Always, Halted, Manual, RerunOnFailure and Once are kept. Neither
  set: the agent's default (Always).
- VirtualMachineInstance: KubeVirt runs a VMI once and never restarts it; when it stops it
  stays stopped. It becomes runStrategy ``Once``: the agent starts it when it is created
  and never again, and the intent is stored with the VM, so an agent restarted in the
  middle finishes the start. (``Always`` would restart a guest that shut itself down.)
- Ignored, because they are bookkeeping of a cluster and do not change the VM on a node:
  ``status``; ``metadata`` (and ``spec.template.metadata``) ``annotations`` (except those
  ``webhook.py`` refuses), ``creationTimestamp``, ``generation``, ``resourceVersion``,
  ``managedFields`` and ``finalizers``. Scheduler fields and ``spec.template.metadata.name``
  are dropped and named in ``Manifest.ignored`` (``webhook.py`` also fills KubeVirt's
  defaults). Documents of other kinds are skipped by name. Everything else unknown is an
  error.
- ``spec.dataVolumeTemplates`` (CDI DataVolumes the agent imports): see ``datavolumes.py``.
- ``resources.requests``/``limits`` maps are passed through (numbers become strings); the
  agent accepts ``memory`` and ``cpu``.

Usage::

    manifests = load_manifests(Path("vm.yaml").read_text(), default_namespace="default")
    for manifest in manifests:
        client.apply(manifest.vm)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from agent.api._gen.virtagent.v1 import vm_pb2
from agent.cli.datavolumes import map_data_volume_templates
from agent.cli.instancetypes import Catalog, resolve
from agent.cli.webhook import admit, check_annotations, ignition
from agent.cli.yamlpath import UNSUPPORTED, ManifestError
from agent.cli.yamlpath import boolean as _bool
from agent.cli.yamlpath import join as _join
from agent.cli.yamlpath import kind_of as _kind
from agent.cli.yamlpath import mapping as _mapping
from agent.cli.yamlpath import only as _only
from agent.cli.yamlpath import string as _str

__all__ = [
    "API_VERSION",
    "KINDS",
    "UNSUPPORTED",
    "Manifest",
    "ManifestError",
    "Manifests",
    "Skipped",
    "load_manifests",
    "map_document",
]

API_VERSION = "kubevirt.io/v1"
# v1alpha3 manifests (older KubeVirt examples) have the same shape for every field we map.
API_VERSIONS = (API_VERSION, "kubevirt.io/v1alpha3")
KINDS = ("VirtualMachine", "VirtualMachineInstance")
_IGNORED_METADATA = frozenset(
    {"annotations", "creationTimestamp", "finalizers", "generation", "managedFields"}
    | {"resourceVersion"}
)
_RUN_STRATEGIES = ("Always", "Halted", "Manual", "RerunOnFailure", "Once")
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


@dataclass(frozen=True, slots=True)
class Manifest:
    """One mapped document: the VM to apply."""

    kind: str
    vm: vm_pb2.VirtualMachine
    document: int = 1
    # Fields only a cluster scheduler reads, dropped (their YAML paths): see webhook.py.
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Skipped:
    """A document of another kind in the stream, left alone."""

    document: int
    kind: str
    name: str

    def __str__(self) -> str:
        return f"document {self.document} ({self.kind} {self.name or '?'})".rstrip()


@dataclass(frozen=True, slots=True)
class Manifests:
    """The VM documents of a stream, and the documents of other kinds that were skipped."""

    vms: tuple[Manifest, ...]
    skipped: tuple[Skipped, ...] = ()


def load_manifests(
    text: str, *, default_namespace: str, catalog: Catalog | None = None
) -> Manifests:
    """Map every VM document of a (multi-document) YAML stream; empty documents are skipped,
    and so are documents of other kinds (Services, claims, instancetypes, ...), by name.
    Instancetypes and preferences come from ``catalog`` (default: KubeVirt's common ones)
    and from the stream itself."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError("", f"invalid YAML: {exc}") from None
    numbered = [(i, doc) for i, doc in enumerate(documents, start=1) if doc is not None]
    if not numbered:
        raise ManifestError("", "no documents found")
    several = len(numbered) > 1
    catalog = catalog or Catalog.with_builtins()
    catalog.add_documents(doc for _, doc in numbered)
    manifests: list[Manifest] = []
    skipped: list[Skipped] = []
    seen: dict[tuple[str, str], int] = {}
    for index, document in numbered:
        other = _other_kind(document, index)
        if other is not None:
            skipped.append(other)
            continue
        try:
            manifest = map_document(document, default_namespace=default_namespace, catalog=catalog)
        except ManifestError as exc:
            document_index = index if several else None
            raise ManifestError(exc.path, exc.problem, document=document_index) from None
        key = (manifest.vm.metadata.namespace, manifest.vm.metadata.name)
        if key in seen:
            raise ManifestError(
                "metadata.name",
                f"{key[0]}/{key[1]} is also defined in document {seen[key]}",
                document=index,
            )
        seen[key] = index
        manifests.append(dataclasses.replace(manifest, document=index))
    if not manifests:
        found = ", ".join(str(s) for s in skipped)
        raise ManifestError("", f"no {' or '.join(KINDS)} documents found (only {found})")
    return Manifests(tuple(manifests), tuple(skipped))


def _other_kind(document: Any, index: int) -> Skipped | None:
    """A well-formed document of another kind, which vmctl leaves alone."""
    if not isinstance(document, Mapping):
        return None
    kind = document.get("kind")
    if not isinstance(kind, str) or not kind or kind in KINDS:
        return None
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return Skipped(index, kind, name if isinstance(name, str) else "")


def map_document(
    document: Any, *, default_namespace: str, catalog: Catalog | None = None
) -> Manifest:
    """Map one parsed KubeVirt document (its instancetype and preference resolved from
    ``catalog``); raises ManifestError naming the offending path."""
    resolved, from_types = resolve(_mapping(document, ""), catalog or Catalog.with_builtins())
    manifest = _map(resolved, default_namespace)
    if not from_types:
        return manifest
    return dataclasses.replace(manifest, ignored=(*from_types, *manifest.ignored))


def _map(document: Any, default_namespace: str) -> Manifest:
    root = _mapping(document, "")
    _only(root, "", {"apiVersion", "kind", "metadata", "spec", "status"})
    kind = root.get("kind")
    if kind not in KINDS:
        api = root.get("apiVersion")
        raise ManifestError(
            "kind",
            f"{kind!r} (apiVersion {api!r}) is not supported: want {' or '.join(KINDS)}",
        )
    if root.get("apiVersion") not in API_VERSIONS:
        raise ManifestError(
            "apiVersion", f"{root.get('apiVersion')!r} is not one of {', '.join(API_VERSIONS)}"
        )
    metadata, labels = _metadata(root.get("metadata"), "metadata", default_namespace)
    spec = _mapping(root.get("spec"), "spec")
    ignored: list[str] = []
    if kind == "VirtualMachine":
        _only(spec, "spec", {"running", "runStrategy", "template", "dataVolumeTemplates"})
        run_strategy = _run_strategy(spec)
        template = _mapping(spec.get("template"), "spec.template")
        _only(template, "spec.template", {"metadata", "spec"})
        template_meta = _mapping(template.get("metadata"), "spec.template.metadata")
        if template_meta.get("name") is not None:  # the controller names the VMI itself
            ignored.append("spec.template.metadata.name")
            template_meta = {k: v for k, v in template_meta.items() if k != "name"}
        _, template_labels = _metadata(template_meta, "spec.template.metadata", None)
        labels = {**template_labels, **labels}
        instance_path, instance = "spec.template.spec", template.get("spec")
        ignition_data = ignition(template_meta, "spec.template.metadata")
    else:
        run_strategy, instance_path, instance = "Once", "spec", spec
        ignition_data = ignition(root.get("metadata"), "metadata")
    instance, dropped = admit(_mapping(instance, instance_path), instance_path)
    instance_spec = _message(instance, vm_pb2.VirtualMachineInstanceSpec.DESCRIPTOR, instance_path)
    if ignition_data:
        instance_spec["ignitionData"] = ignition_data
    if labels:
        metadata["labels"] = labels
    vm_spec: dict[str, Any] = {"template": {"spec": instance_spec}}
    if kind == "VirtualMachine" and spec.get("dataVolumeTemplates") is not None:
        templates, dropped_dv = map_data_volume_templates(
            spec["dataVolumeTemplates"], "spec.dataVolumeTemplates", _message
        )
        vm_spec["dataVolumeTemplates"] = templates
        ignored.extend(dropped_dv)
    if run_strategy:
        vm_spec["runStrategy"] = run_strategy
    vm = json_format.ParseDict({"metadata": metadata, "spec": vm_spec}, vm_pb2.VirtualMachine())
    return Manifest(kind, vm, ignored=(*ignored, *dropped))


def _metadata(
    value: Any, path: str, default_namespace: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Identity fields and labels of an ObjectMeta; the template's has labels only."""
    node = _mapping(value, path)
    identity = {"name", "namespace", "uid"} if default_namespace is not None else set()
    _only(node, path, identity | {"labels"} | _IGNORED_METADATA)
    check_annotations(node.get("annotations"), _join(path, "annotations"))
    out: dict[str, Any] = {}
    for key in sorted(identity):
        if node.get(key) is not None:
            out[key] = _str(node[key], _join(path, key))
    if default_namespace is not None:
        out.setdefault("namespace", default_namespace)
    raw_labels = _mapping(node.get("labels"), _join(path, "labels"))
    labels = {str(key): _str(item, f"{path}.labels.{key}") for key, item in raw_labels.items()}
    return out, labels


def _run_strategy(spec: Mapping[str, Any]) -> str:
    running, strategy = spec.get("running"), spec.get("runStrategy")
    if running is not None and strategy is not None:
        raise ManifestError("spec", "set only one of running, runStrategy")
    if running is not None:
        return "Always" if _bool(running, "spec.running") else "Halted"
    if strategy is None:
        return ""
    strategy = _str(strategy, "spec.runStrategy")
    if strategy not in _RUN_STRATEGIES:
        allowed = ", ".join(_RUN_STRATEGIES)
        raise ManifestError("spec.runStrategy", f"{strategy!r} is not one of {allowed}")
    return strategy


def _message(value: Any, descriptor: Descriptor, path: str) -> dict[str, Any]:
    """Copy a mapping that must fit ``descriptor``: every key a field of it, by JSON name."""
    node = _mapping(value, path)
    fields = {field.json_name: field for field in descriptor.fields}
    out: dict[str, Any] = {}
    oneofs: dict[str, str] = {}
    for key, item in node.items():
        at = _join(path, str(key))
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            raise ManifestError(at, UNSUPPORTED)
        if item is None:
            continue
        if field.containing_oneof is not None:
            first = oneofs.setdefault(field.containing_oneof.name, key)
            if first != key:
                raise ManifestError(path, f"set only one of {first}, {key}")
        out[key] = _field(item, field, at)
    return out


def _field(value: Any, field: FieldDescriptor, path: str) -> Any:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        value_field = message.fields_by_name["value"]
        entries = _mapping(value, path)
        return {str(k): _single(v, value_field, f"{path}.{k}") for k, v in entries.items()}
    if field.is_repeated:
        if not isinstance(value, list):
            raise ManifestError(path, f"must be a list, not {_kind(value)}")
        return [_single(item, field, f"{path}[{i}]") for i, item in enumerate(value)]
    return _single(value, field, path)


def _single(value: Any, field: FieldDescriptor, path: str) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        return _message(value, field.message_type, path)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return _bool(value, path)
    if field.type in _INT_RANGES:
        number = _int(value, path)
        low, high = _INT_RANGES[field.type]
        if not low <= number <= high:
            raise ManifestError(path, f"{number} is out of range ({low} to {high})")
        return number
    if field.type == FieldDescriptor.TYPE_STRING:
        return _str(value, path)
    raise ManifestError(path, UNSUPPORTED)  # no other field types appear in the VM spec


def _int(value: Any, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ManifestError(path, f"must be an integer, not {_kind(value)}")
