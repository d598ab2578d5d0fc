"""Cost of one periodic resync pass over N taps, against rewriting every tap, in the same run.

In a network namespace of its own (made and removed here; needs root), it makes 10, 100 and
500 routed taps as the agent does (gateway address, /32 route, permanent neighbour entry,
proxy_arp) and, for each count, times (median of --runs):

  measure   what a resync pass does when all is in place: ``Links.taps(measure=True)``
            (one dump each of links, addresses, routes and neighbours, plus each tap's two
            sysctls) and the drift check of every tap; nothing is written
  rewrite   the baseline: ``ensure_tap`` on every tap (what a pass that does not measure
            first, or the reconcile before it measured, does)

and prints milliseconds per pass, per tap, and the measure/rewrite ratio. It passes or
fails nothing.

Run: PYTHONPATH=$PWD .venv/bin/python bench/bench_resync.py [--counts 10,100,500] [--runs 5]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from agent.adapters.netlink import PyRoute2Links
from agent.network.drift import tap_drift
from agent.network.plan import TapPlan

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plan(index: int) -> TapPlan:
    high, low = divmod(index + 2, 256)
    return TapPlan(
        name=f"vb{index:012x}",
        alias=f"virt-agent:bench_vm{index}/default",
        mac=f"fe:54:00:00:{high:02x}:{low:02x}",
        mtu=1500,
        multi_queue=False,
        group=1,
        gateway="10.250.0.1",
        guest_ip=f"10.250.{high}.{low}",
        guest_mac=f"52:54:00:00:{high:02x}:{low:02x}",
    )


def median_ms(action: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(links: PyRoute2Links, plans: list[TapPlan]) -> None:
    found = links.taps(measure=True)
    drifted = [t.name for t in plans if tap_drift(t, found.get(t.name))]
    assert not drifted, f"taps not in place: {drifted[:3]}"


def rewrite(links: PyRoute2Links, plans: list[TapPlan]) -> None:
    for tap in plans:
        links.ensure_tap(tap, replace=False)


def inside(counts: list[int], runs: int) -> None:
    """Runs in the bench's own network namespace."""
    links = PyRoute2Links()
    made = 0
    print(f"{'taps':>6} {'measure ms':>11} {'rewrite ms':>11} {'per tap':>9} {'ratio':>7}")
    for count in counts:
        plans = [plan(i) for i in range(count)]
        for tap in plans[made:]:
            links.ensure_tap(tap, replace=True)
        made = count

        measured = median_ms(functools.partial(measure, links, plans), runs)
        rewritten = median_ms(functools.partial(rewrite, links, plans), runs)
        print(
            f"{count:>6} {measured:>11.1f} {rewritten:>11.1f} "
            f"{measured / count * 1000:>7.0f}us {measured / rewritten:>7.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="10,100,500")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if args.inside:
        inside(counts, args.runs)
        return 0
    netns = f"bench-resync-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        argv = [sys.executable, os.path.abspath(__file__), "--inside", "--counts", args.counts]
        argv += ["--runs", str(args.runs)]
        env = dict(os.environ, PYTHONPATH=_REPO)
        return subprocess.run(["ip", "netns", "exec", netns, *argv], env=env).returncode
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


if __name__ == "__main__":
    sys.exit(main())
