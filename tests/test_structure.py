"""The package's shape, read from its source with ast (nothing is imported but the catalogues):

- no import circles among negrefine_ray's modules, counting every import statement anywhere in a file
  (inside functions and under TYPE_CHECKING too); importing a submodule's parent package is not an edge;
- stages depend downward only: a stage module imports no other stage, only its own helper modules,
  which are named `_<stage>_<part>.py` and import no stage either;
- every stage module is a pipeline stage, and no stage module names a method of the catalogue (it asks
  the catalogue's flags instead);
- every scorer a catalogue entry names is registered, every metric has a direction.
"""

from __future__ import annotations

import ast
from pathlib import Path

from negrefine_ray.core.methods import METHODS

PACKAGE = Path(__file__).resolve().parents[1] / "negrefine_ray"


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports, anywhere in its file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            if node.level:
                base = base[: len(base) - node.level + 1]
                prefix = ".".join([*base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            targets = [
                f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names
            ]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_circle_hidden_in_a_function() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circles() -> None:
    graph = _graph()
    assert "negrefine_ray.pipeline" in graph["negrefine_ray.cli"]  # the walker sees imports
    assert _cycles(graph) == []


def _stage_modules() -> dict[str, str]:
    """Stage module name (stages/<name>.py, no leading underscore) -> dotted module."""
    return {
        p.stem: f"negrefine_ray.stages.{p.stem}"
        for p in sorted((PACKAGE / "stages").glob("*.py"))
        if not p.stem.startswith("_")
    }


def test_stage_modules_are_the_pipeline_stages_and_helpers_say_whose_they_are() -> None:
    from negrefine_ray.pipeline import STAGE_NAMES

    assert set(_stage_modules()) == {s.replace("-", "_") for s in STAGE_NAMES}
    helpers = [p.stem for p in (PACKAGE / "stages").glob("_*.py") if p.stem != "__init__"]
    for helper in helpers:
        owner = helper[1:].split("_")[0]
        assert any(helper.startswith(f"_{stage}_") for stage in _stage_modules()), (helper, owner)


def test_stages_never_import_another_stage() -> None:
    graph = _graph()
    stage_pkg = "negrefine_ray.stages."
    for name, deps in graph.items():
        if not name.startswith(stage_pkg):
            continue
        module = name.removeprefix(stage_pkg)
        own = (
            module
            if not module.startswith("_")
            else next(s for s in _stage_modules() if module.startswith(f"_{s}_"))
        )
        for dep in deps:
            if dep.startswith(stage_pkg):
                other = dep.removeprefix(stage_pkg)
                assert other.startswith(f"_{own}_"), f"{name} imports {dep}"
    # nothing outside stages/ but the pipeline reaches into a stage
    for name, deps in graph.items():
        if not name.startswith(stage_pkg) and name != "negrefine_ray.pipeline":
            assert not [d for d in deps if d.startswith(stage_pkg)], name


def test_no_stage_module_names_a_method() -> None:
    names = set(METHODS)
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, f"{path.name}:{node.lineno} names method {node.value!r}"


def test_every_scorer_is_registered_and_every_metric_has_a_direction() -> None:
    from negrefine_ray.core.metrics import METRIC_INFO, METRICS
    from negrefine_ray.scoring.registry import SCORERS, scorer_of

    for method in METHODS.values():
        assert scorer_of(method) is SCORERS[method.scorer]
    assert set(METRIC_INFO) == set(METRICS)
    assert METRIC_INFO["auroc"].higher_is_better and not METRIC_INFO["fpr95"].higher_is_better
    assert all(METRICS[n] is info.fn for n, info in METRIC_INFO.items())
