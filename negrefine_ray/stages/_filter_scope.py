"""The filter stage under filter.scope = "corpus" (NegRefine's reference asks about its mined negatives
only, methods.md 3.2): the judges are asked about every candidate of the pools of the methods the
mine stage selects for, each cleaned and with its nearest ID labels exactly as NegRefine's mined ones
(mine/filter_pool.parquet); then, for each judge J in mining.filtered_by, every such method selects
again, by its own rule, from its pool minus the candidates J removed (negatives.scope), written as
filter/J/mined.parquet, which the score stage scores as "<row>[pool=J]".
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from negrefine_ray.config import JobConfig
from negrefine_ray.errors import NegRefineError, StageError
from negrefine_ray.negatives.scope import removed_by, reselect
from negrefine_ray.negatives.selection import mining_settings
from negrefine_ray.runfolder.artifacts import CANDIDATES, FILTER_POOL, ID_LABELS, LABELS, MINED
from negrefine_ray.runfolder.atomic import read_parquet
from negrefine_ray.runfolder.folder import StageContext


def _read_pool(ctx: StageContext) -> pa.Table:
    path = FILTER_POOL.path(ctx.run_dir)
    if not path.is_file():
        raise StageError(
            f'filter.scope = "corpus" needs {path}, which the mine stage writes only with that scope; '
            "rerun the mine stage with it (negrefine-ray run JOB.toml, or --force mine)."
        )
    return FILTER_POOL.read(ctx.run_dir)


def corpus_input(ctx: StageContext) -> pa.Table:
    """The judges' input under filter.scope = "corpus" (load_negatives' columns: label, pos,
    nearest_id_labels): each distinct cleaned candidate once per part of speech, its nearest ID labels
    cut to filter.n_id_labels."""
    pool = _read_pool(ctx)
    rows = pool.filter(pool.column("filter_input"))
    n = ctx.config.filter.n_id_labels
    nearest = rows.column("nearest_id_labels").to_pylist()
    if rows.num_rows == 0:
        raise StageError(f"mine/{FILTER_POOL.name} has no candidate whose cleaned label is asked about.")
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


def write_reselections(ctx: StageContext) -> list[str]:
    """filter/J/mined.parquet for each judge J of mining.filtered_by, once the judges have written
    their labels.parquet; returns those artifact names (none under filter.scope = "negatives")."""
    config = ctx.config
    if config.filter.scope != "corpus" or not config.mining.filtered_by:
        return []
    pool = _read_pool(ctx)
    cands, ids = CANDIDATES.read(ctx.run_dir), ID_LABELS.read(ctx.run_dir)
    written = []
    for judge in config.mining.filtered_by:
        removed = removed_by(LABELS.check(read_parquet(ctx.out_dir / LABELS.file(judge)), judge))
        mined = reselect(pool, removed, (cands, ids), config=config)
        written.append(MINED.write(ctx.out_dir, mined, judge))
    return written


def reselection_settings(config: JobConfig) -> dict[str, Any]:
    """What the filter stage's re-selections depend on beyond the judges' settings: the judges and,
    for them, every mining setting (empty under filter.scope = "negatives", the default)."""
    if config.filter.scope != "corpus" or not config.mining.filtered_by:
        return {}
    return {"reselection": {"filtered_by": list(config.mining.filtered_by), "mine": mining_settings(config)}}
