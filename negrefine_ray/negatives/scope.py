"""NegFilter over the whole candidate pool (filter.scope = "corpus") as Arrow tables: what a judge
removed, each method's pool without it, and every method re-mined from that pool by its own rule
(mining.filtered_by). Also how a filtered method's NegFilter keeps its own mined labels when the
judges were asked about every candidate. Used by the filter stage (re-mining) and the score stage.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from negrefine_ray.config import JobConfig
from negrefine_ray.core.methods import METHODS, get_method
from negrefine_ray.errors import StageError
from negrefine_ray.negatives.selection import Nearest, filter_columns, mined_table
from negrefine_ray.runfolder.artifacts import FILTER_POOL

# The methods whose mined negatives NegFilter refines (catalogue flag `filtered`): NegRefine.
FILTERED_METHODS: tuple[str, ...] = tuple(m.name for m in METHODS.values() if m.filtered)


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
                f"mine/{FILTER_POOL.name} lacks {len(missing)} cleaned label(s), e.g. {missing[0]!r}; "
                "rerun the mine stage (--force mine)."
            )
        return {c: known[c] for c in labels}

    return nearest


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
    nearest = pool_nearest(pool)
    tables = []
    for name, rows in filtered_pools(pool, removed).items():
        method = get_method(name)
        if rows.num_rows == 0:
            raise StageError(f"the judge removed all of {method.display}'s pool; it has nothing to mine.")
        table, _ = mined_table(method, rows, inputs, config=config)
        tables.append(filter_columns(table, nearest) if method.filtered else table)
    return pa.concat_tables(tables, promote_options="default")


def filtered_kept(kept: pa.Table, negatives: pa.Table, scope: str) -> pa.Table:
    """A judge's kept labels as a filtered method's NegFilter keeps them (NegRefine's). Under
    filter.scope = "corpus" kept.parquet covers every candidate, so only the filtered methods' mined
    labels (their filter inputs in mine/negatives.parquet) are taken: their questions, and so their
    decisions, are the same."""
    if scope != "corpus":
        return kept
    mined = negatives.filter(pc.is_in(negatives.column("method"), pa.array(FILTERED_METHODS)))
    mined = mined.filter(pc.fill_null(mined.column("filter_input"), False))
    keys = set(zip(mined.column("pos").to_pylist(), mined.column("clean_label").to_pylist(), strict=True))
    pairs = zip(kept.column("pos").to_pylist(), kept.column("label").to_pylist(), strict=True)
    return kept.filter(pa.array([key in keys for key in pairs], pa.bool_()))
