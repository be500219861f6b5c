"""CLIP text features that outlive runs: one Parquet file per key under the cache folder, keyed by
everything that changes the features (weights identity, architecture, templates, ensembling mode,
the exact texts, the precision that ran). Written atomically; never pickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from negrefine_ray.artifacts import (
    embedding_column,
    embedding_matrix,
    read_parquet,
    stable_hash,
    write_parquet,
)
from negrefine_ray.errors import NegRefineError, StageError

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

    Pass the precision that actually ran (`effective_precision`): CPU runs are fp32 whatever asked.
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

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.parquet"

    def get(self, key: str) -> tuple[list[str], np.ndarray] | None:
        """(texts, (n, D) float32 embeddings) for `key`, or None when not cached."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            table = read_parquet(path)
            return table.column("text").to_pylist(), embedding_matrix(table.column("embedding"))
        except (pa.ArrowException, KeyError, AttributeError, OSError, StageError) as exc:
            raise NegRefineError(
                f"Text-embedding cache file {path} is unreadable ({type(exc).__name__}: {exc}); "
                f"delete it and the embeddings will be recomputed."
            ) from exc

    def put(self, key: str, texts: Sequence[str], embeddings: np.ndarray) -> Path:
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
        write_parquet(self.path(key), table)
        return self.path(key)
