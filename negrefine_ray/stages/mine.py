"""The `mine` stage: each method's negative labels from its candidate pool (methods.md 1.4, 2.4,
3.1, 4.2), plus what NegFilter needs for NegRefine's (3.2 steps 1-2). Which pool, view and rule
each method mines with is its entry in the method catalogue (negrefine_ray.core.methods).

Output `mine/negatives.parquet`, one row per (method, negative) in the method's final order
[nouns ascending | adjectives ascending]: method, rank, label (what the method embeds: the word, or
CSP's suffix phrase for CSP/NegRefine adjectives), pos, source_word, lexname, statistic (the ranking
value), embedding (L2-normalised, as the method scores with it), and for NegRefine rows clean_label
(NegFilter's cleaning; null when cleaning empties it), filter_input (first occurrence of its
cleaned label within its part of speech) and nearest_id_labels (the n most similar ID class names by
bare-string embeddings). With filter.scope = "corpus" also `mine/filter_pool.parquet`: every
candidate of the methods' pools with those three columns, what the filter asks about and re-mines
(stages/_filter_scope.py, negatives/scope.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from negrefine_ray.clip.text_service import TextEncoder
from negrefine_ray.config import JobConfig
from negrefine_ray.core.methods import CANDIDATE_VIEWS, get_method
from negrefine_ray.core.mining import nearest_id_labels
from negrefine_ray.errors import StageError
from negrefine_ray.negatives.scope import pool_nearest
from negrefine_ray.negatives.selection import (
    Nearest,
    filter_columns,
    method_labels,
    method_pools,
    mined_table,
    mining_settings,
    scored_pool,
)
from negrefine_ray.runfolder.artifacts import CANDIDATES, CORPUS, FILTER_POOL, ID_LABELS, NEGATIVES, POOLS
from negrefine_ray.runfolder.atomic import column_matrix, embedding_column
from negrefine_ray.runfolder.folder import StageContext, StageOutput

SINGLE_VIEW = next(iter(CANDIDATE_VIEWS))  # every candidate has it: its width is the embedding's


def mine_settings(config: JobConfig) -> dict[str, Any]:
    """The mining settings (the filter stage's re-mining shares them, negatives.selection)."""
    return mining_settings(config)


def embedded_nearest(encoder: TextEncoder, ids: pa.Table, n: int) -> Nearest:
    """NegFilter's nearest ID labels by bare-string CLIP embeddings (no template), as the reference."""
    names = ids.column("label").to_pylist()

    def nearest(labels: list[str]) -> dict[str, list[str]]:
        idx, _ = nearest_id_labels(encoder.embed(labels, ["{}"]), column_matrix(ids, "bare"), n)
        return {c: [names[j] for j in row] for c, row in zip(labels, idx.tolist(), strict=True)}

    return nearest


def run_mine(ctx: StageContext) -> StageOutput:
    config = ctx.config
    corpus = CORPUS.read(ctx.run_dir)
    cands, ids = CANDIDATES.read(ctx.run_dir), ID_LABELS.read(ctx.run_dir)
    encoder = TextEncoder(config, ctx.ray)
    nearest = embedded_nearest(encoder, ids, config.mining.n_nearest)
    tables, pools, stats = [], [], {}
    by_method = method_pools(config, corpus)
    if config.filter.scope == "corpus":  # the filter judges every candidate: one nearest-label pass
        nearest = write_filter_pool(ctx.out_dir, by_method, cands, nearest)
    for name, pool in by_method.items():
        method = get_method(name)
        pos = pool.column("pos").to_pylist()
        if method.mined_in_score:  # InterNeg: the score stage selects, against the prototype images
            pools.append(scored_pool(method, pool, cands))
            stats[name] = {
                "pool_nouns": pos.count("noun"),
                "pool_adjectives": pos.count("adj"),
                "selected_in": "score",
            }
            continue
        table, result = mined_table(method, pool, (cands, ids), config=config)
        if method.filtered:
            table = filter_columns(table, nearest)
        tables.append(table)
        stats[name] = {
            "pool_nouns": pos.count("noun"),
            "pool_adjectives": pos.count("adj"),
            "selected_nouns": result.counts.get("noun", 0),
            "selected_adjectives": result.counts.get("adj", 0),
        }
    if not tables:  # only methods selected in score (InterNeg alone): no rows, the usual columns
        dim = len(cands.column(SINGLE_VIEW)[0].as_py())
        tables.append(
            pa.table(
                {
                    "method": pa.array([], pa.string()),
                    "rank": pa.array([], pa.int32()),
                    "label": pa.array([], pa.string()),
                    "pos": pa.array([], pa.string()),
                    "embedding": embedding_column(np.zeros((0, dim), np.float32)),
                }
            )
        )
    negatives = pa.concat_tables(tables, promote_options="default")
    artifacts = [NEGATIVES.write(ctx.out_dir, negatives)]
    if pools:
        artifacts.append(POOLS.write(ctx.out_dir, pa.concat_tables(pools)))
    if config.filter.scope == "corpus":
        artifacts.append(FILTER_POOL.file())
    summary = "; ".join(
        f"{m}: {s['pool_nouns']:,}+{s['pool_adjectives']:,} candidates -> "
        + (
            "selected in score"
            if "selected_in" in s
            else f"{s['selected_nouns']:,} nouns + {s['selected_adjectives']:,} adjectives"
        )
        for m, s in stats.items()
    )
    encoder.close()  # the text actors, if a list went to Ray
    return StageOutput(tuple(artifacts), summary, stats)


def write_filter_pool(
    stage_dir: Path, pools: Mapping[str, pa.Table], cands: pa.Table, nearest: Nearest
) -> Nearest:
    """Write mine/filter_pool.parquet: every candidate of the pools of the methods mined in the mine
    stage (InterNeg selects in score and is left out), method by method in pool order, labelled as
    the method embeds it (CSP and NegRefine adjectives as their suffix phrases), with NegFilter's
    columns; `nearest` is asked once, for every distinct cleaned label. Returns the lookup of those
    nearest labels, so NegRefine's mined negatives get exactly the same ones."""
    tables = [
        pa.table(
            {
                "method": pa.array([name] * pool.num_rows, pa.string()),
                "word": pool.column("word"),
                "pos": pool.column("pos"),
                "lexname": pool.column("lexname"),
                "label": pa.array(method_labels(get_method(name), pool, cands), pa.string()),
            }
        )
        for name, pool in pools.items()
        if get_method(name).pool_filterable
    ]
    if not tables:
        raise StageError(
            f'filter.scope = "corpus" judges the pools of the methods the mine stage selects for, but '
            f"mining.methods = {list(pools)} has none; add one (neglabel, csp, negrefine, dnm) or set "
            'filter.scope = "negatives".'
        )
    table = filter_columns(pa.concat_tables(tables), nearest)
    FILTER_POOL.write(stage_dir, table)
    return pool_nearest(table)
