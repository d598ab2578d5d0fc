"""Shared bench harness: statistics, result records, the machine's description, and the
JSON and markdown writers used by ``bench/run.py``."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def summary(values: list[float], scale: float = 1.0) -> dict[str, float] | None:
    """Median, p95 and p99 (nearest rank) of ``values`` times ``scale``; None if empty."""
    if not values:
        return None
    ordered = sorted(v * scale for v in values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]

    return {
        "median": statistics.median(ordered),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "n": len(ordered),
    }


def timed(call: Callable[[], object], rounds: int) -> list[float]:
    """Seconds each of ``rounds`` calls took."""
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


@dataclass
class Bench:
    """One benchmark's results: rows (agent against baseline), targets and notes."""

    name: str
    title: str
    baseline: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    def row(
        self,
        case: str,
        agent: list[float],
        baseline: list[float] | None = None,
        *,
        unit: str = "ms",
        scale: float = 1000.0,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add a row from raw samples (seconds by default, shown in ms)."""
        a = summary(agent, scale)
        b = summary(baseline or [], scale)
        ratio = a["median"] / b["median"] if a and b and b["median"] else None
        row = {"case": case, "unit": unit, "agent": a, "baseline": b, "ratio": ratio, **extra}
        self.rows.append(row)
        print(f"  {self.name}: {format_row(row)}", flush=True)
        return row

    def target(self, text: str, measured: str, holds: bool) -> None:
        self.targets.append({"target": text, "measured": measured, "holds": holds})
        print(f"  {self.name}: target {text}: {measured} -> {'holds' if holds else 'MISSED'}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  {self.name}: {text}", flush=True)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if value < 1 else f"{value:.2f}".rstrip("0").rstrip(".")


def _cell(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{_fmt(value)} {unit}"


def format_row(row: dict[str, Any]) -> str:
    a, b = row["agent"] or {}, row["baseline"] or {}
    ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-"
    return (
        f"{row['case']}: agent {_fmt(a.get('median'))}/{_fmt(a.get('p95'))} {row['unit']} "
        f"baseline {_fmt(b.get('median'))}/{_fmt(b.get('p95'))} ratio {ratio}"
    )


@contextmanager
def stage(bench: Bench) -> Iterator[Bench]:
    """Time a benchmark; an exception is recorded on it (the other benchmarks still run)."""
    started = time.monotonic()
    print(f"== {bench.name}: {bench.title}", flush=True)
    try:
        yield bench
    except Exception as exc:  # noqa: BLE001 - recorded in the report, run goes on
        bench.error = f"{type(exc).__name__}: {exc}"
        print(f"  {bench.name}: FAILED {bench.error}", flush=True)
    finally:
        bench.seconds = round(time.monotonic() - started, 1)


# -- the machine -----------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    load = os.getloadavg()
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libvirt": _first_line(["libvirtd", "--version"]),
        "qemu": _first_line(["qemu-system-x86_64", "--version"]),
        "nft": _first_line(["nft", "--version"]),
        "load_at_start": [round(x, 2) for x in load],
    }


# -- writing ---------------------------------------------------------------------------------


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Run {report['started']} ({'quick' if report['quick'] else 'full'}, "
        f"{report['seconds']:.0f} s) on {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, "
        f"Linux {m['kernel']}, {m['libvirt']}, {m['qemu'].split('(')[0].strip()}, "
        f"Python {m['python']}; load average at start {m['load_at_start']}.",
        "",
        "| benchmark | case | agent median | agent p95 | baseline median | baseline p95 "
        "| agent / baseline |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    targets, notes = [], []
    for bench in report["benchmarks"]:
        if bench["error"]:
            lines.append(f"| {bench['name']} | failed: {bench['error'][:120]} | | | | | |")
        for row in bench["rows"]:
            a, b = row["agent"] or {}, row["baseline"] or {}
            ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
            cells = [_cell(a.get(k), row["unit"]) for k in ("median", "p95")]
            cells += [_cell(b.get(k), row["unit"]) for k in ("median", "p95")]
            lines.append(f"| {bench['name']} | {row['case']} | {' | '.join(cells)} | {ratio} |")
        targets += [(bench["name"], t) for t in bench["targets"]]
        notes += [f"- {bench['name']}: baseline = {bench['baseline']}"]
        notes += [f"- {bench['name']}: {n}" for n in bench["notes"]]
    lines += ["", "| target | measured | holds |", "|---|---|---|"]
    for name, t in targets:
        lines.append(
            f"| {name}: {t['target']} | {t['measured']} | {'yes' if t['holds'] else '**no**'} |"
        )
    return "\n".join(lines + ["", *notes]) + "\n"


def update_readme(readme: Path, table: str) -> bool:
    """Replace the text between the bench markers of the README; False if they are absent."""
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    text = readme.read_text()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{begin}\n{table}{end}{tail}")
    return True


# -- processes -------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s*(\d+) kB", status, re.M)
    return int(found.group(1)) / 1024 if found else 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
