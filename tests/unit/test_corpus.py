"""The corpus of real KubeVirt manifests (tests/data/kubevirt/, see hack/corpus_import.py):
the share vmctl and the agent accept never falls, and every refusal names a field."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

# The share reached so far; raise it when more of KubeVirt is supported, never lower it.
FLOOR = 0.32
HACK = Path(__file__).resolve().parents[2] / "hack" / "corpus.py"


def _corpus_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("corpus_report", HACK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus() -> ModuleType:
    return _corpus_module()


def test_corpus_is_a_few_hundred_vm_documents_with_their_sources(corpus: ModuleType) -> None:
    files = sorted(corpus.CORPUS.rglob("*.yaml"))
    assert all(f.read_text().startswith("# source: kubevirt/") for f in files)
    assert 150 <= len(corpus.run_corpus()) <= 400


def test_share_accepted_does_not_fall(corpus: ModuleType) -> None:
    results = corpus.run_corpus()
    assert corpus.share(results) >= FLOOR, corpus.report(results)


def test_every_refusal_is_clean_and_names_a_field(corpus: ModuleType) -> None:
    results = corpus.run_corpus()
    crashes = [f"{r.path}: {r.crash}" for r in results if r.verdict is None]
    assert crashes == []
    unnamed = [r.verdict.line() for r in results if not r.verdict.accepted and not r.verdict.field]
    assert unnamed == []
