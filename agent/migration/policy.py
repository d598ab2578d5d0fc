"""The live-migration policy: libvirt job-stat samples + a clock → what the monitor must do.

Pure: no libvirt, no threads, no wall clock (the caller injects ``clock``). The monitor feeds
it one ``JobSample`` per poll and applies the decisions it returns.

- **Downtime steps** (VDSM's convergence schedule): the allowed downtime starts at the first
  of ``downtime_steps`` exponentially growing values up to ``max_downtime_ms``; a new memory
  iteration that starts with no less to send than earlier ones did (less than 4% below their
  lowest, KubeVirt's stall margin) counts as stalling and raises it one step. Once all
  steps are used, stalling switches to post-copy when that is allowed; otherwise the
  timeouts below decide.
- **Progress timeout** (KubeVirt's): no new low of remaining data in any sample for
  ``progress_timeout_s`` → abort.
- **Completion timeout** (KubeVirt's and Nova's): ``completion_timeout_per_gib_s`` × the GiB
  of memory and disk to copy (at least one) → ``on_timeout``: abort, or switch to post-copy.
- Once post-copy runs nothing is decided any more: it cannot be undone or aborted safely.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent.errors import InvalidSpec
from agent.ports import JobSample

__all__ = [
    "ABORT",
    "POST_COPY",
    "Abort",
    "Decision",
    "MigrationOptions",
    "Policy",
    "SetDowntime",
    "StartPostCopy",
    "downtime_steps",
]

GIB = 1 << 30
ABORT = "abort"
POST_COPY = "post-copy"
ON_TIMEOUT = (ABORT, POST_COPY)
MAX_PARALLEL_CONNECTIONS = 255  # QEMU's multifd channel limit
MAX_DOWNTIME_MS = 60_000  # beyond a minute the guest notices whatever we call it
STALL_MARGIN = 0.04  # an iteration must start 4% below the best earlier one to count as progress


@dataclass(frozen=True, slots=True)
class MigrationOptions:
    """What a caller may choose for one migration (checked by ``validate``)."""

    bandwidth_mib: int = 0  # MiB/s; 0 = unlimited
    max_downtime_ms: int = 500
    downtime_steps: int = 5
    auto_converge: bool = False
    post_copy: bool = False
    parallel_connections: int = 1
    progress_timeout_s: int = 150
    completion_timeout_per_gib_s: int = 150
    on_timeout: str = ABORT

    def validate(self, prefix: str = "options") -> MigrationOptions:
        """Self, or InvalidSpec naming the field at fault."""
        checks = (
            (self.bandwidth_mib >= 0, "bandwidth_mib", "must not be negative"),
            (
                1 <= self.max_downtime_ms <= MAX_DOWNTIME_MS,
                "max_downtime_ms",
                f"must be 1-{MAX_DOWNTIME_MS}",
            ),
            (1 <= self.downtime_steps <= 100, "downtime_steps", "must be 1-100"),
            (
                1 <= self.parallel_connections <= MAX_PARALLEL_CONNECTIONS,
                "parallel_connections",
                f"must be 1-{MAX_PARALLEL_CONNECTIONS}",
            ),
            (self.progress_timeout_s >= 1, "progress_timeout_s", "must be 1 or more"),
            (
                self.completion_timeout_per_gib_s >= 1,
                "completion_timeout_per_gib_s",
                "must be 1 or more",
            ),
            (
                self.on_timeout in ON_TIMEOUT,
                "on_timeout",
                f"must be one of {', '.join(ON_TIMEOUT)}",
            ),
            (
                not (self.post_copy and self.auto_converge),
                "post_copy",
                "post-copy and auto-converge cannot be used together (choose one)",
            ),
            (
                self.on_timeout != POST_COPY or self.post_copy,
                "on_timeout",
                "switching to post-copy on timeout needs post_copy allowed",
            ),
        )
        for ok, name, problem in checks:
            if not ok:
                raise InvalidSpec(f"{prefix}.{name}", problem)
        return self


@dataclass(frozen=True, slots=True)
class SetDowntime:
    milliseconds: int


@dataclass(frozen=True, slots=True)
class StartPostCopy:
    reason: str


@dataclass(frozen=True, slots=True)
class Abort:
    reason: str


Decision = SetDowntime | StartPostCopy | Abort


def downtime_steps(max_downtime_ms: int, steps: int) -> list[int]:
    """VDSM's ``exponential_downtime``: ``steps`` values growing to ``max_downtime_ms``."""
    if steps <= 1:
        return [max_downtime_ms]
    offset = max_downtime_ms / steps
    base = (max_downtime_ms - offset) ** (1 / (steps - 1))
    values = [int(offset + base**i) for i in range(steps)]
    values[-1] = max_downtime_ms  # no rounding below what the caller allowed
    return values


