"""Negative-label selection rules as pure numpy functions (methods.md 1.4, 2.4, 3.1, 3.2, 4.2).

NegLabel/CSP/NegRefine rank candidates by a quantile of their cosines to the ID labels (CSP and
NegRefine with the max-cos > 0.95 guard); DNM ranks them by an ID-agnostic kNN density. Selection
keeps a fraction of each part of speech, smallest statistic first, ordered [nouns | adjectives].
NegFilter's label cleaning and nearest-ID-label lookup live here too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from negrefine_ray.errors import NegRefineError

POS_ORDER = ("noun", "adj")
CSP_GUARD = 0.95
# DNM's (noun fraction, adjective fraction, k1) per backbone (4.2).
DNM_PRESETS: dict[str, tuple[float, float, int]] = {
    "ViT-B-16": (0.23, 0.13, 100),
    "ViT-L-14": (0.23, 0.13, 100),
    "ViT-B-32": (0.25, 0.13, 10),
    "RN50": (0.25, 0.13, 100),
    "ViT-L-14-336": (0.25, 0.08, 100),
}
# log() floor for DNM distances: the self-distance of the "normalised" variant is exactly 0, and
# float32 cosines resolve 2 - 2cos only to ~1e-7, so smaller distances are noise, not density.
DNM_LOG_FLOOR = 1e-6
# Rows of candidate x pool similarities held at once (~128 MiB of float32).
_BLOCK_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class MiningResult:
    """A selection over a candidate pool of N.

    indices: (M,) int64 pool indices in final order, [nouns ascending | adjectives ascending].
    statistic: (N,) the ranking statistic of every candidate (smaller = selected first).
    rank: (N,) int64 0-based rank of each candidate within its part of speech.
    counts: selected count per part of speech.
    """

    indices: np.ndarray
    statistic: np.ndarray
    rank: np.ndarray
    counts: dict[str, int]


def _check_pair(cand: np.ndarray, ref: np.ndarray, what: str) -> None:
    if cand.ndim != 2 or ref.ndim != 2 or cand.shape[1] != ref.shape[1] or len(ref) == 0:
        raise NegRefineError(
            f"{what}: candidate embeddings {cand.shape} and ID embeddings {ref.shape} must be (N, D) "
            f"and (K, D) with the same D and K >= 1."
        )


def _row_blocks(n_rows: int, n_cols: int) -> Iterator[slice]:
    """Row slices whose (rows, n_cols) float32 block stays near _BLOCK_ELEMENTS elements."""
    step = max(1, _BLOCK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def quantile_rows(sims: np.ndarray, q: float) -> np.ndarray:
    """Per-row linear-interpolation quantile of (N, K) float32, bit-identical to torch.quantile(dim=1).

    torch (CPU, 2.x) rounds q to float32, forms the rank q*(K-1) in float64, rounds the weight back
    to float32 and lerps with a fused multiply-add from the nearer end; the float64 arithmetic below
    reproduces that (products of two float32 are exact in float64).
    """
    if not 0.0 <= q <= 1.0:
        raise NegRefineError(f"quantile q = {q}; it must lie in [0, 1] (0.95 NegLabel/CSP, 1.0 = max).")
    sims = np.asarray(sims, dtype=np.float32)
    rank = float(np.float32(q)) * (sims.shape[1] - 1)
    lo, hi = int(np.floor(rank)), int(np.ceil(rank))
    weight = np.float32(rank - lo)
    part = np.partition(sims, sorted({lo, hi}), axis=1)
    below, above = part[:, lo].astype(np.float64), part[:, hi].astype(np.float64)
    diff = (part[:, hi] - part[:, lo]).astype(np.float64)  # torch takes this difference in float32
    if weight < 0.5:
        return (below + float(weight) * diff).astype(np.float32)  # type: ignore[no-any-return]
    return (above + float(weight - np.float32(1.0)) * diff).astype(np.float32)  # type: ignore[no-any-return]


def percentile_distance(
    cand: np.ndarray, id_emb: np.ndarray, q: float, *, csp_guard: bool = False
) -> np.ndarray:
    """d_i = q-quantile over the K ID labels of cos(candidate i, label k); (N,) float32.

    cand (N, D) and id_emb (K, D) are L2-normalised. q = 0.95 is NegLabel/CSP; q = 1.0 (the max cosine)
    is NegRefine's code. With `csp_guard`, d_i := 1.0 where max_k cos > 0.95 (CSP, NegRefine), so near
    duplicates of ID labels are never picked. Computed in row blocks to bound memory.
    """
    _check_pair(cand, id_emb, "percentile_distance")
    ref = np.asarray(id_emb, dtype=np.float32).T
    out = np.empty(len(cand), dtype=np.float32)
    for rows in _row_blocks(len(cand), ref.shape[1]):
        sims = np.asarray(cand[rows], np.float32) @ ref
        d = quantile_rows(sims, q)
        if csp_guard:
            d[sims.max(axis=1) > CSP_GUARD] = 1.0
        out[rows] = d
    return out


def _parts_of_speech(pos: Sequence[str] | np.ndarray, n: int) -> np.ndarray:
    tags = np.asarray(pos, dtype=object)
    if tags.shape != (n,):
        raise NegRefineError(
            f"got {tags.shape[0] if tags.ndim else 0} part-of-speech tags for {n} candidates."
        )
    unknown = sorted(set(tags.tolist()) - set(POS_ORDER))
    if unknown:
        raise NegRefineError(f"unknown part-of-speech tags {unknown[:5]}; use 'noun' or 'adj'.")
    return tags


def select_neglabel(
    d: np.ndarray,
    pos: Sequence[str] | np.ndarray,
    top_fraction: float | Mapping[str, float] = 0.15,
) -> MiningResult:
    """Per part of speech keep the floor(fraction * N_pos) candidates with the smallest d (1.4).

    d (N,) is any ranking statistic; pos (N,) holds 'noun' or 'adj'. Ties keep pool order (stable
    sort). `top_fraction` is one fraction or one per part of speech ({'noun': 0.23, 'adj': 0.13}).
    """
    d = np.asarray(d)
    tags = _parts_of_speech(pos, len(d))
    fractions = top_fraction if isinstance(top_fraction, Mapping) else dict.fromkeys(POS_ORDER, top_fraction)
    rank = np.full(len(d), -1, dtype=np.int64)
    selected: list[np.ndarray] = []
    counts: dict[str, int] = {}
    for tag in POS_ORDER:
        members = np.flatnonzero(tags == tag)
        fraction = float(fractions.get(tag, 0.0))
        if not 0.0 <= fraction <= 1.0:
            raise NegRefineError(f"selection fraction for {tag} = {fraction}; it must lie in [0, 1].")
        ordered = members[np.argsort(d[members], kind="stable")]
        rank[ordered] = np.arange(len(ordered))
        keep = int(fraction * len(members))  # the references' int(): floor for non-negative values
        selected.append(ordered[:keep])
        counts[tag] = keep
    return MiningResult(np.concatenate(selected).astype(np.int64), d, rank, counts)


def mine_by_id_distance(
    cand: np.ndarray,
    id_emb: np.ndarray,
    pos: Sequence[str] | np.ndarray,
    *,
    q: float,
    csp_guard: bool,
    top_fraction: float | Mapping[str, float] = 0.15,
) -> MiningResult:
    """`percentile_distance` then `select_neglabel`; presets below name the references' settings."""
    return select_neglabel(percentile_distance(cand, id_emb, q, csp_guard=csp_guard), pos, top_fraction)


