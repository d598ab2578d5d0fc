"""Run the KubeVirt manifest corpus (tests/data/kubevirt/) through vmctl and the agent's parser.

    PYTHONPATH=$PWD .venv/bin/python hack/corpus.py [-v]

Prints the share of VirtualMachine/VirtualMachineInstance documents accepted and the most
common first blocking fields (-v: every refusal). tests/unit/test_corpus.py holds the floor.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from agent.cli.instancetypes import Catalog
from agent.cli.validate import Verdict, validate_text

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "kubevirt"


@dataclass(frozen=True)
class Result:
    path: Path
    verdict: Verdict | None  # None: the document crashed the validation
    crash: str = ""


def run_corpus(root: Path = CORPUS) -> list[Result]:
    """One result per VM document (other kinds are left out), crashes caught and named."""
    results = []
    for path in sorted(root.rglob("*.yaml")):
        if path.parent.name == "instancetypes":
            continue
        catalog = Catalog.with_builtins()
        catalog.add_folder(root / "instancetypes")  # as vmctl apply --instancetypes DIR
        try:
            verdicts = validate_text(path.read_text(), default_namespace="default", catalog=catalog)
        except Exception as exc:  # noqa: BLE001 - the report names what crashed
            results.append(Result(path, None, f"{type(exc).__name__}: {exc}"))
            continue
        results.extend(Result(path, v) for v in verdicts if not v.skipped)
    return results


def field_pattern(field: str) -> str:
    """A field path with list indices and map keys of labels dropped: what to count."""
    return re.sub(r"\[\d+\]", "[]", field)


def report(results: list[Result], *, verbose: bool = False) -> str:
    accepted = sum(1 for r in results if r.verdict is not None and r.verdict.accepted)
    lines = [f"{accepted}/{len(results)} VM documents accepted ({share(results):.1%})"]
    blocking = Counter(
        field_pattern(r.verdict.field) or r.verdict.problem
        for r in results
        if r.verdict is not None and not r.verdict.accepted
    )
    lines += [f"{count:4d}  {field}" for field, count in blocking.most_common(25)]
    lines += [f"CRASH {r.path}: {r.crash}" for r in results if r.verdict is None]
    if verbose:
        root = CORPUS.parent.parent.parent
        lines += [
            f"{r.path.relative_to(root)}: {r.verdict.line()}"
            for r in results
            if r.verdict is not None and not r.verdict.accepted
        ]
    return "\n".join(lines)


def share(results: list[Result]) -> float:
    accepted = sum(1 for r in results if r.verdict is not None and r.verdict.accepted)
    return accepted / len(results) if results else 0.0


if __name__ == "__main__":
    print(report(run_corpus(), verbose="-v" in sys.argv[1:]))
