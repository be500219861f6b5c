"""What NegFilter's judges are asked about (filter.scope) and the mining that follows from their
answers (mining.filtered_by). "negatives", the reference (NegRefine, methods.md 3.2): NegRefine's
mined negatives. "corpus": every candidate of the pools of the methods the mine stage selects for,
each cleaned and asked about with its nearest ID labels exactly as NegRefine's mined ones are; then,
for each judge J in mining.filtered_by, every such method selects again, by its own rule, from its
pool minus the candidates J removed.

Input: mine/filter_pool.parquet (written here for the mine stage: method, word, pos, lexname, label as
the method embeds it, clean_label, filter_input, nearest_id_labels), embed-text/candidates.parquet and
id_labels.parquet, filter/J/labels.parquet. Output: filter/J/mined.parquet, with the columns and order
of mine/negatives.parquet, which the score stage scores as "<row>[pool=J]".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from negrefine_ray.config import JobConfig
from negrefine_ray.core.methods import get_method
from negrefine_ray.errors import NegRefineError, StageError
from negrefine_ray.runfolder.atomic import read_parquet, write_parquet
from negrefine_ray.runfolder.folder import StageContext

if TYPE_CHECKING:
    from negrefine_ray.stages.mine import Nearest

# The mine stage's code (selection rules, text views) is imported where it is used: it loads torch,
# and the filter stage itself must not (vLLM's environment has torch, but the default scope needs none).

# Every candidate of the mining methods' pools with NegFilter's columns, a mine artifact.
FILTER_POOL = "filter_pool.parquet"
MINED = "mined.parquet"  # filter/<judge>/mined.parquet


def write_filter_pool(
    path: Path, pools: Mapping[str, pa.Table], cands: pa.Table, nearest: Nearest
) -> Nearest:
    """Write mine/filter_pool.parquet: every candidate of the pools of the methods mined in the mine
    stage (InterNeg selects in score and is left out), method by method in pool order, labelled as
    the method embeds it (CSP and NegRefine adjectives as their suffix phrases), with NegFilter's
    columns; `nearest` is asked once, for every distinct cleaned label. Returns the lookup of those
    nearest labels, so NegRefine's mined negatives get exactly the same ones."""
    from negrefine_ray.stages.mine import filter_columns, method_labels

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
    write_parquet(path, table)
    return pool_nearest(table)


def pool_nearest(pool: pa.Table) -> Nearest:
    """The nearest ID labels filter_pool.parquet holds for each distinct cleaned label."""
    first = pool.filter(pool.column("filter_input"))
    known = dict(
        zip(
            first.column("clean_label").to_pylist(),
            first.column("nearest_id_labels").to_pylist(),
            strict=True,
        )
    )

    def nearest(labels: list[str]) -> dict[str, list[str]]:
        missing = [c for c in labels if c not in known]
        if missing:
            raise StageError(
                f"mine/{FILTER_POOL} lacks {len(missing)} cleaned label(s), e.g. {missing[0]!r}; rerun the "
                "mine stage (--force mine)."
            )
        return {c: known[c] for c in labels}

    return nearest


def _read_pool(ctx: StageContext) -> pa.Table:
    path = ctx.input("mine", FILTER_POOL)
    if not path.is_file():
        raise StageError(
            f'filter.scope = "corpus" needs {path}, which the mine stage writes only with that scope; '
            "rerun the mine stage with it (negrefine-ray run JOB.toml, or --force mine)."
        )
    return read_parquet(path)


def corpus_input(ctx: StageContext) -> pa.Table:
    """The judges' input under filter.scope = "corpus" (load_negatives' columns: label, pos,
    nearest_id_labels): each distinct cleaned candidate once per part of speech, its nearest ID labels
    cut to filter.n_id_labels."""
    pool = _read_pool(ctx)
    rows = pool.filter(pool.column("filter_input"))
    n = ctx.config.filter.n_id_labels
    nearest = rows.column("nearest_id_labels").to_pylist()
    if rows.num_rows == 0:
        raise StageError(f"mine/{FILTER_POOL} has no candidate whose cleaned label is asked about.")
    if min(map(len, nearest)) < n:
        raise NegRefineError(
            f"filter.n_id_labels = {n} but the mine stage kept only {min(map(len, nearest))} nearest ID "
            "labels; lower filter.n_id_labels or raise mining.n_nearest."
        )
    return pa.table(
        {
            "label": rows.column("clean_label"),
            "pos": rows.column("pos"),
            "nearest_id_labels": pa.array([ids[:n] for ids in nearest], pa.list_(pa.string())),
        }
    )


