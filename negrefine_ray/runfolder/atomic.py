"""Atomic writes and content hashes for run-folder artifacts.

Every file is written next to its destination under a temporary name and renamed into place, so a
process killed at any moment leaves either the old file or the new one, never half of one. Artifacts
are open formats only: Parquet, JSON, PNG, Markdown.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negrefine_ray.errors import StageError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make shared run folders unreadable
    try:
        yield Path(tmp)
        _fsync_file(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_json(path: Path, data: Mapping[str, Any] | list[Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_if_changed(path: Path, data: bytes) -> None:
    """Write `path` atomically unless it already holds `data`: a summary rebuilt by a rerun that
    changed nothing keeps its file, modification time included."""
    if path.is_file() and path.read_bytes() == data:
        return
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


ROW_GROUP_ROWS = 65536  # rows per Parquet row group: readers that go a batch at a time hold one group


def write_parquet(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)


def write_parquet_parts(path: Path, parts: Iterable[pa.Table]) -> None:
    """One Parquet file from `parts` (the same schema each, one row group or more per part), written
    as they come, so the whole table is never in memory; nothing is written if there is no part."""
    with atomic_path(path) as tmp:
        writer = None
        try:
            for part in parts:
                if writer is None:
                    writer = pq.ParquetWriter(tmp, part.schema, compression="zstd")
                writer.write_table(part, row_group_size=ROW_GROUP_ROWS)
            if writer is None:
                raise ValueError(f"{path.name}: no rows to write")
        finally:
            if writer is not None:
                writer.close()


def read_parquet(path: Path) -> pa.Table:
    return pq.read_table(path)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(data: Any) -> str:
    """sha256 of the canonical JSON form of `data` (sorted keys), independent of the hash seed."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def embedding_column(matrix: np.ndarray, valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """(n, D) float32 -> Arrow fixed_size_list<float32>[D]; rows where `valid` is False are null."""
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel())
    mask = None if valid is None else pa.array(~np.asarray(valid, dtype=bool))
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1], mask=mask)


def embedding_matrix(column: pa.ChunkedArray | pa.Array, *, nulls_as_zero: bool = False) -> np.ndarray:
    """Arrow fixed_size_list<float32>[D] -> (n, D) float32. Null rows are zeros with
    `nulls_as_zero` (e.g. failed images), otherwise an error."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count and not nulls_as_zero:
        raise StageError(f"{arr.null_count} empty embeddings where vectors are needed.")
    dim = arr.type.list_size
    # .values ignores the array's slice offset and keeps null rows' slots, so slice it by hand.
    values = arr.values.to_numpy(zero_copy_only=False)[arr.offset * dim : (arr.offset + len(arr)) * dim]
    matrix = values.astype(np.float32).reshape(len(arr), dim)
    if arr.null_count:
        matrix[~np.asarray(arr.is_valid())] = 0.0
    return matrix


def parquet_matrix(path: Path, name: str, rows: np.ndarray, batch_rows: int = ROW_GROUP_ROWS) -> np.ndarray:
    """The (rows.sum(), D) float32 matrix of embedding column `name` of Parquet file `path` at the
    rows where the (n,) bool mask `rows` is True. Read a record batch at a time into one array, so
    the peak memory is that array and a batch (a row group: ROW_GROUP_ROWS rows), not the whole
    column and its copies."""
    file = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering would hold every row group's bytes
    schema = file.schema_arrow
    if name not in schema.names or not pa.types.is_fixed_size_list(schema.field(name).type):
        raise StageError(f"{path.name} has no embedding column '{name}' (it has {schema.names}).")
    if len(rows) != file.metadata.num_rows:
        raise StageError(f"{path.name} has {file.metadata.num_rows} rows; the mask has {len(rows)}.")
    out = np.empty((int(np.count_nonzero(rows)), schema.field(name).type.list_size), np.float32)
    start = at = 0
    for batch in file.iter_batches(batch_size=batch_rows, columns=[name]):
        mask = rows[start : start + batch.num_rows]
        start += batch.num_rows
        if mask.any():
            try:
                part = embedding_matrix(batch.column(0).filter(pa.array(mask)))
            except StageError as exc:
                raise StageError(f"column '{name}': {exc}") from exc
            out[at : at + len(part)] = part
            at += len(part)
        del batch
        pa.default_memory_pool().release_unused()  # else Arrow's allocator keeps each batch's pages
    return out


def column_matrix(table: pa.Table, name: str) -> np.ndarray:
    """The (n, D) float32 matrix of an embedding column that must have no empty rows."""
    try:
        return embedding_matrix(table.column(name))
    except StageError as exc:
        raise StageError(f"column '{name}': {exc}") from exc
