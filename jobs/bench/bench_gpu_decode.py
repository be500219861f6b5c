"""Benchmark and parity check of images.decode = "gpu": images/s of (a) the PIL
path (decode + resize + centre crop, one process) and (b) torchvision's decode_jpeg batched on the
device plus the device resize and crop (clip/device_decode.py), with the decode task's CPU share
(reading the header) per core; then how close (b) is to (a): mean / max pixel error of the crops and
the cosine of their embeddings through a random-init CLIP at its real shape. Generated ImageNet-like
JPEGs (500x375, ~110 KB, bench_images.textured). Exit status 1 when a variant's mean cosine is below
--target or a status differs. Runs without Ray (torch, torchvision, open_clip, pillow, numpy, and
negrefine_ray's own modules).

  python jobs/bench/bench_gpu_decode.py --device cuda --n-images 2048 --batch-size 256 --out decode.json
  python jobs/bench/bench_gpu_decode.py --device cpu --quick          # the wiring, in under a minute
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

try:
    import negrefine_ray  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from negrefine_ray.clip.device_decode import decode_files, decode_jpegs, device_crops, encode_row
from negrefine_ray.clip.image import embed_crops
from negrefine_ray.clip.model import create_clip
from negrefine_ray.clip.preprocess import (
    CropSpec,
    DecodeOptions,
    crop_spec_for_model,
    decode_crops,
    variant_specs,
)
from negrefine_ray.config import ModelConfig

GPU, PIL = DecodeOptions(decode="gpu"), DecodeOptions()
VARIANTS = ("clip", "torchvision")  # the default methods' preprocessings (images.preprocess "per-method")


def bench_images() -> ModuleType:
    """jobs/bench/bench_images.py (the folder is not a package), for its JPEG generator."""
    spec = importlib.util.spec_from_file_location("bench_images", Path(__file__).with_name("bench_images.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_jpegs(args: argparse.Namespace) -> list[bytes]:
    """--n-images distinct JPEGs of --size, portrait every fourth (as ImageNet mixes them), whose mean
    size is --target-kb at 500x375 (bench_images.calibrate)."""
    gen = bench_images()
    w, h = args.size
    target = args.target_kb * w * h / (500 * 375)
    detail, rng = gen.calibrate((w, h), target, args.quality), np.random.default_rng(1)
    shapes = [(h, w) if i % 4 == 3 else (w, h) for i in range(args.n_images)]
    return [gen.jpeg(gen.textured(rng, shape, detail), args.quality) for shape in shapes]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rate(fn: Callable[[], int], seconds: float, device: str) -> float:
    """Items/s of repeated `fn()` calls (each returns its item count), after one warm-up call."""
    fn()
    sync(device)
    done, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or done == 0:
        done += fn()
        sync(device)
    return done / elapsed


def throughput(blobs: list[bytes], specs: dict[str, CropSpec], args: argparse.Namespace) -> dict[str, float]:
    """Images/s: the PIL path per process, the device path per batch, and the decode task's share."""
    batches = [blobs[i : i + args.batch_size] for i in range(0, len(blobs), args.batch_size)]
    order, one = tuple(specs.values()), (specs["clip"],)
    keys = [str(i) for i in range(args.batch_size)]

    def pil(chosen: Sequence[CropSpec]) -> Callable[[], int]:
        return lambda: sum(decode_crops(b, chosen, PIL)[1] == "ok" for b in blobs)

    def device(chosen: Sequence[CropSpec], crop: bool = True) -> Callable[[], int]:
        def run() -> int:
            for batch in batches:
                images = [img for img in decode_jpegs(batch, args.device) if img is not None]
                for spec in chosen if crop else ():
                    device_crops(images, spec, keys[: len(images)])
            return len(blobs)

        return run

    def task_share() -> int:  # what a decode task does per JPEG under images.decode "gpu"
        return sum(encode_row(b, order, GPU)[1] == "jpeg" for b in blobs)

    threads = torch.get_num_threads()
    if args.device == "cpu":
        torch.set_num_threads(1)  # per core, as the PIL figure
    try:
        return {
            "pil_one_crop_img_s": round(rate(pil(one), args.seconds, "cpu"), 1),
            "pil_two_crops_img_s": round(rate(pil(order), args.seconds, "cpu"), 1),
            "device_decode_only_img_s": round(rate(device(one, crop=False), args.seconds, args.device), 1),
            "device_one_crop_img_s": round(rate(device(one), args.seconds, args.device), 1),
            "device_two_crops_img_s": round(rate(device(order), args.seconds, args.device), 1),
            "task_header_checks_per_core": round(rate(task_share, args.seconds, "cpu"), 1),
        }
    finally:
        torch.set_num_threads(threads)


