"""Progress a person can see: a bar redrawn in place on a terminal, plain lines otherwise.

``LiveLine`` is the one display every ``--wait`` uses (``vmctl migrate``, ``apply``,
``start``); ``bar`` draws ``[#####.......]``. ``VMProgress`` turns the VM status the agent
publishes while it pulls a container disk or imports a DataVolume (a condition whose message
is ``volume <name>: <source>: <done> of <total> bytes``, see agent/domain/pullstatus.py) into
"bytes done of total, rate, time left", and prints each phase change until the VM settles.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from agent.api._gen.virtagent.v1 import vm_pb2

__all__ = ["BAR_WIDTH", "LiveLine", "Transfer", "VMProgress", "bar", "transfers"]

BAR_WIDTH = 24
_TRANSFER = re.compile(
    r"^volume (?P<volume>\S+): (?P<source>.*): (?P<done>\d+) of (?P<total>\d+) bytes$"
)
_RATE_WINDOW = 10.0  # seconds of samples the rate is measured over
_PLAIN_STEP = 10  # percent between two plain progress lines


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """``[#########...............]`` for a fraction in [0, 1] (clamped)."""
    filled = int(width * min(max(fraction, 0.0), 1.0))
    return "[" + "#" * filled + "." * (width - filled) + "]"


class LiveLine:
    """One status line: redrawn in place on a terminal (carriage return, erase to the end of
    the line); on anything else each ``show`` is a plain line and ``note`` lines are kept."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._open = False  # a redrawn line is on screen without its newline

    def show(self, text: str) -> None:
        """The current progress (replaces the previous one on a terminal)."""
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
            self._open = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line that stays (a phase change), below the progress line."""
        self.end()
        self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        """Finish a redrawn line so the next output starts on its own line."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


@dataclass(frozen=True, slots=True)
class Transfer:
    """One volume's pull or import as the status says it: ``done`` of ``total`` bytes."""

    volume: str
    source: str
    done: int
    total: int


def transfers(vm: vm_pb2.VirtualMachine) -> list[Transfer]:
    """The transfers under way in a VM's conditions (pulls, and imports written alike)."""
    found = []
    for condition in vm.status.conditions:
        match = _TRANSFER.match(condition.message)
        if condition.status == "True" and match:
            found.append(
                Transfer(match["volume"], match["source"], int(match["done"]), int(match["total"]))
            )
    return found


def _size(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02}:{rest % 60:02}" if hours else f"{rest // 60}:{rest % 60:02}"


class VMProgress:
    """Feeds a LiveLine from the VM updates of a watch.

    Usage::

        progress = VMProgress(LiveLine(sys.stderr), "default/web")
        for event in client.watch(...):
            progress.update(event.vm)
        progress.end()
    """

    def __init__(self, line: LiveLine, ref: str, clock: Callable[[], float] | None = None) -> None:
        self.line = line
        self.ref = ref
        self.clock = clock or time.monotonic
        self._phase = ""
        self._samples: dict[str, deque[tuple[float, int]]] = {}
        self._plain_step: dict[str, int] = {}

    def update(self, vm: vm_pb2.VirtualMachine) -> None:
        """Show a phase change as a line, and any transfer's progress."""
        phase = vm_pb2.Phase.Name(vm.status.phase).removeprefix("PHASE_").capitalize()
        said = f"{phase} ({vm.status.reason})" if vm.status.reason else phase
        if said != self._phase and vm.status.phase != vm_pb2.PHASE_UNSPECIFIED:
            self._phase = said
            self.line.note(f"vm {self.ref}: {said}")
        now = self.clock()
        for transfer in transfers(vm):
            self._show(transfer, now)

    def end(self) -> None:
        self.line.end()

    def _show(self, transfer: Transfer, now: float) -> None:
        samples = self._samples.setdefault(transfer.volume, deque())
        if samples and transfer.done < samples[-1][1]:
            samples.clear()  # started over (a retried pull)
            self._plain_step.pop(transfer.volume, None)
        samples.append((now, transfer.done))
        while len(samples) > 2 and now - samples[0][0] > _RATE_WINDOW:
            samples.popleft()
        if not self.line.tty:
            percent = 100 * transfer.done // max(transfer.total, 1)
            step = percent // _PLAIN_STEP
            if self._plain_step.get(transfer.volume, -1) >= step:
                return
            self._plain_step[transfer.volume] = step
        self.line.show(self.render(transfer, samples))

    @staticmethod
    def render(transfer: Transfer, samples: deque[tuple[float, int]]) -> str:
        """``volume root registry:5000/img [#####...] 12.0 MiB of 48.0 MiB, 3.0 MiB/s, 0:12
        left`` (rate and time left once two samples tell them)."""
        total = max(transfer.total, 1)
        text = (
            f"volume {transfer.volume} {transfer.source} {bar(transfer.done / total)} "
            f"{_size(transfer.done)} of {_size(transfer.total)}"
        )
        elapsed = samples[-1][0] - samples[0][0] if len(samples) > 1 else 0.0
        if elapsed > 0:
            rate = (samples[-1][1] - samples[0][1]) / elapsed
            text += f", {_size(rate)}/s"
            if rate > 0 and transfer.done < transfer.total:
                text += f", {_duration((transfer.total - transfer.done) / rate)} left"
        return text
