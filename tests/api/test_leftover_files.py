"""A VM's folder left by an agent killed mid-delete is never inherited (libvirt test driver)."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Agent
from tests.api.test_vm_api import apply, vm_doc
from tests.testbed.wait import wait_for

SECRET = b"the old tenant's data"


def with_scratch(name: str = "web") -> dict[str, Any]:
    doc = vm_doc(name)
    instance = doc["spec"]["template"]["spec"]
    instance["domain"]["devices"]["disks"].append({"name": "scratch", "disk": {"bus": "virtio"}})
    instance["volumes"].append({"name": "scratch", "emptyDisk": {"capacity": "16Mi"}})
    return doc


def killed_mid_delete(agent: Agent) -> None:
    """What an agent killed between undefining the domain and removing its folder leaves."""
    folder = agent.state_dir / "vms" / "default_web"
    (scratch,) = folder.glob("scratch-empty.qcow2")
    scratch.write_bytes(SECRET)  # what the old tenant wrote to its empty disk
    agent.hv.destroy("default_web")
    agent.hv.undefine("default_web")
    wait_for(lambda: agent.service.registry.get("default_web") is None, 10, message="the event")
    assert folder.is_dir()


def test_resync_removes_the_folders_of_vms_without_a_domain(agent: Agent) -> None:
    apply(agent, with_scratch())
    apply(agent, with_scratch("keep"))
    killed_mid_delete(agent)
    agent.service.resync()  # what a restarted agent does first
    assert not (agent.state_dir / "vms" / "default_web").exists()
    assert (agent.state_dir / "vms" / "default_keep").is_dir()  # a VM that exists keeps it


def test_a_new_vm_of_the_same_name_never_reuses_files_left_there(agent: Agent) -> None:
    apply(agent, with_scratch())
    killed_mid_delete(agent)
    apply(agent, with_scratch())  # another tenant's VM, same namespace and name
    scratch = agent.state_dir / "vms" / "default_web" / "scratch-empty.qcow2"
    assert SECRET not in scratch.read_bytes()
