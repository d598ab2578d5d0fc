"""Run the benchmarks of issue 15 and write bench/results/*.json and *.md (``hack/bench.sh``).

A full run writes ``latest.json``/``latest.md`` and the README's table; ``--quick`` (fewer
rounds, smaller sizes) and ``--only`` runs write ``dev.json``/``dev.md`` instead, so that a
development run never replaces the committed figures.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from datetime import UTC, datetime

from bench.harness import ROOT, Bench, machine, markdown, stage, update_readme, write_json

# Order: the test-driver benchmarks first, the QEMU ones (slow, need root) last.
BENCHMARKS = {
    "density": "bench.bench_density",
    "rpc": "bench.bench_rpc",
    "footprint": "bench.bench_footprint",
    "scrape": "bench.bench_scrape",
    "nft": "bench.bench_nft",
    "start": "bench.bench_start",
    "guestnet": "bench.bench_guestnet",
    "migration": "bench.bench_migration",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, small sizes")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help=f"run only NAME (repeatable): {list(BENCHMARKS)}",
    )
    args = parser.parse_args(argv)
    names = [n for part in args.only for n in part.split(",")] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    started = time.monotonic()
    report = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "machine": machine(),
        "benchmarks": [],
        "seconds": 0.0,
    }
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        result = Bench(name, module.TITLE, module.BASELINE)
        with stage(result):  # a failure is recorded; the rows measured so far are kept
            module.run(result, args.quick)
        report["benchmarks"].append(result.as_dict())
        report["seconds"] = round(time.monotonic() - started, 1)
    full = not args.quick and not args.only
    stem = "latest" if full else "dev"
    out = ROOT / "bench" / "results"
    write_json(out / f"{stem}.json", report)
    table = markdown(report)
    (out / f"{stem}.md").write_text(table)
    print(f"\nwrote {out / stem}.json and .md in {report['seconds']:.0f} s\n")
    print(table)
    if full and not update_readme(ROOT / "README.md", table):
        print("README.md has no <!-- bench:begin --> / <!-- bench:end --> markers", file=sys.stderr)
    failed = [b["name"] for b in report["benchmarks"] if b["error"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
