"""Benchmark of InterNeg's online stage: stream items/s of core.interneg.run_online at the
real shapes (D from the model, K = 1000 ID labels, M = 2000 textual negatives, K_extra = 2000, batches
of 256), with the real textual inversion (clip.inversion, random weights of the real architecture),
and the cost split: scoring, inversion, the rest (bank and filter). Runs without Ray.

The threshold is set to the quantile of the first scores that activates `--activated` of the stream
(the reference's 0.35 activates a dataset-dependent fraction; random embeddings say nothing of it),
and every inverted embedding is kept, so the bank fills: the most negatives to score.

  python jobs/bench/bench_interneg.py --device cuda --n-id 45000 --n-ood 10000 --out interneg.json
  python jobs/bench/bench_interneg.py --arch nr-tiny-vit --n-id 512 --n-ood 512   # a CPU smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import negrefine_ray  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from negrefine_ray.clip.inversion import OnlineInverter
from negrefine_ray.clip.model import resolve_device
from negrefine_ray.config import ModelConfig
from negrefine_ray.core import interneg


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="ViT-B-16", help="open_clip architecture (random init)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="fp32", help="inversion precision (fp16/bf16 on CUDA)")
    p.add_argument("--n-id", type=int, default=1024)
    p.add_argument("--n-ood", type=int, default=512)
    p.add_argument("--activated", type=float, default=0.2, help="fraction of the stream inverted")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default="", help="write the JSON report here too")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    cfg = ModelConfig(arch=args.arch, pretrained="none", precision=args.precision)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    inverter = OnlineInverter.load(cfg, seed=0, device=device, steps=args.steps)
    load_s = time.perf_counter() - t0
    d = int(inverter.model.text_projection.shape[1])
    rng = np.random.default_rng(0)
    n = args.n_id + args.n_ood
    # prototypes equal to the ID label embeddings make base = 1, so every inverted embedding is
    # admissible and the bank fills to K_extra: the most negatives to score, the worst case
    image, id_text = unit(rng, n, d), unit(rng, 1000, d)
    protos = id_text
    text_negs = unit(rng, 2000, d)
    base = interneg.base_similarity(id_text, protos)
    first = interneg.interneg_score(image, id_text, text_negs, n_groups=5)
    threshold = float(np.quantile(first, args.activated))
    is_id = np.arange(n) < args.n_id

    timing = {"inversion_s": 0.0, "scoring_s": 0.0}
    score_fn = interneg.interneg_score

    def invert(x: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = inverter(x)
        timing["inversion_s"] += time.perf_counter() - start
        return out

    def timed_score(*a: Any, **k: Any) -> np.ndarray:
        start = time.perf_counter()
        out = score_fn(*a, **k)
        timing["scoring_s"] += time.perf_counter() - start
        return out

    interneg.interneg_score = timed_score  # type: ignore[assignment]  # count run_online's own calls
    try:
        t0 = time.perf_counter()
        _, counts = interneg.run_online(
            image, is_id, id_text=id_text, text_negs=text_negs, protos=protos, base=base, invert=invert,
            order=interneg.stream_order(args.n_id, args.n_ood, 0), batch_size=args.batch_size,
            threshold=threshold, k_extra=2000, n_groups=5,
        )  # fmt: skip
        total = time.perf_counter() - t0
    finally:
        interneg.interneg_score = score_fn  # type: ignore[assignment]
    report = {
        "machine": {
            "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "arch": args.arch,
            "precision": args.precision,
        },
        "stream": {"items": n, "activated_fraction": args.activated, "steps": args.steps, **counts},
        "model_load_s": round(load_s, 2),
        "seconds": round(total, 2),
        "items_per_s": round(n / total, 1),
        "split": {
            "scoring_s": round(timing["scoring_s"], 2),
            "inversion_s": round(timing["inversion_s"], 2),
            "bank_and_filter_s": round(total - timing["scoring_s"] - timing["inversion_s"], 2),
        },
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
