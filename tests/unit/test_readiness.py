"""Readiness: ready only while connected and synced on the current connection."""

from __future__ import annotations

from agent.domain.readiness import Readiness


def test_ready_after_the_resync_of_the_current_connection() -> None:
    readiness = Readiness()
    seen: list[bool] = []
    readiness.watch(seen.append)
    epoch = readiness.connected()
    assert not readiness.ready
    assert readiness.synced(epoch)
    assert readiness.ready and seen[0] is False and seen[-1] is True
    readiness.disconnected()
    assert not readiness.ready and seen[-1] is False


def test_a_resync_of_a_lost_connection_never_makes_it_ready() -> None:
    readiness = Readiness()
    old = readiness.connected()
    readiness.disconnected()
    new = readiness.connected()
    assert not readiness.synced(old)
    assert not readiness.ready and not readiness.wait(0.01)
    assert readiness.synced(new) and readiness.wait(0.01)
