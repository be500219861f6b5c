"""NegRefine's negative sets and its multi-matching score over several of them (methods.md 3.2-3.4),
pure numpy/pyarrow for the score stage: the cleaned negatives mined for NegRefine, the subset each
NegFilter judge kept, and S_MM of every set from one pass of distinct "p and n" pair texts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from negrefine_ray.core import scores
from negrefine_ray.errors import StageError

PairEmbedder = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class RefinedNegatives:
    """NegRefine's cleaned negatives (3.2 step 1, first occurrence per part of speech), nouns then
    adjectives in mine order, and per negative set the (M_s,) int64 indices of its negatives in the
    final [nouns | adjectives] order: set None = unfiltered, set J = judge J's kept labels."""

    labels: list[str]
    pos: list[str]
    sets: dict[str | None, np.ndarray]


def _nouns_first(index: Sequence[int], pos: Sequence[str]) -> np.ndarray:
    nouns = [i for i in index if pos[i] == "noun"]
    return np.array(nouns + [i for i in index if pos[i] != "noun"], dtype=np.int64)


def refined_negatives(negatives: pa.Table, kept: Mapping[str, pa.Table]) -> RefinedNegatives:
    """The unfiltered set from mine/negatives.parquet and each judge's from its kept.parquet."""
    rows = negatives.filter(pc.equal(negatives.column("method"), "negrefine"))
    if "filter_input" not in rows.column_names or rows.num_rows == 0:
        raise StageError("mine/negatives.parquet has no NegRefine negatives with filter inputs; rerun mine.")
    rows = rows.filter(pc.fill_null(rows.column("filter_input"), False)).sort_by("rank")
    labels, pos = rows.column("clean_label").to_pylist(), rows.column("pos").to_pylist()
    order = _nouns_first(range(len(labels)), pos)
    labels, pos = [labels[i] for i in order], [pos[i] for i in order]
    where = {(p, label): i for i, (p, label) in enumerate(zip(pos, labels, strict=True))}
    sets: dict[str | None, np.ndarray] = {None: np.arange(len(labels), dtype=np.int64)}
    for judge, table in kept.items():
        keys = list(zip(table.column("pos").to_pylist(), table.column("label").to_pylist(), strict=True))
        unknown = [k for k in keys if k not in where]
        if unknown:
            raise StageError(
                f"filter/{judge}/kept.parquet keeps {len(unknown)} label(s) that NegRefine did not mine, "
                f"e.g. {unknown[0]}; rerun the filter stage on this run's mine output."
            )
        sets[judge] = _nouns_first([where[k] for k in keys], pos)
    return RefinedNegatives(labels, pos, sets)


def multi_matching_scores(
    image: np.ndarray,
    id_text: np.ndarray,
    neg_text: np.ndarray,
    *,
    sets: Mapping[str, np.ndarray],
    names: tuple[Sequence[str], Sequence[str]],
    embed_pairs: PairEmbedder,
    k_pos: int = 5,
    k_neg: int = 5,
    logit_scale: float = 100.0,
    chunk_size: int = scores.CHUNK_SIZE,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """S_MM (methods.md 3.4 step 2) of N images under several negative sets, each "p and n" text
    embedded once: top_pairs per set, pairs mapped into the union, distinct_pairs over every set, ONE
    `embed_pairs(texts) -> (P, D)` call (NegRefine: 8 noun templates, raw-mean), multi_matching.

    image (N, D), id_text (K, D), neg_text (M, D) the union; sets {key: (M_s,) int indices into
    neg_text}; names = (K ID strings, M negative strings). Returns {key: (N,) float64 S_MM} and
    counts: distinct pairs per set and over all sets, and N * k_pos * k_neg (pairs without dedup).
    """
    keys, n = list(sets), image.shape[0]
    if not keys:
        raise StageError("multi_matching_scores needs at least one negative set; got none.")
    tops = []
    for key in keys:
        idx = np.asarray(sets[key], dtype=np.int64)
        pos, neg, v = scores.top_pairs(
            image, id_text, neg_text[idx], k_pos=k_pos, k_neg=k_neg, logit_scale=logit_scale,
            chunk_size=chunk_size,
        )  # fmt: skip
        tops.append((pos, idx[neg], v))
    pairs, index = scores.distinct_pairs(
        np.concatenate([t[0] for t in tops]), np.concatenate([t[1] for t in tops])
    )
    pair_emb = embed_pairs(scores.pair_texts(pairs, *names))
    out, distinct = {}, {}
    for i, (key, top) in enumerate(zip(keys, tops, strict=True)):
        part = index[i * n : (i + 1) * n]
        out[key] = scores.multi_matching(
            image, pair_emb, part, top[2], logit_scale=logit_scale, chunk_size=chunk_size
        )
        distinct[key] = int(np.unique(part).size)
    without = n * min(k_pos, id_text.shape[0]) * k_neg
    counts = {"per_set": distinct, "all_sets": len(pairs), "without_dedup": without}
    return out, counts
