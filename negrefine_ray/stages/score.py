"""The `score` stage: every method's OOD score for every readable image (methods.md 0.6, 1.5, 2.5,
3.3-3.4, 4.3, App. B), plus NegRefine's ablations (NegFilter on/off x S_MM on/off) per judge. Each
method's entry in the catalogue (negrefine_ray.core.methods) names its scorer (scoring.registry), its
views and columns; this stage reads the inputs, runs each scorer and writes what they return.

Input: embed-images/images.parquet, embed-text/id_labels.parquet, mine/negatives.parquet,
filter/<judge>/kept.parquet, and for each judge of mining.filtered_by filter/<judge>/mined.parquet
(every mining method re-mined from the pool that judge filtered, negatives.scope). Output:
score/scores.parquet (dataset, role, path, label, status, one float64 column per score, null where
status != "ok"; and per-image flags such as InterNeg's `interneg@<d>#banked`), score/columns.json
(what each column and flag is) and score/negative_sets.parquet (the negatives each column used, for
the report's hardest images and negative-label lists).
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
    local_variant,
    local_variants,
    prototype_preprocessing,
)
from negrefine_ray.distributed.session import resolve_address
from negrefine_ray.errors import ConfigError, StageError, unknown_name
from negrefine_ray.judges.roster import judge_configs
from negrefine_ray.progress import Progress
from negrefine_ray.runfolder.artifacts import (
    ID_LABELS,
    IMAGES,
    MINED,
    NEGATIVE_SETS,
    NEGATIVES,
    SCORE_COLUMNS,
    SCORES,
)
from negrefine_ray.runfolder.atomic import write_json
from negrefine_ray.runfolder.folder import StageContext, StageOutput
from negrefine_ray.scoring.columns import ScoreColumn, grouping_seed
from negrefine_ray.scoring.inputs import NegativeSet, ScoreInput
from negrefine_ray.scoring.registry import scorer_of
from negrefine_ray.scoring.rows import Rows
from negrefine_ray.stages._score_output import IMAGE_COLUMNS, ColumnSpill, negative_sets_table, write_scores

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


def ok_embeddings(
    ctx: StageContext, readable: np.ndarray, scored: np.ndarray, variants: Iterable[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Of the images.parquet rows where `scored` is True: the (n,) bool mask of the `readable` ones
    (status "ok") and, per preprocessing variant, their (n_ok, D) float32 embeddings (column
    embedding@<variant>), read a batch at a time so only the matrices themselves are held."""
    ok = readable[scored]
    if not ok.any():
        raise StageError(f"none of the {int(scored.sum()):,} images has status 'ok'; nothing to score.")
    rows = scored & readable
    return ok, {v: IMAGES.matrix(ctx.run_dir, embedding_name(v), rows) for v in dict.fromkeys(variants)}


def _excluded(images: pa.Table, ok: np.ndarray) -> dict[str, dict[str, int]]:
    bad = images.filter(pa.array(~ok))
    counts = Counter(zip(bad.column("dataset").to_pylist(), bad.column("status").to_pylist(), strict=True))
    out: dict[str, dict[str, int]] = {}
    for (dataset, status), n in sorted(counts.items(), key=str):
        out.setdefault(dataset, {})[str(status)] = n
    return out


def _prototypes(
    ctx: StageContext, listing: pa.Table, rows: np.ndarray, variant: str
) -> tuple[np.ndarray, np.ndarray]:
    """(labels (P,), embeddings (P, D)) of the readable role-"prototype" images (bool mask `rows` of
    the listing) in the preprocessing of the method's prototypes (InterNeg's, methods.md 5.2)."""
    c = ctx.config
    proto = prototype_preprocessing(c.score.methods, c.images.preprocess, c.interneg.prototype_preprocess)
    labels = listing.filter(pa.array(rows)).column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    if not rows.any():
        return labels, np.zeros((0, 0), np.float32)
    return labels, IMAGES.matrix(ctx.run_dir, embedding_name(proto or variant), rows)


