"""The layout of docs/architecture.md holds: packages import only downwards, no module imports in a
circle, serving runs without torch, numba or prefect, and a bundle of format 1 still opens."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# what each part may import (besides itself); "" is the top-level modules (errors, config, vectors, ...)
ALLOWED = {
    "": set(),
    "data": {""},
    "ingest": {"", "data"},
    "embed": {"", "data"},
    "evaluation": {"", "data"},
    "serving": {"", "ingest"},
    "recommenders": {"", "data", "embed", "evaluation", "serving"},
    "jobs": {"", "data", "ingest", "embed", "evaluation", "recommenders", "serving"},
    "flows": {"", "data", "ingest", "embed", "evaluation", "recommenders", "serving", "jobs"},
    "app": {"", "data", "ingest", "embed", "evaluation", "recommenders", "serving", "jobs", "flows"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "recsys").rglob("*.py")) + sorted((ROOT / "flows").glob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _part(module: str) -> str:
    pieces = module.split(".")
    if pieces[0] == "flows":
        return "flows"
    return pieces[1] if len(pieces) > 2 or (len(pieces) == 2 and pieces[1] in ALLOWED) else ""


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported project module, at the top of the file) for every import statement."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in ("recsys", "flows"):
                found.append((name, id(node) in top))
    return found


def test_packages_import_only_downwards():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        if module == "recsys":  # the package facade: `from recsys import Client`
            continue
        part = _part(module)
        for imported, _ in _imports(path, modules):
            other = _part(imported)
            if imported != "recsys" and other != part and other not in ALLOWED[part]:
                wrong.append(f"{module} -> {imported}")
    assert not wrong, "imports against the layout: " + ", ".join(sorted(set(wrong)))


def test_no_module_imports_in_a_circle():
    modules = _modules()
    graph = {m: {i for i, _ in _imports(p, modules) if i != m and i != "recsys"} for m, p in modules.items()
             if m != "recsys"}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(trail[trail.index(nxt):] + [node, nxt] if nxt in trail else [node, nxt])
                return True
            if nxt not in state and visit(nxt, trail + [node]):
                return True
        state[node] = 2
        return False

    for module in sorted(graph):
        if module not in state and visit(module, []):
            break
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_library_imports_sit_at_the_top_of_modules():
    # the CLI and the client keep heavy imports lazy on purpose (start-up time; each says why)
    lazy_ok = {"recsys.app.cli", "recsys.app.cli_serving", "recsys.app.cli_data", "recsys.app.cli_http",
               "recsys.serving.client"}
    modules = _modules()
    inside = [f"{m} -> {i}" for m, p in modules.items() if m not in lazy_ok and m != "recsys"
              for i, at_top in _imports(p, modules) if not at_top]
    assert not inside, "project imports inside functions: " + ", ".join(inside)


SERVE = """
import json, sys
from recsys.serving.client import Client
client = Client.open(sys.argv[1])
client.similar("item-0010", k=5)
client.similar_batch(["item-0010", "item-0030"], k=5)
client.similar_to_new_item(category="dairy", brand="acme", price=42.0, k=5)
print(json.dumps(sorted(m for m in ("torch", "numba", "prefect") if m in sys.modules)))
"""


def test_serving_loads_no_torch_numba_or_prefect():
    out = subprocess.run([sys.executable, "-c", SERVE, str(FIXTURES / "bundle-format1")], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_a_bundle_published_before_the_relayout_opens_and_answers_the_same(tmp_path):
    """tests/fixtures/bundle-format1 was written by the code before the re-layout (commit 7adccb2),
    with the answers its client gave beside it."""
    from recsys.serving.client import Client

    expected = json.loads((FIXTURES / "bundle-format1.answers.json").read_text())
    client = Client.open(FIXTURES / "bundle-format1")
    for item_id, want in expected["similar"].items():
        got = [[n.item_id, n.score] for n in client.similar(item_id, k=5)]
        assert [g[0] for g in got] == [w[0] for w in want]
        assert [g[1] for g in got] == pytest.approx([w[1] for w in want], abs=1e-4)
    got = client.similar_to_new_item(category="dairy", brand="acme", price=42.0, k=5)
    assert [n.item_id for n in got] == [w[0] for w in expected["new_item"]]
    assert [n.score for n in got] == pytest.approx([w[1] for w in expected["new_item"]], abs=1e-4)
    assert client.similar("item-0010", k=1)[0].why["query_attention"] == pytest.approx(expected["why"], abs=1e-6)
