"""What KubeVirt's admission webhook does to a VM before it is stored, done by vmctl before
it calls the agent: default devices, and fields that only a cluster scheduler reads.

- With no interfaces and no networks the VM joins the pod network (here: masquerade on the
  node's VM network), unless ``autoattachPodInterface`` is false.
- A volume without a disk of its name gets a disk (virtio), as KubeVirt's defaults give it.
- Scheduling and cluster fields (node selectors, affinity, tolerations, DNS policy, ...)
  mean nothing on one node: they are dropped, and their paths are returned so vmctl can say
  it ignored them. ``architecture`` is accepted when it is the node's (amd64).
- Annotations that would change the VM and are not supported (sidecar hooks) are refused
  by name; ``kubevirt.io/ignitiondata`` becomes the spec's ignitionData; every other
  annotation is cluster bookkeeping.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from agent.cli.yamlpath import ManifestError, boolean, join, mapping, string

__all__ = ["IGNITION_ANNOTATION", "SCHEDULER_FIELDS", "admit", "check_annotations", "ignition"]

SCHEDULER_FIELDS = (
    "affinity",
    "dnsConfig",
    "dnsPolicy",
    "evictionStrategy",
    "nodeSelector",
    "priorityClassName",
    "schedulerName",
    "subdomain",
    "tolerations",
    "topologySpreadConstraints",
)
_NODE_ARCHITECTURES = ("amd64", "x86_64")
_REFUSED_ANNOTATIONS = {
    "hooks.kubevirt.io/hookSidecars": "sidecar hooks are not supported by virt-agent",
}
IGNITION_ANNOTATION = "kubevirt.io/ignitiondata"


def admit(instance: Mapping[str, Any], path: str) -> tuple[dict[str, Any], list[str]]:
    """The instance spec with KubeVirt's defaults filled in and scheduler fields dropped,
    and the YAML paths of the fields dropped."""
    out = copy.deepcopy(dict(instance))
    had_domain = "domain" in out
    had_devices = "devices" in mapping(out.get("domain"), join(path, "domain"))
    ignored = [join(path, key) for key in SCHEDULER_FIELDS if out.pop(key, None) is not None]
    architecture = out.pop("architecture", None)
    if architecture not in (None, ""):
        if string(architecture, join(path, "architecture")) not in _NODE_ARCHITECTURES:
            raise ManifestError(
                join(path, "architecture"), f"{architecture!r} is not this node's (amd64)"
            )
        ignored.append(join(path, "architecture"))
    _autoattach_pod_interface(out, path)
    _disks_for_volumes(out, path)
    if not out["domain"]["devices"] and not had_devices:
        del out["domain"]["devices"]  # nothing was added: keep the spec as written
        if not out["domain"] and not had_domain:
            del out["domain"]
    return out, ignored


def check_annotations(value: Any, path: str) -> None:
    """Refuse annotations that ask for a change to the VM this agent cannot make."""
    for key in mapping(value, path):
        if key in _REFUSED_ANNOTATIONS:
            raise ManifestError(f"{path}.{key}", _REFUSED_ANNOTATIONS[key])


def ignition(metadata: Any, path: str) -> str:
    """The ``kubevirt.io/ignitiondata`` annotation of an ObjectMeta (KubeVirt hands it to
    the guest over fw_cfg; the agent does the same with its ignitionData field)."""
    annotations = mapping(mapping(metadata, path).get("annotations"), f"{path}.annotations")
    value = annotations.get(IGNITION_ANNOTATION)
    return "" if value is None else string(value, f"{path}.annotations.{IGNITION_ANNOTATION}")


def _devices(out: dict[str, Any], path: str) -> dict[str, Any]:
    domain = dict(mapping(out.get("domain"), join(path, "domain")))
    devices = dict(mapping(domain.get("devices"), join(path, "domain.devices")))
    domain["devices"] = devices
    out["domain"] = domain
    return devices


def _autoattach_pod_interface(out: dict[str, Any], path: str) -> None:
    devices = _devices(out, path)
    attach = devices.pop("autoattachPodInterface", None)
    if attach is not None:
        attach = boolean(attach, join(path, "domain.devices.autoattachPodInterface"))
    if attach is not False and not devices.get("interfaces") and not out.get("networks"):
        devices["interfaces"] = [{"name": "default", "masquerade": {}}]
        out["networks"] = [{"name": "default", "pod": {}}]


def _disks_for_volumes(out: dict[str, Any], path: str) -> None:
    volumes = out.get("volumes")
    if not isinstance(volumes, list):
        return  # absent, or wrong and refused by name when the spec is mapped
    devices = _devices(out, path)
    disks = devices.get("disks")
    if disks is not None and not isinstance(disks, list):
        return
    named = {d.get("name") for d in disks or [] if isinstance(d, Mapping)}
    missing = [
        {"name": v["name"], "disk": {}}
        for v in volumes
        if isinstance(v, Mapping) and isinstance(v.get("name"), str) and v["name"] not in named
    ]
    if missing:
        devices["disks"] = [*(disks or []), *missing]