def score_rows(ctx: StageContext) -> Rows:
    """Where the per-image score functions run (score.workers) and on what (score.device): Ray tasks
    on the cluster, or here; "auto" takes the cluster when the job has a Ray address and that cluster
    has more than one node, and a GPU when the process (here) or the cluster (tasks) has one."""
    sc = ctx.config.score
    block = max(1, sc.block_rows // sc.chunk_size) * sc.chunk_size  # whole chunks: the same products
    tasks, gpus = sc.workers == "cluster", 0.0
    if sc.workers == "cluster" or (sc.workers == "auto" and resolve_address(ctx.config.ray, ctx.ray_address)):
        import ray

        ctx.ray()
        tasks = tasks or sum(1 for n in ray.nodes() if n.get("Alive")) > 1
        gpus = ray.cluster_resources().get("GPU", 0.0) if tasks else 0.0
    has_gpu = gpus > 0 if tasks else torch.cuda.is_available()
    if sc.device == "cuda" and not has_gpu:
        where = "the Ray cluster" if tasks else "the process running the score stage"
        raise ConfigError(
            f"score.device = 'cuda' but {where} has no GPU; set score.device = 'auto' or 'cpu'."
        )
    device = "cuda" if sc.device == "cuda" or (sc.device == "auto" and has_gpu) else "cpu"
    return Rows(tasks=tasks, block=block, device=device)


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
    listing = IMAGES.read(ctx.run_dir, columns=IMAGE_COLUMNS)  # the embeddings are read as matrices
    preprocess = image_preprocessing(methods, config.images.preprocess)
    # role "prototype": InterNeg's labelled ID training images, used for its prototypes, never scored
    is_prototype = pc.fill_null(pc.equal(listing.column("role"), "prototype"), False).to_numpy(
        zero_copy_only=False
    )
    readable = pc.fill_null(pc.equal(listing.column("status"), "ok"), False).to_numpy(zero_copy_only=False)
    images = listing.filter(pa.array(~is_prototype))
    ok, embeddings = ok_embeddings(ctx, readable, ~is_prototype, preprocess.values())
    local_scores = {  # GL-MCM's L-MCM per image, computed by the image actors (core.glmcm)
        v: IMAGES.matrix(ctx.run_dir, embedding_name(local_variant(v)), ~is_prototype & readable)[:, 0]
        for v in local_variants(methods, config.images.preprocess)
    }
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
    catalogue: list[ScoreColumn] = []
    flags: list[dict[str, str]] = []
    sets: dict[str, NegativeSet] = {}
    negatives: dict[str, dict[str, int]] = {}
    seconds: dict[str, float] = {}
    extra: dict[str, Any] = {}
    # each column on disk as soon as it is computed (stages._score_output)
    with ColumnSpill(ctx.out_dir, int(ok.sum())) as spill:
        progress = Progress(f"score: {int(ok.sum()):,} images", total=len(work), unit="methods")
        for name, judge in work:
            start, method = time.perf_counter(), METHODS[name]
            inp = ScoreInput(
                method, config, embeddings[preprocess[name]], ood_of, ood, ids,
                negatives=mined if judge is None else MINED.read(ctx.run_dir, judge), mined=mined,
                run_dir=ctx.run_dir, connect_ray=ctx.ray, pool=judge, judges=judges, rows=rows,
                prototypes=_prototypes(ctx, listing, is_prototype & readable, preprocess[name])
                if method.needs_prototypes else None,
                local=local_scores[preprocess[name]] if method.needs_local else None,
            )  # fmt: skip
            result = scorer_of(method)(inp)
            for column, values in result.columns:
                column = dataclasses.replace(column, preprocess=preprocess[column.method])
                spill.add(column.name, values)
                catalogue.append(column)
            for flag, of, meaning, values in result.flags:
                spill.add(flag, values)
                flags.append({"name": flag, "column": of, "meaning": meaning})
            sets.update(result.sets)
            negatives.update(result.negatives)
            _merge(extra, result.manifest)
            key = name if judge is None else f"{name}[pool={judge}]"
            seconds[key] = round(time.perf_counter() - start, 3)
            progress.update(1)
        progress.close()
        pairs = extra.pop("pairs", None)
        write_scores(ctx.out_dir, images, ok, spill)
    write_json(
        ctx.out_dir / SCORE_COLUMNS, {"columns": [dataclasses.asdict(c) for c in catalogue], "flags": flags}
    )
    NEGATIVE_SETS.write(ctx.out_dir, negative_sets_table(sets))
    excluded = _excluded(images, ok)
    n_bad = sum(sum(v.values()) for v in excluded.values())
    stats = {
        "images": images.num_rows, "scored": int(ok.sum()), "excluded": excluded, "columns": len(catalogue),
        "ood_datasets": list(ood), "seeds": [grouping_seed(config)], "negatives": negatives,
        "pairs": pairs, "seconds": seconds, "preprocess": preprocess,
        "workers": {"tasks": rows.tasks, "block_rows": rows.block, "device": rows.device,
                    "nodes": rows.nodes}, **extra,
    }  # fmt: skip
    summary = (
        f"{int(ok.sum()):,} images ({n_bad:,} excluded) x {len(catalogue)} score columns "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    if pairs:
        summary += (
            f"; S_MM: {pairs['all_sets']:,} distinct pair texts for {pairs['without_dedup']:,} pairs a set, "
            f"{pairs['texts_encoded']:,} texts through CLIP"
        )
    return StageOutput((SCORES.file(), SCORE_COLUMNS, NEGATIVE_SETS.file()), summary, stats)