def parity(blobs: list[bytes], specs: dict[str, CropSpec], args: argparse.Namespace) -> dict[str, Any]:
    """Per variant: pixel errors of the device crops against PIL's and the cosine of their embeddings
    (model.arch at random init, fp32); statuses must agree."""
    blobs = blobs[: args.parity_images]
    keys = [f"{i}.jpg" for i in range(len(blobs))]
    got, status, _ = decode_files(blobs, specs, GPU, device=args.device, keys=keys)
    want = [decode_crops(b, tuple(specs.values()), PIL, k) for b, k in zip(blobs, keys, strict=True)]
    model, _, _ = create_clip(ModelConfig(arch=args.arch, pretrained="none"), args.device)
    out: dict[str, Any] = {"statuses_agree": status.tolist() == [w[1] for w in want], "images": len(blobs)}
    for j, (variant, spec) in enumerate(specs.items()):
        ref = torch.from_numpy(np.stack([w[0][j] for w in want]))
        mine = got[variant].cpu()
        diff = (mine.to(torch.int16) - ref.to(torch.int16)).abs()
        embs = []
        for crops in (ref, mine):
            chunks = [crops[i : i + 32].to(args.device) for i in range(0, len(crops), 32)]
            embs.append(torch.cat([embed_crops(model, c, spec, "fp32").cpu() for c in chunks]))
        cos = (embs[0] * embs[1]).sum(dim=1)
        out[variant] = {
            "mean_abs_pixel_error": round(float(diff.float().mean()), 5),
            "max_abs_pixel_error": int(diff.max()),
            "values_off": round(float((diff > 0).float().mean()), 6),
            "mean_cosine": round(float(cos.mean()), 7),
            "min_cosine": round(float(cos.min()), 7),
        }
    out["passed"] = out["statuses_agree"] and all(out[v]["mean_cosine"] >= args.target for v in specs)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    size = lambda s: tuple(int(x) for x in s.lower().split("x"))  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    p.add_argument("--n-images", type=int, default=512, help="generated JPEGs timed")
    p.add_argument(
        "--batch-size", type=int, default=0, help="JPEGs per decode_jpeg call; 0: 256 cuda, 32 cpu"
    )
    p.add_argument("--parity-images", type=int, default=128, help="of them, compared with the PIL path")
    p.add_argument("--arch", default="ViT-B-16", help="open_clip architecture for the cosines (random init)")
    p.add_argument("--size", type=size, default=(500, 375), help="WxH of the JPEGs")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--target-kb", type=float, default=110.0, help="mean JPEG size at 500x375")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum time per throughput figure")
    p.add_argument("--target", type=float, default=0.9999, help="least mean embedding cosine per variant")
    p.add_argument("--quick", action="store_true", help="tiny shapes and model: a dry run in under a minute")
    p.add_argument("--out", default="", help="write the JSON report here too")
    args = p.parse_args(argv)
    if args.quick:
        args.n_images, args.parity_images, args.seconds = 32, 16, 0.3
        args.size, args.arch = (160, 120), "nr-tiny-vit"
    args.batch_size = args.batch_size or (256 if args.device == "cuda" else 32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for the cosines
    specs = variant_specs(crop_spec_for_model(ModelConfig(arch=args.arch, pretrained="none")), list(VARIANTS))
    t0 = time.perf_counter()
    blobs = make_jpegs(args)
    print(f"generated {len(blobs)} JPEGs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch_threads": 1 if args.device == "cpu" else torch.get_num_threads(),
        "images": {"n": len(blobs), "size": "x".join(map(str, args.size)),
                   "mean_kb": round(float(np.mean([len(b) for b in blobs])) / 1000, 1)},
        "arch": args.arch, "batch_size": args.batch_size, "target_mean_cosine": args.target,
        "throughput": throughput(blobs, specs, args),
        "parity": parity(blobs, specs, args),
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    t, par = report["throughput"], report["parity"]
    print(
        f"PIL {t['pil_one_crop_img_s']:,.0f} img/s per process (two crops {t['pil_two_crops_img_s']:,.0f}); "
        f"device ({args.device}, batch {args.batch_size}) {t['device_one_crop_img_s']:,.0f} img/s "
        f"(two crops {t['device_two_crops_img_s']:,.0f}, decode only {t['device_decode_only_img_s']:,.0f}); "
        f"decode task {t['task_header_checks_per_core']:,.0f} img/s per core",
        file=sys.stderr,
    )
    for v in specs:
        print(f"parity {v}: {par[v]}", file=sys.stderr)
    print("parity " + ("passed" if par["passed"] else "FAILED"), file=sys.stderr)
    return 0 if par["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
