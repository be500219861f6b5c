"""InterNeg's interneg.precision: fp32 (the default) against fp16 (the reference's arithmetic end to
end: the score, the bank's stored embeddings and scores, the cosines and deviations of the textual
selection and of the inversions), on a synthetic stream at the reference's sizes: K = 1,000 ID labels,
M = 2,000 textual negatives from 8,000 candidates, G = 5, batches of 256, D = 512. The inversion is
injected (a noisy copy of each activated image, unit rows), as the tests do: CLIP's text tower is not
what is compared here. Prints the selection overlap, the score differences and both AUROCs.

  python jobs/bench/interneg_precision.py            # ~1 min on 2 CPU cores
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from negrefine_ray.core import interneg
from negrefine_ray.core.metrics import auroc


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main(n_id: int = 2000, n_ood: int = 2000, k: int = 1000, d: int = 512, m: int = 2000) -> dict:
    rng = np.random.default_rng(0)
    id_text = unit(rng.normal(size=(k, d)))
    protos = unit(id_text + rng.normal(size=(k, d)) / np.sqrt(d) * 1.5)  # cos(t_k, v_k) ~ 0.55
    cands = unit(rng.normal(size=(8000, d)))
    labels = rng.integers(0, k, n_id)
    images = np.concatenate([
        unit(id_text[labels] + rng.normal(size=(n_id, d)) / np.sqrt(d) * 3),
        # OOD images near the ID labels too, so that the score has to separate them (AUROC < 100)
        unit(0.6 * id_text[rng.integers(0, k, n_ood)] + rng.normal(size=(n_ood, d)) / np.sqrt(d) * 3),
    ])  # fmt: skip
    is_id = np.arange(n_id + n_ood) < n_id
    order = interneg.stream_order(n_id, n_ood, seed=0)

    def invert(x: np.ndarray) -> np.ndarray:
        return unit(x + rng_inv.normal(size=x.shape) / np.sqrt(d) * 4)

    out: dict = {"sizes": {"K": k, "M": m, "G": 5, "D": d, "images": n_id + n_ood}}
    runs = {}
    for name, half in (("fp32", False), ("fp16", True)):
        t0 = time.perf_counter()
        base = interneg.base_similarity(id_text, protos, half=half)
        sel = interneg.select_interneg(cands[:4000], cands[4000:], protos=protos, base=base, m=m,
                                       allow_fewer=True, half=half)  # fmt: skip
        negs = sel.stack(cands[:4000], cands[4000:])
        rng_inv = np.random.default_rng(1)  # the same injected inversions for both
        scores, counts = interneg.run_online(
            images, is_id, id_text=id_text, text_negs=negs, protos=protos, base=base, invert=invert,
            order=order, n_groups=5, dtype="float16" if half else "float32",
        )  # fmt: skip
        runs[name] = (sel, scores)
        out[name] = {"auroc": round(100 * auroc(scores[is_id], scores[~is_id]), 3), "counts": counts,
                     "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    (s32, x32), (s16, x16) = runs["fp32"], runs["fp16"]
    chosen32 = set(s32.adj_index.tolist()) | {-1 - i for i in s32.noun_index.tolist()}
    chosen16 = set(s16.adj_index.tolist()) | {-1 - i for i in s16.noun_index.tolist()}
    diff = np.abs(x16 - x32)
    out["difference"] = {
        "selection_overlap": len(chosen32 & chosen16),
        "selected": len(chosen32),
        "score_max_abs": float(diff.max()),
        "score_mean_abs": float(diff.mean()),
        "auroc_points": round(out["fp16"]["auroc"] - out["fp32"]["auroc"], 3),
    }
    json.dump(out, sys.stdout, indent=1)
    print()
    return out


if __name__ == "__main__":
    main()
