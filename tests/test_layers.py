"""Imports point one way (README "Layout"): every import of every module, function-local ones too, goes to its own
layer or a lower one, and no modules import each other in a cycle.

    0 foundation   engine._ext, atomic, pixels, imageio, metrics, machine, trt_lib
    1 models       engine.models.*
    2 export, kernels   (siblings: neither imports the other)
    3 backends     engine.backends.*
    4 engines      engine.manifest, engine.engines
    5 inference    engine.inference
    6 tools        engine.build, engine.upscale, engine.interp, engine.video; train/ and bench/ beside them, imported
                   by nothing
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "kernels", "export", "train", "bench")
FOUNDATION = ("engine._ext", "engine.atomic", "engine.pixels", "engine.imageio", "engine.metrics", "engine.machine",
              "engine.trt_lib")
LAYERS: list[tuple[int, tuple[str, ...]]] = [  # a module's layer: the longest prefix that names it
    (0, FOUNDATION),
    (1, ("engine.models",)),
    (2, ("export", "kernels")),
    (3, ("engine.backends",)),
    (4, ("engine.manifest", "engine.engines")),
    (5, ("engine.inference",)),
    (6, ("engine.build", "engine.upscale", "engine.interp", "engine.video", "engine.distributed", "train",
         "bench")),
]
SIBLINGS = {("export", "kernels"), ("kernels", "export")}  # same layer, but neither may import the other
LAZY_NAMES = ("infer", "infer_frames", "load", "Engine", "Backend", "TorchBackend",
              "OrtBackend")  # engine/__init__'s lazy map


def modules(root: Path) -> dict[str, Path]:
    """Every module of our packages under `root`: dotted name → file."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that `name` imports, anywhere in the file (function-local imports too). The package
    `engine` itself counts only where a lazy name of its facade is imported from it (`from engine import infer`,
    `import engine`): importing a submodule runs the package's cheap `__init__`, which imports nothing."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "engine":
                    found.add("engine")
                elif (target := resolve(alias.name)) is not None:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                full = f"{module}.{alias.name}"
                if full in known:
                    found.add(full)
                elif module == "engine":
                    if alias.name in LAZY_NAMES or alias.name == "*":
                        found.add("engine")
                elif (target := resolve(module)) is not None:
                    found.add(target)
    found.discard(name)
    return found


def layer(name: str) -> tuple[int, str]:
    """(layer, group) of a module: the layer of the longest matching prefix; the `engine` facade sits with the
    tools (its lazy names are `engine.infer` and `engine.load`)."""
    if name == "engine":
        return 6, "engine"
    best: tuple[int, int, str] | None = None
    for level, prefixes in LAYERS:
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (level, len(prefix), prefix)
    if best is None:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS (and README's layout table)")
    return best[0], best[2].split(".")[0] if best[2] in ("export", "kernels") else best[2]


def graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def violations(root: Path) -> list[str]:
    """Every import that points up the layers, between the export/kernels siblings, or into train/ or bench/ from
    outside them."""
    found = []
    for name, targets in graph(root).items():
        (mine, my_group) = layer(name)
        for target in sorted(targets):
            (theirs, group) = layer(target)
            tools = target.split(".")[0] in ("train", "bench") and name.split(".")[0] != target.split(".")[0]
            if theirs > mine or (my_group, group) in SIBLINGS or (tools and name.split(".")[0] != "bench"):
                found.append(f"{name} (layer {mine}) imports {target} (layer {theirs})")
    return found


def cycles(root: Path) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), a package's own __init__ edges to its
    submodules left out (a package importing what it re-exports is not a cycle)."""
    edges = {n: {t for t in ts if not t.startswith(n + ".")} for n, ts in graph(root).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_imports_point_one_way() -> None:
    assert violations(REPO) == []


def test_no_import_cycle() -> None:
    assert cycles(REPO) == []


def test_every_module_has_a_layer() -> None:
    for name in modules(REPO):
        layer(name)  # raises for a module that no layer names


def _copy(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return tmp_path


@pytest.mark.parametrize("module,planted,words", [
    ("engine/atomic.py", "def _planted():\n    from engine.upscale import main\n",
     "engine.atomic (layer 0) imports engine.upscale (layer 6)"),
    ("engine/models/base.py", "def _planted():\n    from kernels import fused\n",
     "engine.models.base (layer 1) imports kernels.fused (layer 2)"),
    ("kernels/conv.py", "import export.onnx\n", "kernels.conv (layer 2) imports export.onnx (layer 2)"),
    ("engine/backends/ort.py", "def _planted():\n    import engine\n    return engine.infer\n",
     "engine.backends.ort (layer 3) imports engine (layer 6)"),
    ("engine/engines.py", "from engine.inference import infer\n",
     "engine.engines (layer 4) imports engine.inference (layer 5)"),
    ("export/onnx.py", "def _planted():\n    from train import data\n", "export.onnx (layer 2) imports train.data"),
])
def test_a_planted_back_import_is_found(tmp_path: Path, module: str, planted: str, words: str) -> None:
    root = _copy(tmp_path)
    assert violations(root) == []
    with open(root / module, "a") as f:
        f.write("\n\n" + planted)
    assert any(v.startswith(words) for v in violations(root)), violations(root)


def test_a_planted_cycle_is_found(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    with open(root / "engine" / "machine.py", "a") as f:  # machine ← trt_lib already: this closes a loop
        f.write("\n\ndef _planted():\n    from engine import trt_lib\n")
    assert ["engine.machine", "engine.trt_lib"] in cycles(root)


def test_import_engine_loads_no_submodule() -> None:
    """The facade's names are lazy: `import engine` runs nothing of the layers."""
    code = "import sys, engine; print(sorted(m for m in sys.modules if m.startswith(('engine.', 'kernels', 'export'))))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_layer_table_matches_the_readme() -> None:
    """README's layout table has one line per module (`path` in its first column)."""
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("<!-- layout:begin -->"):readme.index("<!-- layout:end -->")]
    missing = [str(path.relative_to(REPO)) for name, path in modules(REPO).items()
               if f"`{path.relative_to(REPO)}`" not in table and path.name != "__init__.py"]
    assert missing == [], f"README's layout table lacks {missing}"


def test_edges_are_read_from_function_bodies_too() -> None:
    edges = defaultdict(set, graph(REPO))
    assert "kernels.fused" in edges["engine.backends.fused"]  # imported inside functions only
