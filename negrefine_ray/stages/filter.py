"""The `filter` stage: NegFilter over the mined NegRefine negatives (filter.scope = "negatives", the
reference) or over every candidate of the mining methods' pools ("corpus", stages/filter_scope.py,
which also re-selects each method from each `mining.filtered_by` judge's filtered pool), once per
configured judge; the judges run at once where their pools fit (stages/judging.py).

Input: `mine/negatives.parquet` rows of method "negrefine" (label = the cleaned label, pos,
nearest_id_labels). Output per judge J: `J/decisions.parquet` (every question asked), `J/labels.parquet`
(each label's decision) and `J/kept.parquet` (the refined negatives, in the input order), plus
`counts.json` and, with several judges, `comparison.json`/`comparison.md`. Answers are persisted in
shards under the cache as they arrive (keyed by the judge and the prompts), so an interrupted filter
re-asks only the questions without an answer, and a finished one is reused by later runs.
Judges come from negrefine_ray.judges' factory, which alone reads each judge's backend name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from negrefine_ray.config import JobConfig, JudgeConfig
from negrefine_ray.core.negfilter import (
    Decision,
    Question,
    count_reasons,
    decide,
    get_prompt_set,
    proper_question,
    sequential_questions,
    subcategory_questions,
)
from negrefine_ray.errors import NegRefineError, StageError, unknown_name
from negrefine_ray.judges.accounting import overlapping, p_yes_histogram
from negrefine_ray.judges.base import Answer
from negrefine_ray.judges.store import AnswerStore
from negrefine_ray.runfolder.atomic import read_parquet, write_json, write_parquet, write_text
from negrefine_ray.runfolder.folder import StageContext, StageOutput
from negrefine_ray.stages import filter_scope
from negrefine_ray.stages.judging import ask_judges

log = logging.getLogger(__name__)
Asker = Callable[[Sequence[Question]], None]


@dataclass(frozen=True)
class JudgeRun:
    decisions: pa.Table  # one row per question asked
    labels: pa.Table  # one row per label
    counts: dict[str, int]
    answer_seconds: float = 0.0  # the judge's time answering the questions asked (their latencies)


def _resolve(answer: Answer, invalid_policy: str) -> bool:
    """An invalid answer counts as "no" under policy "keep" (the label survives that question, as
    in the reference) and as "yes" under "drop"."""
    return answer.yes if answer.yes is not None else invalid_policy == "drop"


def filter_labels(
    labels: Sequence[str], nearest: Sequence[Sequence[str]], ask: Asker, store: AnswerStore, *, policy: str
) -> tuple[list[Decision], list[Question], dict[str, bool]]:
    """Two waves: every proper-noun question, then the subcategory questions of the survivors.
    Returns the decisions, the questions asked (wave order) and the resolved yes/no per qid."""
    wave1 = [proper_question(label) for label in labels]
    ask(wave1)
    yes = {q.qid: _resolve(store.answers[q.qid], policy) for q in wave1}
    wave2 = [
        q
        for label, ids in zip(labels, nearest, strict=True)
        if not yes[proper_question(label).qid]
        for q in subcategory_questions(label, ids)
    ]
    ask(wave2)
    yes.update({q.qid: _resolve(store.answers[q.qid], policy) for q in wave2})
    decisions = [decide(label, ids, yes) for label, ids in zip(labels, nearest, strict=True)]
    return decisions, wave1 + wave2, yes


def _decision_table(
    asked: Sequence[Question],
    store: AnswerStore,
    yes: dict[str, bool],
    needed: set[str],
    meta: dict[str, str],
) -> pa.Table:
    answers = [store.answers[q.qid] for q in asked]
    return pa.table(
        {
            "qid": [q.qid for q in asked],
            "wave": [1 if q.kind == "proper" else 2 for q in asked],
            "label": [q.label for q in asked],
            "kind": [q.kind for q in asked],
            "id_label": [q.id_label for q in asked],
            "rank": pa.array([q.rank for q in asked], pa.int32()),
            "prompt_set": [meta["prompt_set"]] * len(asked),
            "judge": [meta["judge"]] * len(asked),
            "answer": [{True: "yes", False: "no", None: "invalid"}[a.yes] for a in answers],
            "p_yes": pa.array([a.p_yes for a in answers], pa.float64()),
            "raw": [a.raw for a in answers],
            "decision_yes": [yes[q.qid] for q in asked],
            "needed_by_sequential_rule": [q.qid in needed for q in asked],
        }
    )  # no latency here: timings vary by run, and this table must not (they go to the manifest)


def run_judge(
    negatives: pa.Table, ask: Asker, store: AnswerStore, meta: dict[str, str], policy: str
) -> JudgeRun:
    labels = negatives.column("label").to_pylist()
    nearest = negatives.column("nearest_id_labels").to_pylist()
    decisions, asked, yes = filter_labels(labels, nearest, ask, store, policy=policy)
    needed = {
        qid
        for label, ids in zip(labels, nearest, strict=True)
        for qid in sequential_questions(label, ids, yes)
    }
    table = _decision_table(asked, store, yes, needed, meta)
    label_table = pa.table(
        {
            "label": labels,
            "pos": negatives.column("pos"),
            "reason": [d.reason for d in decisions],
            "id_label": [d.id_label for d in decisions],
            "kept": [d.kept for d in decisions],
        }
    )
    counts = count_reasons(decisions)
    counts.update(
        questions_asked=len(asked),
        questions_sequential_rule=len(needed),
        invalid_answers=sum(store.answers[q.qid].yes is None for q in asked),
    )
    seconds = sum(store.answers[q.qid].latency_s for q in asked)
    return JudgeRun(table, label_table, counts, round(seconds, 3))


def judge_configs(config: JobConfig) -> list[JudgeConfig]:
    """The judges named in filter.judges; "wordnet" is built in when no [[judges]] entry has it."""
    by_name = {j.name: j for j in config.judges}
    by_name.setdefault("wordnet", JudgeConfig(name="wordnet", backend="wordnet"))
    missing = [n for n in config.filter.judges if n not in by_name]
    if missing:
        raise unknown_name("judge (filter.judges)", missing[0], by_name)
    return [by_name[n] for n in config.filter.judges]


def load_negatives(path: Path, n_id_labels: int) -> pa.Table:
    """NegRefine's mined negatives as NegFilter sees them: cleaned labels, each once per part of
    speech (first occurrence), with their nearest ID labels cut to `n_id_labels`."""
    table = read_parquet(path)
    needed = {"method", "clean_label", "filter_input", "pos", "nearest_id_labels"}
    if not needed <= set(table.column_names):
        raise StageError(
            f"{path} lacks columns {sorted(needed - set(table.column_names))}; NegFilter needs NegRefine's "
            f"negatives: add 'negrefine' to mining.methods and rerun the mine stage."
        )
    table = table.filter(pc.and_(pc.equal(table.column("method"), "negrefine"), table.column("filter_input")))
    if table.num_rows == 0:
        raise StageError(f"{path} has no negatives of method 'negrefine'; NegFilter refines those.")
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


def filter_settings(config: JobConfig) -> dict[str, Any]:
    import dataclasses

    judges = [
        {k: v for k, v in dataclasses.asdict(j).items() if k not in _EXECUTION_ONLY}
        for j in judge_configs(config)
    ]
    return {
        "filter": {k: v for k, v in dataclasses.asdict(config.filter).items() if k != "chunk_size"},
        "judges": judges,
        "seed": config.run.seed,
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
        filter_scope.corpus_input(ctx)  # filter.scope = "corpus": every candidate of the pools
        if config.filter.scope == "corpus"
        else load_negatives(ctx.input("mine", "negatives.parquet"), config.filter.n_id_labels)
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
        for name, table in (("decisions", run.decisions), ("labels", run.labels), ("kept", kept)):
            write_parquet(ctx.out_dir / cfg.name / f"{name}.parquet", table)
            artifacts.append(f"{cfg.name}/{name}.parquet")
    artifacts += filter_scope.write_reselections(ctx)  # mining.filtered_by: re-mined filtered pools
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
        f"{r.counts['questions_asked']:,} questions, {r.counts['invalid_answers']:,} invalid)"
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
