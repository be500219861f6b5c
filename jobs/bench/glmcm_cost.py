"""GL-MCM's extra work in the image actors: the image tower's images/s with and without the local
score (core.glmcm through clip.image.embed_crops_local: the hook, the last block's value path over
every token, ln_post and the projection of every patch, and the softmax over 1,000 ID labels per
patch), on the same crops, alternating the two so machine noise hits both. Random-initialised
open_clip weights (the work does not depend on the values).

  python jobs/bench/glmcm_cost.py --out glmcm_cost.json                       # ViT-B-16 on the CPU
  python jobs/bench/glmcm_cost.py --device cuda --batch 256 --precision fp16   # the GPU suite's
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from negrefine_ray.clip.image import embed_crops, embed_crops_local
from negrefine_ray.clip.model import create_clip, resolve_precision
from negrefine_ray.clip.preprocess import crop_spec
from negrefine_ray.config import ModelConfig


def _rate(fn: Any, n: int, seconds: float, sync: Any) -> float:
    fn()  # warm-up
    sync()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        done += n
    sync()
    return done / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--labels", type=int, default=1000, help="ID labels (GL-MCM's softmax width)")
    ap.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating measurements of each")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    model, preprocess, _ = create_clip(ModelConfig(arch=args.arch, pretrained="none"), args.device)
    spec, precision = crop_spec(preprocess), resolve_precision(args.device, args.precision)
    gen = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (args.batch, *spec.out_size, 3), dtype=torch.uint8, generator=gen)
    crops = crops.to(args.device)
    dim = int(embed_crops(model, crops[:1], spec, precision).shape[1])
    text = torch.nn.functional.normalize(torch.randn(args.labels, dim, generator=gen), dim=-1).to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    plain = lambda: embed_crops(model, crops, spec, precision)  # noqa: E731
    local = lambda: embed_crops_local(model, crops, spec, precision, text, 1.0)  # noqa: E731
    rates: dict[str, list[float]] = {"without": [], "with_glmcm": []}
    for _ in range(args.rounds):
        rates["without"].append(_rate(plain, args.batch, args.seconds, sync))
        rates["with_glmcm"].append(_rate(local, args.batch, args.seconds, sync))
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {
        "arch": args.arch, "device": args.device, "precision": precision, "batch": args.batch,
        "labels": args.labels, "images_per_s": {k: round(v, 2) for k, v in med.items()},
        "runs": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "with_over_without": round(med["with_glmcm"] / med["without"], 3),
    }  # fmt: skip
    text_out = json.dumps(out, indent=1)
    print(text_out)
    if args.out:
        Path(args.out).write_text(text_out + "\n")
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
