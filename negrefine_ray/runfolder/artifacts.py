"""Each run-folder artifact's contract, in one place: the stage that writes it, its file name in that
stage's folder and, for tables, the columns its readers rely on (an Arrow schema). Stages read and
write their tables through these, so a stage never imports another to learn a file name or a column,
and a table that lacks a column fails where it is read, naming what is missing and what arrived.

Columns that vary with the run are not in a schema: embed-text's view columns (core.methods ID_VIEWS,
CANDIDATE_VIEWS), embed-images' `embedding@<variant>` columns and the score columns (score/
columns.json lists them). EMBEDDING in a schema stands for Arrow's fixed_size_list<float32>[D] of
any D.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negrefine_ray.core.methods import CANDIDATE_VIEWS, ID_VIEWS
from negrefine_ray.core.vectors import l2_normalise
from negrefine_ray.errors import StageError
from negrefine_ray.runfolder.atomic import (
    column_matrix,
    parquet_matrix,
    read_parquet,
    write_parquet,
    write_parquet_parts,
)

MANIFEST = "manifest.json"  # every stage folder's record of what it wrote and from what
EMBEDDING = pa.list_(pa.float32())  # schema placeholder: fixed_size_list<float32>[D], any D


@dataclass(frozen=True)
class Artifact:
    """One file of a stage's folder. `name` may hold "{judge}" (the filter stage's per-judge files).
    `schema`: the columns every such table has; `optional`: further columns some runs write (e.g.
    NegFilter's inputs on NegRefine's rows only)."""

    stage: str
    name: str
    description: str
    schema: pa.Schema | None = None
    optional: pa.Schema | None = None

    def file(self, judge: str = "") -> str:
        """The file's path inside its stage folder."""
        return self.name.format(judge=judge)

    def path(self, run_dir: Path, judge: str = "") -> Path:
        return run_dir / self.stage / self.file(judge)

    def check(self, table: pa.Table, where: object) -> pa.Table:
        """`table` if it has the contract's columns with their types, else a StageError that names
        the missing or mistyped columns, what arrived, and the stage to run again."""
        problems = []
        for contract, required in ((self.schema, True), (self.optional, False)):
            for f in contract or ():
                if f.name not in table.column_names:
                    if required:
                        problems.append(f"lacks column '{f.name}'")
                elif not _same_type(table.schema.field(f.name).type, f.type):
                    problems.append(f"column '{f.name}' is {table.schema.field(f.name).type}, not {f.type}")
        if problems:
            raise StageError(
                f"{where}: {'; '.join(problems)} (it has {table.column_names}); rerun the {self.stage} stage."
            )
        return table

    def read(self, run_dir: Path, judge: str = "", columns: Sequence[str] | None = None) -> pa.Table:
        """The table, or only its `columns` (the contract's then checked among those)."""
        path = self.path(run_dir, judge)
        if columns is None:
            return self.check(read_parquet(path), path)
        missing = [c for c in columns if c not in pq.ParquetFile(path).schema_arrow.names]
        if missing:
            raise StageError(f"{path}: lacks columns {missing}; rerun the {self.stage} stage.")
        return self.check(pq.read_table(path, columns=list(columns)), path)

    def matrix(self, run_dir: Path, name: str, rows: np.ndarray) -> np.ndarray:
        """Embedding column `name` at the rows of bool mask `rows`, read a batch at a time."""
        try:
            return parquet_matrix(self.path(run_dir), name, rows)
        except StageError as exc:
            raise StageError(f"{self.stage}/{self.file()}: {exc} Rerun the {self.stage} stage.") from exc

    def write(self, stage_dir: Path, table: pa.Table, judge: str = "") -> str:
        """Write `table` into the stage's (staging) folder; returns its file name for the manifest."""
        name = self.file(judge)
        write_parquet(stage_dir / name, self.check(table, f"{self.stage}/{name}"))
        return name

    def write_parts(self, stage_dir: Path, parts: Iterable[pa.Table], judge: str = "") -> str:
        """`write` for a table made part by part (row ranges, each checked), never whole in memory."""
        name = self.file(judge)
        write_parquet_parts(stage_dir / name, (self.check(p, f"{self.stage}/{name}") for p in parts))
        return name


def _same_type(got: pa.DataType, want: pa.DataType) -> bool:
    if want == EMBEDDING:
        return pa.types.is_fixed_size_list(got) and got.value_type == pa.float32()
    return bool(got == want)


