"""AdaNeg (NeurIPS 2024; methods.md Appendix D, YBZh/OpenOOD-VLM `TTAPromptPostprocessor_noadagap`):
test-time adaptive negative proxies. Every label (the K ID labels and the M negatives) keeps a
memory: its text feature in slot 0 and up to L confident test images. Over one mixed, shuffled stream
of ID and OOD images, per batch:

1. S_nl = NegLabel's grouped score (0.6) of the static logits O = scale x [ID | negatives]^T;
2. images with S_nl > thres + gap (1 - thres) are cached in the memory of their top ID label, in
   batch order; then images with S_nl < thres - gap thres in that of their top negative;
3. the proxies P_c = normalise(mean of c's memory slots, empty ones included) (the task-adaptive
   proxies, `samada False`);
4. S_ada = the grouped score of the logits scale x P^T, with the same grouping; S = S_ada + lambda S_nl.

A full memory takes a new image in place of its most uncertain one (the largest entropy of the
softmax over its side's labels) only with `replacement = "entropy"`: under the reference's fp16
arithmetic every entropy is NaN, so its memories are never updated once full ("never", the default).
The reference writes slots 1..L-1 only (9 images for L = 10); `fill_last_slot` writes slot L too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from negrefine_ray.core.interneg import _checked_order, _rows, stream_order
from negrefine_ray.core.scores import grouped_from_logits, grouping_permutation, neglabel
from negrefine_ray.errors import NegRefineError

Replacement = Literal["never", "entropy"]
__all__ = ["LabelMemory", "run_adaneg", "stream_order"]  # stream_order: InterNeg's seeded order


def _entropy(logits: torch.Tensor) -> np.ndarray:
    """-sum p log(p + 1e-8) of each row's softmax, the reference's per-image uncertainty, in float32
    as its rule was written to run (a near-one-hot softmax makes most terms vanish there)."""
    p = torch.softmax(logits, dim=1)
    return (-(p * torch.log(p + 1e-8)).sum(dim=1)).numpy()


@dataclass
class LabelMemory:
    """One memory per label: feats (C, 1 + L, D) float32 with slot 0 the label's text feature,
    count (C,) the next slot to write (1 at the start), entropy (C, 1 + L) of the stored images."""

    text: np.ndarray
    length: int = 10
    fill_last_slot: bool = False
    replacement: Replacement = "never"
    feats: np.ndarray = field(init=False)
    count: np.ndarray = field(init=False)
    entropy: np.ndarray = field(init=False)
    proxies: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if self.length < 1:
            raise NegRefineError(f"adaneg.memory_length must be >= 1; got {self.length}.")
        if self.replacement not in ("never", "entropy"):
            raise NegRefineError(
                f"adaneg.replacement must be 'never' or 'entropy'; got {self.replacement!r}."
            )
        c, d = self.text.shape
        self.feats = np.zeros((c, 1 + self.length, d), np.float32)
        self.feats[:, 0] = self.text
        self.count = np.ones(c, np.int64)
        self.entropy = np.zeros((c, 1 + self.length), np.float64)
        self.proxies = self._proxies(np.arange(c))

    @property
    def full_at(self) -> int:
        """The count at which a memory is full: L (the reference: slots 1..L-1), or L + 1."""
        return self.length + 1 if self.fill_last_slot else self.length

    def _proxies(self, labels: np.ndarray) -> np.ndarray:
        mean = self.feats[labels].mean(axis=1)
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)

    def offer(self, label: int, x: np.ndarray, h: float) -> bool:
        """Cache image `x` (entropy `h`) in `label`'s memory if the rule lets it; True if stored."""
        n = int(self.count[label])
        if n < self.full_at:
            self.feats[label, n], self.entropy[label, n] = x, h
            self.count[label] += 1
            return True
        row = self.entropy[label]
        if self.replacement == "never" or not (h < row).any():
            return False
        slot = int(np.argsort(row, kind="stable")[-1])  # the largest entropy (the last of ties)
        self.feats[label, slot], self.entropy[label, slot] = x, h
        return True

    def refresh(self, labels: np.ndarray) -> None:
        """Recompute the proxies of the labels whose memories changed."""
        if len(labels):
            self.proxies[labels] = self._proxies(labels)


def run_adaneg(
    image: np.ndarray,
    *,
    id_text: np.ndarray,
    neg_text: np.ndarray,
    order: np.ndarray,
    batch_size: int = 256,
    thres: float = 0.5,
    gap: float = 0.5,
    memory_length: int = 10,
    lambda_: float = 0.1,
    n_groups: int = 5,
    logit_scale: float = 100.0,
    replacement: Replacement = "never",
    fill_last_slot: bool = False,
) -> tuple[np.ndarray, LabelMemory, dict[str, int]]:
    """AdaNeg's online loop over one stream (D.4-D.5), from fresh memories: (N,) float64 scores in
    ROW order (larger = more ID), the final memories, and counts (batches, cached ID / OOD images,
    replacements). Inputs are L2-normalised: image (N, D), id_text (K, D), neg_text (M, D)."""
    image = _rows(image, "image")
    pos = _rows(id_text, "id_text", image.shape[1])
    neg = _rows(neg_text, "neg_text", image.shape[1])
    idx_all = _checked_order(order, image.shape[0])
    if batch_size < 1:
        raise NegRefineError(f"adaneg.batch_size must be >= 1; got {batch_size}.")
    k = pos.shape[0]
    text = np.concatenate([pos, neg]).astype(np.float32)
    memory = LabelMemory(text, memory_length, fill_last_slot, replacement)
    perm = grouping_permutation(neg.shape[0], n_groups, 0)  # the reference re-seeds 0 every call
    grouped_cols = k + perm  # the kept negatives' columns of [ID | negatives], in grouped order
    hi, lo = thres + gap * (1.0 - thres), thres - gap * thres
    counts = dict.fromkeys(("batches", "cached_id", "cached_ood", "replaced"), 0)
    out = np.empty(image.shape[0], dtype=np.float64)
    for start in range(0, len(idx_all), batch_size):
        idx = idx_all[start : start + batch_size]
        x = image[idx]
        products = x @ text.T  # the static logits' one product: S_nl (float64) and the caching (float32)
        static = products.astype(np.float64) * logit_scale
        s_nl = grouped_from_logits(static[:, :k], static[:, grouped_cols], n_groups)
        touched: set[int] = set()
        # the caching side in float32, as the reference: the labels' logits, argmax and entropy
        logits = torch.from_numpy(products) * torch.tensor(logit_scale)
        sides = (("cached_id", s_nl > hi, slice(0, k)), ("cached_ood", s_nl < lo, slice(k, None)))
        for side, chosen, cols in sides:  # ID images first, then OOD images, each in batch order
            rows = np.flatnonzero(chosen)
            if not len(rows):
                continue
            part = logits[rows][:, cols]
            labels = (cols.start or 0) + torch.argmax(part, dim=1).numpy()
            for i, label, h in zip(rows, labels.tolist(), _entropy(part).tolist(), strict=True):
                full = memory.count[label] >= memory.full_at
                if memory.offer(label, x[i], h):
                    touched.add(label)
                    counts["replaced" if full else side] += 1
        memory.refresh(np.array(sorted(touched), dtype=np.int64))
        p = memory.proxies
        s_ada = neglabel(x, p[:k], p[k:], n_groups=n_groups, logit_scale=logit_scale, permutation=perm)
        out[idx] = s_ada + lambda_ * s_nl
        counts["batches"] += 1
    return out, memory, counts
