"""What a scorer takes and what it gives back. The score stage builds one frozen ScoreInput per method
(and per judge of mining.filtered_by for the methods that mine in the mine stage); a scorer returns a
Scored: its columns, the negatives it grouped and the negative sets its columns used (for the
report's hardest images), per-image flags, and its own manifest entries. The NegLabel grouping
that several scorers share (0.6) is here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negrefine_ray.config import JobConfig, ScoreConfig
from negrefine_ray.core import scores
from negrefine_ray.core.methods import Method
from negrefine_ray.errors import ConfigError, StageError
from negrefine_ray.runfolder.artifacts import view_matrix
from negrefine_ray.runfolder.atomic import column_matrix
from negrefine_ray.scoring.columns import ScoreColumn, grouping_seed
from negrefine_ray.scoring.rows import Rows


@dataclass(frozen=True)
class ScoreInput:
    """One method's scoring input. `image`: the ok images' (n_ok, D) embeddings in the method's
    preprocessing; `ood_of` (n_ok,) object: each row's OOD dataset, None for ID rows; `ood`: the OOD
    datasets in order. `negatives`: the method's mined negatives table (mine/negatives.parquet, or with
    `pool` = J filter/J/mined.parquet, mined from the pool judge J filtered); `mined`: always
    mine/negatives.parquet. `judges`: the NegFilter judges of a filtered method. `prototypes`: (labels,
    embeddings) of the readable role-"prototype" images, for methods that need them. `local`: the
    images' local score (GL-MCM's L-MCM) in the method's preprocessing, for methods that need it.
    `connect_ray` starts or joins Ray for scorers that distribute work."""

    method: Method
    config: JobConfig
    image: np.ndarray
    ood_of: np.ndarray
    ood: tuple[str, ...]
    ids: pa.Table
    negatives: pa.Table
    mined: pa.Table
    run_dir: Path
    connect_ray: Callable[[], None]
    pool: str | None = None
    judges: tuple[str, ...] = ()
    prototypes: tuple[np.ndarray, np.ndarray] | None = None
    local: np.ndarray | None = None  # (n_ok,) the image actors' local score, for methods needing it
    rows: Rows = field(default_factory=Rows)  # where the per-image score functions run

    @property
    def sc(self) -> ScoreConfig:
        return self.config.score

    @property
    def seed(self) -> int:
        return grouping_seed(self.config)

    def id_text(self, unit: bool = True) -> np.ndarray:
        """(K, D) float32 ID-label embeddings of the method's view; `unit`: L2-normalised rows."""
        return view_matrix(self.ids, self.method.id_view, unit=unit)

    def negative_rows(self) -> pa.Table:
        """The method's rows of its negatives table in its canonical order (rank)."""
        rows = self.negatives.filter(pc.equal(self.negatives.column("method"), self.method.name))
        if rows.num_rows == 0:
            where = "mine/negatives.parquet" if self.pool is None else f"filter/{self.pool}/mined.parquet"
            raise StageError(f"{where} has no negatives of method '{self.method.name}'; rerun mine.")
        return rows.sort_by("rank")

    def negative_set(self) -> NegativeSet:
        """The method's negatives (labels, parts of speech, ranks, embeddings) in rank order."""
        rows = self.negative_rows()
        return NegativeSet(
            rows.column("label").to_pylist(), rows.column("pos").to_pylist(),
            rows.column("rank").to_pylist(), column_matrix(rows, "embedding"),
        )  # fmt: skip


@dataclass(frozen=True)
class NegativeSet:
    """The negatives a score column used, in the order it used them: labels, parts of speech, each
    one's rank where it was selected (mine's rank; InterNeg's selection order per part of speech),
    and (M, D) float32 embeddings. Written to score/negative_sets.parquet for the report."""

    labels: Sequence[str]
    pos: Sequence[str]
    rank: Sequence[int]
    embedding: np.ndarray

    def take(self, index: np.ndarray) -> NegativeSet:
        """The negatives at `index`, in that order."""
        return NegativeSet(
            [self.labels[i] for i in index], [self.pos[i] for i in index], [self.rank[i] for i in index],
            self.embedding[index],
        )  # fmt: skip


@dataclass
class Scored:
    """A scorer's output: (column, (n_ok,) float64 values) in order, the negatives it grouped (per
    row: how many, how many the grouping kept), the negative sets its columns used (by set name),
    per-image flags ((flag name, the column it describes, what it means, (n_ok,) 0/1 or NaN)), and
    entries for the score stage's manifest."""

    columns: list[tuple[ScoreColumn, np.ndarray]] = field(default_factory=list)
    negatives: dict[str, dict[str, int]] = field(default_factory=dict)
    sets: dict[str, NegativeSet] = field(default_factory=dict)
    flags: list[tuple[str, str, str, np.ndarray]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def add(self, column: ScoreColumn, values: np.ndarray, negatives: str | None = None) -> None:
        """Column `column` with its values; `negatives`: the name of the set (see `uses`) it used."""
        if negatives is not None and negatives not in self.sets:
            raise StageError(f"score column {column.name!r} names an unrecorded negative set {negatives!r}")
        self.columns.append((dataclasses.replace(column, negatives=negatives), values))

    def uses(self, name: str, negatives: NegativeSet) -> str:
        """Record negative set `name` (its columns then name it in `add`); returns the name."""
        self.sets[name] = negatives
        return name

    def grouped(self, inp: ScoreInput, what: str, id_text: np.ndarray, neg_text: np.ndarray) -> np.ndarray:
        """NegLabel's grouped score (0.6) under the run's grouping permutation: (n_ok,) float64; the
        grouping's counts are recorded under `what`."""
        sc = inp.sc
        self.check_groups(sc.n_groups, neg_text.shape[0], what)
        perm = scores.grouping_permutation(neg_text.shape[0], sc.n_groups, inp.seed, sc.permutation_device)
        return inp.rows.map(
            scores.neglabel, inp.image, id_text=id_text, neg_text=neg_text, n_groups=sc.n_groups,
            logit_scale=sc.logit_scale, permutation=perm, chunk_size=sc.chunk_size,
        )  # fmt: skip

    def check_groups(self, g: int, m: int, what: str) -> None:
        if g > m:
            raise ConfigError(
                f"score.n_groups = {g} but {what} has only {m} negatives; set score.n_groups <= {m}."
            )
        kept = scores.kept_negatives(m, g)
        self.negatives[what] = {"negatives": m, "kept": kept, "dropped": m - kept, "per_group": kept // g}


Scorer = Callable[[ScoreInput], Scored]
