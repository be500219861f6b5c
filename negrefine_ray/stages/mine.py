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
(stages/filter_scope.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from negrefine_ray.clip.text_service import TextEncoder
from negrefine_ray.config import JobConfig
from negrefine_ray.core.methods import CANDIDATE_VIEWS, Method, get_method
from negrefine_ray.core.mining import (
    DNM_PRESETS,
    MiningResult,
    clean_label,
    mine_by_id_distance,
    mine_dnm,
    nearest_id_labels,
)
from negrefine_ray.errors import ConfigError
from negrefine_ray.runfolder.atomic import column_matrix, embedding_column, read_parquet, write_parquet
from negrefine_ray.runfolder.folder import StageContext, StageOutput
from negrefine_ray.stages.embed_text import SINGLE as SINGLE_VIEW
from negrefine_ray.stages.embed_text import method_pools, view_matrix
from negrefine_ray.stages.filter_scope import FILTER_POOL, write_filter_pool


def mine_settings(config: JobConfig) -> dict[str, Any]:
    mining = dataclasses.asdict(config.mining)
    del mining["filtered_by"]  # which judges' filtered pools are re-mined: the filter stage's setting
    settings = {"mining": mining, "arch": config.model.arch}
    if config.filter.scope == "corpus":  # absent by default, so default runs keep their hash
        settings["filter_scope"] = "corpus"
    return settings


def dnm_preset(config: JobConfig) -> str:
    """mining.dnm_preset (default model.arch), which must be one of DNM's presets."""
    preset = config.mining.dnm_preset or config.model.arch
    if preset not in DNM_PRESETS:
        raise ConfigError(
            f"DNM has no hyper-parameters for '{preset}' (mining.dnm_preset, default model.arch); "
            f"set mining.dnm_preset to one of {', '.join(DNM_PRESETS)}."
        )
    return preset


def _keys(table: pa.Table) -> list[tuple[str, str]]:
    return list(zip(table.column("word").to_pylist(), table.column("pos").to_pylist(), strict=True))


def _select(
    method: Method, pool: pa.Table, cands: pa.Table, ids: pa.Table, config: JobConfig
) -> tuple[MiningResult, np.ndarray]:
    """The method's selection over its pool (its catalogue entry's mining rule) and the pool's
    embeddings as the method scores them (its candidate view, unit rows)."""
    if method.mining is None or method.candidate_view is None:
        raise ConfigError(f"method '{method.name}' mines no negatives; remove it from mining.methods.")
    index = {key: i for i, key in enumerate(_keys(cands))}
    rows = np.array([index[key] for key in _keys(pool)], dtype=np.int64)
    pos = pool.column("pos").to_pylist()
    mining, rule = config.mining, method.mining
    taken = cands.take(pa.array(rows))
    emb = view_matrix(taken, method.candidate_view)
    if rule.rule == "density":
        raw = view_matrix(taken, method.candidate_view, unit=False)
        return mine_dnm(raw, pos, arch=dnm_preset(config), distance=mining.dnm_distance), emb
    q = getattr(mining, rule.quantile) if isinstance(rule.quantile, str) else rule.quantile
    result = mine_by_id_distance(
        emb, view_matrix(ids, method.id_view), pos, q=q, csp_guard=rule.csp_guard,
        top_fraction=mining.top_fraction,
    )  # fmt: skip
    return result, emb


def method_labels(method: Method, pool: pa.Table, cands: pa.Table) -> list[str]:
    """What the method embeds for each pool entry: with a phrase view, adjectives become phrases."""
    words, pos = pool.column("word").to_pylist(), pool.column("pos").to_pylist()
    if method.candidate_view is None or not CANDIDATE_VIEWS[method.candidate_view].phrases:
        return words
    phrase = {
        w: p
        for w, p, q in zip(*(cands.column(c).to_pylist() for c in ("word", "phrase", "pos")), strict=True)
        if q == "adj"
    }
    return [phrase[w] if p == "adj" else w for w, p in zip(words, pos, strict=True)]


# Distinct cleaned labels -> the n nearest ID class names of each, most similar first (3.2 step 2).
Nearest = Callable[[list[str]], Mapping[str, list[str]]]


def embedded_nearest(encoder: TextEncoder, ids: pa.Table, n: int) -> Nearest:
    """NegFilter's nearest ID labels by bare-string CLIP embeddings (no template), as the reference."""
    names = ids.column("label").to_pylist()

    def nearest(labels: list[str]) -> dict[str, list[str]]:
        idx, _ = nearest_id_labels(encoder.embed(labels, ["{}"]), column_matrix(ids, "bare"), n)
        return {c: [names[j] for j in row] for c, row in zip(labels, idx.tolist(), strict=True)}

    return nearest


def filter_columns(table: pa.Table, nearest: Nearest) -> pa.Table:
    """NegFilter's inputs (3.2 steps 1-2) added to a table of labels and parts of speech: cleaned
    labels, first occurrences (per part of speech) and the first occurrences' nearest ID names."""
    cleaned = [clean_label(label) for label in table.column("label").to_pylist()]
    seen: set[tuple[str, str]] = set()
    first = []
    for c, p in zip(cleaned, table.column("pos").to_pylist(), strict=True):
        first.append(c is not None and (p, c) not in seen)
        if c is not None:
            seen.add((p, c))
    asked = [c for c, f in zip(cleaned, first, strict=True) if f and c is not None]
    nearest_of = nearest(asked) if asked else {}
    rows = [nearest_of[c] if f and c is not None else [] for c, f in zip(cleaned, first, strict=True)]
    return (
        table.append_column("clean_label", pa.array(cleaned, pa.string()))
        .append_column("filter_input", pa.array(first))
        .append_column("nearest_id_labels", pa.array(rows, pa.list_(pa.string())))
    )


def mined_table(
    method: Method, pool: pa.Table, inputs: tuple[pa.Table, pa.Table], *, config: JobConfig
) -> tuple[pa.Table, MiningResult]:
    """The method's selection over `pool` (word, pos, lexname rows) as negatives.parquet rows (without
    NegFilter's columns); `inputs` = embed-text's (candidates, id_labels) tables."""
    cands, ids = inputs
    result, emb = _select(method, pool, cands, ids, config)
    take = pa.array(result.indices)
    labels = np.array(method_labels(method, pool, cands), dtype=object)[result.indices].tolist()
    table = pa.table(
        {
            "method": [method.name] * len(labels),
            "rank": pa.array(np.arange(len(labels)), pa.int32()),
            "label": pa.array(labels, pa.string()),
            "pos": pool.column("pos").take(take),
            "source_word": pool.column("word").take(take),
            "lexname": pool.column("lexname").take(take),
            "statistic": pa.array(result.statistic[result.indices], pa.float64()),
            "embedding": embedding_column(emb[result.indices]),
        }
    )
    return table, result


def run_mine(ctx: StageContext) -> StageOutput:
    config = ctx.config
    corpus = read_parquet(ctx.input("corpus", "corpus.parquet"))
    cands = read_parquet(ctx.input("embed-text", "candidates.parquet"))
    ids = read_parquet(ctx.input("embed-text", "id_labels.parquet"))
    encoder = TextEncoder(config, ctx.ray)
    nearest = embedded_nearest(encoder, ids, config.mining.n_nearest)
    tables, pools, stats = [], [], {}
    by_method = method_pools(config, corpus)
    if config.filter.scope == "corpus":  # the filter judges every candidate: one nearest-label pass
        nearest = write_filter_pool(ctx.out_dir / FILTER_POOL, by_method, cands, nearest)
    for name, pool in by_method.items():
        method = get_method(name)
        pos = pool.column("pos").to_pylist()
        if method.mined_in_score:  # InterNeg: the score stage selects, against the prototype images
            pools.append(_scored_pool(method, pool, cands))
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
    write_parquet(ctx.out_dir / "negatives.parquet", negatives)
    artifacts = ["negatives.parquet"]
    if pools:
        write_parquet(ctx.out_dir / "pools.parquet", pa.concat_tables(pools))
        artifacts.append("pools.parquet")
    if config.filter.scope == "corpus":
        artifacts.append(FILTER_POOL)
    summary = "; ".join(
        f"{m}: {s['pool_nouns']:,}+{s['pool_adjectives']:,} candidates -> "
        + (
            "selected in score"
            if "selected_in" in s
            else f"{s['selected_nouns']:,} nouns + {s['selected_adjectives']:,} adjectives"
        )
        for m, s in stats.items()
    )
    return StageOutput(tuple(artifacts), summary, stats)


def _scored_pool(method: Method, pool: pa.Table, cands: pa.Table) -> pa.Table:
    """The whole candidate pool of a method the score stage selects from (mine/pools.parquet): method,
    pool_index, word, pos, lexname and its candidate view's embedding (unit rows)."""
    index = {key: i for i, key in enumerate(_keys(cands))}
    rows = pa.array([index[key] for key in _keys(pool)], pa.int64())
    emb = view_matrix(cands.take(rows), method.candidate_view or "")
    return pa.table(
        {
            "method": [method.name] * pool.num_rows,
            "pool_index": pool.column("pool_index"),
            "word": pool.column("word"),
            "pos": pool.column("pos"),
            "lexname": pool.column("lexname"),
            "embedding": embedding_column(emb),
        }
    )
