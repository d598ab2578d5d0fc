"""Per-document verdicts on KubeVirt manifests: vmctl's mapping, then the agent's own parser.

``vmctl validate`` and ``vmctl apply --dry-run`` use this, so a document accepted here is a
document the agent accepts: the spec goes through the same ``agent.api.convert`` step the
agent's Apply runs (protobuf message → ``agent.spec.parse_vm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from agent.api.convert import spec_from_proto
from agent.cli.instancetypes import Catalog
from agent.cli.kubevirt import KINDS, Manifest, ManifestError, map_document
from agent.errors import InvalidSpec

__all__ = ["Verdict", "check_document", "check_manifest", "validate_text"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What becomes of one document: accepted, refused at ``field``, or skipped (not a VM)."""

    document: int
    kind: str
    name: str
    accepted: bool = False
    skipped: bool = False
    field: str = ""
    problem: str = ""
    ignored: tuple[str, ...] = ()

    def line(self) -> str:
        what = f"document {self.document}: {self.kind or '?'} {self.name or '?'}"
        if self.skipped:
            return f"{what}: skipped (not a VirtualMachine or VirtualMachineInstance)"
        if self.accepted and self.ignored:
            return f"{what}: accepted (ignored {', '.join(self.ignored)})"
        if self.accepted:
            return f"{what}: accepted"
        return f"{what}: {self.field}: {self.problem}" if self.field else f"{what}: {self.problem}"


def check_document(
    document: Any, index: int, *, default_namespace: str, catalog: Catalog | None = None
) -> Verdict:
    """Map and parse one YAML document; refusals name the first field that blocks it."""
    kind = str(document.get("kind", "")) if isinstance(document, dict) else ""
    metadata = document.get("metadata") if isinstance(document, dict) else None
    name = str(metadata.get("name", "")) if isinstance(metadata, dict) else ""
    if kind not in KINDS:
        return Verdict(index, kind, name, skipped=True)
    try:
        manifest = map_document(document, default_namespace=default_namespace, catalog=catalog)
        check_manifest(manifest)
    except ManifestError as exc:
        return Verdict(index, kind, name, field=exc.path, problem=exc.problem)
    return Verdict(index, kind, name, accepted=True, ignored=manifest.ignored)


def check_manifest(manifest: Manifest) -> None:
    """Run the agent's parser on a mapped document; its refusal becomes a ManifestError
    naming the field as the user wrote it (a VMI's fields are a VM template's to the agent)."""
    try:
        spec_from_proto(manifest.vm)
    except InvalidSpec as exc:
        field = exc.field
        if manifest.kind == "VirtualMachineInstance":
            field = field.replace("spec.template.spec", "spec", 1)
        raise ManifestError(field, exc.problem) from None


def validate_text(
    text: str, *, default_namespace: str, catalog: Catalog | None = None
) -> list[Verdict]:
    """Every non-empty document of a YAML stream, numbered from 1 as in the file."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError("", f"invalid YAML: {exc}") from None
    catalog = catalog or Catalog.with_builtins()
    catalog.add_documents(documents)
    return [
        check_document(document, index, default_namespace=default_namespace, catalog=catalog)
        for index, document in enumerate(documents, start=1)
        if document is not None
    ]
