"""Rebuild tests/data/kubevirt/ from snapshots of KubeVirt's public repositories.

    python3 hack/corpus_import.py MIRROR_DIR   # MIRROR_DIR/<owner>+<repo>/repo are git dirs

Run with a Python that has PyYAML and Jinja2 (the common templates are Ansible/Jinja
templates: they are rendered with stub osinfo lookups for x86_64 and a few flavours, and
their ${PARAMETERS} are filled with placeholder values). Every written file starts with a
``# source:`` line naming the repository, path and commit. VirtualMachine and
VirtualMachineInstance documents are de-duplicated by content; other documents in the same
file are kept (vmctl skips them and says so). Files with only instancetypes or preferences
go to instancetypes/ (the folder hack/corpus.py hands vmctl as --instancetypes).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import yaml

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "kubevirt"
VM_KINDS = ("VirtualMachine", "VirtualMachineInstance")
TYPE_KINDS = ("VirtualMachineInstancetype", "VirtualMachineClusterInstancetype")
TYPE_KINDS += ("VirtualMachinePreference", "VirtualMachineClusterPreference")
MAX_VMS = 300
FLAVOURS = (
    {"flavor": "small", "workload": "server", "memsize": "2Gi", "cpus": 1},
    {"flavor": "medium", "workload": "desktop", "memsize": "4Gi", "cpus": 1, "tablet": True},
    {"flavor": "large", "workload": "highperformance", "memsize": "8Gi", "cpus": 2}
    | {"iothreads": True, "emulatorthread": True, "multiqueue": True},
)


class _Stub(str):
    """What an osinfo/env lookup returns: any attribute or key gives another stub."""

    def __new__(cls, text: str = "stub") -> _Stub:
        return super().__new__(cls, text)

    def __getattr__(self, name: str) -> _Stub:
        return _Stub(name)

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        return 2147483648 if "ram" in str(key) else _Stub(str(key))


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def _documents(text: str) -> list[Any]:
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        return []


class Corpus:
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.vms = 0

    def add(self, name: str, source: str, documents: list[Any]) -> None:
        kept = []
        for document in documents:
            if not isinstance(document, dict):
                continue
            if document.get("kind") in VM_KINDS:
                digest = hashlib.sha256(
                    json.dumps(document, sort_keys=True, default=str).encode()
                ).hexdigest()
                if digest in self.seen or self.vms >= MAX_VMS:
                    continue
                self.seen.add(digest)
                self.vms += 1
            kept.append(document)
        if not any(d.get("kind") in VM_KINDS for d in kept):
            types = [d for d in kept if d.get("kind") in TYPE_KINDS]
            if types:  # what the VMs refer to: hack/corpus.py passes it as --instancetypes
                body = yaml.safe_dump_all(types, sort_keys=False, default_flow_style=False)
                path = OUT / "instancetypes" / name.replace("/", "-")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"# source: {source}\n{body}")
            return
        body = yaml.safe_dump_all(kept, sort_keys=False, default_flow_style=False)
        path = OUT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# source: {source}\n{body}")


def kubevirt_examples(corpus: Corpus, repo: Path, commit: str) -> None:
    for path in sorted(_git(repo, "ls-tree", "--name-only", "HEAD", "examples/").split()):
        if path.endswith(".yaml"):
            documents = _documents(_git(repo, "show", f"HEAD:{path}"))
            name = "kubevirt/" + path.removeprefix("examples/")
            corpus.add(name, f"kubevirt/kubevirt {path} @ {commit}", documents)


def user_guide(corpus: Corpus, repo: Path, commit: str) -> None:
    files = _git(repo, "ls-tree", "-r", "--name-only", "HEAD", "docs/").split()
    block = re.compile(r"^```ya?ml[^\n]*\n(.*?)^```", re.M | re.S)
    for path in sorted(p for p in files if p.endswith(".md")):
        text = _git(repo, "show", f"HEAD:{path}")
        for index, match in enumerate(block.finditer(text), start=1):
            documents = _documents(match.group(1))
            slug = path.removeprefix("docs/").removesuffix(".md").replace("/", "-")
            source = f"kubevirt/user-guide {path} (yaml block {index}) @ {commit}"
            corpus.add(f"user-guide/{slug}-{index}.yaml", source, documents)


def common_templates(corpus: Corpus, repo: Path, commit: str) -> None:
    env = jinja2.Environment(undefined=jinja2.Undefined)
    env.globals["lookup"] = lambda *args, **kwargs: _Stub()
    files = _git(repo, "ls-tree", "--name-only", "HEAD", "templates/").split()
    for path in sorted(p for p in files if p.endswith(".tpl.yaml")):
        template = env.from_string(_git(repo, "show", f"HEAD:{path}"))
        os_name = Path(path).name.removesuffix(".tpl.yaml")
        for flavour in FLAVOURS:
            item = {"tablet": False, "iothreads": False, "emulatorthread": False} | flavour
            text = template.render(
                os=os_name, item=item, suffix="", target_arch="x86_64", oslabels=[os_name],
                osinfoname=os_name, icon=os_name, containerdisk_urls=[], image_urls=[],
                cloudusername="cloud-user", majorrelease=os_name,
            )  # fmt: skip
            text = re.sub(r"\$\{(\w+)\}", lambda m: m.group(1).lower().replace("_", "-"), text)
            objects = [o for d in _documents(text) for o in d.get("objects", [])]
            source = f"kubevirt/common-templates {path} ({item['workload']}) @ {commit}"
            corpus.add(f"common-templates/{os_name}-{item['workload']}.yaml", source, objects)


def main(mirror: Path) -> None:
    corpus = Corpus()
    for owner_repo, load in (
        ("kubevirt+kubevirt", kubevirt_examples),
        ("kubevirt+user-guide", user_guide),
        ("kubevirt+common-templates", common_templates),
    ):
        repo = mirror / owner_repo / "repo"
        load(corpus, repo, _git(repo, "rev-parse", "--short=12", "HEAD").strip())
    print(f"{corpus.vms} VM documents written under {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
