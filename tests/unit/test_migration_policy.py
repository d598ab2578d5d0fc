"""The migration policy on job-stat series: downtime steps, post-copy, progress and
completion timeouts, and option checks.

The series in ``data/migration/`` are one sample a second of QEMU's pre-copy as libvirt's job
stats show it (an iteration sends what was dirty when it began; remaining falls during an
iteration and jumps at the next), synthesized from a model of a 1 GiB guest:
``converging`` (100 MiB/s, 1 MiB/s dirtied), ``stalling`` (dirtying faster than the link),
``target_hung`` (the stream stops after 4 s) and ``throttled`` (1 MiB/s bandwidth).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import InvalidSpec
from agent.migration.policy import (
    GIB,
    POST_COPY,
    Abort,
    Decision,
    MigrationOptions,
    Policy,
    SetDowntime,
    StartPostCopy,
    downtime_steps,
)
from agent.ports import JobSample

DATA = Path(__file__).parent / "data" / "migration"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def series(name: str) -> list[tuple[float, JobSample]]:
    rows = json.loads((DATA / f"{name}.json").read_text())
    return [
        (
            row["t"],
            JobSample(
                elapsed_ms=row["elapsed_ms"],
                data_total=row["data_total"],
                data_processed=row["data_processed"],
                data_remaining=row["data_remaining"],
                memory_total=row["data_total"],
                memory_processed=row["data_processed"],
                memory_remaining=row["data_remaining"],
                memory_iteration=row["memory_iteration"],
                dirty_rate=row["dirty_rate"],
                memory_bps=row["memory_bps"],
            ),
        )
        for row in rows
    ]


def replay(name: str, options: MigrationOptions) -> list[tuple[float, Decision]]:
    """Every decision with the second of the series it came at, until an abort or the end."""
    clock = Clock()
    start = clock.now
    policy = Policy(options.validate(), size_bytes=GIB, clock=clock)
    decisions = []
    for second, sample in series(name):
        clock.now = start + second
        decisions += [(second, d) for d in policy.observe(sample)]
        if decisions and isinstance(decisions[-1][1], Abort):
            break
    return decisions


def test_downtime_steps_grow_exponentially_to_the_maximum() -> None:
    assert downtime_steps(500, 5) == [101, 104, 120, 189, 500]
    assert downtime_steps(300, 1) == [300]
    steps = downtime_steps(2000, 10)
    assert steps == sorted(steps) and steps[-1] == 2000 and len(set(steps)) == 10


def test_a_converging_migration_only_gets_its_first_downtime() -> None:
    assert replay("converging", MigrationOptions()) == [(0, SetDowntime(101))]


def test_a_stalling_migration_raises_the_downtime_each_stalled_iteration_then_aborts() -> None:
    decisions = replay("stalling", MigrationOptions(completion_timeout_per_gib_s=600))
    downtimes = [(t, d.milliseconds) for t, d in decisions if isinstance(d, SetDowntime)]
    # iterations 3, 4, 5 and 6 begin with as much to send as iteration 2 did
    assert downtimes == [(0, 101), (14, 104), (17, 120), (20, 189), (23, 500)]
    # the least remaining data was seen at second 10 (end of the first pass): 150 s later
    assert decisions[-1] == (160, Abort("no progress for 150 s (progress timeout)"))
    # with the default completion timeout (150 s per GiB) that one comes first
    assert replay("stalling", MigrationOptions())[-1] == (
        150,
        Abort("not complete after 150 s (completion timeout)"),
    )


def test_a_stalling_migration_switches_to_post_copy_after_the_last_step_when_allowed() -> None:
    decisions = replay("stalling", MigrationOptions(post_copy=True))
    switch = [(t, d) for t, d in decisions if isinstance(d, StartPostCopy)]
    assert len(switch) == 1 and switch[0][0] == 26 and "stalled" in switch[0][1].reason
    assert decisions[-1] == switch[0]  # nothing is decided after the switch


def test_a_stream_that_stops_is_aborted_after_the_progress_timeout() -> None:
    decisions = replay("target_hung", MigrationOptions(progress_timeout_s=30))
    assert decisions[0] == (0, SetDowntime(101))
    second, abort = decisions[-1]
    # the stream stops after second 4: the last new low
    assert (second, abort) == (4 + 30, Abort("no progress for 30 s (progress timeout)"))


def test_a_slow_but_progressing_migration_meets_the_completion_timeout() -> None:
    # 1 GiB at 1 MiB/s: progress every second, but not done within 150 s per GiB
    second, abort = replay("throttled", MigrationOptions())[-1]
    assert isinstance(abort, Abort) and "completion timeout" in abort.reason and second == 150
    switch = replay("throttled", MigrationOptions(post_copy=True, on_timeout=POST_COPY))
    assert isinstance(switch[-1][1], StartPostCopy) and switch[-1][0] == 150


def test_nothing_is_decided_once_post_copy_runs() -> None:
    clock = Clock()
    policy = Policy(MigrationOptions(progress_timeout_s=5), GIB, clock)
    policy.observe(JobSample(data_total=GIB, data_remaining=GIB, memory_iteration=1))
    clock.now += 100
    assert policy.observe(JobSample(data_total=GIB, data_remaining=GIB, post_copy=True)) == []


def test_completion_timeout_scales_with_size_and_is_at_least_one_gib() -> None:
    clock = Clock()
    assert Policy(MigrationOptions(), 256 << 20, clock).completion_timeout_s == 150
    assert Policy(MigrationOptions(), 5 * GIB, clock).completion_timeout_s == 750


def test_a_new_max_downtime_while_running_leads_the_steps_there() -> None:
    policy = Policy(MigrationOptions(), GIB, Clock())
    policy.set_max_downtime(2000)
    assert policy.observe(JobSample())[0] == SetDowntime(downtime_steps(2000, 5)[0])
    with pytest.raises(InvalidSpec, match="max_downtime_ms"):
        policy.set_max_downtime(0)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (MigrationOptions(post_copy=True, auto_converge=True), "options.post_copy"),
        (MigrationOptions(on_timeout=POST_COPY), "options.on_timeout"),
        (MigrationOptions(on_timeout="pause"), "options.on_timeout"),
        (MigrationOptions(bandwidth_mib=-1), "options.bandwidth_mib"),
        (MigrationOptions(max_downtime_ms=0), "options.max_downtime_ms"),
        (MigrationOptions(parallel_connections=0), "options.parallel_connections"),
        (MigrationOptions(parallel_connections=256), "options.parallel_connections"),
        (MigrationOptions(progress_timeout_s=0), "options.progress_timeout_s"),
        (MigrationOptions(completion_timeout_per_gib_s=0), "options.completion_timeout_per_gib_s"),
    ],
)
def test_bad_options_name_the_field(options: MigrationOptions, field: str) -> None:
    with pytest.raises(InvalidSpec, match=f"^{field}:"):
        options.validate()
