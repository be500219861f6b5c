"""Benchmark of AdaNeg's online stream: items/s of core.adaneg.run_adaneg at the real shapes (K = 1000
ID labels, M = 10,000 negatives, D = 512, batches of 256, memories of 10) on one stream of the ID
images and one OOD dataset, and the split between the two grouped scores (static and adaptive) and
the rest (caching, proxies). Random unit embeddings, with the ID images drawn near their labels' text
features and the OOD images near negatives' so that both memories fill: the caching work is there.
Runs without Ray, on this machine's CPU cores (the score stage runs each stream as one Ray task).

  python jobs/bench/bench_adaneg.py --n-id 50000 --n-ood 10000 --out adaneg.json   # ImageNet x one OOD set
  python jobs/bench/bench_adaneg.py --n-id 2000 --n-ood 500                        # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from negrefine_ray.core import adaneg, scores


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-id", type=int, default=50_000)
    ap.add_argument("--n-ood", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--m", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--replacement", default="never", choices=["never", "entropy"])
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    id_text = _unit(rng.standard_normal((args.k, args.dim), dtype=np.float32))
    neg_text = _unit(rng.standard_normal((args.m, args.dim), dtype=np.float32))
    noise = lambda n: rng.standard_normal((n, args.dim), dtype=np.float32) * 0.035  # noqa: E731
    image = _unit(np.concatenate([
        id_text[rng.integers(0, args.k, args.n_id)] + noise(args.n_id),
        neg_text[rng.integers(0, args.m, args.n_ood)] + noise(args.n_ood),
    ]))  # fmt: skip
    order = adaneg.stream_order(args.n_id, args.n_ood, 0)
    spent = {"grouped_scores_s": 0.0}
    real = scores.neglabel

    def timed(*a: Any, **kw: Any) -> np.ndarray:
        t0 = time.perf_counter()
        out = real(*a, **kw)
        spent["grouped_scores_s"] += time.perf_counter() - t0
        return out

    adaneg.neglabel = timed  # type: ignore[assignment]  # the split: time the two grouped scores
    t0 = time.perf_counter()
    _, memory, counts = adaneg.run_adaneg(
        image, id_text=id_text, neg_text=neg_text, order=order, batch_size=args.batch,
        replacement=args.replacement,
    )  # fmt: skip
    total = time.perf_counter() - t0
    adaneg.neglabel = real  # type: ignore[assignment]
    n = args.n_id + args.n_ood
    out = {
        "images": n, "k": args.k, "m": args.m, "dim": args.dim, "batch": args.batch,
        "replacement": args.replacement, "cores": os.cpu_count(), "seconds": round(total, 2),
        "items_per_s": round(n / total, 1), "grouped_scores_s": round(spent["grouped_scores_s"], 2),
        "rest_s": round(total - spent["grouped_scores_s"], 2), "counts": counts,
        "labels_with_images": int((memory.count > 1).sum()),
    }  # fmt: skip
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
