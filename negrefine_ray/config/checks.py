"""Checks a job passes beyond each key's own type, range and choices: across sections (methods,
judges, presets, filtered pools, by name only: no file system, no heavy import) and within a
`[[judges]]` entry (the keys its backend reads)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from negrefine_ray.config.job import JobConfig
from negrefine_ray.config.sections import JudgeConfig
from negrefine_ray.core.methods import METHODS
from negrefine_ray.data.benchmarks import PRESETS
from negrefine_ray.errors import ConfigError, did_you_mean
from negrefine_ray.judges.backends import BACKENDS

_JUDGE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(JudgeConfig)}


def check_backend_options(prefix: str, values: Mapping[str, Any], judge: JudgeConfig) -> None:
    """Refuse a key of `[[judges]]` entry `judge` (as written: `values`) that its backend does not read
    (`BackendSpec.options`, judges/backends.py), naming the backends that read it and listing those
    this one accepts. A key that holds its default is let through: it asks for nothing the backend
    does not get anyway, and a saved config.json holds every key of every judge."""
    spec = BACKENDS[judge.backend]
    for key in values:
        value = getattr(judge, key)
        if key in spec.accepted or value == _JUDGE_DEFAULTS[key]:
            continue
        readers = ", ".join(n for n, s in BACKENDS.items() if key in s.options)
        raise ConfigError(
            f"{prefix}.{key} = {value!r}: judge '{judge.name}' has backend '{judge.backend}', which does "
            f"not read '{key}' (backends that do: {readers}); remove it or choose one of those backends. "
            f"Backend '{judge.backend}' accepts: {', '.join(spec.accepted)}."
        )


def check_references(job: JobConfig) -> None:
    """Checks across sections, by name only (no file system, no heavy import): score methods need
    their negatives mined, filter.judges name [[judges]] entries (or the built-in "wordnet"), and
    images.preset names a preset."""
    for i, method in enumerate(job.score.methods):
        if METHODS[method].mines and method not in job.mining.methods:
            raise ConfigError(
                f"score.methods[{i}] = {method!r} needs negatives, but mining.methods = "
                f"{list(job.mining.methods)} lacks it; add it to mining.methods or remove it from "
                f"score.methods."
            )
    needing = [m for m in job.score.methods if METHODS[m].needs_prototypes]  # catalogue flag
    if needing and not any(d.role == "prototype" for d in job.datasets):
        raise ConfigError(
            f"score.methods has {needing[0]!r}, whose negatives are chosen against ID image prototypes, "
            'but no [[datasets]] entry has role = "prototype"; add one (labelled ID training images, e.g. '
            "ImageNet's train_imagenet_16.txt list or an imagefolder with per_class = 16)."
        )
    judges = {"wordnet", *(j.name for j in job.judges)}
    for i, name in enumerate(job.filter.judges):
        if name not in judges:
            raise ConfigError(
                f"filter.judges[{i}] = {name!r} is not a judge of this job.{did_you_mean(name, judges)} "
                f"Known: {', '.join(sorted(judges))}; add a [[judges]] entry named {name!r} or fix the name."
            )
    _check_filtered_by(job)
    if job.images.preset and job.images.preset not in PRESETS:
        raise ConfigError(
            f"images.preset = {job.images.preset!r} is unknown.{did_you_mean(job.images.preset, PRESETS)}"
            f" Known: {', '.join(sorted(PRESETS))}; or leave it empty and list [[datasets]]."
        )


def _check_filtered_by(job: JobConfig) -> None:
    """mining.filtered_by re-mines the pool a judge filtered: the judge must run (filter.judges) and be
    asked about the whole pool (filter.scope = "corpus")."""
    if not job.mining.filtered_by:
        return
    if job.filter.scope != "corpus":
        raise ConfigError(
            f"mining.filtered_by = {list(job.mining.filtered_by)} needs every candidate judged, but "
            f"filter.scope = {job.filter.scope!r} judges only NegRefine's mined negatives; set "
            'filter.scope = "corpus" or empty mining.filtered_by.'
        )
    for i, name in enumerate(job.mining.filtered_by):
        if name not in job.filter.judges:
            raise ConfigError(
                f"mining.filtered_by[{i}] = {name!r} is not among filter.judges = {list(job.filter.judges)}."
                f"{did_you_mean(name, job.filter.judges)} Add it to filter.judges or remove it from "
                "mining.filtered_by."
            )
    repeated = sorted({n for n in job.mining.filtered_by if job.mining.filtered_by.count(n) > 1})
    if repeated:
        raise ConfigError(f"mining.filtered_by lists {', '.join(repeated)} twice; list each judge once.")
