"""CLIP text features that outlive runs: one Parquet file per key under the cache folder, keyed by
everything that changes the features (weights identity, architecture, templates, ensembling mode,
the exact texts, the precision that ran). Written atomically with a sha256 sidecar; an entry that
fails verification (checksum, columns, non-finite values) is deleted and recomputed. Never pickled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from negrefine_ray.errors import NegRefineError
from negrefine_ray.runfolder.atomic import embedding_column, stable_hash
from negrefine_ray.runfolder.cache_files import (
    EMBEDDING,
    check_columns,
    check_no_nulls,
    finite_embeddings,
    read_entry,
    write_entry,
)
from negrefine_ray.runfolder.storage import Location, location

_CACHE_VERSION = 1


def texts_hash(texts: Sequence[str]) -> str:
    """Content hash of an ordered text list (labels or words before templating)."""
    return stable_hash(list(texts))


def text_cache_key(
    weights_identity: str,
    arch: str,
    templates: Sequence[str],
    mode: str,
    texts_hash: str,
    precision: str,
) -> str:
    """Cache key of a text-embedding table: everything that changes its content.

    Pass the precision that actually ran (`clip.resolve_precision`): CPU runs are fp32 whatever asked.
    """
    return stable_hash(
        {
            "kind": "clip-text-embeddings",
            "version": _CACHE_VERSION,
            "weights": weights_identity,
            "arch": arch,
            "templates": list(templates),
            "mode": mode,
            "texts": texts_hash,
            "precision": precision,
        }
    )


class TextEmbeddingCache:
    """Text embeddings that outlive runs: one Parquet file a key under `root`.

    Columns: text (string), embedding (fixed_size_list<float32>[D]). Written atomically; never pickled.
    """

    def __init__(self, root: Location | str) -> None:
        self.root = location(root) if isinstance(root, str) else root

    def path(self, key: str) -> Location:
        return self.root / f"{key}.parquet"

    def get(self, key: str) -> tuple[list[str], np.ndarray] | None:
        """(texts, (n, D) float32 embeddings) for `key`, or None when not cached or the entry is bad
        (then it is deleted with a warning)."""
        return read_entry(self.path(key), _parse_entry)

    def put(self, key: str, texts: Sequence[str], embeddings: np.ndarray) -> Location:
        """Store (n,) texts with their (n, D) embeddings under `key`; returns the file path."""
        if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
            raise NegRefineError(
                f"cannot cache {len(texts)} texts with embeddings of shape {embeddings.shape}; "
                f"expected ({len(texts)}, D)."
            )
        table = pa.table(
            {
                "text": pa.array(list(texts), pa.string()),
                "embedding": embedding_column(embeddings),
            }
        ).replace_schema_metadata({"cache_key": key})
        write_entry(self.path(key), table)
        return self.path(key)


def _parse_entry(table: pa.Table) -> tuple[list[str], np.ndarray]:
    """BadEntry unless the columns are text and embedding, with no empty rows and finite values."""
    check_columns(table, {"text": pa.string(), "embedding": EMBEDDING})
    check_no_nulls(table, ("text",))
    return table.column("text").to_pylist(), finite_embeddings(table.column("embedding"))
