"""The score stage's output, kept off the driver's heap: each score column goes to a .npy file in
the staging folder as its scorer returns it, and scores.parquet is then written a row range at a
time from those files (memory-mapped, each range unmapped after use). The driver holds one method's
columns and one row range at a time, so its memory does not grow with images x columns.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from negrefine_ray.runfolder.artifacts import IMAGES, SCORES
from negrefine_ray.runfolder.atomic import ROW_GROUP_ROWS, embedding_column
from negrefine_ray.scoring.inputs import NegativeSet

IMAGE_COLUMNS = tuple(IMAGES.schema.names) if IMAGES.schema else ()


class ColumnSpill:
    """Score columns (each (n_ok,) float64) in .npy files under `stage_dir`, in the order added."""

    def __init__(self, stage_dir: Path, n_ok: int) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=".columns-", dir=stage_dir))
        self.n_ok = n_ok
        self.names: list[str] = []

    def add(self, name: str, values: np.ndarray) -> None:
        if name in self.names:
            raise ValueError(f"score column {name!r} computed twice")
        if values.shape != (self.n_ok,):
            raise ValueError(f"score column {name!r} has shape {values.shape}, not ({self.n_ok},)")
        np.save(self.folder / f"{len(self.names)}.npy", np.asarray(values, dtype=np.float64))
        self.names.append(name)

    def rows(self, index: int, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of column `index`, copied out of a map that is closed at once."""
        mapped = np.load(self.folder / f"{index}.npy", mmap_mode="r")
        try:
            return np.array(mapped[start:stop])
        finally:
            del mapped

    def __enter__(self) -> ColumnSpill:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def score_parts(
    images: pa.Table, ok: np.ndarray, spill: ColumnSpill, rows: int = ROW_GROUP_ROWS
) -> Iterator[pa.Table]:
    """scores.parquet's rows, `rows` at a time (a row group each; the smoke job's few images are one
    part): the image columns, then each score column, null where
    the image was not scored (status != "ok") or its score is NaN."""
    before = np.concatenate([[0], np.cumsum(ok)])  # ok rows before each row: its place in a column
    for lo in range(0, images.num_rows, rows):
        hi = min(lo + rows, images.num_rows)
        part = images.slice(lo, hi - lo).select(list(IMAGE_COLUMNS))
        mask = ok[lo:hi]
        for index, name in enumerate(spill.names):
            full = np.full(hi - lo, np.nan)
            full[mask] = spill.rows(index, int(before[lo]), int(before[hi]))
            part = part.append_column(name, pa.array(full, pa.float64(), mask=np.isnan(full)))
        yield part


def write_scores(stage_dir: Path, images: pa.Table, ok: np.ndarray, spill: ColumnSpill) -> str:
    return SCORES.write_parts(stage_dir, score_parts(images, ok, spill))


def negative_sets_table(sets: Mapping[str, NegativeSet]) -> pa.Table:
    """score/negative_sets.parquet: every set's negatives, one row each, sets in scoring order."""
    names = [name for name, s in sets.items() for _ in s.labels]
    dim = next((s.embedding.shape[1] for s in sets.values() if len(s.labels)), 1)
    matrix = [s.embedding for s in sets.values() if len(s.labels)]
    return pa.table({
        "set": pa.array(names, pa.string()),
        "index": pa.array([i for s in sets.values() for i in range(len(s.labels))], pa.int32()),
        "label": pa.array([x for s in sets.values() for x in s.labels], pa.string()),
        "pos": pa.array([x for s in sets.values() for x in s.pos], pa.string()),
        "rank": pa.array([int(x) for s in sets.values() for x in s.rank], pa.int32()),
        "embedding": embedding_column(
            np.concatenate(matrix).astype(np.float32) if matrix else np.zeros((0, dim), np.float32)
        ),
    })  # fmt: skip
