"""VM specs as KubeVirt-shaped documents: parse and validate them, render them back.

The input is the protobuf JSON mapping of ``virtagent.v1.VirtualMachine`` (camelCase keys,
KubeVirt's names). Every problem raises InvalidSpec naming the field by its path, for
example ``spec.template.spec.domain.devices.disks[1].disk.bus``. Keys this agent does not
know are rejected by name, never dropped.
"""

from agent.spec.parse import parse_vm
from agent.spec.reader import validate_name
from agent.spec.render import render_vm

__all__ = ["parse_vm", "render_vm", "validate_name"]
