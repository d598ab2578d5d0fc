"""Golden files: compare text with tests/unit/golden/NAME; UPDATE_GOLDEN=1 rewrites them."""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def assert_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(actual)
    assert path.exists(), f"no golden file {path}: create it with UPDATE_GOLDEN=1 and review it"
    assert actual == path.read_text(), f"regenerate with UPDATE_GOLDEN=1 and review {path}"
