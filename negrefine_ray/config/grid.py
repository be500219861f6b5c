"""The `[grid]` section: dotted keys (any key `--set` takes) mapped to lists of values, expanded into
points, each one run of the job with those values set (`negrefine_ray.grid` runs them and writes the
summary). Points are the Cartesian product of the axes in file order (the last axis varies fastest);
`mode = "zip"` pairs the i-th values of every axis instead, and `zip = [["model.arch",
"model.pretrained"]]` pairs only the listed axes, the groups then combined by product. `parallel`:
how many points run at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from negrefine_ray.config.sections import _PLAIN_NAME, PLAIN_NAME_MAX
from negrefine_ray.errors import ConfigError, did_you_mean

MODES = ("product", "zip")
# Where the grid puts each point's run folder itself (`<run>/<point>/`): not a setting to sweep.
FIXED_KEYS = ("run.name", "run.output_dir", "run.local_dir")


@dataclass(frozen=True)
class GridAxis:
    """One swept key (`section.key`, or `datasets.NAME.key` / `judges.NAME.key`) and its values."""

    key: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class GridConfig:
    """The job's grid; no axes (the default) is an ordinary job."""

    mode: Literal["product", "zip"] = "product"
    zip: tuple[tuple[str, ...], ...] = ()
    axes: tuple[GridAxis, ...] = ()
    # Points run at once (threads of the driver, each stage computed once all the same); 1: one after
    # another. Only where the cluster holds that many points' pools at once (docs/grids.md).
    parallel: int = 1

    def dimensions(self) -> list[tuple[GridAxis, ...]]:
        """The product's factors: each a group of axes whose values go in lockstep (one axis alone
        unless zipped), in the order of their first axis in the file."""
        keys = [a.key for a in self.axes]
        groups = [tuple(keys)] if self.mode == "zip" else list(self.zip)
        by_key = {a.key: a for a in self.axes}
        out: list[tuple[GridAxis, ...]] = []
        done: set[str] = set()
        for key in keys:
            if key not in done:
                group = next((g for g in groups if key in g), (key,))
                members = [k for k in keys if k in group]
                done.update(members)
                out.append(tuple(by_key[k] for k in members))
        return out


@dataclass(frozen=True)
class GridPoint:
    """One point: its folder name under the job's run folder, its values by key, as `--set` text."""

    name: str
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sets(self) -> list[str]:
        """The point's `--set` overrides (values as TOML, which JSON scalars and arrays are)."""
        return [f"{key}={json.dumps(value)}" for key, value in self.values.items()]


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`score.alpha = [...]` written unquoted is a nested table in TOML: back to dotted keys."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{full}."))
        else:
            out[full] = value
    return out


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _axis(key: str, values: Any, sections: Sequence[str]) -> GridAxis:
    section, dot, rest = key.partition(".")
    if not dot or not section or not rest:
        raise ConfigError(
            f"grid key {key!r} is not a dotted key; write it as --set takes it, e.g. "
            '"score.alpha" = [1.0, 2.0].'
        )
    if section not in sections:
        raise ConfigError(
            f"grid key {key!r}: unknown section '{section}'.{did_you_mean(section, sections)} "
            f"Known: {', '.join(sections)}."
        )
    if key in FIXED_KEYS or section == "grid":
        raise ConfigError(
            f"grid key {key!r} cannot be swept: the grid places each point's run folder itself "
            f"(<run.output_dir>/<run.name>/<point>/); remove it from [grid]."
        )
    if not isinstance(values, list | tuple) or not values:
        raise ConfigError(f'grid.{key} = {values!r} is not a list of values; write e.g. "{key}" = [1, 2].')
    for value in values:
        if isinstance(value, Mapping) or (
            isinstance(value, list | tuple) and any(isinstance(v, Mapping) for v in value)
        ):
            raise ConfigError(f"grid.{key} holds a table, {value!r}; sweep its keys one by one instead.")
    return GridAxis(key, _tuples(values))


