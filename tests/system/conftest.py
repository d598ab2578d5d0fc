"""System-test fixtures: the real agent daemon running inside a node in a box."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.agentproc import AgentProcess
from tests.testbed.nodebox import GuestImage, NodeBox


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def agent_process(node: NodeBox, test_guest: GuestImage) -> Iterator[AgentProcess]:
    """One agent for the session, inside `node`, serving on a unix socket."""
    process = AgentProcess(node=node, guest=test_guest, dir=node.dir / "agent")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def agent(agent_process: AgentProcess) -> Iterator[AgentProcess]:
    """The session's agent (restarted if a test stopped it); every VM is deleted afterwards."""
    if agent_process.proc is None or agent_process.proc.poll() is not None:
        agent_process.stop()
        agent_process.start()
    yield agent_process
    if agent_process.proc is None or agent_process.proc.poll() is not None:
        agent_process.stop()
        agent_process.start()
    agent_process.delete_all()
