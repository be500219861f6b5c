"""Benchmark of the score stage's math: 111,865 images (ImageNet val + the NegRefine
OOD sets) against 1,000 ID labels and 6,370 negatives, D = 512, random L2-normalised embeddings.
Times NegLabel's grouped score, NegRefine's S_MM (top pairs, distinct pairs, multi-matching; the pair
texts' CLIP encoding is not included, its text count is reported) and DNM.

  python jobs/bench/bench_score.py                          # numpy = negrefine_ray.core.scores (the stage)
  python jobs/bench/bench_score.py --backend torch --device cuda --out bench_score.json
Random embeddings are the worst case for deduplication: real images share their nearest labels, so a
real run needs far fewer distinct pairs (the score stage records the count in its manifest).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import negrefine_ray  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from negrefine_ray.core import scores

METHODS = ("neglabel", "s_mm", "dnm")


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(
    res: dict[str, Any], key: str, fn: Callable[[], Any], sync: Callable[[], None] = lambda: None
) -> Any:
    """fn()'s result; its wall time (device-synchronised) goes to res[key]."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    res[key] = time.perf_counter() - t0
    return out


class TorchScores:
    """The same formulas as negrefine_ray.core.scores as chunked torch matmuls (float32, log-sum-exp)."""

    def __init__(self, device: str, chunk: int) -> None:
        self.device, self.chunk = torch.device(device), chunk

    def t(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(self.device)

    def neglabel(self, image: torch.Tensor, pos: torch.Tensor, grouped: torch.Tensor, g: int) -> torch.Tensor:
        out = []
        for x in image.split(self.chunk):
            lse_id = torch.logsumexp(100 * x @ pos.T, dim=1)
            lse_neg = torch.logsumexp((100 * x @ grouped.T).view(len(x), g, -1), dim=2)
            out.append(torch.sigmoid(lse_id[:, None] - lse_neg).mean(dim=1))
        return torch.cat(out)

    def top_pairs(self, image: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, k: int) -> tuple:
        pi, ni, nv = [], [], []
        for x in image.split(self.chunk):
            pi.append((x @ pos.T).topk(k, dim=1).indices)
            v, i = (100 * x @ neg.T).topk(k, dim=1)
            ni.append(i)
            nv.append(v)
        return torch.cat(pi), torch.cat(ni), torch.cat(nv)

    def multi_matching(self, image: torch.Tensor, pairs: torch.Tensor, index: torch.Tensor, v: torch.Tensor):
        out = []
        for x, idx, vv in zip(
            image.split(self.chunk), index.split(self.chunk), v.split(self.chunk), strict=True
        ):
            m = 100 * torch.einsum("nabd,nd->nab", pairs[idx], x)
            out.append(torch.sigmoid((m - vv[:, None, :]).amax(dim=(1, 2))))
        return torch.cat(out)

    def dnm(self, image: torch.Tensor, pos: torch.Tensor, grouped: torch.Tensor, g: int, tau: float):
        q, k, out = grouped.shape[0] // g, pos.shape[0], []
        base = 1.0 - q * (1.0 - tau) / (tau * k)
        for x in image.split(self.chunk):
            lse_id = torch.logsumexp(100 * x @ pos.T, dim=1)
            lse_neg = torch.logsumexp((100 * x @ grouped.T).view(len(x), g, q), dim=2)
            ratio = torch.exp(lse_neg - lse_id[:, None]) / tau
            out.append((1.0 / (k * (base + ratio))).mean(dim=1))
        return torch.cat(out)


def run_numpy(image: np.ndarray, pos: np.ndarray, neg: np.ndarray, args: argparse.Namespace) -> dict:
    res: dict[str, Any] = {}
    g = args.groups
    if "neglabel" in args.methods:
        perm = scores.grouping_permutation(len(neg), g, 0)
        timed(res, "neglabel_s", lambda: scores.neglabel(image, pos, neg, n_groups=g, permutation=perm))
    if "s_mm" in args.methods:
        pi, ni, nv = timed(res, "top_pairs_s", lambda: scores.top_pairs(image, pos, neg))
        pairs, index = timed(res, "distinct_pairs_s", lambda: scores.distinct_pairs(pi, ni))
        pair_emb = unit(np.random.default_rng(1), len(pairs), image.shape[1])
        timed(res, "multi_matching_s", lambda: scores.multi_matching(image, pair_emb, index, nv))
        res["distinct_pairs"] = len(pairs)
    if "dnm" in args.methods:
        dperm = scores.dnm_permutations(len(neg), g, 1)[0]
        timed(res, "dnm_s", lambda: scores.dnm(image, pos, neg, permutation=dperm, n_groups=g))
    return res


def run_torch(image: np.ndarray, pos: np.ndarray, neg: np.ndarray, args: argparse.Namespace) -> dict:
    ts, g = TorchScores(args.device, args.chunk), args.groups
    sync = torch.cuda.synchronize if ts.device.type == "cuda" else (lambda: None)
    res: dict[str, Any] = {}
    x, p, n = timed(res, "transfer_s", lambda: (ts.t(image), ts.t(pos), ts.t(neg)), sync)
    grouped = n[torch.from_numpy(scores.grouping_permutation(len(neg), g, 0)).to(ts.device)]
    ts.neglabel(x[:64], p, grouped, g)  # warm-up (kernels, allocator)
    timed(res, "neglabel_s", lambda: ts.neglabel(x, p, grouped, g), sync)
    if args.methods != METHODS:  # a subset (the scaling runs): no S_MM, no comparison
        if "dnm" in args.methods:
            timed(res, "dnm_s", lambda: ts.dnm(x, p, grouped, g, 0.5), sync)
        return res
    pi, ni, nv = timed(res, "top_pairs_s", lambda: ts.top_pairs(x, p, n, 5), sync)
    pairs, index = timed(
        res, "distinct_pairs_s", lambda: scores.distinct_pairs(pi.cpu().numpy(), ni.cpu().numpy()), sync
    )
    pair_emb = ts.t(unit(np.random.default_rng(1), len(pairs), image.shape[1]))
    idx = torch.from_numpy(index).to(ts.device)
    timed(res, "multi_matching_s", lambda: ts.multi_matching(x, pair_emb, idx, nv), sync)
    timed(res, "dnm_s", lambda: ts.dnm(x, p, grouped, g, 0.5), sync)
    res["distinct_pairs"] = len(pairs)
    # Agreement with the stage's numpy code on the first rows (random data saturates S_NL near 1,
    # so DNM and S_MM are the informative comparisons).
    head = slice(0, min(2048, len(image)))
    want = {
        "neglabel": scores.neglabel(image[head], pos, neg, n_groups=args.groups, seed=0),
        "dnm": scores.dnm(image[head], pos, neg, permutation=None, n_groups=args.groups),
        "s_mm": scores.multi_matching(
            image[head], pair_emb.cpu().numpy(), index[head], nv[head].cpu().numpy()
        ),
    }
    natural = torch.arange(len(grouped), device=ts.device)
    got = {
        "neglabel": ts.neglabel(x[head], p, grouped, args.groups),
        "dnm": ts.dnm(x[head], p, n[natural], args.groups, 0.5),
        "s_mm": ts.multi_matching(x[head], pair_emb, idx[head], nv[head]),
    }
    res["max_rel_diff_vs_numpy"] = {
        k: float(np.abs(want[k] - got[k].cpu().numpy()).max() / np.abs(want[k]).max()) for k in want
    }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=111_865)
    ap.add_argument("--id-labels", type=int, default=1_000)
    ap.add_argument("--negatives", type=int, default=6_370)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--backend", choices=("numpy", "torch"), default="numpy")
    ap.add_argument("--device", default="cpu", help="torch backend: cpu or cuda")
    ap.add_argument("--chunk", type=int, default=scores.CHUNK_SIZE)
    ap.add_argument(
        "--methods",
        type=lambda v: tuple(v.split(",")),
        default=METHODS,
        help="a subset of neglabel,s_mm,dnm (S_MM's distinct pairs grow with the images)",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    image, pos = unit(rng, args.images, args.dim), unit(rng, args.id_labels, args.dim)
    neg = unit(rng, args.negatives, args.dim)
    res = (run_numpy if args.backend == "numpy" else run_torch)(image, pos, neg, args)
    stages = ("neglabel_s", "top_pairs_s", "distinct_pairs_s", "multi_matching_s", "dnm_s")
    res["total_s"] = sum(res.get(k, 0.0) for k in stages)
    if "distinct_pairs" in res:
        res["pairs_without_dedup"] = args.images * 25
        res["pair_texts_to_encode"] = 8 * res["distinct_pairs"]  # 8 noun templates each
    res["images_per_s"] = args.images / res["total_s"]
    res["setup"] = {
        **{k: v for k, v in vars(args).items() if k != "out"},
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "machine": platform.processor(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
    }  # fmt: skip
    text = json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
