"""The score stage's columns: what each float64 column of score/scores.parquet is (score/columns.json
lists them), named from its method's catalogue entry (core.methods Row), and the grouping seed."""

from __future__ import annotations

from dataclasses import dataclass

from negrefine_ray.config import JobConfig
from negrefine_ray.core.methods import Method


@dataclass(frozen=True)
class ScoreColumn:
    """One float64 column of scores.parquet (listed in columns.json); higher = more in-distribution.

    `row` is the report row its method's catalogue entry declares: mcm, neglabel, csp, dnm,
    negrefine[J] (S_NL + alpha S_MM over judge J's kept negatives), negrefine_nl[J] (S_NL alone),
    negrefine_nofilter and negrefine_nl_nofilter (the same over every cleaned, unfiltered NegRefine
    negative). With `pool`, `judge` filtered the candidate pool instead (filter.scope = "corpus") and
    the method's negatives were mined from what it kept (mining.filtered_by, filter/J/mined.parquet):
    neglabel[pool=J], csp[pool=J], dnm[pool=J]@<d>, negrefine[pool=J] and negrefine_nl[pool=J] (no
    NegFilter after mining: J already judged every candidate). `name` = row, plus `@<ood dataset>`
    for DNM: DNM draws its grouping once per OOD dataset, so its ID scores differ per OOD dataset;
    `dnm@<d>` holds the ID rows and dataset d's rows under d's grouping and is null elsewhere.
    alpha S_MM = negrefine - negrefine_nl.
    """

    name: str
    row: str
    method: str
    judge: str | None = None  # NegRefine: the judge whose kept negatives were used; None = no filter
    s_mm: bool = False  # NegRefine: whether alpha * S_MM is added
    seed: int | None = None  # the grouping permutation's seed
    ood_dataset: str | None = None  # DNM: the OOD dataset whose grouping made this column
    preprocess: str = ""  # the image preprocessing (core.methods.PREPROCESSING) of its embeddings
    visual: bool = False  # InterNeg: with the negatives inverted online from its stream's images
    pool: bool = False  # negatives mined from the candidate pool `judge` filtered (mining.filtered_by)
    negatives: str | None = None  # its set in score/negative_sets.parquet; None: it uses no negatives


def score_column(
    method: Method, judge: str | None = None, *, s_mm: bool = False, seed: int | None = None,
    ood: str | None = None, visual: bool = False, pool: bool = False,
) -> ScoreColumn:  # fmt: skip
    """A column of `method` with the row and name its catalogue entry gives it."""
    row, _ = method.row(judge, s_mm, visual, pool)
    name = method.column_name(row, ood)
    return ScoreColumn(name, row, method.name, judge, s_mm, seed, ood, visual=visual, pool=pool)


def grouping_seed(config: JobConfig) -> int:
    """The grouping permutation's seed: the references' fixed group_seed, or with permutation_seed =
    "run" this run's seed (a multi-seed job runs one run folder per seed, see seeds.py)."""
    return config.score.group_seed if config.score.permutation_seed == "fixed" else config.run.seed
