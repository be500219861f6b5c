"""InterNeg's pure core (methods.md 5): inter-modal selection of textual negatives, the bank of inverted
negatives and the online grouped score, over precomputed L2-normalised CLIP embeddings.

Input: ID image embeddings and labels (prototypes), ID label, word and test-image embeddings, and an
inversion callback. Output: selected word indices and (N,) float64 scores, higher = more in-distribution.
Follows InterNeg (CVPR 2026, ZhikangXu0112/InterNeg); no Ray, no CLIP, no file I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from negrefine_ray.core.scores import grouping_permutation, kept_negatives, neglabel
from negrefine_ray.errors import NegRefineError, unknown_name

BLOCK_ROWS = 4096  # words a step in the inter-modal check: 32 MB of float64 cosines for K = 1000
HALF_CHUNK_ROWS = 256  # images a step in the float16 score: (n, G, K + Q) float32 stays small
UNIT_TOL = 1e-2  # |norm - 1| allowed for rows that must be unit vectors (fp16 round-trips pass)
Precision = Literal["float32", "float16"]


def _rows(x: np.ndarray, name: str, dim: int | None = None, *, allow_empty: bool = False) -> np.ndarray:
    """`x` as a finite 2-D float (rows, dim) array, or a NegRefineError naming the problem."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] == 0 or (arr.shape[0] == 0 and not allow_empty):
        raise NegRefineError(f"{name} must be a non-empty 2-D (rows, dim) array; got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.floating):
        raise NegRefineError(f"{name} must be float embeddings; got dtype {arr.dtype}.")
    if dim is not None and arr.shape[1] != dim:
        raise NegRefineError(
            f"{name} has dimension {arr.shape[1]}, expected {dim}; embed everything with one CLIP model."
        )
    if not np.isfinite(arr).all():
        raise NegRefineError(f"{name} contains NaN or infinite values; re-embed or drop those rows.")
    return arr


def class_prototypes(
    embeddings: np.ndarray, labels: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """ID image prototypes v_k = normalize(mean of the normalised embeddings of class k) (methods.md 5.2.1).

    Shapes: embeddings (N, D) float, labels (N,) int in [0, n_classes) -> protos (K, D) float32 unit
    rows and counts (K,) int64. A class without images gets a zero row and count 0: the caller must
    report it and stop, since a zero prototype makes every word inadmissible.
    """
    x = _rows(embeddings, "embeddings")
    lab = np.asarray(labels)
    if lab.shape != (x.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
        raise NegRefineError(f"labels must be ({x.shape[0]},) integers; got {lab.dtype} shape {lab.shape}.")
    if n_classes < 1 or lab.min() < 0 or lab.max() >= n_classes:
        raise NegRefineError(
            f"labels must lie in [0, {n_classes}); got [{lab.min()}, {lab.max()}] with n_classes={n_classes}."
        )
    unit = x.astype(np.float64)
    norms = np.linalg.norm(unit, axis=1, keepdims=True)
    if not (norms > 0).all():
        raise NegRefineError("embeddings has all-zero rows, which cannot be normalised.")
    sums = np.zeros((n_classes, x.shape[1]))
    np.add.at(sums, lab, unit / norms)
    # The class mean and the class sum point the same way: normalising the sum is the prototype.
    length = np.linalg.norm(sums, axis=1, keepdims=True)
    protos = np.divide(sums, length, out=np.zeros_like(sums), where=length > 0)
    return protos.astype(np.float32), np.bincount(lab, minlength=n_classes).astype(np.int64)


def base_similarity(id_text: np.ndarray, protos: np.ndarray, *, half: bool = False) -> np.ndarray:
    """The base similarity cos(t_k, v_k) of each ID label to its own prototype (methods.md 5.2.4).

    Shapes: id_text (K, D) unit, protos (K, D) unit -> (K,) float64 (`cos_sim_id` in the reference).
    `half`: the reference's fp16 arithmetic (5.6): inputs and result rounded to float16, float32 sums.
    """
    t = _rows(id_text, "id_text")
    v = _rows(protos, "protos", t.shape[1])
    if v.shape != t.shape:
        raise NegRefineError(f"id_text and protos must both be (K, D); got {t.shape} and {v.shape}.")
    if half:
        return _half(np.einsum("kd,kd->k", _half(t), _half(v))).astype(np.float64)
    return np.einsum("kd,kd->k", t.astype(np.float64), v.astype(np.float64))


def _cosines(
    words: np.ndarray, protos: np.ndarray, base: np.ndarray, half: bool = False
) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, (n, K) float64 cos(w, v_k)) for `words` BLOCK_ROWS rows at a time, inputs validated;
    `half`: float16 inputs and cosines, float32 sums (the reference's fp16 GEMM)."""
    v = _rows(protos, "protos")
    w = _rows(words, "words", v.shape[1], allow_empty=True)
    if np.asarray(base).shape != (v.shape[0],):
        raise NegRefineError(f"base must be ({v.shape[0]},), one per prototype; got {np.shape(base)}.")
    empty = np.flatnonzero(~np.any(v != 0, axis=1))
    if empty.size:
        raise NegRefineError(
            f"{empty.size} prototypes are zero rows (classes without images, e.g. {empty[:5].tolist()}); "
            "every ID class needs at least one image to build its prototype."
        )
    vt = _half(v).T if half else v.astype(np.float64).T
    for start in range(0, w.shape[0], BLOCK_ROWS):
        rows = slice(start, min(start + BLOCK_ROWS, w.shape[0]))
        if half:
            yield rows, _half(_half(w[rows]) @ vt).astype(np.float64)
        else:
            yield rows, w[rows].astype(np.float64) @ vt


def inter_modal(
    words: np.ndarray, protos: np.ndarray, base: np.ndarray, *, half: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """`admissible` and `deviation` in one pass over the words: ((M,) bool, (M,) float64). `half`:
    the reference's fp16 arithmetic (cosines, differences and their mean rounded to float16)."""
    ok = np.zeros(np.shape(words)[0], dtype=bool)
    dev = np.zeros(np.shape(words)[0])
    b = np.asarray(base, dtype=np.float64)
    for rows, cos in _cosines(words, protos, b, half):
        ok[rows] = (cos < b).all(axis=1)
        if half:
            dev[rows] = _half(_half(b - cos).mean(axis=1, dtype=np.float32))
        else:
            dev[rows] = (b - cos).mean(axis=1)
    return ok, dev


def admissible(words: np.ndarray, protos: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Inter-modal admissibility (methods.md 5.3 step 1, 5.5 step 5): cos(w, v_k) < base_k for EVERY k.

    Shapes: words (M, D) unit, protos (K, D) unit, base (K,) -> (M,) bool. Strict: a word exactly as
    close to v_k as label k is rejected. Computed BLOCK_ROWS words at a time (M ~ 70k, K ~ 1000).
    """
    return inter_modal(words, protos, base)[0]


def deviation(words: np.ndarray, protos: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Deviation degree (paper Eq. 10, methods.md 5.3 step 3): delta(w) = mean_k [base_k - cos(w, v_k)].

    Shapes: words (M, D) unit, protos (K, D) unit, base (K,) -> (M,) float64; larger = farther from
    the ID images than the ID labels are, i.e. a better negative.
    """
    return inter_modal(words, protos, base)[1]


def proportional_split(m: int, n_adj: int, n_noun: int) -> tuple[int, int]:
    """(adj_num, noun_num) = (floor(m A / (A + N)), m - adj_num) (methods.md 5.3 step 2).

    Evaluated as the reference does, int(m * (A / (A + N))) in floating point
    (openood/networks/clip_fixed_ood_prompt.py:585), so it is one lower than the exact floor when
    m A / (A + N) is an integer that the division misses: A = 201, N = 199, m = 2000 gives 1004.
    """
    if m < 1 or n_adj < 0 or n_noun < 0 or n_adj + n_noun == 0:
        raise NegRefineError(
            f"need m >= 1 and A + N >= 1 admissible words; got m={m}, A={n_adj}, N={n_noun}."
        )
    adj_num = int(m * (n_adj / (n_adj + n_noun)))
    return adj_num, m - adj_num


@dataclass(frozen=True)
class InterNegSelection:
    """InterNeg's textual negatives (methods.md 5.3): indices into the candidate arrays, each part by
    deviation descending (ties to the lower index), and the admissible counts A and N.

    The negative column order is [adjectives | nouns] (5.3 step 4); `stack` and `labels` build it.
    """

    adj_index: np.ndarray  # (adj_num,) int64 into the adjective candidates
    noun_index: np.ndarray  # (noun_num,) int64 into the noun candidates
    n_admissible_adjectives: int
    n_admissible_nouns: int

    @property
    def adj_num(self) -> int:
        return len(self.adj_index)

    @property
    def noun_num(self) -> int:
        return len(self.noun_index)

    def stack(self, nouns: np.ndarray, adjs: np.ndarray) -> np.ndarray:
        """(adj_num + noun_num, D) negative embeddings [adjectives | nouns], in selection order."""
        return np.concatenate([np.asarray(adjs)[self.adj_index], np.asarray(nouns)[self.noun_index]])

    def labels(self, nouns: list[str], adjs: list[str]) -> list[str]:
        """The selected words in the order of `stack`."""
        return [adjs[i] for i in self.adj_index] + [nouns[i] for i in self.noun_index]


def _ranked(ok: np.ndarray, dev: np.ndarray) -> np.ndarray:
    """Indices of the admissible rows by deviation descending; stable, so ties keep index order."""
    idx = np.flatnonzero(ok)
    return idx[np.argsort(-dev[idx], kind="stable")].astype(np.int64)


def select_interneg(
    nouns: np.ndarray,
    adjs: np.ndarray,
    *,
    protos: np.ndarray,
    base: np.ndarray,
    m: int = 2000,
    allow_fewer: bool = False,
    half: bool = False,
) -> InterNegSelection:
    """Select InterNeg's m textual negatives (methods.md 5.3 steps 1-4).

    nouns (Mn, D), adjs (Ma, D) unit candidate embeddings (nouns "The nice {}.", adjectives "This is
    a {} photo."); protos (K, D), base (K,). Keeps the admissible words, splits m by
    `proportional_split(m, A, N)` and takes the top adj_num adjectives and noun_num nouns by deviation.
    With A + N < m it raises, unless `allow_fewer`, which takes every admissible word as the reference's
    slicing does (fewer than m negatives). No admissible word at all always raises. `half`: the
    deviations in the reference's fp16 (its ties broken by index here, by torch's sort there).
    """
    adj_ok, adj_dev = inter_modal(adjs, protos, base, half=half)
    noun_ok, noun_dev = inter_modal(nouns, protos, base, half=half)
    a, n = int(adj_ok.sum()), int(noun_ok.sum())
    if a + n == 0:
        raise NegRefineError(
            f"no candidate word is admissible (0 of {len(adj_ok)} adjectives, 0 of {len(noun_ok)} nouns): "
            "each is as close to some class prototype as that class's own label (methods.md 5.3). "
            "Check that the prototypes and the ID label embeddings come from the same CLIP model."
        )
    if a + n < m and not allow_fewer:
        raise NegRefineError(
            f"only {a + n} admissible words ({a} adjectives, {n} nouns) for m={m} negatives; "
            f"lower m to at most {a + n} or allow fewer negatives."
        )
    adj_num, noun_num = proportional_split(m, a, n)
    return InterNegSelection(_ranked(adj_ok, adj_dev)[:adj_num], _ranked(noun_ok, noun_dev)[:noun_num], a, n)


class NegativeBank:
    """InterNeg's bank of inverted negatives (methods.md 5.5 step 6).

    Every appended row is kept, sorted by score (deviation) descending; among equal scores earlier
    entries come first. The bank is never truncated; the score uses only `top(K_extra)`. Embeddings
    are stored float32 and scores float64; with `half` both are rounded to float16 as the reference
    stores them, so its ties come back (which it orders by a non-stable `torch.sort`, this bank by
    arrival).
    """

    def __init__(self, dim: int, *, half: bool = False) -> None:
        self._emb = np.zeros((0, dim), dtype=np.float32)
        self._scores = np.zeros(0, dtype=np.float64)
        self.half = half

    def __len__(self) -> int:
        return len(self._scores)

    @property
    def scores(self) -> np.ndarray:
        """(len,) float64, descending."""
        return self._scores.copy()

    def append(self, embeddings: np.ndarray, scores: np.ndarray) -> None:
        """Add (n, D) embeddings with their (n,) scores and re-sort the whole bank."""
        emb = _rows(embeddings, "embeddings", self._emb.shape[1], allow_empty=True)
        sc = np.asarray(scores, dtype=np.float64)
        if sc.shape != (emb.shape[0],) or not np.isfinite(sc).all():
            raise NegRefineError(f"scores must be ({emb.shape[0]},) finite values; got shape {sc.shape}.")
        if self.half:
            emb, sc = _half(emb), _half(sc).astype(np.float64)
        all_scores = np.concatenate([self._scores, sc])
        order = np.argsort(-all_scores, kind="stable")
        self._emb = np.concatenate([self._emb, emb.astype(np.float32)])[order]
        self._scores = all_scores[order]

    def top(self, k: int) -> np.ndarray:
        """(min(k, len), D) float32: the k highest-scoring embeddings, best first."""
        return self._emb[: max(k, 0)].copy()


def _half(x: np.ndarray) -> np.ndarray:
    """x rounded to float16, held as float32 so that sums accumulate in float32 as CUDA's do.

    Rounded by torch: the same round-to-nearest-even as numpy's cast, which is ~10x slower on the fp16
    subnormals a softmax over thousands of labels produces.
    """
    # writeable: arrays from Ray's object store are read-only, which torch.from_numpy warns about
    return torch.from_numpy(np.require(x, np.float32, ["C", "W"])).half().float().numpy()


def _score_float16(
    image: np.ndarray, id_text: np.ndarray, neg_text: np.ndarray, n_groups: int, logit_scale: float
) -> np.ndarray:
    """The grouped score with the reference's fp16 rounding: fp16 values, fp32 accumulation."""
    k = id_text.shape[0]
    perm = grouping_permutation(neg_text.shape[0], n_groups, 0)
    text = _half(np.concatenate([id_text, neg_text[perm]]))
    out = np.empty(image.shape[0], dtype=np.float64)
    for start in range(0, image.shape[0], HALF_CHUNK_ROWS):
        rows = slice(start, min(start + HALF_CHUNK_ROWS, image.shape[0]))
        # fp32 scalar times fp16 features stays fp16; the matmul and softmax round their outputs to fp16.
        logits = _half(_half(_half(image[rows]) * np.float32(logit_scale)) @ text.T)
        n = logits.shape[0]
        neg = logits[:, k:].reshape(n, n_groups, -1)
        full = np.concatenate([np.broadcast_to(logits[:, None, :k], (n, n_groups, k)), neg], axis=2)
        e = np.exp(full - full.max(axis=2, keepdims=True))
        prob = _half(e / e.sum(axis=2, keepdims=True))
        out[rows] = _half(_half(prob[..., :k].sum(axis=2)).mean(axis=1))
    return out


def interneg_score(
    image: np.ndarray,
    id_text: np.ndarray,
    neg_text: np.ndarray,
    *,
    n_groups: int,
    logit_scale: float = 100.0,
    dtype: Precision = "float32",
) -> np.ndarray:
    """InterNeg's conf(x) (paper Eq. 11, methods.md 5.4): NegLabel's grouped score (0.6) with G = group_num.

    S(x) = (1/G) sum_g sum_k e^{s_k} / (sum_k e^{s_k} + sum_{j in g} e^{n_j}), s = scale cos(x, t_k),
    n = scale cos(x, q_j); the last M mod G negatives are dropped, the kept M' are grouped by the
    seed-0 CPU `torch.randperm(M')` (re-drawn per call, as the reference does every batch).
    Shapes: image (N, D), id_text (K, D), neg_text (M, D) -> (N,) float64 in (0, 1); higher = more ID.
    dtype "float32" (default; a named deviation) keeps full precision (float64 softmax); "float16"
    reproduces the reference's fp16 logits, softmax and sums (5.6), so scores are quantised and tie;
    it rounds as CUDA's half kernels do but is not promised bit-identical to them.
    """
    if dtype == "float32":
        return neglabel(image, id_text, neg_text, n_groups=n_groups, seed=0, logit_scale=logit_scale)
    if dtype != "float16":
        raise unknown_name("InterNeg score dtype", dtype, ("float32", "float16"))
    img = _rows(image, "image")
    pos = _rows(id_text, "id_text", img.shape[1])
    neg = _rows(neg_text, "neg_text", img.shape[1])
    kept_negatives(neg.shape[0], n_groups)  # validates n_groups
    return _score_float16(img, pos, neg, n_groups, logit_scale)


def stream_order(n_id: int, n_ood: int, seed: int) -> np.ndarray:
    """(n_id + n_ood,) int64 shuffled order over the rows [ID | OOD] (methods.md 5.5: one mixed,
    shuffled stream per OOD dataset), drawn from numpy's PCG64 seeded `seed`.

    The reference shuffles with a torch DataLoader whose RNG state the score code keeps reseeding;
    an explicit seeded order is this package's (named) deviation.
    """
    if n_id < 0 or n_ood < 0 or n_id + n_ood == 0:
        raise NegRefineError(f"the stream needs at least one image; got n_id={n_id}, n_ood={n_ood}.")
    return np.random.Generator(np.random.PCG64(seed)).permutation(n_id + n_ood).astype(np.int64)


def _inverted(invert: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """invert(images), checked to be (n, D) finite unit rows."""
    emb = _rows(invert(images), "inverted embeddings", images.shape[1])
    norms = np.linalg.norm(emb, axis=1)
    if emb.shape[0] != images.shape[0] or not (np.abs(norms - 1) <= UNIT_TOL).all():
        raise NegRefineError(
            f"invert must return one unit row per image, ({images.shape[0]}, {images.shape[1]}); "
            f"got shape {emb.shape}, norms in [{norms.min():.3g}, {norms.max():.3g}]. Normalise its output."
        )
    return emb


def _checked_order(order: np.ndarray, n: int) -> np.ndarray:
    idx = np.asarray(order)
    if idx.shape != (n,) or not np.array_equal(np.sort(idx), np.arange(n)):
        raise NegRefineError(
            f"order must be a permutation of the {n} image rows; got shape {idx.shape}. Use stream_order."
        )
    return idx.astype(np.int64)


def run_online(
    image: np.ndarray,
    is_id: np.ndarray,
    *,
    id_text: np.ndarray,
    text_negs: np.ndarray,
    protos: np.ndarray,
    base: np.ndarray,
    invert: Callable[[np.ndarray], np.ndarray],
    order: np.ndarray,
    batch_size: int = 256,
    threshold: float = 0.35,
    k_extra: int = 2000,
    n_groups: int = 5,
    logit_scale: float = 100.0,
    dtype: Precision = "float32",
    banked: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """InterNeg's online loop over one mixed stream (methods.md 5.5), starting from an empty bank.

    For each batch of `order`: conf = `interneg_score` against [text_negs | bank.top(k_extra)];
    activated = conf < threshold; if any, their images are inverted (`invert`, e.g. OTI with CLIP's
    text tower, returns (n, D) unit rows), the admissible inversions enter the bank with their
    deviation, and the whole batch is re-scored with the updated negatives (even when none was kept).
    Shapes: image (N, D), is_id (N,) bool -> scores (N,) float64 in ROW order, and counts: batches,
    activated (images below threshold = images inverted), inverted (batches that called `invert`),
    kept (rows added to the bank), activated_id and kept_id (those that came from ID images).
    `banked`, like numpy's `out=`: an (N,) bool array set True at the rows whose inversion entered
    the bank (the report shows it per image).
    """
    image = _rows(image, "image")
    flags = np.asarray(is_id)
    if flags.shape != (image.shape[0],) or flags.dtype != bool:
        raise NegRefineError(
            f"is_id must be ({image.shape[0]},) bool; got {flags.dtype} shape {flags.shape}."
        )
    if batch_size < 1 or k_extra < 0:
        raise NegRefineError(f"need batch_size >= 1 and k_extra >= 0; got {batch_size}, {k_extra}.")
    idx_all = _checked_order(order, image.shape[0])
    negs = _rows(text_negs, "text_negs", image.shape[1])
    half = dtype == "float16"  # the reference's fp16 end to end: scores, bank, inversions' deviations
    bank = NegativeBank(image.shape[1], half=half)
    counts = dict.fromkeys(("batches", "activated", "inverted", "kept", "activated_id", "kept_id"), 0)
    out = np.empty(image.shape[0], dtype=np.float64)

    def conf(x: np.ndarray) -> np.ndarray:
        current = np.concatenate([negs, bank.top(k_extra)])
        return interneg_score(x, id_text, current, n_groups=n_groups, logit_scale=logit_scale, dtype=dtype)

    for start in range(0, len(idx_all), batch_size):
        idx = idx_all[start : start + batch_size]
        x = image[idx]
        scores = conf(x)
        active = scores < threshold
        counts["batches"] += 1
        if active.any():
            emb = _inverted(invert, x[active])
            ok, dev = inter_modal(emb, protos, base, half=half)
            bank.append(emb[ok], dev[ok])
            if banked is not None:
                banked[idx[active][ok]] = True
            scores = conf(x)
            from_id = flags[idx][active]
            counts["inverted"] += 1
            counts["activated"] += int(active.sum())
            counts["activated_id"] += int(from_id.sum())
            counts["kept"] += int(ok.sum())
            counts["kept_id"] += int((ok & from_id).sum())
        out[idx] = scores
    return out, counts
