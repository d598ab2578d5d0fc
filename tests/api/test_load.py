"""Load: 50 concurrent clients for 30 s of mixed Get/List/Watch/Apply/Delete on libvirt's test
driver, over loopback. No unexpected answer, and no thread, file descriptor or memory left
behind. ``VIRT_AGENT_SOAK_SECONDS`` makes it a soak of that length (``hack/soak.sh``)."""

from __future__ import annotations

import os
from pathlib import Path

from agent.api._gen.virtagent.v1 import vm_service_pb2 as pb
from agent.api.server import QUICK_CALL_THREADS
from tests.api.conftest import Agent, running_agent
from tests.api.loadmix import NAMESPACE, process_usage, run_load
from tests.testbed.wait import wait_for

CLIENTS = 50
SECONDS = float(os.environ.get("VIRT_AGENT_SOAK_SECONDS", "30"))
WARM_UP_SECONDS = 5.0
# The agent's defaults (the API tests' fixture uses small limits).
MAX_STREAMS, MAX_SLOW = 16, 32
THREAD_SLACK = 8  # timers, libvirt's and gRPC's own helpers coming and going
FD_SLACK = 8
RSS_SLACK = 128 * 1024 * 1024  # generous: the allocator keeps what it got


def _settled(agent: Agent) -> bool:
    """Nothing of the clients' is held by the agent any more."""
    servicer, cache, pool = agent.service_servicer, agent.service.cache, agent.server.pool
    return (
        pool is not None
        and pool.in_flight == 0  # admission's count of calls: none left over
        and not cache._watches
        and servicer.streams._free._value == MAX_STREAMS  # type: ignore[attr-defined]
        and servicer.slow_calls._free._value == MAX_SLOW  # type: ignore[attr-defined]
        and len(agent.service._vm_locks.locks) == 0
    )


def _pool_threads(agent: Agent) -> int:
    """The agent's call threads (its pool starts them as calls come, up to its size)."""
    assert agent.server.pool is not None
    return len(agent.server.pool._threads)  # type: ignore[attr-defined]


def _show(label: str, usage: dict[str, int]) -> None:
    print(
        f"{label}: threads={usage['threads']} fds={usage['fds']} rss={usage['rss'] / 2**20:.1f}MiB"
    )


def test_fifty_clients_of_mixed_calls_leave_nothing_behind(tmp_path: Path) -> None:
    with running_agent(tmp_path, max_streams=MAX_STREAMS, max_slow=MAX_SLOW) as agent:
        target = f"127.0.0.1:{agent.server.ports[0]}"
        # A first round grows the server's thread pool and the caches to their working size.
        warm = run_load(target, clients=CLIENTS, seconds=WARM_UP_SECONDS)
        assert not warm.unexpected, warm.unexpected[:20]
        wait_for(lambda: _settled(agent), 60, message="the warm-up's calls to end")
        before, pool_before = process_usage(), _pool_threads(agent)
        _show("before", before)

        report = run_load(target, clients=CLIENTS, seconds=SECONDS)

        print(f"{report.total()} calls in {SECONDS:.0f}s:", dict(sorted(report.counts.items())))
        assert not report.unexpected, report.unexpected[:20]
        for kind in ("get", "list", "watch", "apply", "delete"):
            assert report.counts[(kind, "OK")] > 0, f"no {kind} call succeeded"
        wait_for(lambda: _settled(agent), 60, message="every call's slot and lock to be freed")
        # The server's pool may still grow to its size (bounded: not a leak).
        pool_room = MAX_STREAMS + MAX_SLOW + QUICK_CALL_THREADS - pool_before
        threads = before["threads"] + pool_room + THREAD_SLACK
        wait_for(
            lambda: process_usage()["threads"] <= threads,
            60,
            message=lambda: f"threads back to {threads} (now {process_usage()['threads']})",
        )
        fds = before["fds"] + FD_SLACK
        wait_for(
            lambda: process_usage()["fds"] <= fds,
            60,
            message=lambda: f"fds back to {fds} (now {process_usage()['fds']})",
        )
        after = process_usage()
        _show("after", after)
        print(f"server pool threads: {pool_before} before, {_pool_threads(agent)} after")
        assert after["rss"] <= before["rss"] + RSS_SLACK
        # What the agent reports is what libvirt holds: no VM lost, none twice, no orphan.
        listed = agent.vms.ListVirtualMachines(pb.ListVirtualMachinesRequest(namespace=NAMESPACE))
        names = sorted(f"{NAMESPACE}_{vm.metadata.name}" for vm in listed.vms)
        assert names == sorted(d.name for d in agent.hv.list_domains())
