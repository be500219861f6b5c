"""The scorers of MCM (App. B), NegLabel and CSP (0.6) and DNM (4.3): one formula of core.scores each
over the method's ID view and mined negatives."""

from __future__ import annotations

import numpy as np

from negrefine_ray.core import scores
from negrefine_ray.scoring.columns import score_column
from negrefine_ray.scoring.inputs import Scored, ScoreInput


def score_mcm(inp: ScoreInput) -> Scored:
    """MCM (App. B): the maximum softmax over the cosines to the ID prompts."""
    out = Scored()
    values = inp.rows.map(
        scores.mcm, inp.image, id_text=inp.id_text(), temperature=inp.sc.mcm_temperature,
        chunk_size=inp.sc.chunk_size,
    )  # fmt: skip
    out.add(score_column(inp.method), values)
    return out


def score_grouped(inp: ScoreInput) -> Scored:
    """NegLabel's grouped score (0.6) over the method's mined negatives (NegLabel, CSP); with
    `pool` = J over those mined from the pool J filtered."""
    out, pool = Scored(), inp.pool
    column = score_column(inp.method, pool, seed=inp.seed, pool=pool is not None)
    negatives = inp.negative_set()
    values = out.grouped(inp, column.row, inp.id_text(), negatives.embedding)
    out.add(column, values, negatives=out.uses(column.row, negatives))
    return out


def score_dnm(inp: ScoreInput) -> Scored:
    """DNM (4.3): one column per OOD dataset d, its ID and d rows under d's grouping, NaN elsewhere.
    DNM normalises inside, so it gets the raw ID view. `pool` as in score_grouped."""
    out, pool, sc, method = Scored(), inp.pool, inp.sc, inp.method
    negatives = inp.negative_set()
    id_text, neg_text = inp.id_text(unit=False), negatives.embedding
    is_id = np.array([d is None for d in inp.ood_of], dtype=bool)
    used = out.uses(method.row(pool, pool=pool is not None)[0], negatives)
    out.check_groups(sc.n_groups, neg_text.shape[0], used)
    perms = scores.dnm_permutations(neg_text.shape[0], sc.n_groups, len(inp.ood), seed=sc.dnm_seed)
    for name, perm in zip(inp.ood, perms, strict=True):
        rows = is_id | (inp.ood_of == name)
        values = np.full(inp.image.shape[0], np.nan)
        values[rows] = inp.rows.map(
            scores.dnm, inp.image[rows], id_text=id_text, neg_text=neg_text, permutation=perm,
            n_groups=sc.n_groups, temperature=sc.dnm_temperature, tau=sc.dnm_tau, chunk_size=sc.chunk_size,
        )  # fmt: skip
        column = score_column(method, pool, seed=sc.dnm_seed, ood=name, pool=pool is not None)
        out.add(column, values, negatives=used)
    return out
