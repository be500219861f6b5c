"""The image-embedding cache: per-dataset embeddings that outlive runs, keyed by everything that
changes them (weights identity, architecture, the precision that ran, preprocessing and decode
options, the dataset listing's paths, sizes and mtimes). Parquet files written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from negrefine_ray.artifacts import (
    embedding_column,
    embedding_matrix,
    read_parquet,
    stable_hash,
    write_parquet,
)
from negrefine_ray.errors import NegRefineError
from negrefine_ray.images import OK

_CACHE_VERSION = 1


@dataclass(frozen=True)
class EmbedResult:
    """Per row, in input order: status (N,) str, detail (N,) str, embedding (N, D) float32."""

    status: np.ndarray
    detail: np.ndarray
    embedding: np.ndarray


def image_cache_key(weights: str, arch: str, precision: str, preprocess: dict[str, Any], listing: str) -> str:
    """Everything that changes a dataset's embeddings: weights identity, architecture, the precision
    that ran, the preprocessing (crop spec + decode options) and the listing's paths/sizes/mtimes."""
    return stable_hash(
        {
            "kind": "clip-image-embeddings",
            "version": _CACHE_VERSION,
            "weights": weights,
            "arch": arch,
            "precision": precision,
            "preprocess": preprocess,
            "listing": listing,
        }
    )


class ImageEmbeddingCache:
    """Per-dataset embeddings that outlive runs: `<root>/<key>.parquet` with columns path, status,
    detail, embedding (fixed_size_list<float32>[D], null unless ok). Written atomically."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.parquet"

    def get(self, key: str, paths: Sequence[str]) -> EmbedResult | None:
        """The cached rows for `key` if they exist and list exactly `paths`, else None."""
        file = self.path(key)
        if not file.is_file():
            return None
        try:
            table = read_parquet(file)
            if table.column("path").to_pylist() != list(paths):
                return None
            return EmbedResult(
                np.array(table.column("status").to_pylist(), dtype=str),
                np.array(table.column("detail").to_pylist(), dtype=str),
                embedding_matrix(table.column("embedding"), nulls_as_zero=True),
            )
        except (pa.ArrowException, KeyError, OSError) as exc:
            raise NegRefineError(
                f"Image-embedding cache file {file} is unreadable ({type(exc).__name__}: {exc}); delete "
                f"it and the embeddings will be recomputed."
            ) from exc

    def put(self, key: str, paths: Sequence[str], result: EmbedResult) -> None:
        table = pa.table(
            {
                "path": pa.array(list(paths), pa.string()),
                "status": pa.array(result.status.tolist(), pa.string()),
                "detail": pa.array(result.detail.tolist(), pa.string()),
                "embedding": embedding_column(result.embedding, result.status == OK),
            }
        ).replace_schema_metadata({"cache_key": key})
        write_parquet(self.path(key), table)