_STR, _BOOL, _F64 = pa.string(), pa.bool_(), pa.float64()
_NEGFILTER = pa.schema(
    [("clean_label", _STR), ("filter_input", _BOOL), ("nearest_id_labels", pa.list_(_STR))]
)
_MINED = pa.schema(
    [("method", _STR), ("rank", pa.int32()), ("label", _STR), ("pos", _STR), ("embedding", EMBEDDING)]
)
_MINED_MORE = pa.schema([("source_word", _STR), ("lexname", _STR), ("statistic", _F64), *_NEGFILTER])

CORPUS = Artifact(
    "corpus",
    "corpus.parquet",
    "every candidate word of the requested lexicographer files",
    pa.schema([("word", _STR), ("pos", _STR), ("lexname", _STR)]),
)
ID_LABELS = Artifact(
    "embed-text",
    "id_labels.parquet",
    "the ID labels, one column per ID_VIEWS view",
    pa.schema([("label", _STR)]),
)
CANDIDATES = Artifact(
    "embed-text",
    "candidates.parquet",
    "every candidate word, one column per CANDIDATE_VIEWS view",
    pa.schema([("word", _STR), ("pos", _STR), ("phrase", _STR)]),
)
NEGATIVES = Artifact(
    "mine", "negatives.parquet", "each method's negatives in its final order (rank)", _MINED, _MINED_MORE
)
POOLS = Artifact(
    "mine", "pools.parquet", "the whole pool of each method that selects in the score stage",
    pa.schema([("method", _STR), ("pool_index", pa.int64()), ("word", _STR), ("pos", _STR),
               ("lexname", _STR), ("embedding", EMBEDDING)]),
)  # fmt: skip
FILTER_POOL = Artifact(
    "mine", "filter_pool.parquet", 'every candidate of the mining methods\' pools (filter.scope = "corpus")',
    pa.schema([("method", _STR), ("word", _STR), ("pos", _STR), ("lexname", _STR), ("label", _STR),
               *_NEGFILTER]),
)  # fmt: skip
DECISIONS = Artifact(
    "filter", "{judge}/decisions.parquet", "every question a judge was asked, with its answer",
    pa.schema([("qid", _STR), ("label", _STR), ("kind", _STR), ("answer", _STR), ("p_yes", _F64),
               ("decision_yes", _BOOL)]),
)  # fmt: skip
LABELS = Artifact(
    "filter",
    "{judge}/labels.parquet",
    "each label's decision and its reason",
    pa.schema([("label", _STR), ("pos", _STR), ("reason", _STR), ("id_label", _STR), ("kept", _BOOL)]),
)
KEPT = Artifact(
    "filter",
    "{judge}/kept.parquet",
    "the labels a judge kept, in input order",
    pa.schema([("label", _STR), ("pos", _STR)]),
)
MINED = Artifact(
    "filter",
    "{judge}/mined.parquet",
    "every method re-mined from the pool the judge filtered",
    _MINED,
    _MINED_MORE,
)
IMAGES = Artifact(
    "embed-images",
    "images.parquet",
    "every listed image, one embedding@<variant> column per preprocessing",
    pa.schema([("dataset", _STR), ("role", _STR), ("path", _STR), ("label", pa.int64()), ("status", _STR)]),
)
SCORES = Artifact(
    "score",
    "scores.parquet",
    "every score column of every scored image (null unless status is ok)",
    IMAGES.schema,
)
NEGATIVE_SETS = Artifact(
    "score",
    "negative_sets.parquet",
    "the negatives each score column used (columns.json's `negatives` names the set), in scoring order",
    pa.schema([("set", _STR), ("index", pa.int32()), ("label", _STR), ("pos", _STR), ("rank", pa.int32()),
               ("embedding", EMBEDDING)]),
)  # fmt: skip
SCORE_COLUMNS = "columns.json"  # score/columns.json: what each score column is (scoring.columns)


def view_matrix(table: pa.Table, view: str, *, unit: bool = True) -> np.ndarray:
    """(n, D) float32 embeddings of a view column of id_labels/candidates.parquet; `unit` L2-normalises
    the rows of a raw view (methods.TextView) for cosines, the other views are already unit rows."""
    x = column_matrix(table, view)
    return l2_normalise(x) if unit and {**ID_VIEWS, **CANDIDATE_VIEWS}[view].raw else x
