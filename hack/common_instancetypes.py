"""Regenerate agent/cli/data/common_instancetypes.yaml from kubevirt/common-instancetypes.

    python3 hack/common_instancetypes.py REPO_GIT_DIR

Renders the repository's cluster instancetypes and preferences with ``kubectl kustomize``
and keeps what vmctl knows by name: the u1, o1, cx1, m1 and n1 series and the amd64
preferences, each reduced to its name and spec.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "agent" / "cli" / "data" / "common_instancetypes.yaml"
SERIES = ("u1.", "o1.", "cx1.", "m1.", "n1.")
OTHER_ARCHES = (".arm64", ".s390x")


def _render(tree: Path, folder: str) -> list[dict[str, object]]:
    text = subprocess.run(
        ["kubectl", "kustomize", str(tree / folder)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def main(repo: Path) -> None:
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "HEAD"], check=True, capture_output=True
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        tarfile.open(fileobj=BytesIO(archive)).extractall(tmp, filter="data")
        types = _render(Path(tmp), "VirtualMachineClusterInstancetypes")
        preferences = _render(Path(tmp), "VirtualMachineClusterPreferences")
    kept = [
        {"kind": d["kind"], "metadata": {"name": d["metadata"]["name"]}, "spec": d["spec"]}  # type: ignore[index]
        for d in types + preferences
        if str(d["metadata"]["name"]).startswith(SERIES)  # type: ignore[index]
        or d["kind"] == "VirtualMachineClusterPreference"
        and not any(a in str(d["metadata"]["name"]) for a in OTHER_ARCHES)  # type: ignore[index]
    ]
    header = f"# source: kubevirt/common-instancetypes @ {commit} (hack/common_instancetypes.py)\n"
    OUT.write_text(header + yaml.safe_dump_all(kept, sort_keys=True))
    print(f"{len(kept)} documents written to {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