def removed_by(labels: pa.Table) -> set[tuple[str, str]]:
    """(pos, cleaned label) of every label a judge removed (filter/J/labels.parquet, kept false)."""
    gone = labels.filter(pc.invert(labels.column("kept")))
    return set(zip(gone.column("pos").to_pylist(), gone.column("label").to_pylist(), strict=True))


def filtered_pools(pool: pa.Table, removed: set[tuple[str, str]]) -> dict[str, pa.Table]:
    """Each method's pool (filter_pool.parquet rows, in pool order) without the candidates whose
    cleaned label was removed. A candidate that cleaning empties is never asked about, so it stays."""
    keys = zip(pool.column("pos").to_pylist(), pool.column("clean_label").to_pylist(), strict=True)
    kept = pool.filter(pa.array([c is None or (p, c) not in removed for p, c in keys], pa.bool_()))
    methods = dict.fromkeys(pool.column("method").to_pylist())
    return {m: kept.filter(pc.equal(kept.column("method"), m)) for m in methods}


def reselect(
    pool: pa.Table, removed: set[tuple[str, str]], inputs: tuple[pa.Table, pa.Table], *, config: JobConfig
) -> pa.Table:
    """Every method's negatives mined from its pool minus `removed`, by its own rule and settings (the
    mine stage's code), as negatives.parquet rows; `inputs` = embed-text's (candidates, id_labels)."""
    from negrefine_ray.stages.mine import filter_columns, mined_table

    nearest = pool_nearest(pool)
    tables = []
    for name, rows in filtered_pools(pool, removed).items():
        method = get_method(name)
        if rows.num_rows == 0:
            raise StageError(f"the judge removed all of {method.display}'s pool; it has nothing to mine.")
        table, _ = mined_table(method, rows, inputs, config=config)
        tables.append(filter_columns(table, nearest) if method.filtered else table)
    return pa.concat_tables(tables, promote_options="default")


def write_reselections(ctx: StageContext) -> list[str]:
    """filter/J/mined.parquet for each judge J of mining.filtered_by, once the judges have written
    their labels.parquet; returns those artifact names (none under filter.scope = "negatives")."""
    config = ctx.config
    if config.filter.scope != "corpus" or not config.mining.filtered_by:
        return []
    pool = _read_pool(ctx)
    cands, ids = (
        read_parquet(ctx.input("embed-text", f)) for f in ("candidates.parquet", "id_labels.parquet")
    )
    written = []
    for judge in config.mining.filtered_by:
        removed = removed_by(read_parquet(ctx.out_dir / judge / "labels.parquet"))
        mined = reselect(pool, removed, (cands, ids), config=config)
        write_parquet(ctx.out_dir / judge / MINED, mined)
        written.append(f"{judge}/{MINED}")
    return written


def reselection_settings(config: JobConfig) -> dict[str, Any]:
    """What the filter stage's re-selections depend on beyond the judges' settings: the judges and,
    for them, every mining setting (empty under filter.scope = "negatives", the default)."""
    from negrefine_ray.stages.mine import mine_settings

    if config.filter.scope != "corpus" or not config.mining.filtered_by:
        return {}
    return {"reselection": {"filtered_by": list(config.mining.filtered_by), "mine": mine_settings(config)}}


def pool_negatives(ctx: StageContext, judge: str) -> pa.Table:
    """filter/<judge>/mined.parquet: the negatives mined from the pool `judge` filtered."""
    return read_parquet(ctx.input("filter", f"{judge}/{MINED}"))


def negrefine_kept(kept: pa.Table, negatives: pa.Table, scope: str) -> pa.Table:
    """A judge's kept labels as NegRefine's NegFilter keeps them. Under filter.scope = "corpus"
    kept.parquet covers every candidate, so only NegRefine's mined labels (its filter inputs in
    mine/negatives.parquet) are taken: their questions, and so their decisions, are the same."""
    if scope != "corpus":
        return kept
    mined = negatives.filter(pc.equal(negatives.column("method"), "negrefine"))
    mined = mined.filter(pc.fill_null(mined.column("filter_input"), False))
    keys = set(zip(mined.column("pos").to_pylist(), mined.column("clean_label").to_pylist(), strict=True))
    pairs = zip(kept.column("pos").to_pylist(), kept.column("label").to_pylist(), strict=True)
    return kept.filter(pa.array([key in keys for key in pairs], pa.bool_()))