def mine_adaneg(
    cand: np.ndarray, id_emb: np.ndarray, pos: Sequence[str] | np.ndarray, *, m: int = 10_000, q: float = 0.95
) -> MiningResult:
    """AdaNeg (D.2): d_i = the element at index int(K q) of candidate i's ascending cosines to the K
    ID labels (an order statistic, no interpolation: 950 of 1,000); M split in proportion to the
    pool's parts of speech, adj_num = int(M A / (A + N)); each part ascending by d (ties in pool
    order); the final order [adjectives | nouns]."""
    _check_pair(cand, id_emb, "mine_adaneg")
    tags = _parts_of_speech(pos, len(cand))
    ref = np.asarray(id_emb, dtype=np.float32).T
    index = int(ref.shape[1] * q)
    if not 0 <= index < ref.shape[1]:
        raise NegRefineError(f"AdaNeg's order statistic {q} x {ref.shape[1]} ID labels is out of range.")
    d = np.empty(len(cand), dtype=np.float32)
    for rows in _row_blocks(len(cand), ref.shape[1]):
        d[rows] = np.partition(np.asarray(cand[rows], np.float32) @ ref, index, axis=1)[:, index]
    n_adj, n_noun = int((tags == "adj").sum()), int((tags == "noun").sum())
    adj_num = int(m * n_adj / max(n_adj + n_noun, 1))
    want = {"adj": min(adj_num, n_adj), "noun": min(m - adj_num, n_noun)}
    rank = np.full(len(d), -1, dtype=np.int64)
    selected, counts = [], {}
    for tag in ("adj", "noun"):
        members = np.flatnonzero(tags == tag)
        ordered = members[np.argsort(d[members], kind="stable")]
        rank[ordered] = np.arange(len(ordered))
        selected.append(ordered[: want[tag]])
        counts[tag] = want[tag]
    return MiningResult(np.concatenate(selected).astype(np.int64), d, rank, counts)


def mine_neglabel(cand: np.ndarray, id_emb: np.ndarray, pos: Sequence[str] | np.ndarray) -> MiningResult:
    """NegLabel (1.4): 0.95 quantile, no guard, 15 % per part of speech."""
    return mine_by_id_distance(cand, id_emb, pos, q=0.95, csp_guard=False)


def mine_csp(cand: np.ndarray, id_emb: np.ndarray, pos: Sequence[str] | np.ndarray) -> MiningResult:
    """CSP (2.4): 0.95 quantile with the max-cos > 0.95 guard, 15 % per part of speech."""
    return mine_by_id_distance(cand, id_emb, pos, q=0.95, csp_guard=True)


