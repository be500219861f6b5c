"""The `filter` stage: NegFilter over the mined NegRefine negatives (filter.scope = "negatives", the
reference) or over every candidate of the mining methods' pools ("corpus", stages/_filter_scope.py,
which also re-selects each method from each `mining.filtered_by` judge's filtered pool), once per
configured judge; the judges run at once where their pools fit (stages/_filter_judging.py).

Input: `mine/negatives.parquet` rows of method "negrefine" (label = the cleaned label, pos,
nearest_id_labels). Output per judge J: `J/decisions.parquet` (every question asked), `J/labels.parquet`
(each label's decision) and `J/kept.parquet` (the refined negatives, in the input order), plus
`counts.json` and, with several judges, `comparison.json`/`comparison.md`. Answers are persisted in
shards under the cache as they arrive (keyed by the judge and the prompts), so an interrupted filter
re-asks only the questions without an answer, and a finished one is reused by later runs.
Judges come from negrefine_ray.judges' factory, which alone reads each judge's backend name.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from negrefine_ray.config import JobConfig, JudgeConfig
from negrefine_ray.core.negfilter import get_prompt_set
from negrefine_ray.errors import NegRefineError, StageError
from negrefine_ray.judges.accounting import overlapping, p_yes_histogram
from negrefine_ray.judges.roster import judge_configs
from negrefine_ray.negatives.scope import FILTERED_METHODS
from negrefine_ray.runfolder.artifacts import DECISIONS, KEPT, LABELS, NEGATIVES
from negrefine_ray.runfolder.atomic import read_parquet, write_json, write_text
from negrefine_ray.runfolder.folder import StageContext, StageOutput
from negrefine_ray.stages import _filter_scope
from negrefine_ray.stages._filter_judging import JudgeRun, ask_judges

log = logging.getLogger(__name__)


def load_negatives(path: Path, n_id_labels: int) -> pa.Table:
    """NegRefine's mined negatives as NegFilter sees them: cleaned labels, each once per part of
    speech (first occurrence), with their nearest ID labels cut to `n_id_labels`."""
    table = read_parquet(path)
    needed = {"method", "clean_label", "filter_input", "pos", "nearest_id_labels"}
    if not needed <= set(table.column_names):
        raise StageError(
            f"{path} lacks columns {sorted(needed - set(table.column_names))}; NegFilter needs the "
            f"negatives of {_filtered_names()}: add one to mining.methods and rerun the mine stage."
        )
    filtered = pc.is_in(table.column("method"), pa.array(FILTERED_METHODS, pa.string()))
    table = table.filter(pc.and_(filtered, table.column("filter_input")))
    if table.num_rows == 0:
        raise StageError(f"{path} has no negatives of {_filtered_names()}; NegFilter refines those.")
    nearest = table.column("nearest_id_labels").to_pylist()
    if min(len(ids) for ids in nearest) < n_id_labels:
        raise NegRefineError(
            f"filter.n_id_labels = {n_id_labels} but the mine stage kept only {min(map(len, nearest))} "
            f"nearest ID labels; lower filter.n_id_labels or raise mining.n_nearest."
        )
    return pa.table(
        {
            "label": table.column("clean_label"),
            "pos": table.column("pos"),
            "nearest_id_labels": pa.array([ids[:n_id_labels] for ids in nearest], pa.list_(pa.string())),
        }
    )


# Judge keys that change how fast answers come, not what they are.
_EXECUTION_ONLY = {"batch_size", "num_actors", "gpu_memory_utilization", "device", "prefix_cache", "resource"}


def _filtered_names() -> str:
    """The methods whose negatives NegFilter refines (catalogue flag `filtered`), quoted."""
    return " or ".join(f"'{m}'" for m in FILTERED_METHODS)


def filter_settings(config: JobConfig) -> dict[str, Any]:
    """The judges' settings, plus under filter.scope = "corpus" what the pools re-mined for
    mining.filtered_by depend on (their selections read embed-text's candidates)."""
    judges = [
        {k: v for k, v in dataclasses.asdict(j).items() if k not in _EXECUTION_ONLY}
        for j in judge_configs(config)
    ]
    return {
        "filter": {k: v for k, v in dataclasses.asdict(config.filter).items() if k != "chunk_size"},
        "judges": judges,
        "seed": config.run.seed,
        **_filter_scope.reselection_settings(config),
    }


def _check_kept_some(cfg: JudgeConfig, counts: Mapping[str, int]) -> None:
    """A judge that removed every label leaves NegRefine (and mining.filtered_by) no negative: stop
    here, naming it, rather than in the score stage after embed-images."""
    if counts["total"] and not counts["kept"]:
        raise StageError(
            f"filter: judge '{cfg.name}' kept none of its {counts['total']:,} labels ({counts['proper']:,} "
            f"proper, {counts['same']:,} same, {counts['subcategory']:,} subcategory), so NegRefine "
            f"would have no negative with it. Its answers are cached: check them (threshold = "
            f"{cfg.threshold:g}, its model and prompts) and run again, or leave '{cfg.name}' out of "
            f"filter.judges."
        )


def run_filter(ctx: StageContext) -> StageOutput:
    config = ctx.config
    negatives = (
        _filter_scope.corpus_input(ctx)  # filter.scope = "corpus": every candidate of the pools
        if config.filter.scope == "corpus"
        else load_negatives(NEGATIVES.path(ctx.run_dir), config.filter.n_id_labels)
    )
    prompts = get_prompt_set(config.filter.prompt_set)
    artifacts: list[str] = []
    cfgs = judge_configs(config)
    asked = ask_judges(ctx, cfgs, negatives, prompts)
    runs: dict[str, JudgeRun] = {cfg.name: asked[cfg.name][0] for cfg in cfgs}
    for cfg in cfgs:
        _check_kept_some(cfg, runs[cfg.name].counts)
    for cfg in cfgs:
        run = runs[cfg.name]
        kept = run.labels.filter(run.labels.column("kept")).select(["label", "pos"])
        for artifact, table in ((DECISIONS, run.decisions), (LABELS, run.labels), (KEPT, kept)):
            artifacts.append(artifact.write(ctx.out_dir, table, cfg.name))
    artifacts += _filter_scope.write_reselections(ctx)  # mining.filtered_by: re-mined filtered pools
    write_json(ctx.out_dir / "counts.json", {name: run.counts for name, run in runs.items()})
    artifacts.append("counts.json")
    if len(runs) > 1:
        from negrefine_ray.judges.compare import compare_judges, comparison_markdown

        comparison = compare_judges({n: (r.decisions, r.labels) for n, r in runs.items()})
        write_json(ctx.out_dir / "comparison.json", comparison)
        write_text(ctx.out_dir / "comparison.md", comparison_markdown(comparison))
        artifacts += ["comparison.json", "comparison.md"]
    summary = "; ".join(
        f"{n}: {r.counts['kept']:,}/{r.counts['total']:,} kept ({r.counts['proper']:,} proper, "
        f"{r.counts['same']:,} same, {r.counts['subcategory']:,} subcategory; "
        f"{r.counts['questions_in_table']:,} questions in the decision table "
        f"({r.counts['questions_distinct']:,} distinct): "
        f"{asked[n][1].asked:,} sent to the judge, {asked[n][1].from_store:,} answers from the store; "
        f"{r.counts['invalid_answers']:,} invalid)"
        for n, r in runs.items()
    )
    stats = {
        cfg.name: {
            **runs[cfg.name].counts,
            "answer_seconds": runs[cfg.name].answer_seconds,
            "accounting": asked[cfg.name][1].stats(),
            "p_yes": p_yes_histogram(runs[cfg.name].decisions.column("p_yes").to_pylist(), cfg.threshold),
        }
        for cfg in cfgs
    }
    overlaps = overlapping(account for _, account in asked.values())
    if overlaps:
        log.info("Judges that ran at the same time: %s", ", ".join(" & ".join(p) for p in overlaps))
    return StageOutput(tuple(artifacts), summary, stats)
