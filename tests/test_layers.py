"""Layering with no way back up (issue 11, point 5): the import graph between recgpt's packages.

Every top-level package or module of `src/recgpt` sits in one layer of `LAYERS`, lowest first. A
module may import from its own layer or any layer below, never from one above, and no two packages
may import each other, even through others (a cycle). Every import counts: module-level, inside a
function (lazy) and under `if TYPE_CHECKING:`, because each one is knowledge of a higher layer.

The graph is read with `ast` from the source files, so this test needs nothing but the sources.
A second group of tests checks that the light entry points do not load torch (about 5 s).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT_UNIT = "recgpt"  # recgpt/__init__.py: loaded by every import, so it may import nothing of recgpt

LAYERS: tuple[tuple[str, ...], ...] = (
    # the foundation: contracts (items, events, Interactions/Recommender, SFT samples, ranking, the
    # leakage exemption), atomic storage, run folders and process-wide settings; they may use one
    # another, never in a circle
    ("data", "folders", "settings", "progress"),
    ("datasets",),  # bundled datasets, loaded through data's contracts
    ("llm",),  # engines, backends, prompts, cache, ledger: know nothing of recommendation
    ("behavior",),  # compressing a user's behaviour into text, token budgets
    ("baselines",),  # recommenders implementing data's `Recommender`
    ("eval",),  # metrics, experiments that run recommenders by name, reports
    ("intent",),  # the LLM chain: interests, tags, explanations
    ("retrieval",),  # tri-tower, channels, fusion
    ("judge",),  # judging the chain's outputs, human labels, calibration
    ("serendipity",),  # SERAL: profiles, candidates, labels, SerenGPT, cache, slot (below training)
    ("training",),  # SFT samples builders, distillation, self-training (uses the judge)
    ("serving",),  # the recommendation service over a finished run
    ("pipeline",),  # stages, the runner, the run's report
    ("cli",),  # the front door
)

# Known upward imports whose removal is under way elsewhere; an entry that is no longer needed fails
# `test_pending_exemptions_are_still_needed`, so none can linger.
PENDING: dict[tuple[str, str], str] = {}

HEAVY = "torch"


@dataclass(frozen=True)
class Edge:
    """One import of `dst` (a unit: top-level package or module) by a file of unit `src`."""

    src: str
    dst: str
    file: str  # relative to src/recgpt
    line: int

    def where(self) -> str:
        return f"src/recgpt/{self.file}:{self.line}"


def _unit_of(parts: tuple[str, ...], units: set[str]) -> str:
    """The unit a dotted module path inside recgpt (without the leading `recgpt`) belongs to."""
    return parts[0] if parts and parts[0] in units else ROOT_UNIT


def _units(root: Path) -> set[str]:
    """Top-level packages and modules of `root` (`__init__.py` is the root unit, not one of them)."""
    pkgs = {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    mods = {p.stem for p in root.glob("*.py") if p.stem not in ("__init__", "__main__")}
    return pkgs | mods


def _imported(node: ast.AST, rel: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """Dotted recgpt module paths (without `recgpt`) that one import statement names."""
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name == "recgpt" or a.name.startswith("recgpt."):
                yield tuple(a.name.split(".")[1:])
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the file's package, `level - 1` packages up
            base = rel[: max(len(rel) - node.level, 0)]
            mod = base + (tuple(node.module.split(".")) if node.module else ())
        elif node.module == "recgpt" or (node.module or "").startswith("recgpt."):
            mod = tuple(node.module.split(".")[1:])  # type: ignore[union-attr]
        else:
            return
        if mod:
            yield mod
        else:  # `from recgpt import data` / `from .. import data`: the names are the modules
            for a in node.names:
                yield (a.name,)


def import_edges(root: Path) -> tuple[set[str], list[Edge]]:
    """(units, every import of one unit by another) in the source tree `root` (= src/recgpt)."""
    units = _units(root)
    edges = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root).parts
        src = ROOT_UNIT if rel == ("__init__.py",) else _unit_of((Path(rel[0]).stem,), units)
        tree = ast.parse(f.read_text(encoding="utf-8"), filename=str(f))
        for node in ast.walk(tree):
            for mod in _imported(node, rel):
                dst = _unit_of(mod, units)
                if dst != src:
                    edges.append(Edge(src, dst, "/".join(rel), node.lineno))  # type: ignore[attr-defined]
    return units, edges


def layer_index() -> dict[str, int]:
    """unit -> its layer (the root unit below all)."""
    index = {ROOT_UNIT: -1}
    for i, layer in enumerate(LAYERS):
        for unit in layer:
            assert unit not in index, f"{unit} is in two layers of LAYERS"
            index[unit] = i
    return index


def upward(edges: list[Edge]) -> list[Edge]:
    """The edges that import from a higher layer than their own."""
    index = layer_index()
    return [e for e in edges if e.src in index and e.dst in index and index[e.dst] > index[e.src]]


def cycle_edges(edges: list[Edge]) -> dict[tuple[str, str], list[Edge]]:
    """(a, b) -> its imports, for each unit edge a -> b from which a can be reached again."""
    graph: dict[str, dict[str, list[Edge]]] = {}
    for e in edges:
        graph.setdefault(e.src, {}).setdefault(e.dst, []).append(e)

    def reach(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for nxt in graph.get(stack.pop(), {}):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    return {(a, b): es for a, outs in graph.items() for b, es in outs.items() if a in reach(b)}


def _listing(edges: list[Edge]) -> str:
    return "\n".join(f"  {e.where()}: {e.src} imports {e.dst}" for e in edges)


# ---------------------------------------------------------------- the graph of src/recgpt


@pytest.fixture(scope="module")
def graph() -> tuple[set[str], list[Edge]]:
    return import_edges(SRC / "recgpt")


def test_every_package_sits_in_a_layer(graph: tuple[set[str], list[Edge]]) -> None:
    units, _ = graph
    missing = sorted(units - set(layer_index()))
    assert not missing, f"src/recgpt/{missing} in no layer: add them to LAYERS in tests/test_layers.py"


def test_no_package_cycles(graph: tuple[set[str], list[Edge]]) -> None:
    _, edges = graph
    bad = cycle_edges(edges)
    lines = [f"{a} -> {b} closes a cycle:\n{_listing(es)}" for (a, b), es in sorted(bad.items())]
    assert not bad, "package import cycles:\n" + "\n".join(lines)


def test_no_upward_imports(graph: tuple[set[str], list[Edge]]) -> None:
    _, edges = graph
    bad = [e for e in upward(edges) if (e.file, e.dst) not in PENDING]
    order = " < ".join("/".join(layer) for layer in LAYERS)
    assert not bad, f"imports from a higher layer (order, lowest first: {order}):\n{_listing(bad)}"


def test_pending_exemptions_are_still_needed(graph: tuple[set[str], list[Edge]]) -> None:
    _, edges = graph
    used = {(e.file, e.dst) for e in upward(edges)}
    stale = [f"{file} -> {dst}" for file, dst in PENDING if (file, dst) not in used]
    assert not stale, f"no longer imported upward, remove from PENDING in tests/test_layers.py: {stale}"


def test_checker_sees_relative_lazy_and_type_only_imports(tmp_path: Path) -> None:
    """The checker itself: every import form is an edge, and the first upward one is reported."""
    root = tmp_path / "recgpt"
    for pkg in ("data", "eval", "baselines"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "folders.py").write_text("from .data import x\n")
    (root / "data" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from recgpt.eval import y\n"
    )
    (root / "baselines" / "b.py").write_text("def f():\n    from ..eval import z\n    import recgpt.data.a\n")
    (root / "eval" / "c.py").write_text("from recgpt import baselines, __version__\n")
    units, edges = import_edges(root)
    assert units == {"data", "eval", "baselines", "folders"}
    found = {(e.file, e.dst, e.line) for e in edges}
    assert found == {
        ("folders.py", "data", 1),
        ("data/a.py", "eval", 3),
        ("baselines/b.py", "eval", 2),
        ("baselines/b.py", "data", 3),
        ("eval/c.py", "baselines", 1),
        ("eval/c.py", ROOT_UNIT, 1),
    }
    assert {(e.file, e.dst) for e in upward(edges)} == {("data/a.py", "eval"), ("baselines/b.py", "eval")}
    cycles = {("data", "eval"), ("eval", "baselines"), ("baselines", "eval"), ("baselines", "data")}
    assert set(cycle_edges(edges)) == cycles


# ---------------------------------------------------------------- no torch on the light paths

_PROBE = """
import importlib, json, sys, traceback

