"""The image-embedding cache: per-dataset embeddings that outlive runs, keyed by everything that
changes them (weights identity, architecture, the precision that ran, preprocessing and decode
options, the dataset listing's paths, sizes and mtimes). Parquet files written atomically with a
sha256 sidecar; an entry that fails verification is deleted and recomputed (cache_files)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from negrefine_ray.clip.preprocess import FAILURE_KINDS, OK
from negrefine_ray.runfolder.atomic import embedding_column, stable_hash
from negrefine_ray.runfolder.cache_files import (
    EMBEDDING,
    BadEntry,
    check_columns,
    check_no_nulls,
    check_values,
    finite_embeddings,
    read_entry,
    write_entry,
)
from negrefine_ray.runfolder.storage import Location, glob, location

_CACHE_VERSION = 2  # 2: entries per base folder, with each file's size and mtime


@dataclass(frozen=True)
class EmbedResult:
    """Per row, in input order: status (N,) str, detail (N,) str, embedding (N, D) float32."""

    status: np.ndarray
    detail: np.ndarray
    embedding: np.ndarray


def image_cache_base(weights: str, arch: str, precision: str, preprocess: dict[str, Any], root: str) -> str:
    """What makes embeddings of the same file comparable: weights identity, architecture, the
    precision that ran, the preprocessing (crop spec + decode options) and the dataset root."""
    return stable_hash(
        {
            "kind": "clip-image-embeddings",
            "version": _CACHE_VERSION,
            "weights": weights,
            "arch": arch,
            "precision": precision,
            "preprocess": preprocess,
            "root": root,
        }
    )


def image_cache_key(base: str, listing: str) -> str:
    """One dataset listing's entry under `base`: plus the listing's paths, sizes and mtimes in order."""
    return stable_hash({"base": base, "listing": listing})


# Failures that say nothing about the file's bytes (a permission or I/O error): stored, so a rerun of
# an unchanged listing is still one entry, but never taken from the cache. Fixing the permissions
# changes no (path, size, mtime): `--force embed-images` then reads those files again, and only them.
RETRIED = ("unreadable",)
ROW_COLUMNS = ("path", "size", "mtime_ns")  # a file's identity in a listing (datasets.LISTING_SCHEMA)


class ImageEmbeddingCache:
    """Per-dataset embeddings that outlive runs: `<root>/<base[:32]>/<key>.parquet` with columns path,
    size, mtime_ns, status, detail, embedding (fixed_size_list<float32>[D], null unless ok), written
    atomically with a checksum (cache_files).

    A listing that changed since its last run (an image added, replaced or touched) misses its exact
    entry; `reusable` then takes every unchanged file's row (same path, size and mtime) from the
    newest entries of the same base, so only new or changed files go through CLIP again.
    """

    MAX_DONORS = 4  # entries of a base searched for unchanged rows, newest first

    def __init__(self, root: Location | str) -> None:
        self.root = location(root) if isinstance(root, str) else root

    def path(self, base: str, key: str) -> Location:
        return self.root / base[:32] / f"{key}.parquet"

    def get(self, base: str, key: str, paths: Sequence[str]) -> EmbedResult | None:
        """The cached rows for `key` if they exist, pass verification and list exactly `paths`, else
        None. A bad entry (checksum, columns, status values, non-finite ok rows) is deleted first."""
        entry = read_entry(self.path(base, key), _parse_entry)
        if entry is None or entry[0].column("path").to_pylist() != list(paths):
            return None
        if np.isin(entry[1].status, RETRIED).any():  # those rows are read again (`reusable` skips them)
            return None
        return entry[1]

    def reusable(self, base: str, rows: pa.Table) -> tuple[EmbedResult | None, np.ndarray]:
        """Rows of earlier entries of `base` for the files of `rows` (columns ROW_COLUMNS) that are
        unchanged: (their results, in `rows` order with zeros elsewhere, or None; (N,) bool mask of
        the rows found). Files of unknown size or mtime are never taken."""
        n = rows.num_rows
        found = np.zeros(n, dtype=bool)
        files = glob(self.root / base[:32], "*.parquet")
        donors = sorted(files, key=lambda p: (-p.stat().st_mtime_ns, p.name))[: self.MAX_DONORS]
        wanted = {
            ident: i
            for i, ident in enumerate(zip(*(rows.column(c).to_pylist() for c in ROW_COLUMNS), strict=True))
            if ident[1] >= 0 and ident[2] >= 0
        }
        status, detail, emb = np.empty(n, dtype=object), np.empty(n, dtype=object), None
        for donor in donors:
            entry = read_entry(donor, _parse_entry)
            if entry is None:
                continue
            table, result = entry
            if emb is None:
                emb = np.zeros((n, result.embedding.shape[1]), dtype=np.float32)
            idents = zip(*(table.column(c).to_pylist() for c in ROW_COLUMNS), strict=True)
            for j, ident in enumerate(idents):
                i = wanted.get(ident)
                if result.status[j] in RETRIED:
                    continue
                if i is not None and not found[i] and emb.shape[1] == result.embedding.shape[1]:
                    status[i], detail[i], emb[i], found[i] = (
                        result.status[j],
                        result.detail[j],
                        result.embedding[j],
                        True,
                    )
        if emb is None or not found.any():
            return None, found
        status[~found], detail[~found] = "", ""
        return EmbedResult(status.astype(str), detail.astype(str), emb), found

    def put(self, base: str, key: str, rows: pa.Table, result: EmbedResult) -> None:
        """Store `result` for the files of `rows` (columns ROW_COLUMNS, in order)."""
        table = pa.table(
            {
                "path": rows.column("path"),
                "size": rows.column("size"),
                "mtime_ns": rows.column("mtime_ns"),
                "status": pa.array(result.status.tolist(), pa.string()),
                "detail": pa.array(result.detail.tolist(), pa.string()),
                "embedding": embedding_column(result.embedding, result.status == OK),
            }
        ).replace_schema_metadata({"cache_key": key, "base": base})
        write_entry(self.path(base, key), table)


def _parse_entry(table: pa.Table) -> tuple[pa.Table, EmbedResult]:
    """(identity columns, rows) of a verified entry; BadEntry unless the columns, the status values
    and the embeddings (present and finite on ok rows, empty on failed ones) are what `put` writes."""
    check_columns(
        table,
        {
            "path": pa.string(),
            "size": pa.int64(),
            "mtime_ns": pa.int64(),
            "status": pa.string(),
            "detail": pa.string(),
            "embedding": EMBEDDING,
        },
    )
    check_no_nulls(table, ("path", "size", "mtime_ns", "status", "detail"))
    check_values(table.column("status"), "status", (OK, *FAILURE_KINDS))
    status = np.array(table.column("status").to_pylist(), dtype=str)
    if (np.asarray(table.column("embedding").is_valid()) != (status == OK)).any():
        raise BadEntry("embeddings present on failed rows or missing on ok rows")
    detail = np.array(table.column("detail").to_pylist(), dtype=str)
    embedding = finite_embeddings(table.column("embedding"), status == OK)
    return table.select(list(ROW_COLUMNS)), EmbedResult(status, detail, embedding)