def build_grid(values: Any, sections: Sequence[str]) -> GridConfig:
    """The `[grid]` table (or its saved form, with `axes`) as a GridConfig; `sections`: the job's."""
    if not isinstance(values, Mapping):
        raise ConfigError(f'[grid] must be a table of "section.key" = [values], got {values!r}.')
    values = dict(values)
    mode = values.pop("mode", "product")
    if mode not in MODES:
        close = did_you_mean(str(mode), MODES)
        raise ConfigError(f"grid.mode = {mode!r} is not allowed.{close} Choose 'product' or 'zip'.")
    zipped = values.pop("zip", [])
    parallel = values.pop("parallel", 1)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(
            f"grid.parallel = {parallel!r} is not an integer >= 1; set it to 1 (points one "
            "after another) or to how many points the cluster runs at once."
        )
    saved = values.pop("axes", [])  # config.json's form: [{"key": ..., "values": [...]}]
    pairs = [(a["key"], a["values"]) for a in saved] if isinstance(saved, list) else []
    # a `--set grid.KEY=[...]` on a saved config replaces that axis
    axes = [_axis(k, v, sections) for k, v in dict([*pairs, *_flatten(values).items()]).items()]
    keys = [a.key for a in axes]
    groups = _zip_groups(zipped, keys)
    for group in [tuple(keys)] if mode == "zip" else groups:
        lengths = {k: len(next(a for a in axes if a.key == k).values) for k in group}
        if len(set(lengths.values())) > 1:
            raise ConfigError(
                f"[grid] zips {', '.join(group)}, but their lists differ in length "
                f"({', '.join(f'{k}: {n}' for k, n in lengths.items())}); give each as many values."
            )
    return GridConfig(mode=mode, zip=groups, axes=tuple(axes), parallel=parallel)


def _zip_groups(zipped: Any, keys: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    if not isinstance(zipped, list | tuple) or not all(isinstance(g, list | tuple) for g in zipped):
        raise ConfigError(f'grid.zip = {zipped!r} is not a list of key lists; e.g. zip = [["a.x", "a.y"]].')
    seen: set[str] = set()
    for group in zipped:
        for key in group:
            if key not in keys:
                raise ConfigError(
                    f"grid.zip names {key!r}, which is not swept.{did_you_mean(str(key), keys)} "
                    f"Swept: {', '.join(keys)}."
                )
            if key in seen:
                raise ConfigError(f"grid.zip names {key!r} in two groups; put each key in one group.")
            seen.add(key)
    return tuple(tuple(g) for g in zipped)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "_".join(_text(v) for v in value) or "none"
    return str(value)


def _point_name(values: Mapping[str, Any]) -> str:
    """A folder name readable at a glance: `alpha-2.0_top_fraction-0.1` (each key's last part, the
    whole key where two axes share it); too long or not a plain name: shortened, with a hash."""
    lasts = [k.rpartition(".")[2] for k in values]
    parts = [
        f"{last if lasts.count(last) == 1 else key}-{_text(value)}"
        for (key, value), last in zip(values.items(), lasts, strict=True)
    ]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", "_".join(parts))
    if len(name) > PLAIN_NAME_MAX or not _PLAIN_NAME.fullmatch(name):
        digest = hashlib.sha256(json.dumps(list(values.items())).encode()).hexdigest()[:8]
        name = f"p{name[: PLAIN_NAME_MAX - 10]}-{digest}"
    return name


def grid_points(grid: GridConfig) -> list[GridPoint]:
    """The points in order: the product of the dimensions, the last varying fastest."""
    if not grid.axes:
        return []
    dims = grid.dimensions()
    choices = [list(zip(*(a.values for a in dim), strict=True)) for dim in dims]
    points: list[GridPoint] = []
    for combo in itertools.product(*choices):
        values = {a.key: v for dim, vs in zip(dims, combo, strict=True) for a, v in zip(dim, vs, strict=True)}
        ordered = {a.key: values[a.key] for a in grid.axes}
        points.append(GridPoint(_point_name(ordered), ordered))
    seen: set[str] = set()
    for p in points:
        text = json.dumps(list(p.values.values()))
        if text in seen:
            raise ConfigError(
                f"[grid] has the point {', '.join(p.sets)} twice; list each value of an axis once."
            )
        seen.add(text)
    names = [p.name for p in points]
    if len(set(names)) < len(names):  # values that differ only in characters a folder name drops
        points = [dataclasses.replace(p, name=f"{p.name[:54]}-{i:03d}") for i, p in enumerate(points)]
    return points