class Policy:
    """Feed ``observe`` each sample; apply what it returns, in order.

    ``size_bytes`` is memory plus the disks libvirt copies (for the completion timeout), as
    known at the start; the job's storage-copy total (``disk_total``) is added once seen.
    """

    def __init__(
        self, options: MigrationOptions, size_bytes: int, clock: Callable[[], float]
    ) -> None:
        self.options = options
        self._clock = clock
        self._started = clock()
        self._known_bytes = size_bytes
        self.size_bytes = 0
        self.completion_timeout_s = 0.0
        self._grow(size_bytes)
        self._steps = downtime_steps(options.max_downtime_ms, options.downtime_steps)
        self._step = -1
        self._lowmark: int | None = None
        self._last_progress = self._started
        self._iteration = 0
        self._best_iteration_start: int | None = None  # least remaining an iteration began with
        self._post_copy = False
        self._done = False

    @property
    def downtime_ms(self) -> int:
        """The downtime allowed now (0 before the first decision)."""
        return self._steps[self._step] if self._step >= 0 else 0

    def _grow(self, size_bytes: int) -> None:
        """The completion timeout follows the GiB to copy (at least one)."""
        if size_bytes > self.size_bytes:
            self.size_bytes = size_bytes
            size_gib = max(1.0, size_bytes / GIB)
            self.completion_timeout_s = self.options.completion_timeout_per_gib_s * size_gib

    def set_max_downtime(self, milliseconds: int) -> None:
        """A caller raised or lowered the limit while running: the steps lead there now."""
        self.options = dataclasses.replace(self.options, max_downtime_ms=milliseconds).validate()
        self._steps = downtime_steps(milliseconds, self.options.downtime_steps)

    def observe(self, sample: JobSample) -> list[Decision]:
        if self._done:
            return []
        decisions: list[Decision] = []
        if self._step < 0:
            self._step = 0
            decisions.append(SetDowntime(self._steps[0]))
        if sample.post_copy or self._post_copy:
            self._post_copy = True
            return decisions
        now = self._clock()
        self._grow(self._known_bytes + sample.disk_total)
        self._track_progress(sample, now)
        decisions += self._on_iteration(sample)
        decisions += self._on_time(now)
        if any(isinstance(d, Abort) for d in decisions):
            self._done = True
        if any(isinstance(d, StartPostCopy) for d in decisions):
            self._post_copy = True
        return decisions

    def _track_progress(self, sample: JobSample, now: float) -> None:
        if sample.data_total == 0 and sample.data_remaining == 0:
            return  # the job is setting up: nothing to judge yet
        if self._lowmark is None or sample.data_remaining < self._lowmark:
            self._lowmark = sample.data_remaining
            self._last_progress = now

    def _on_iteration(self, sample: JobSample) -> Iterator[Decision]:
        if sample.memory_iteration <= self._iteration:
            return
        self._iteration = sample.memory_iteration
        if sample.memory_iteration < 2:
            return  # the first pass sends everything: nothing to compare with
        best = self._best_iteration_start
        remaining = sample.memory_remaining
        if best is None or remaining < best:
            self._best_iteration_start = remaining
        if best is None or remaining < best * (1 - STALL_MARGIN):
            return
        if self._step + 1 < len(self._steps):
            self._step += 1
            yield SetDowntime(self._steps[self._step])
        elif self.options.post_copy:
            yield StartPostCopy(
                f"iteration {sample.memory_iteration} stalled at the largest downtime "
                f"({self.downtime_ms} ms)"
            )

    def _on_time(self, now: float) -> Iterator[Decision]:
        stalled_for = now - self._last_progress
        if stalled_for >= self.options.progress_timeout_s:
            yield Abort(f"no progress for {stalled_for:.0f} s (progress timeout)")
            return
        running_for = now - self._started
        if running_for >= self.completion_timeout_s:
            what = f"not complete after {running_for:.0f} s (completion timeout)"
            if self.options.on_timeout == POST_COPY and self.options.post_copy:
                yield StartPostCopy(what)
            else:
                yield Abort(what)
