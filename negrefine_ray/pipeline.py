"""The pipeline: its stages in order, what determines each one's output, and the `run` driver.

Stages: corpus -> embed-text -> mine -> filter -> embed-images -> score -> report. Stages whose code
does not exist yet are listed with the issue that builds them; `run` stops before the first of them
and says so, so nothing pretends to have run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from negrefine_ray.artifacts import read_json, write_json
from negrefine_ray.config import JobConfig
from negrefine_ray.errors import unknown_name
from negrefine_ray.stages import Stage, StageContext, StageOutput, StageResult, run_folder_lock, run_stage


def _sections(*names: str) -> Callable[[JobConfig], Mapping[str, Any]]:
    """Settings = the named config sections, whole."""
    return lambda cfg: {n: dataclasses.asdict(getattr(cfg, n)) for n in names}


def _corpus(ctx: StageContext) -> StageOutput:
    from negrefine_ray.corpus_stage import run_corpus

    return run_corpus(ctx)


def _corpus_settings(config: JobConfig) -> Mapping[str, Any]:
    from negrefine_ray.corpus_stage import corpus_settings

    return corpus_settings(config)


def _planned(name: str, summary: str, needs: tuple[str, ...], issue: str) -> Stage:
    return Stage(name, summary, needs, 0, _sections(), None, planned_in=issue)


STAGES: tuple[Stage, ...] = (
    Stage(
        "corpus",
        "WordNet candidate words per lexicographer file",
        (),
        1,
        _corpus_settings,
        _corpus,
    ),
    _planned("embed-text", "CLIP text embeddings of labels and candidates", ("corpus",), "issue #3"),
    _planned("mine", "negative-label mining (NegLabel, CSP, NegRefine, DNM)", ("embed-text",), "issue #3"),
    _planned("filter", "NegFilter: LLM filtering of negative labels", ("mine",), "issue #4"),
    _planned("embed-images", "CLIP image embeddings of ID and OOD datasets", (), "issue #5"),
    _planned("score", "OOD scores per image and method", ("filter", "embed-images"), "issue #6"),
    _planned("report", "metrics, tables and plots", ("score",), "issue #6"),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise unknown_name("stage", name, STAGE_NAMES)


def save_resolved_config(config: JobConfig) -> None:
    """Save the resolved config; an identical one is left untouched, so a re-run changes nothing."""
    path = config.run_dir / "config.json"
    if not path.is_file() or read_json(path) != config.to_dict():
        write_json(path, config.to_dict())


def run_pipeline(
    config: JobConfig,
    *,
    force: Iterable[str] = (),
    ray_address: str | None = None,
    only: Sequence[str] | None = None,
    on_result: Callable[[StageResult], None] | None = None,
) -> list[StageResult]:
    """Run the stages in order (or just `only`), skipping those whose trusted output exists.

    A forced stage invalidates its dependents through their input hashes, so they rerun too.
    Stops before the first stage that is not built yet.
    """
    forced = {get_stage(n).name for n in force}
    results: list[StageResult] = []
    with run_folder_lock(config.run_dir):
        save_resolved_config(config)
        for stage in STAGES:
            if only is not None and stage.name not in only:
                continue
            if stage.fn is None:
                break
            result = run_stage(stage, config, force=stage.name in forced, ray_address=ray_address)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def pending_stages() -> list[Stage]:
    return [s for s in STAGES if s.fn is None]
