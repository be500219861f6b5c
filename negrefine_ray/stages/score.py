"""The `score` stage: every method's OOD score for every readable image (methods.md 0.6, 1.5, 2.5,
3.3-3.4, 4.3, App. B), plus NegRefine's ablations (NegFilter on/off x S_MM on/off) per judge. Each
method's entry in the catalogue (negrefine_ray.core.methods) names its scorer (scoring.registry), its
views and columns; this stage reads the inputs, runs each scorer and writes what they return.

Input: embed-images/images.parquet, embed-text/id_labels.parquet, mine/negatives.parquet,
filter/<judge>/kept.parquet, and for each judge of mining.filtered_by filter/<judge>/mined.parquet
(every mining method re-mined from the pool that judge filtered, negatives.scope). Output:
score/scores.parquet (dataset, role, path, label, status, one float64 column per score, null where
status != "ok") and score/columns.json (what each column is).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from negrefine_ray.config import JobConfig
from negrefine_ray.core.methods import (
    METHODS,
    embedding_name,
    image_preprocessing,
    prototype_preprocessing,
)
from negrefine_ray.distributed.session import resolve_address
from negrefine_ray.errors import ConfigError, StageError, unknown_name
from negrefine_ray.judges.roster import judge_configs
from negrefine_ray.progress import Progress
from negrefine_ray.runfolder.artifacts import ID_LABELS, IMAGES, MINED, NEGATIVES, SCORE_COLUMNS, SCORES
from negrefine_ray.runfolder.atomic import column_matrix, write_json
from negrefine_ray.runfolder.folder import StageContext, StageOutput
from negrefine_ray.scoring.columns import ScoreColumn, grouping_seed
from negrefine_ray.scoring.inputs import ScoreInput
from negrefine_ray.scoring.registry import scorer_of
from negrefine_ray.scoring.rows import Rows

IMAGE_COLUMNS = tuple(IMAGES.schema.names) if IMAGES.schema else ()  # plus one embedding@<variant> each
# Score keys that change where and in what steps the scores are computed, not what they are.
EXECUTION_ONLY = ("chunk_size", "workers", "block_rows")
# The config sections of the methods that name one (Method.settings): part of the hash only when used.
METHOD_SECTIONS: tuple[str, ...] = tuple(sorted({m.settings for m in METHODS.values() if m.settings}))


def check_methods(config: JobConfig) -> list[str]:
    """score.methods without repeats, each in the catalogue and (if it needs negatives) mined."""
    methods = list(dict.fromkeys(config.score.methods))
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"score.methods: {unknown_name('score method', m, METHODS)}")
        if METHODS[m].mines and m not in config.mining.methods:
            raise ConfigError(
                f"score.methods has '{m}' but mining.methods = {list(config.mining.methods)} lacks it; "
                f"add '{m}' to mining.methods or remove it from score.methods."
            )
    return methods


def _judges(config: JobConfig) -> list[str]:
    """The NegFilter judges, when a scored method is filtered (catalogue flag `filtered`)."""
    filtered = any(m in METHODS and METHODS[m].filtered for m in config.score.methods)
    return [j.name for j in judge_configs(config)] if filtered else []


def score_settings(config: JobConfig) -> dict[str, Any]:
    score = {k: v for k, v in dataclasses.asdict(config.score).items() if k not in EXECUTION_ONLY}
    score["methods"] = check_methods(config)
    score["preprocess"] = image_preprocessing(score["methods"], config.images.preprocess)
    # The model embeds NegRefine's cleaned negatives and pair texts here, so it is part of the hash.
    model = {k: getattr(config.model, k) for k in ("arch", "pretrained", "init_seed", "precision")}
    # A method's own section (InterNeg's online streams and inversions, seeded with the run seed)
    sections = {
        section: {**dataclasses.asdict(getattr(config, section)), "seed": config.run.seed}
        if any(METHODS[m].settings == section for m in score["methods"])
        else None
        for section in METHOD_SECTIONS
    }
    return {
        "score": score,
        "grouping_seed": grouping_seed(config),
        "negrefine_order_seed": config.run.seed if config.score.negrefine_order == "shuffled" else None,
        **sections,
        "judges": _judges(config),
        "filter_scope": config.filter.scope,  # "corpus": kept.parquet covers every candidate
        "filtered_by": list(config.mining.filtered_by),  # pools re-mined per judge, scored too
        "model": model,
    }


def ok_images(table: pa.Table, variants: Iterable[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(N,) bool mask of the rows with status "ok" and, per preprocessing variant, their (n_ok, D)
    float32 embeddings (images.parquet column embedding@<variant>)."""
    names = {v: embedding_name(v) for v in dict.fromkeys(variants)}
    missing = [c for c in (*IMAGE_COLUMNS, *names.values()) if c not in table.column_names]
    if missing:
        raise StageError(
            f"images.parquet lacks columns {missing} (has {table.column_names}); rerun embed-images."
        )
    ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False).to_numpy(zero_copy_only=False)
    if not ok.any():
        raise StageError(f"none of the {table.num_rows:,} images has status 'ok'; nothing to score.")
    rows = table.filter(pa.array(ok))
    return ok, {v: column_matrix(rows, name) for v, name in names.items()}


