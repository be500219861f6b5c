"""Benchmark of the text side: CLIP text-tower throughput per batch size and precision,
the shortest-exact-sequence encoder against 77-token padding, and NegRefine's whole text workload
(1,000 ID labels x 8 templates, ~57k nouns x 8, ~9.4k adjective phrases x 4 = ~503k texts).

Runs without Ray or WordNet (torch + open_clip only), on random weights of the real shape, with
synthetic candidate words whose token lengths follow ImageNet-style names:

  python jobs/bench/bench_text.py --arch ViT-B-16 --device cuda --precision fp16 --out text.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    import negrefine_ray  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from negrefine_ray.clip.model import create_clip, get_tokenizer
from negrefine_ray.clip.text import encode_texts
from negrefine_ray.config import ModelConfig
from negrefine_ray.core.templates import apply_templates, csp_phrases, get_templates


def synthetic_words(n: int, seed: int) -> list[str]:
    """n distinct one- to three-word strings drawn from the vocabulary of ImageNet's class names."""
    vocab = sorted(
        {w.lower() for name in IMAGENET_CLASSNAMES for w in name.replace("/", " ").split() if w.isalpha()}
    )
    rng = random.Random(seed)
    words: dict[str, None] = {}
    while len(words) < n:
        words.setdefault(" ".join(rng.sample(vocab, rng.choice((1, 1, 2, 2, 3)))))
    return list(words)


def negrefine_workload(n_nouns: int, n_adjs: int) -> list[str]:
    nouns, adjs = synthetic_words(n_nouns, 0), synthetic_words(n_adjs, 1)
    return [
        *apply_templates(list(IMAGENET_CLASSNAMES), get_templates("csp-noun8")),
        *apply_templates(nouns, get_templates("csp-noun8")),
        *apply_templates(csp_phrases(adjs, 0), get_templates("csp-adj4")),
    ]


def timed(fn: Any, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--batch-sizes", default="256,1024,4096")
    parser.add_argument("--sweep-texts", type=int, default=32768, help="texts per batch-size measurement")
    parser.add_argument("--nouns", type=int, default=57_000)
    parser.add_argument("--adjectives", type=int, default=9_400)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    model, _, _ = create_clip(ModelConfig(arch=args.arch, pretrained="none"), args.device)
    tokenizer = get_tokenizer(args.arch)
    workload = negrefine_workload(args.nouns, args.adjectives)
    sample = workload[: args.sweep_texts]
    results: dict[str, Any] = {
        "arch": args.arch, "device": args.device, "precision": args.precision,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "sweep": [],
    }  # fmt: skip

    def encode(texts: list[str], batch: int, shortest: bool = True) -> None:
        encode_texts(model, tokenizer, texts, batch_size=batch, device=args.device, precision=args.precision,
                     shortest=shortest)  # fmt: skip

    encode(sample[:2048], 1024)  # warm-up (CUDA context, kernels)
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        seconds = timed(lambda b=batch: encode(sample, b), args.device)
        padded = timed(lambda b=batch: encode(sample, b, shortest=False), args.device)
        row = {
            "batch": batch,
            "texts_per_s": len(sample) / seconds,
            "padded77_texts_per_s": len(sample) / padded,
        }
        results["sweep"].append(row)
        print(json.dumps(row), flush=True)
    best = max(results["sweep"], key=lambda r: r["texts_per_s"])["batch"]
    seconds = timed(lambda: encode(workload, best), args.device)
    results["negrefine_workload"] = {"texts": len(workload), "batch": best, "seconds": seconds,
                                     "texts_per_s": len(workload) / seconds}  # fmt: skip
    print(json.dumps(results["negrefine_workload"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
