"""A client's verb arriving as the agent's own work gives the VM's lock back (its holder
already forgotten, the lock not yet released) waits for the hand-over, not Conflict."""

from __future__ import annotations

import threading

import pytest

from agent.domain.oplocks import VMLocks
from agent.errors import Conflict


def test_a_verb_meeting_a_lock_changing_hands_gets_it() -> None:
    locks = VMLocks(lambda domain, on: None)
    ran: list[str] = []
    with locks.locks.using("default_web") as lock:
        lock.acquire()  # taken, holder not recorded: as between pop and release
        threading.Timer(0.05, lock.release).start()
        with locks.held("default_web", "apply"):
            ran.append("apply")
    assert ran == ["apply"]


def test_a_verb_held_by_a_client_is_still_a_conflict_naming_it() -> None:
    locks = VMLocks(lambda domain, on: None)
    with locks.held("default_web", "stop"):
        outcome: list[BaseException] = []

        def apply() -> None:
            try:
                with locks.held("default_web", "apply"):
                    pass
            except Conflict as exc:
                outcome.append(exc)

        thread = threading.Thread(target=apply)
        thread.start()
        thread.join(5)
    assert len(outcome) == 1
    with pytest.raises(Conflict, match="stop on vm default/web is in progress"):
        raise outcome[0]
