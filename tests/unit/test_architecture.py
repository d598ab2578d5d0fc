"""The shape of `agent/`: imports only go down the layers, modules and functions stay small.

Layers, bottom to top (a unit may import its own modules and any unit of a lower layer;
units of one layer stay independent of each other):

    errors, naming, imageref, hardware → value types (quantity, labels, paths, models), generated
    protobuf, the agent's metric hooks (metrics.agent_metrics) → ports (and metrics.ports) →
    spec → disks, network → domain, adapters, config → migration → api, client, metrics (the
    collector and its server) → cli, healthcheck, peers → app → __main__
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"

LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(units)
    for units in (
        {"agent", "agent.errors", "agent.naming", "agent.defaults", "agent.imageref"}
        | {"agent.hardware", "agent.probe", "agent.configsources"}
        | {"agent.claimsources", "agent.datavolume"},
        {"agent.quantity", "agent.labels", "agent.paths", "agent.logs"}
        | {"agent.metrics.agent_metrics"}
        | {"agent.models", "agent.api._gen"},
        {"agent.ports", "agent.metrics.ports"},
        {"agent.spec"},
        {"agent.disks", "agent.network"},
        {"agent.domain", "agent.adapters", "agent.config"},
        {"agent.migration"},
        {"agent.api", "agent.client", "agent.metrics"},
        {"agent.cli", "agent.healthcheck", "agent.peers"},
        {"agent.app"},
        {"agent.__main__"},
    )
)
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def unit_of(module: str) -> str:
    """The layered unit a module belongs to: the longest listed prefix of its dotted name."""
    parts = module.split(".")
    for size in range(len(parts), 1, -1):  # "agent" alone is only the package's __init__
        candidate = ".".join(parts[:size])
        if any(candidate in layer for layer in LAYERS):
            return candidate
    return module if module == "agent" else ".".join(parts[:2])


def layer_of(unit: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if unit in layer), None)


def violations(imports: Mapping[str, set[str]]) -> list[str]:
    """Every import that goes up or sideways between units, or leaves a unit unplaced."""
    found = []
    for module, targets in sorted(imports.items()):
        source = unit_of(module)
        source_layer = layer_of(source)
        if source_layer is None:
            found.append(f"{module}: unit {source} is in no layer of tests/unit/test_architecture")
            continue
        for target in sorted(targets):
            unit = unit_of(target)
            target_layer = layer_of(unit)
            if unit == source or (target_layer is not None and target_layer < source_layer):
                continue
            found.append(f"{module} imports {target} ({source} may not depend on {unit})")
    return found


def _module_name(path: Path) -> str:
    relative = path.relative_to(AGENT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> Iterator[Path]:
    for path in sorted(AGENT.rglob("*.py")):
        if "_gen" not in path.parts:
            yield path


def agent_imports() -> dict[str, set[str]]:
    """module → the agent modules it imports (also under TYPE_CHECKING and inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in _sources():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
                targets.update(n for n in [node.module, *names] if n.startswith("agent."))
                if node.module == "agent":
                    targets.add("agent")
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == "agent")
        graph[_module_name(path)] = {t for t in targets if _is_module(t)}
    return graph


def _is_module(dotted: str) -> bool:
    """Whether ``agent.x.y`` names a module or package (not a name inside a module)."""
    path = AGENT.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_imports_only_go_down_the_layers() -> None:
    assert violations(agent_imports()) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"agent.network.plan": {"agent.domain.metadata"}}, ["agent.network.plan imports"]),
        ({"agent.models": {"agent.ports"}}, ["agent.models imports"]),
        ({"agent.disks.cache": {"agent.network.names"}}, ["agent.disks.cache imports"]),
        ({"agent.domain.steps": {"agent.adapters.libvirt"}}, ["agent.domain.steps imports"]),
        ({"agent.newthing": {"agent.errors"}}, ["agent.newthing: unit agent.newthing"]),
        ({"agent.domain.steps": {"agent.network.names", "agent.domain.xml"}}, []),
        ({"agent.app": {"agent.adapters.libvirt", "agent.api.server"}}, []),
    ],
    ids=["upward", "models-on-ports", "sideways", "core-on-adapter", "unplaced", "down", "root"],
)
def test_the_check_catches_upward_and_sideways_imports(
    graph: dict[str, set[str]], expected: list[str]
) -> None:
    found = violations(graph)
    assert len(found) == len(expected)
    for line, start in zip(found, expected, strict=True):
        assert line.startswith(start)


def test_modules_stay_under_400_lines() -> None:
    long = {
        str(path.relative_to(AGENT.parent)): lines
        for path in _sources()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_functions_stay_under_50_lines() -> None:
    long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(AGENT.parent)}:{node.lineno} {node.name}"] = size
    assert long == {}


# Each third-party library behind a port is imported by its own adapter only (ruff's TID251
# bans it everywhere else; this narrows the adapters' exemption to one library each).
ADAPTER_OF = {
    "libvirt": ("agent.adapters.libvirt", "agent.adapters.libvirt_"),
    "pyroute2": ("agent.adapters.netlink",),
    "nftables": ("agent.adapters.nft",),
    "psutil": ("agent.adapters.host",),
    "httpx": ("agent.adapters.registry", "agent.adapters.download"),
    "pycdlib": ("agent.adapters.iso",),
}


def library_imports() -> dict[str, set[str]]:
    """module → the adapter-owned libraries it imports."""
    found: dict[str, set[str]] = {}
    for path in _sources():
        libraries = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                libraries |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                libraries.add(node.module.split(".")[0])
        found[_module_name(path)] = libraries & set(ADAPTER_OF)
    return found


def test_each_library_is_imported_by_its_adapter_only() -> None:
    strays = [
        f"{module} imports {library}"
        for module, libraries in sorted(library_imports().items())
        for library in sorted(libraries)
        if not module.startswith(ADAPTER_OF[library])
    ]
    assert strays == []
