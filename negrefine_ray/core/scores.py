"""OOD scores over precomputed CLIP embeddings: MCM, NegLabel's grouped score, NegRefine's
multi-matching and final score, DNM's debiased score (methods.md 0.6, 1.5, 2.5, 3.4, 4.3, App. B).

Input: L2-normalised embeddings, images (N, D), ID label texts (K, D), negative label texts (M, D).
Output: (N,) float64 scores, higher = more in-distribution. Images are processed `chunk_size` rows at
a time so memory stays bounded; exponentials go through float64 log-sum-exp.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from negrefine_ray.errors import NegRefineError

CHUNK_SIZE = 1024  # rows of images a step: ~100 MB of float64 logits for K + M = 12k labels


def _embeddings(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    """`x` as a 2-D finite float array with `dim` columns, or a NegRefineError naming the problem."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise NegRefineError(f"{name} must be a non-empty 2-D (rows, dim) array; got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.floating):
        raise NegRefineError(f"{name} must be float32 or float64 embeddings; got dtype {arr.dtype}.")
    if dim is not None and arr.shape[1] != dim:
        raise NegRefineError(
            f"{name} has dimension {arr.shape[1]} but the image embeddings have {dim}; "
            "embed images and texts with the same CLIP model."
        )
    if not np.isfinite(arr).all():
        raise NegRefineError(f"{name} contains NaN or infinite values; re-embed or drop those rows.")
    return arr


def _positive(value: float, name: str) -> float:
    if not value > 0:
        raise NegRefineError(f"{name} must be > 0; got {value}.")
    return float(value)


def _chunks(n: int, chunk_size: int) -> Iterator[slice]:
    if chunk_size < 1:
        raise NegRefineError(f"chunk_size must be >= 1; got {chunk_size}.")
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