class _Spy:
    chain = None
    def find_spec(self, name, path=None, target=None):
        frames = traceback.extract_stack()[:-1] if name == {heavy!r} and _Spy.chain is None else []
        if len(frames) > 1 and frames[-2].name == "_find_and_load_unlocked":  # an import, not a probe
            _Spy.chain = [f"{{f.filename.split('/src/')[-1]}}:{{f.lineno}}" for f in frames
                          if "/recgpt/" in f.filename]
        return None

sys.meta_path.insert(0, _Spy())
try:
    exec({code!r})
except SystemExit:
    pass
print(json.dumps({{"loaded": {heavy!r} in sys.modules, "via": _Spy.chain}}))
"""


def _loads_heavy(code: str) -> tuple[bool, list[str]]:
    """(whether running `code` in a fresh interpreter imports torch, the recgpt frames that did)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY, code=code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"probe failed:\n{out.stderr[-2000:]}"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["loaded"], result["via"] or []


@pytest.mark.parametrize(
    "code",
    [
        "import recgpt.data",
        "import recgpt.datasets",
        "import recgpt.eval",
        "import recgpt.pipeline",
        "import recgpt.serving",
        pytest.param(
            "import sys\nfrom recgpt.cli.app import main\nsys.argv = ['recgpt', '--help']\nmain()",
            id="recgpt --help",
        ),
    ],
)
def test_light_entry_points_do_not_import_torch(code: str) -> None:
    loaded, via = _loads_heavy(code)
    assert not loaded, f"{code!r} imports {HEAVY}; through:\n  " + "\n  ".join(via)