def mine_negrefine(
    cand: np.ndarray, id_emb: np.ndarray, pos: Sequence[str] | np.ndarray, *, q: float = 1.0
) -> MiningResult:
    """NegRefine (3.1): its code ranks by max cosine (q = 1.0); q = 0.95 gives the paper's CSP rule."""
    return mine_by_id_distance(cand, id_emb, pos, q=q, csp_guard=True)


def dnm_density(
    raw: np.ndarray, k1: int = 100, distance: Literal["reference", "normalised"] = "reference"
) -> np.ndarray:
    """DNM's log-density rho_i = mean log of the k1+1 smallest delta_ij over the pool (self included).

    raw (N, D) are UNNORMALISED text features; r = ||x||, u = x / r. "reference" is the code's
    delta_ij = r_i + r_j - 2 u_i.u_j (norm-dominated, 4.2 [FLAG]); "normalised" is the squared
    distance 2 - 2cos of unit vectors, with the self-distance exactly 0. Distances are floored at
    DNM_LOG_FLOOR before the log. Row blocks against all columns, k1+1 smallest kept by
    partition, so memory is O(block * N), never N x N. Returns (N,) float64.
    """
    if distance not in ("reference", "normalised"):
        raise NegRefineError(f"DNM distance {distance!r} is unknown; use 'reference' or 'normalised'.")
    if k1 < 0 or raw.ndim != 2 or len(raw) == 0:
        raise NegRefineError(
            f"dnm_density needs (N, D) features with N >= 1 and k1 >= 0; got {raw.shape}, {k1}."
        )
    x = np.asarray(raw, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1)
    unit = x / norms[:, None]
    k = min(k1 + 1, len(x))
    rho = np.empty(len(x), dtype=np.float64)
    for rows in _row_blocks(len(x), len(x)):
        cos = unit[rows] @ unit.T
        if distance == "reference":
            delta = norms[rows, None] + norms[None, :] - 2.0 * cos
        else:
            delta = 2.0 - 2.0 * cos
            delta[np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop)] = 0.0
        nearest = np.partition(delta, k - 1, axis=1)[:, :k]
        rho[rows] = np.log(np.maximum(nearest.astype(np.float64), DNM_LOG_FLOOR)).mean(axis=1)
    return rho


def mine_dnm(
    raw: np.ndarray,
    pos: Sequence[str] | np.ndarray,
    *,
    arch: str = "ViT-B-16",
    distance: Literal["reference", "normalised"] = "reference",
) -> MiningResult:
    """DNM (4.2): per part of speech keep the lowest-density fraction, with `arch`'s preset."""
    if arch not in DNM_PRESETS:
        raise NegRefineError(f"no DNM preset for '{arch}'; known: {', '.join(DNM_PRESETS)}.")
    noun, adj, k1 = DNM_PRESETS[arch]
    return select_neglabel(dnm_density(raw, k1, distance), pos, {"noun": noun, "adj": adj})


def nearest_id_labels(
    neg_bare: np.ndarray, id_bare: np.ndarray, n: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """NegFilter step 2: for each negative the min(n, K) most similar ID labels (3.2).

    neg_bare (M, D), id_bare (K, D): L2-normalised embeddings of the bare strings. Returns indices
    (M, n) int64 and cosines (M, n) float32, descending, ties by the lower ID index.
    """
    _check_pair(neg_bare, id_bare, "nearest_id_labels")
    n = min(n, len(id_bare))
    ref = np.asarray(id_bare, dtype=np.float32).T
    idx = np.empty((len(neg_bare), n), dtype=np.int64)
    sims = np.empty((len(neg_bare), n), dtype=np.float32)
    for rows in _row_blocks(len(neg_bare), ref.shape[1]):
        block = np.asarray(neg_bare[rows], np.float32) @ ref
        top = np.argsort(-block, axis=1, kind="stable")[:, :n]
        idx[rows] = top
        sims[rows] = np.take_along_axis(block, top, axis=1)
    return idx, sims


def clean_label(label: str) -> str | None:
    """NegFilter step 1 (`_clean_words`): keep letters (str.isalpha) and '_', '-', ' '; no strip.

    Returns None when 2 characters or fewer remain. 'biosafety level 2"' -> 'biosafety level '.
    """
    kept = "".join(ch for ch in label if ch.isalpha() or ch in "_- ")
    return kept if len(kept) > 2 else None


def clean_labels(labels: Sequence[str]) -> list[str]:
    """Clean every label and drop duplicates, keeping FIRST-OCCURRENCE order.

    Deviation: the reference de-duplicates with list(set(...)), whose order depends on
    PYTHONHASHSEED; this is deterministic. Membership is the same, e.g. NegRefine's 7,023 nouns
    become 7,021 because 'biosafety level 1/2/4"' all clean to 'biosafety level '.
    """
    cleaned = (clean_label(label) for label in labels)
    return list(dict.fromkeys(c for c in cleaned if c is not None))
