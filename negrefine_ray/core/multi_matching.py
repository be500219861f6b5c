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


# How NegRefine's de-duplicated negatives are ordered, which decides the M mod G the grouped score
# drops (methods.md 0.6 step 1, 3.2 step 1, 3.4): "shuffled" (default) puts the nouns and then the
# adjectives each in a seeded random order, as the reference's `list(set(...))` leaves them in a
# random one; "ranked" keeps mine's order, so the last-ranked (most ID-like) adjectives are dropped.
NEGREFINE_ORDERS = ("shuffled", "ranked")


@dataclass(frozen=True)
class RefinedNegatives:
    """NegRefine's cleaned negatives (3.2 step 1, first occurrence per part of speech), nouns then
    adjectives, each in the order `refined_negatives` was asked for, and per negative set the (M_s,)
    int64 indices of its negatives in that final [nouns | adjectives] order (increasing: a judge's
    kept labels keep the order of its input, as the reference's do): set None = unfiltered, set J =
    judge J's kept labels."""

    labels: list[str]
    pos: list[str]
    sets: dict[str | None, np.ndarray]


def negative_order(pos: Sequence[str], order: str, seed: int) -> np.ndarray:
    """Indices of the negatives (in mine order, part of speech `pos`) in the final order: nouns
    first, then adjectives; with "shuffled" each part permuted by numpy's PCG64 seeded with `seed`
    (nouns drawn first), with "ranked" each part in mine order."""
    if order not in NEGREFINE_ORDERS:
        raise StageError(f"unknown NegRefine negative order '{order}'; known: {', '.join(NEGREFINE_ORDERS)}.")
    nouns = np.array([i for i, p in enumerate(pos) if p == "noun"], dtype=np.int64)
    others = np.array([i for i, p in enumerate(pos) if p != "noun"], dtype=np.int64)
    if order == "shuffled":
        rng = np.random.default_rng(seed)
        nouns, others = rng.permutation(nouns), rng.permutation(others)
    return np.concatenate([nouns, others])


def refined_negatives(
    negatives: pa.Table,
    kept: Mapping[str, pa.Table],
    *,
    method: str,
    order: str = "shuffled",
    seed: int = 0,
) -> RefinedNegatives:
    """The unfiltered set of `method`'s rows of mine/negatives.parquet and each judge's from its
    kept.parquet, in `order` (NEGREFINE_ORDERS) drawn with `seed` (the run seed)."""
    rows = negatives.filter(pc.equal(negatives.column("method"), method))
    if "filter_input" not in rows.column_names or rows.num_rows == 0:
        raise StageError(
            f"mine/negatives.parquet has no negatives of '{method}' with filter inputs; rerun mine."
        )
    rows = rows.filter(pc.fill_null(rows.column("filter_input"), False)).sort_by("rank")
    labels, pos = rows.column("clean_label").to_pylist(), rows.column("pos").to_pylist()
    final = negative_order(pos, order, seed)
    labels, pos = [labels[i] for i in final], [pos[i] for i in final]
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
        sets[judge] = np.sort(np.array([where[k] for k in keys], dtype=np.int64))
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
