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
from collections.abc import Iterator, Mapping
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


def write_parquet(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


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


def column_matrix(table: pa.Table, name: str) -> np.ndarray:
    """The (n, D) float32 matrix of an embedding column that must have no empty rows."""
    try:
        return embedding_matrix(table.column(name))
    except StageError as exc:
        raise StageError(f"column '{name}': {exc}") from exc
