"""The config says each thing once (issue 22, items 1, 2 and 4): a field's fixed choices are its
`Literal` type, choices a table owns come from that table (dataset formats, judge backends), and the
tables sit below the config, so no import circle runs through config, judges and data."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from negrefine_ray.config import DatasetConfig, JobConfig, build_config
from negrefine_ray.data.benchmarks import PRESETS
from negrefine_ray.data.formats import FORMATS
from negrefine_ray.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[1] / "negrefine_ray"


def _sections() -> list[type]:
    hints = typing.get_type_hints(JobConfig)
    return [typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp for tp in hints.values()]


@pytest.mark.parametrize("section", _sections(), ids=lambda s: s.__name__)
def test_no_field_spells_its_choices_twice(section: type) -> None:
    hints = typing.get_type_hints(section)
    for f in dataclasses.fields(section):
        tp = hints[f.name]
        if typing.get_origin(tp) is typing.Literal:
            assert "choices" not in f.metadata, f"{section.__name__}.{f.name}: the Literal is the choices"
        if "choices" in f.metadata:
            assert tp in (str, tuple[str, ...]), f"{section.__name__}.{f.name}: choices need a str field"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"model": {"precision": "fp61"}}, "model.precision = 'fp61' is not one of 'fp32', 'fp16', 'bf16'"),
        ({"filter": {"scope": "corpse"}}, "set it to one of 'negatives', 'corpus'. Did you mean 'corpus'?"),
        ({"images": {"decode": 3}}, "images.decode = 3 is not one of 'pil', 'pil-draft', 'gpu'"),
    ],
)
def test_a_literal_field_names_key_value_choices_and_the_closest(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(data)
    assert needle in str(info.value)


def test_dataset_formats_come_from_the_format_table() -> None:
    field = next(f for f in dataclasses.fields(DatasetConfig) if f.name == "format")
    assert field.metadata["choices"] == tuple(FORMATS)
    assert all(fmt.description for fmt in FORMATS.values())
    assert {e.format for entries in PRESETS.values() for e in entries} <= set(FORMATS)
    dataset = {"name": "a", "role": "ood", "root": ".", "format": "imagefolders"}
    message = r"datasets\.a\.format = 'imagefolders' is not allowed\. Did you mean 'imagefolder'\? Choose"
    with pytest.raises(ConfigError, match=message):
        build_config({"datasets": [dataset]})


def _module_imports() -> dict[str, set[str]]:
    """Every negrefine_ray module -> the package's modules it imports anywhere in the file (inside
    functions and under TYPE_CHECKING too); importing a module does not count as importing its package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


@pytest.mark.parametrize(
    "table", ["negrefine_ray.judges.backends", "negrefine_ray.data.benchmarks", "negrefine_ray.data.formats"]
)
def test_the_tables_the_config_reads_sit_below_it(table: str) -> None:
    reached = _reach(_module_imports(), table)
    assert not {m for m in reached if m.startswith(("negrefine_ray.config", "negrefine_ray.judges"))}


def test_no_import_circle_through_config_judges_and_data() -> None:
    graph = _module_imports()
    area = ("negrefine_ray.config", "negrefine_ray.judges", "negrefine_ray.data")
    for module in (m for m in graph if m.startswith(area)):
        assert module not in _reach(graph, module), f"{module} imports itself through others"
