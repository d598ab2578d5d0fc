"""A VM's folder left by an agent killed mid-delete is never inherited (libvirt test driver)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

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
    for thread in threading.enumerate():  # the agent's one-time sweep at start: let it end
        if thread.name == "migration-leftovers":
            thread.join(30)
    folder = agent.state_dir / "vms" / "default_web"
    (scratch,) = folder.glob("scratch-empty.qcow2")
    scratch.write_bytes(SECRET)  # what the old tenant wrote to its empty disk
    agent.hv.destroy("default_web")
    agent.hv.undefine("default_web")
    wait_for(lambda: agent.service.cache.get("default_web") is None, 10, message="the event")
    assert folder.is_dir()


def test_resync_removes_the_folders_of_vms_without_a_domain(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    apply(agent, with_scratch())
    apply(agent, with_scratch("keep"))
    killed_mid_delete(agent)
    with caplog.at_level(logging.WARNING):
        agent.service.resync()  # what a restarted agent does first
    assert not (agent.state_dir / "vms" / "default_web").exists()
    repaired = [r.getMessage() for r in caplog.records if "repaired:" in r.getMessage()]
    assert repaired == [
        "repaired: files of default_web removed: it has no domain (a delete interrupted "
        "between undefine and file removal, or a create before define)"
    ]
    assert (agent.state_dir / "vms" / "default_keep").is_dir()  # a VM that exists keeps it


def test_a_new_vm_of_the_same_name_never_reuses_files_left_there(agent: Agent) -> None:
    apply(agent, with_scratch())
    killed_mid_delete(agent)
    apply(agent, with_scratch())  # another tenant's VM, same namespace and name
    scratch = agent.state_dir / "vms" / "default_web" / "scratch-empty.qcow2"
    assert SECRET not in scratch.read_bytes()


def test_resync_keeps_the_folder_of_a_vm_migrating_in(agent: Agent) -> None:
    # An incoming migration prepares the folder before libvirt defines the domain.
    folder = agent.state_dir / "vms" / "default_arriving"
    folder.mkdir(parents=True)
    agent.service.steps.migrating.add("default_arriving")
    try:
        agent.service.resync()
        assert folder.is_dir()
    finally:
        agent.service.steps.migrating.discard("default_arriving")
    agent.service.resync()
    assert not folder.exists()  # once it is not arriving any more, it is a leftover
