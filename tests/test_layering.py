"""The shape of the code: packages depend one way, only the node touches the wire contract.

    config  <-  models  <-  data  <-  transfer  <-  orchestrator_free  <-  node  <-  bench  <-  sim  <-  app

A package may import only packages to its left (and itself); ``proto`` (the generated wire contract)
is imported by ``node`` alone. Every import counts: module level, inside functions, under
TYPE_CHECKING. The README's folder map states the same order.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["config", "models", "data", "transfer", "orchestrator_free", "node", "bench", "sim", "app"]
WIRE_USERS = {"node"}


def _imports(path: Path, package: str) -> set[str]:
    """Every ``crossback.<pkg>`` a file imports (relative imports resolved)."""
    module = ["crossback", package, *path.relative_to(ROOT / package).with_suffix("").parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module[:-1]  # a module's package (an __init__'s "module" is its package already)
                base = base[:len(base) - (node.level - 1)] + (node.module.split(".") if node.module else [])
                names = [".".join(base + ["x"])]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("crossback.") and n.count(".") >= 1}
    return found


def package_edges(packages=(*LAYERS, "proto")) -> dict[str, dict[str, list[str]]]:
    """{package: {imported package: [files]}} for every package of the project."""
    edges: dict[str, dict[str, list[str]]] = {}
    for pkg in packages:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name.endswith("_pb2.py") or path.name.endswith("_pb2_grpc.py"):
                continue
            for other in _imports(path, pkg) - {pkg}:
                edges.setdefault(pkg, {}).setdefault(other, []).append(str(path.relative_to(ROOT)))
    return edges


def test_every_package_is_in_the_documented_order():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() and p.name != "tests"}
    assert packages == set(LAYERS) | {"proto"}, "a new top-level package needs a place in LAYERS and the README map"


def test_packages_import_only_packages_below_them():
    broken = []
    for pkg, targets in package_edges().items():
        for other, files in targets.items():
            if other == "proto":
                if pkg not in WIRE_USERS:
                    broken.append(f"{pkg} -> proto ({', '.join(files)}): only {sorted(WIRE_USERS)} touch the wire")
            elif pkg == "proto" or LAYERS.index(other) > LAYERS.index(pkg):
                broken.append(f"{pkg} -> {other} ({', '.join(files)})")
    assert not broken, "layering broken:\n" + "\n".join(broken)


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> list[str] | None:
        state[n] = 1
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return path + [n, m]
            if m not in state and (found := visit(m, path + [n])):
                return found
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n, [])):
            return found
    return None


def test_no_import_cycle_between_packages():
    edges = {pkg: set(targets) for pkg, targets in package_edges().items()}
    assert _cycle(edges) is None, f"package cycle: {' -> '.join(_cycle(edges))}"


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_reader_sees_every_kind_of_import(tmp_path):
    pkg = ROOT / "node"
    probe = pkg / "_layering_probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from crossback.app import cli\n"
                     "def f():\n    import crossback.bench.stats\n    from ..transfer import base\n    from . import wire\n")
    try:
        assert _imports(probe, "node") == {"app", "bench", "transfer", "node"}
    finally:
        probe.unlink()


@pytest.mark.parametrize("module", ["crossback.config.run", "crossback.config.node", "crossback.config.bench"])
def test_loading_a_config_pulls_in_no_torch_or_grpc(module):
    code = (f"import sys, {module}\n"
            "heavy = sorted(m for m in ('torch', 'grpc', 'crossback.models', 'crossback.node') if m in sys.modules)\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
