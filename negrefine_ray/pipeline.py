"""The pipeline: its stages in order, what determines each one's output, and the `run` driver.

Stages: corpus -> embed-text -> mine -> filter -> embed-images -> score -> report, one module each
in negrefine_ray/stages/, imported here by name. A stage whose code does not exist yet (fn None) is
listed with where it is planned; `run` stops before it, so nothing pretends to have run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from negrefine_ray.config import JobConfig
from negrefine_ray.errors import StageError, unknown_name
from negrefine_ray.preflight import CLIP_STAGES, preflight
from negrefine_ray.runfolder.atomic import read_json, write_json
from negrefine_ray.runfolder.donors import Donors
from negrefine_ray.runfolder.folder import Stage, StageResult, remote_run, run_folder_lock, run_stage
from negrefine_ray.stages import corpus, embed_images, embed_text, mine, report, score
from negrefine_ray.stages import filter as filter_stage  # the module, not the builtin

log = logging.getLogger(__name__)


def _sections(*names: str) -> Callable[[JobConfig], Mapping[str, Any]]:
    """Settings = the named config sections, whole."""
    return lambda cfg: {n: dataclasses.asdict(getattr(cfg, n)) for n in names}


_COMPUTE: tuple[Stage, ...] = (
    Stage(
        "corpus",
        "WordNet candidate words per lexicographer file",
        (),
        1,
        corpus.corpus_settings,
        corpus.run_corpus,
    ),
    Stage(
        "embed-text",
        "CLIP text embeddings of ID labels and candidates",
        ("corpus",),
        2,  # 2: OpenAI's weights under a GELU architecture name are built with QuickGELU (clip.model)
        embed_text.embed_text_settings,
        embed_text.run_embed_text,
    ),
    Stage(
        "mine",
        "negative-label mining (NegLabel, CSP, NegRefine, DNM)",
        ("embed-text",),
        1,
        mine.mine_settings,
        mine.run_mine,
    ),
    Stage(
        "filter",
        "NegFilter: LLM filtering of NegRefine's negative labels (or of every candidate)",
        ("embed-text", "mine"),
        2,
        filter_stage.filter_settings,
        filter_stage.run_filter,
    ),
    Stage(
        "embed-images",
        "CLIP image embeddings of ID and OOD datasets",
        (),
        1,
        embed_images.embed_images_settings,
        embed_images.run_embed_images,
        sources=embed_images.embed_images_sources,
    ),
    Stage(
        "score",
        "OOD scores per image and method (MCM, NegLabel, CSP, NegRefine and its ablations, DNM)",
        ("embed-text", "mine", "filter", "embed-images"),
        2,
        score.score_settings,
        score.run_score,
    ),
)
STAGES: tuple[Stage, ...] = (
    *_COMPUTE,
    Stage(
        "report",
        "metrics, Markdown tables, plots and report.html (hardest images, negative labels)",
        ("score",),
        2,
        report.report_settings,
        report.run_report,
        # the run facts and stage times come from every earlier stage's manifest
        reads_manifests=tuple(s.name for s in _COMPUTE),
    ),
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
    until: str | None = None,
    on_result: Callable[[StageResult], None] | None = None,
    donors: Donors | None = None,
) -> list[StageResult]:
    """Run the stages in order (just `only`, or up to and including `until`), skipping those whose
    trusted output exists, and linking in those that a donor (another run folder of the same job: a
    seed, a grid point) holds under the same hash.

    Stages hash their upstream artifacts' content: a forced stage whose output changed reruns its
    dependents; one that wrote the same bytes leaves them up to date.
    Stops before the first stage that is not built yet.
    """
    if config.grid.axes:
        raise StageError(
            f"{config.run_location} is a grid job ([grid] sweeps {len(config.grid.axes)} key(s)): run it "
            f"with `negrefine-ray run`, or run a stage against one point's folder (<run>/<point>/)."
        )
    forced = {get_stage(n).name for n in force}
    planned = planned_stages(only, until)
    preflight(config, [s.name for s in planned], ray_address)
    _announce_random_weights(config, [s.name for s in planned])
    results: list[StageResult] = []
    remote = remote_run(config)
    with run_folder_lock(config.run_dir, remote, config.run.lease_seconds):
        save_resolved_config(config)
        if remote is not None:
            remote.push_file("config.json")
        for stage in planned:
            result = run_stage(
                stage,
                config,
                force=stage.name in forced,
                ray_address=ray_address,
                remote=remote,
                donors=(donors or Donors()).without(config.run_dir),
            )
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def _announce_random_weights(config: JobConfig, stages: Sequence[str]) -> None:
    """Say once, here in the driver, that CLIP is random-initialised: the processes that build the
    model (text and image actors) keep open_clip's own notice to themselves (clip.model)."""
    from negrefine_ray.clip.model import RANDOM_INIT

    if config.model.pretrained.lower() == RANDOM_INIT and CLIP_STAGES & set(stages):
        log.warning(
            "No pretrained weights: model.pretrained = %r, so CLIP %s is random-initialised from "
            "model.init_seed = %d and its scores are meaningless.",
            config.model.pretrained, config.model.arch, config.model.init_seed,
        )  # fmt: skip


def planned_stages(only: Sequence[str] | None = None, until: str | None = None) -> list[Stage]:
    """The built stages an invocation runs, in order: just `only`, or up to and including `until`."""
    last = get_stage(until).name if until is not None else None
    planned = []
    for stage in STAGES:
        if stage.fn is None:
            break
        if only is None or stage.name in only:
            planned.append(stage)
        if stage.name == last:
            break
    return planned


def pending_stages() -> list[Stage]:
    return [s for s in STAGES if s.fn is None]


def run_job(
    config: JobConfig,
    *,
    force: Iterable[str] = (),
    ray_address: str | None = None,
    until: str | None = None,
    on_result: Callable[[StageResult], None] | None = None,
    donors: Donors | None = None,
) -> list[StageResult]:
    """A job: one pipeline run, or with several run.seeds one run per seed in `<run>/seed-<k>/`
    (sharing the caches and every stage that does not depend on the seed) followed by the mean and
    standard deviation over seeds. `donors`: other run folders whose stages this job may reuse (a
    grid's points: negrefine_ray.grid)."""
    from negrefine_ray.seeds import job_seeds, seed_config, write_seed_summary

    seeds = job_seeds(config)
    if len(seeds) <= 1:
        if seeds:  # run.seeds = [k]: one run, with seed k, in the job's own folder
            config = dataclasses.replace(config, run=dataclasses.replace(config.run, seed=seeds[0], seeds=()))
        return run_pipeline(
            config, force=force, ray_address=ray_address, until=until, on_result=on_result, donors=donors
        )
    preflight(config, [s.name for s in planned_stages(until=until)], ray_address)
    # The job folder's lock first: a second driver of the same job is refused before it writes the
    # job's config.json over the running one's (each seed folder has its own lock). On an
    # object-store run this is the driver's working copy: drivers on other hosts are not seen here.
    with run_folder_lock(config.run_dir):
        save_resolved_config(config)
        remote = remote_run(config)
        if remote is not None:
            remote.push_file("config.json")
        results: list[StageResult] = []
        folders = (donors or Donors()).plus([seed_config(config, s).run_dir for s in seeds])
        for seed in seeds:
            seeded = seed_config(config, seed)
            results += run_pipeline(
                seeded, force=force, ray_address=ray_address, until=until, on_result=on_result, donors=folders
            )
        if until is None:
            write_seed_summary(config)
            if remote is not None:
                remote.push_file("metrics-seeds.json")
                remote.push_file("report-seeds.md")
    return results
