"""Verified cache entries, shared by the image- and text-embedding caches and the LLM answer store.

Each entry is a Parquet file written atomically, then a sidecar `<file>.sha256` (sha256sum's format)
over the file's exact bytes. An entry is used only if its bytes match the sidecar and its content
passes its cache's checks (columns, known values, finite embeddings); otherwise it is logged, deleted
and reported as a miss, so the caller recomputes it. A bad entry is never used and never an error.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from negrefine_ray.runfolder.atomic import embedding_matrix
from negrefine_ray.runfolder.storage import Location, write_bytes_atomic

log = logging.getLogger(__name__)

EMBEDDING = "fixed_size_list<float32>[D]"  # expected "type" of an embedding column, any D
T = TypeVar("T")


class BadEntry(Exception):
    """A cache entry that failed verification; the message says why."""


def checksum_path(path: Location) -> Location:
    return path.with_name(path.name + ".sha256")


def write_entry(path: Location, table: pa.Table) -> None:
    """Write `table` to `path` (zstd Parquet, atomically: a rename, or one PUT on an object store),
    then its checksum sidecar. A crash between the two leaves an entry without a checksum: a miss on
    the next read, never a wrong hit."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    checksum_path(path).unlink(missing_ok=True)  # the old entry's checksum must not vouch for the new bytes
    write_bytes_atomic(path, data)
    write_bytes_atomic(checksum_path(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())


def read_entry(path: Location, parse: Callable[[pa.Table], T]) -> T | None:
    """`parse(table)` of the entry at `path` when its bytes match its checksum and `parse` accepts it
    (it raises BadEntry otherwise); None when there is no entry or it is bad (then it is deleted with
    a warning)."""
    if not path.is_file():
        return None
    try:
        return parse(_verified_table(path))
    except BadEntry as exc:
        discard(path, str(exc))
        return None


def _verified_table(path: Location) -> pa.Table:
    try:
        recorded = checksum_path(path).read_text().split()
    except FileNotFoundError:
        raise BadEntry("no checksum file (written before checksums existed, or interrupted)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadEntry(f"checksum file unreadable ({type(exc).__name__}: {exc})") from exc
    try:
        data = path.read_bytes()  # hash and parse the same bytes: no window for a change in between
    except OSError as exc:
        raise BadEntry(f"unreadable ({type(exc).__name__}: {exc})") from exc
    actual = hashlib.sha256(data).hexdigest()
    if not recorded or recorded[0] != actual:
        seen = recorded[0][:16] if recorded else "nothing"
        raise BadEntry(f"sha256 {actual[:16]}... of the bytes does not match the recorded {seen}...")
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise BadEntry(f"unreadable Parquet ({type(exc).__name__}: {exc})") from exc


def discard(path: Location, reason: str) -> None:
    """Log why the entry at `path` is bad and delete it with its checksum."""
    log.warning("Cache entry %s is bad (%s); deleted, it will be recomputed.", path, reason)
    for file in (path, checksum_path(path)):
        try:
            file.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("Could not delete bad cache file %s (%s: %s).", file, type(exc).__name__, exc)


def check_columns(table: pa.Table, expected: Mapping[str, pa.DataType | str]) -> None:
    """BadEntry unless the columns are exactly `expected` (name -> Arrow type or EMBEDDING), in order."""
    got = table.schema
    ok = got.names == list(expected) and all(
        _is_embedding(got.field(name).type) if want == EMBEDDING else got.field(name).type == want
        for name, want in expected.items()
    )
    if not ok:
        want_text = ", ".join(f"{n}: {t}" for n, t in expected.items())
        got_text = ", ".join(f"{f.name}: {f.type}" for f in got)
        raise BadEntry(f"columns ({got_text}) where ({want_text}) were expected")


def _is_embedding(dtype: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(dtype) and dtype.value_type == pa.float32()


def check_no_nulls(table: pa.Table, names: Iterable[str]) -> None:
    for name in names:
        if table.column(name).null_count:
            raise BadEntry(f"{table.column(name).null_count} empty values in column '{name}'")


def check_values(column: pa.ChunkedArray, name: str, allowed: Iterable[object]) -> None:
    """BadEntry when `column` holds a value outside `allowed`."""
    known = set(allowed)
    unknown = set(column.to_pylist()) - known
    if unknown:
        raise BadEntry(
            f"column '{name}' holds {sorted(map(repr, unknown))}, outside {sorted(map(repr, known))}"
        )


def finite_embeddings(column: pa.ChunkedArray, rows: np.ndarray | None = None) -> np.ndarray:
    """The (n, D) float32 matrix of an embedding column (null rows as zeros); BadEntry when any of
    `rows` (default: all) is null or holds a NaN or infinity."""
    valid = np.asarray(column.is_valid())
    wanted = np.ones(len(valid), dtype=bool) if rows is None else rows
    if (wanted & ~valid).any():
        raise BadEntry(f"{int((wanted & ~valid).sum())} empty embeddings where vectors are expected")
    matrix = embedding_matrix(column, nulls_as_zero=True)
    bad = ~np.isfinite(matrix[wanted]).all(axis=1)
    if bad.any():
        raise BadEntry(f"{int(bad.sum())} embeddings with NaN or infinite values")
    return matrix