def _logits(image: np.ndarray, text: np.ndarray, scale: float) -> np.ndarray:
    """(n, T) float64 = scale * cos(image, text); the product runs in the inputs' own precision."""
    return (image @ text.T).astype(np.float64) * scale


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """log sum exp over the last axis, shifted by the maximum so nothing overflows."""
    top = x.max(axis=-1)
    return top + np.log(np.exp(x - top[..., None]).sum(axis=-1))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z) without overflow for either sign of z."""
    return np.exp(-np.logaddexp(0.0, -z))


def mcm(
    image: np.ndarray, id_text: np.ndarray, temperature: float = 1.0, *, chunk_size: int = CHUNK_SIZE
) -> np.ndarray:
    """MCM (deeplearning-wisc/MCM, methods.md App. B): S(x) = max_k softmax_k(cos(x, p_k) / T).

    Shapes: image (N, D), id_text (K, D) -> (N,) float64 in [1/K, 1]; higher = more in-distribution.
    T = 1 (the MCM code's default) is a softmax over raw cosines. Computed as 1 / sum_k e^{l_k - max l}.
    """
    image = _embeddings(image, "image")
    id_text = _embeddings(id_text, "id_text", image.shape[1])
    scale = 1.0 / _positive(temperature, "temperature")
    out = np.empty(image.shape[0], dtype=np.float64)
    for rows in _chunks(image.shape[0], chunk_size):
        logits = _logits(image[rows], id_text, scale)
        out[rows] = 1.0 / np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1)
    return out


def kept_negatives(m: int, n_groups: int) -> int:
    """M' = M - (M mod G): how many negatives the grouped scores keep (the first M' of them)."""
    if n_groups < 1 or n_groups > m:
        raise NegRefineError(f"n_groups must be between 1 and the number of negatives ({m}); got {n_groups}.")
    return m - m % n_groups


def grouping_permutation(m: int, n_groups: int, seed: int = 0, device: str = "cpu") -> np.ndarray:
    """(M',) int64 column order of NegLabel's grouping (methods.md 0.6 steps 1-2).

    The last M mod G negatives of the canonical order are dropped first; the kept M' are permuted by
    `torch.manual_seed(seed); torch.randperm(M', device=device)`, and group g is
    `perm[g*Q:(g+1)*Q]`, Q = M'/G. NegLabel, CSP and NegRefine drew this on CUDA, whose randperm
    differs from the CPU's, so reproducing their exact group membership needs device="cuda" (and a
    PyTorch whose CUDA randperm matches theirs). The default "cpu" is InterNeg's choice and gives the
    same order on every machine.
    The caller's global RNG state is left untouched.
    """
    kept = kept_negatives(m, n_groups)
    dev = torch.device(device)
    if dev.type == "cpu":
        # A fresh CPU generator seeded `seed` yields the same stream as torch.manual_seed(seed).
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(kept, generator=gen).numpy().astype(np.int64)
    if dev.type != "cuda":
        raise NegRefineError(f"grouping permutations are drawn on 'cpu' or 'cuda'; got device '{device}'.")
    # The references' exact seeding (CPU and this GPU: some PyTorch versions drew small CUDA randperms
    # on the CPU), inside fork_rng so the caller's RNG state is restored afterwards.
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index]), torch.cuda.device(index):
        torch.random.default_generator.manual_seed(seed)
        torch.cuda.manual_seed(seed)
        perm = torch.randperm(kept, device=dev)
    return perm.cpu().numpy().astype(np.int64)


def dnm_permutations(m: int, n_groups: int, count: int, *, seed: int = 50) -> list[np.ndarray]:
    """The (M',) int64 permutations DNM's `main_online.py` draws for `count` OOD sets in turn.

    DNM seeds the global CPU generator once (`setup_seed(50)`) and calls `torch.randperm(M')` again
    for every OOD dataset without reseeding, so the k-th dataset (iNaturalist, SUN, Places, Textures)
    gets the k-th draw and its ID scores are recomputed under that grouping. With G = 1 DNM does not
    permute (and draws nothing): the identity order is returned.
    """
    kept = kept_negatives(m, n_groups)
    if n_groups == 1:
        return [np.arange(kept, dtype=np.int64) for _ in range(count)]
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(kept, generator=gen).numpy().astype(np.int64) for _ in range(count)]


def _grouped_negatives(neg_text: np.ndarray, n_groups: int, permutation: np.ndarray | None) -> np.ndarray:
    """neg_text rows in grouped order (M', D): group g is rows g*Q..(g+1)*Q-1."""
    kept = kept_negatives(neg_text.shape[0], n_groups)
    if permutation is None:
        return neg_text[:kept]
    perm = np.asarray(permutation)
    if perm.shape != (kept,) or not np.array_equal(np.sort(perm), np.arange(kept)):
        raise NegRefineError(
            f"permutation must be a permutation of 0..{kept - 1} (M={neg_text.shape[0]} negatives, "
            f"G={n_groups} groups, the last {neg_text.shape[0] - kept} dropped); got shape {perm.shape}. "
            "Build it with grouping_permutation(M, G)."
        )
    return neg_text[perm]


def neglabel(
    image: np.ndarray,
    id_text: np.ndarray,
    neg_text: np.ndarray,
    *,
    n_groups: int = 100,
    seed: int = 0,
    logit_scale: float = 100.0,
    permutation: np.ndarray | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> np.ndarray:
    """NegLabel's grouped score (methods.md 0.6; NegLabel 1.5, CSP 2.5, NegRefine S_NL 3.4).

    s_k = scale * cos(x, p_k) (N, K); n_j = scale * cos(x, q_j) over the kept, permuted negatives
    (N, G, Q). S(x) = (1/G) sum_g sum_k e^{s_k} / (sum_k e^{s_k} + sum_{j in g} e^{n_j})
    = mean_g sigmoid(LSE(s) - LSE(n_g)): the softmax ID mass over K + Q labels, averaged over groups.
    Shapes: image (N, D), id_text (K, D), neg_text (M, D) -> (N,) float64 in (0, 1); higher = more
    in-distribution. `permutation` defaults to `grouping_permutation(M, n_groups, seed)` (CPU).
    """
    image = _embeddings(image, "image")
    id_text = _embeddings(id_text, "id_text", image.shape[1])
    neg_text = _embeddings(neg_text, "neg_text", image.shape[1])
    if permutation is None:
        permutation = grouping_permutation(neg_text.shape[0], n_groups, seed)
    grouped = _grouped_negatives(neg_text, n_groups, permutation)
    out = np.empty(image.shape[0], dtype=np.float64)
    for rows in _chunks(image.shape[0], chunk_size):
        id_logits = _logits(image[rows], id_text, logit_scale)
        out[rows] = grouped_from_logits(id_logits, _logits(image[rows], grouped, logit_scale), n_groups)
    return out


def grouped_from_logits(id_logits: np.ndarray, grouped_logits: np.ndarray, n_groups: int) -> np.ndarray:
    """NegLabel's grouped score (0.6) from float64 logits: ID (n, K) and the kept negatives' (n, M')
    in grouped order (group g = columns g*Q..(g+1)*Q-1) -> (n,) float64."""
    lse_id = _logsumexp(id_logits)
    neg = grouped_logits.reshape(len(lse_id), n_groups, -1)
    return _sigmoid(lse_id[:, None] - _logsumexp(neg)).mean(axis=1)  # type: ignore[no-any-return]


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """(n, k) column indices of the k largest values per row, descending, ties to the lower index."""
    top = np.argpartition(-x, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(x, top, axis=1).min(axis=1, keepdims=True)
    # argpartition keeps an arbitrary few of the entries tied with the k-th value; the rare rows where
    # it had to choose are redone with a stable sort so the lower indices win.
    chose = (x == kth).sum(axis=1) != (np.take_along_axis(x, top, axis=1) == kth).sum(axis=1)
    for row in np.flatnonzero(chose):
        top[row] = np.argsort(-x[row], kind="stable")[:k]
    top.sort(axis=1)
    order = np.argsort(-np.take_along_axis(x, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def top_pairs(
    image: np.ndarray,
    id_text: np.ndarray,
    neg_text: np.ndarray,
    *,
    k_pos: int = 5,
    k_neg: int = 5,
    logit_scale: float = 100.0,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labels NegRefine pairs up for multi-matching (methods.md 3.4 step 2).

    Returns pos_idx (N, k_pos) int64, the ID labels with the largest cos(x, p_k); neg_idx (N, k_neg)
    int64, the negatives with the largest cos(x, q_j); and neg_logits (N, k_neg) float64 =
    logit_scale * cos(x, q_j) of those. Both index arrays are in descending similarity, ties broken
    by the lower index. k_pos is capped at K as in the reference (min(5, K)).
    """
    image = _embeddings(image, "image")
    id_text = _embeddings(id_text, "id_text", image.shape[1])
    neg_text = _embeddings(neg_text, "neg_text", image.shape[1])
    k_pos = min(k_pos, id_text.shape[0])
    if k_pos < 1 or not 1 <= k_neg <= neg_text.shape[0]:
        raise NegRefineError(
            f"k_pos and k_neg must be >= 1 and k_neg at most M={neg_text.shape[0]}; got {k_pos}, {k_neg}."
        )
    n = image.shape[0]
    pos_idx = np.empty((n, k_pos), dtype=np.int64)
    neg_idx = np.empty((n, k_neg), dtype=np.int64)
    neg_logits = np.empty((n, k_neg), dtype=np.float64)
    for rows in _chunks(n, chunk_size):
        pos_idx[rows] = _topk(_logits(image[rows], id_text, 1.0), k_pos)
        neg = _logits(image[rows], neg_text, logit_scale)
        neg_idx[rows] = _topk(neg, k_neg)
        neg_logits[rows] = np.take_along_axis(neg, neg_idx[rows], axis=1)
    return pos_idx, neg_idx, neg_logits


def distinct_pairs(pos_idx: np.ndarray, neg_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (ID label, negative) pairs of `top_pairs`, so each pair text is embedded once.

    pos_idx (N, k_pos), neg_idx (N, k_neg) int -> unique_pairs (P, 2) int64 sorted lexicographically
    and pair_index (N, k_pos, k_neg) int64 with unique_pairs[pair_index[n, a, b]] ==
    (pos_idx[n, a], neg_idx[n, b]).
    """
    pos, neg = np.asarray(pos_idx), np.asarray(neg_idx)
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[0] != neg.shape[0]:
        raise NegRefineError(
            f"pos_idx and neg_idx must be (N, k) arrays with the same N; got {pos.shape} and {neg.shape}."
        )
    if not (np.issubdtype(pos.dtype, np.integer) and np.issubdtype(neg.dtype, np.integer)):
        raise NegRefineError(f"pos_idx and neg_idx must be integer; got {pos.dtype} and {neg.dtype}.")
    if pos.size and neg.size and min(pos.min(), neg.min()) < 0:
        raise NegRefineError("pos_idx and neg_idx must be non-negative label indices.")
    # One int64 key a pair (pos * width + neg) sorts exactly like the lexicographic (pos, neg) order.
    width = int(neg.max()) + 1 if neg.size else 1
    keys = pos.astype(np.int64)[:, :, None] * width + neg.astype(np.int64)[:, None, :]
    unique, inverse = np.unique(keys, return_inverse=True)
    pairs = np.stack([unique // width, unique % width], axis=1).astype(np.int64)
    return pairs, inverse.reshape(keys.shape).astype(np.int64)


def pair_texts(unique_pairs: np.ndarray, id_labels: Sequence[str], neg_labels: Sequence[str]) -> list[str]:
    """NegRefine's pair strings `p + " and " + n` (e.g. "tench and gooey landscape"), one per pair.

    NegRefine embeds them with the 8 noun templates, raw-mean, even when n is an adjective phrase.
    """
    return [f"{id_labels[p]} and {neg_labels[n]}" for p, n in np.asarray(unique_pairs).tolist()]


def multi_matching(
    image: np.ndarray,
    pair_text: np.ndarray,
    pair_index: np.ndarray,
    neg_logits: np.ndarray,
    *,
    logit_scale: float = 100.0,
    chunk_size: int = CHUNK_SIZE,
) -> np.ndarray:
    """NegRefine's multi-matching score S_MM (methods.md 3.4 step 2, `detection_score`).

    m_{a,b} = logit_scale * cos(x, e(p_a and n_b)), v_b = neg_logits[:, b];
    S_MM(x) = max_{a,b} e^m / (e^m + e^v) = sigmoid(max_{a,b} (m_{a,b} - v_b)): the denominator holds
    only the image's similarity to the negative n_b itself. Shapes: image (N, D), pair_text (P, D)
    distinct pair embeddings, pair_index (N, k_pos, k_neg) int into pair_text, neg_logits (N, k_neg)
    -> (N,) float64 in (0, 1); higher = more in-distribution.
    """
    image = _embeddings(image, "image")
    pair_text = _embeddings(pair_text, "pair_text", image.shape[1])
    index, v = np.asarray(pair_index), np.asarray(neg_logits, dtype=np.float64)
    n = image.shape[0]
    if index.ndim != 3 or index.shape[0] != n or v.shape != (n, index.shape[2]):
        raise NegRefineError(
            f"pair_index must be (N, k_pos, k_neg) and neg_logits (N, k_neg) with N={n}; "
            f"got {index.shape} and {v.shape}. Use top_pairs and distinct_pairs to build them."
        )
    if index.size and (index.min() < 0 or index.max() >= pair_text.shape[0]):
        raise NegRefineError(f"pair_index must index the {pair_text.shape[0]} rows of pair_text.")
    out = np.empty(n, dtype=np.float64)
    for rows in _chunks(n, chunk_size):
        pairs = pair_text[index[rows]]  # (n, k_pos, k_neg, D)
        m = (pairs @ image[rows][:, None, :, None])[..., 0].astype(np.float64) * logit_scale
        out[rows] = _sigmoid((m - v[rows, None, :]).max(axis=(1, 2)))
    return out


def negrefine(s_nl: np.ndarray, s_mm: np.ndarray, *, alpha: float = 2.0) -> np.ndarray:
    """NegRefine's final score S = S_NL + alpha * S_MM (methods.md 3.4 step 3; alpha = 2 as coded).

    s_nl = `neglabel(...)`, s_mm = `multi_matching(...)`, both (N,) -> (N,) float64; higher = more ID.
    """
    nl, mm = np.asarray(s_nl, dtype=np.float64), np.asarray(s_mm, dtype=np.float64)
    if nl.ndim != 1 or nl.shape != mm.shape:
        raise NegRefineError(f"s_nl and s_mm must be (N,) arrays of one length; got {nl.shape}, {mm.shape}.")
    return nl + alpha * mm


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not (norms > 0).all():
        raise NegRefineError(f"{name} has all-zero rows, which cannot be normalised.")
    return x / norms


def dnm(
    image: np.ndarray,
    id_text: np.ndarray,
    neg_text: np.ndarray,
    *,
    permutation: np.ndarray | None,
    n_groups: int = 100,
    temperature: float = 0.01,
    tau: float = 0.5,
    chunk_size: int = CHUNK_SIZE,
) -> np.ndarray:
    """DNM's debiased grouped score (methods.md 4.3, `main_online.py` `get_score`).

    All rows are L2-normalised first (as coded). a_k = e^{cos(x, p_k)/T}, b_i = e^{cos(x, q_i)/T}
    for the Q negatives i of group j; Z1 = sum_k a_k;
    Z_j = Z1 + Q * ((1/tau) mean_i b_i - ((1-tau)/tau) mean_k a_k), not clamped (Z_j <= 0 is possible
    when Q (1-tau) / (tau K) >= 1); S(x) = mean_k mean_j a_k / Z_j = (1/(K G)) sum_j Z1 / Z_j.
    Shapes: image (N, D), id_text (K, D), neg_text (M, D) -> (N,) float64; higher = more
    in-distribution. Defaults T = 0.01, tau = 0.5, G = 100 are `main_online.py`'s for ViT-B/16.
    `permutation` ((M',) from `dnm_permutations`, or None for the canonical order) is explicit because
    the reference draws it from the un-reseeded global CPU generator, once per OOD dataset, so the
    grouping (and the ID scores) differ between OOD datasets.
    """
    image = _unit_rows(_embeddings(image, "image"), "image")
    id_text = _unit_rows(_embeddings(id_text, "id_text", image.shape[1]), "id_text")
    neg_text = _unit_rows(_embeddings(neg_text, "neg_text", image.shape[1]), "neg_text")
    if not 0 < tau <= 1:
        raise NegRefineError(f"tau must be in (0, 1]; got {tau}.")
    scale = 1.0 / _positive(temperature, "temperature")
    grouped = _grouped_negatives(neg_text, n_groups, permutation)
    q, k = grouped.shape[0] // n_groups, id_text.shape[0]
    # Z_j / Z1 = base + (sum_{q in j} b_q / Z1) / tau: the ratio comes from log-sum-exps, so nothing
    # overflows but the ratio itself, whose limit inf correctly gives a score of 0.
    base = 1.0 - q * (1.0 - tau) / (tau * k)
    out = np.empty(image.shape[0], dtype=np.float64)
    for rows in _chunks(image.shape[0], chunk_size):
        lse_id = _logsumexp(_logits(image[rows], id_text, scale))
        neg = _logits(image[rows], grouped, scale).reshape(len(lse_id), n_groups, q)
        with np.errstate(over="ignore"):
            ratio = np.exp(_logsumexp(neg) - lse_id[:, None]) / tau
        out[rows] = (1.0 / (k * (base + ratio))).mean(axis=1)
    return out