def _excluded(images: pa.Table, ok: np.ndarray) -> dict[str, dict[str, int]]:
    bad = images.filter(pa.array(~ok))
    counts = Counter(zip(bad.column("dataset").to_pylist(), bad.column("status").to_pylist(), strict=True))
    out: dict[str, dict[str, int]] = {}
    for (dataset, status), n in sorted(counts.items(), key=str):
        out.setdefault(dataset, {})[str(status)] = n
    return out


def _output_table(images: pa.Table, ok: np.ndarray, columns: Mapping[str, np.ndarray]) -> pa.Table:
    table = images.select(list(IMAGE_COLUMNS))
    for name, values in columns.items():
        full = np.full(images.num_rows, np.nan)
        full[ok] = values
        table = table.append_column(name, pa.array(full, pa.float64(), mask=np.isnan(full)))
    return table


def _prototypes(rows: pa.Table, config: JobConfig, variant: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels (P,), embeddings (P, D)) of the readable role-"prototype" images in the preprocessing
    of the method's prototypes (InterNeg's class prototypes, methods.md 5.2)."""
    c = config
    proto = prototype_preprocessing(c.score.methods, c.images.preprocess, c.interneg.prototype_preprocess)
    labels = rows.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    if rows.num_rows == 0:
        return labels, np.zeros((0, 0), np.float32)
    return labels, column_matrix(rows, embedding_name(proto or variant))


def score_rows(ctx: StageContext) -> Rows:
    """Where the per-image score functions run (score.workers): Ray tasks on the cluster, or here.
    "auto" takes the cluster when the job has a Ray address and that cluster has more than one node."""
    sc = ctx.config.score
    block = max(1, sc.block_rows // sc.chunk_size) * sc.chunk_size  # whole chunks: the same products
    tasks = sc.workers == "cluster"
    if sc.workers == "auto" and resolve_address(ctx.config.ray, ctx.ray_address):
        import ray

        ctx.ray()
        tasks = sum(1 for n in ray.nodes() if n.get("Alive")) > 1
    elif tasks:
        ctx.ray()
    return Rows(tasks=tasks, block=block)


def _merge(into: dict[str, Any], entries: Mapping[str, Any]) -> None:
    """A scorer's manifest entries into the stage's; dicts under the same key are merged."""
    for key, value in entries.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key].update(value)
        else:
            into[key] = value


def run_score(ctx: StageContext) -> StageOutput:
    config, t0 = ctx.config, time.perf_counter()
    methods = check_methods(config)
    if config.score.permutation_device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "score.permutation_device = 'cuda' but the process running the score stage sees no GPU; "
            "run it on a GPU machine or set score.permutation_device = 'cpu'."
        )
    images = IMAGES.read(ctx.run_dir)
    preprocess = image_preprocessing(methods, config.images.preprocess)
    # role "prototype": InterNeg's labelled ID training images, used for its prototypes, never scored
    is_prototype = pc.equal(images.column("role"), "prototype")
    prototype_rows = images.filter(pc.and_(is_prototype, pc.equal(images.column("status"), "ok")))
    images = images.filter(pc.invert(is_prototype))
    ok, embeddings = ok_images(images, preprocess.values())
    scored = images.filter(pa.array(ok))
    roles = scored.column("role").to_numpy(zero_copy_only=False)
    if not (roles == "id").any():
        raise StageError("no readable image has role 'id'; add an ID dataset to [[datasets]].")
    ood_of = scored.column("dataset").to_numpy(zero_copy_only=False).astype(object)
    ood_of[roles == "id"] = None
    ood = tuple(dict.fromkeys(d for d in ood_of.tolist() if d is not None))
    ids, mined = ID_LABELS.read(ctx.run_dir), NEGATIVES.read(ctx.run_dir)
    judges = tuple(_judges(config))
    rows = score_rows(ctx)
    # each method, then the same methods over the pools the judges filtered (mining.filtered_by)
    work = [(m, None) for m in methods] + [
        (m, judge) for judge in config.mining.filtered_by for m in methods if METHODS[m].pool_filterable
    ]
    columns: dict[str, np.ndarray] = {}
    catalogue: list[ScoreColumn] = []
    negatives: dict[str, dict[str, int]] = {}
    seconds: dict[str, float] = {}
    extra: dict[str, Any] = {}
    progress = Progress(f"score: {int(ok.sum()):,} images", total=len(work), unit="methods")
    for name, judge in work:
        start, method = time.perf_counter(), METHODS[name]
        inp = ScoreInput(
            method, config, embeddings[preprocess[name]], ood_of, ood, ids,
            negatives=mined if judge is None else MINED.read(ctx.run_dir, judge), mined=mined,
            run_dir=ctx.run_dir, connect_ray=ctx.ray, pool=judge, judges=judges, rows=rows,
            prototypes=_prototypes(prototype_rows, config, preprocess[name])
            if method.needs_prototypes else None,
        )  # fmt: skip
        result = scorer_of(method)(inp)
        for column, values in result.columns:
            column = dataclasses.replace(column, preprocess=preprocess[column.method])
            columns[column.name] = values
            catalogue.append(column)
        negatives.update(result.negatives)
        _merge(extra, result.manifest)
        seconds[name if judge is None else f"{name}[pool={judge}]"] = round(time.perf_counter() - start, 3)
        progress.update(1)
    progress.close()
    pairs = extra.pop("pairs", None)
    SCORES.write(ctx.out_dir, _output_table(images, ok, columns))
    write_json(ctx.out_dir / SCORE_COLUMNS, {"columns": [dataclasses.asdict(c) for c in catalogue]})
    excluded = _excluded(images, ok)
    n_bad = sum(sum(v.values()) for v in excluded.values())
    stats = {
        "images": images.num_rows, "scored": int(ok.sum()), "excluded": excluded, "columns": len(columns),
        "ood_datasets": list(ood), "seeds": [grouping_seed(config)], "negatives": negatives,
        "pairs": pairs, "seconds": seconds, "preprocess": preprocess,
        "workers": {"tasks": rows.tasks, "block_rows": rows.block, "nodes": rows.nodes}, **extra,
    }  # fmt: skip
    summary = (
        f"{int(ok.sum()):,} images ({n_bad:,} excluded) x {len(columns)} score columns "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    if pairs:
        summary += (
            f"; S_MM: {pairs['all_sets']:,} distinct pair texts for {pairs['without_dedup']:,} pairs a set, "
            f"{pairs['texts_encoded']:,} texts through CLIP"
        )
    return StageOutput((SCORES.file(), SCORE_COLUMNS), summary, stats)
