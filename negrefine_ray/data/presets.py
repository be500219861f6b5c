"""A job's datasets: `images.preset` expanded from the benchmark table (data/benchmarks.py) under
`images.data_root`, then the explicit `[[datasets]]`; an explicit entry of a preset dataset's name
replaces it.
"""

from __future__ import annotations

import posixpath

from negrefine_ray.config import DatasetConfig, JobConfig
from negrefine_ray.data.benchmarks import PRESETS
from negrefine_ray.errors import NegRefineError, unknown_name


def preset_datasets(preset: str, data_root: str) -> tuple[DatasetConfig, ...]:
    """The preset's datasets with roots and image lists joined onto `data_root` (a path or URI)."""
    if preset not in PRESETS:
        raise unknown_name("dataset preset (images.preset)", preset, PRESETS)
    return tuple(
        DatasetConfig(
            name=e.name,
            role=e.role,  # type: ignore[arg-type]
            root=posixpath.join(data_root, e.root),
            format=e.format,
            image_list=posixpath.join(data_root, e.image_list) if e.image_list else "",
            expected=e.expected,
        )
        for e in PRESETS[preset]
    )


def resolve_datasets(config: JobConfig) -> tuple[DatasetConfig, ...]:
    """`images.preset` expanded under `images.data_root`, then the explicit `[[datasets]]`: an explicit
    entry replaces the preset entry of the same name in place; the others are appended in order."""
    explicit = {d.name: d for d in config.datasets}
    preset = config.images.preset
    if not preset:
        return tuple(config.datasets)
    names = [e.name for e in PRESETS.get(preset, ())]
    if not config.images.data_root and not set(names) <= set(explicit):
        raise NegRefineError(
            f"images.preset = {preset!r} needs images.data_root, the folder that holds its datasets "
            f"({', '.join(names)}); set it, or give every one of them a [[datasets]] entry."
        )
    expanded = preset_datasets(preset, config.images.data_root or ".")
    merged = [explicit.pop(d.name, d) for d in expanded]
    return (*merged, *explicit.values())
