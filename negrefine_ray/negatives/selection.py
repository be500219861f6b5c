"""A method's negatives as Arrow tables: its pool (method_pools), its selection by its catalogue
entry's mining rule over that pool (mined_table, rows of mine/negatives.parquet), and NegFilter's
input columns (filter_columns). The mine stage runs these, and the filter stage runs them again to
re-mine the pools its judges filtered (negatives.scope), so they live below both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from negrefine_ray.config import JobConfig
from negrefine_ray.core.corpus import get_pool_rule
from negrefine_ray.core.labels import load_id_labels
from negrefine_ray.core.methods import CANDIDATE_VIEWS, Method
from negrefine_ray.core.mining import (
    DNM_PRESETS,
    MiningResult,
    clean_label,
    mine_adaneg,
    mine_by_id_distance,
    mine_dnm,
)
from negrefine_ray.errors import ConfigError
from negrefine_ray.runfolder.artifacts import view_matrix
from negrefine_ray.runfolder.atomic import embedding_column


def method_pools(config: JobConfig, corpus: pa.Table) -> dict[str, pa.Table]:
    """Each method's candidate pool, its files walked in `mining.file_order` (methods.md 0.5)."""
    id_labels = load_id_labels(config.labels.id_labels)
    return {
        m: get_pool_rule(m, config.mining.file_order).pool(corpus, id_labels) for m in config.mining.methods
    }


def mining_settings(config: JobConfig) -> dict[str, Any]:
    mining = dataclasses.asdict(config.mining)
    del mining["filtered_by"]  # which judges' filtered pools are re-mined: the filter stage's setting
    settings: dict[str, Any] = {"mining": mining, "arch": config.model.arch}
    if config.filter.scope == "corpus":  # absent by default, so default runs keep their hash
        settings["filter_scope"] = "corpus"
    if "adaneg" in config.mining.methods:  # AdaNeg's count of negatives is a mining setting
        settings["adaneg_negatives"] = config.adaneg.n_negatives
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


def select(
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
    if rule.rule == "order-statistic":
        return mine_adaneg(emb, view_matrix(ids, method.id_view), pos, m=config.adaneg.n_negatives, q=q), emb
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
    result, emb = select(method, pool, cands, ids, config)
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


def scored_pool(method: Method, pool: pa.Table, cands: pa.Table) -> pa.Table:
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
