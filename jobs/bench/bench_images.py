"""Benchmark of the image side: decode+preprocess per CPU core (pil, pil-draft, and one
decode cut into the default methods' two preprocessings), CLIP image embedding throughput per batch
size and precision, end to end through the DataLoader driver for images.preprocess "shared" (one
embedding per image) and "per-method" (clip + torchvision: two), and the effect of pil-draft on
crops and embeddings. Runs without Ray (torch + open_clip + pillow only).

  python jobs/bench/bench_images.py --device cuda --n-images 4096 --workers 8,16 --out bench.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image, features

try:
    import negrefine_ray  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from negrefine_ray.clip.image import ImageEmbedder, embed_crops, embed_files_local
from negrefine_ray.clip.model import resolve_device
from negrefine_ray.clip.preprocess import (
    CropSpec,
    DecodeOptions,
    crop_spec_for_model,
    decode_crop,
    decode_crops,
    variant_specs,
)
from negrefine_ray.config import ModelConfig

PIL_OPTS, DRAFT_OPTS = DecodeOptions(), DecodeOptions(decode="pil-draft")


def textured(rng: np.random.Generator, size: tuple[int, int], detail: float) -> Image.Image:
    """Multi-scale noise (smooth colour fields plus fine grain): JPEG sizes like natural photos."""
    w, h = size
    img = np.full((h, w, 3), 128.0)
    for scale, weight in ((64, 1.0), (16, 0.6), (4, 0.35), (1, detail)):
        grid = rng.normal(0, 40, (max(1, h // scale), max(1, w // scale), 3)) + 128
        field = Image.fromarray(grid.clip(0, 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        img += (np.asarray(field, dtype=np.float64) - 128) * weight
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def calibrate(size: tuple[int, int], target_kb: float, quality: int) -> float:
    """The fine-grain weight whose JPEGs average `target_kb` (bisection on a few probe images)."""
    lo, hi = 0.0, 2.0
    for _ in range(8):
        mid = (lo + hi) / 2
        rng = np.random.default_rng(0)
        kb = np.mean([len(jpeg(textured(rng, size, mid), quality)) for _ in range(3)]) / 1000
        lo, hi = (mid, hi) if kb < target_kb else (lo, mid)
    return (lo + hi) / 2


def make_jpegs(folder: Path, n: int, size: tuple[int, int], args: argparse.Namespace) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    target = args.target_kb * size[0] * size[1] / (500 * 375)  # same bytes per pixel as ImageNet-like
    detail, rng = calibrate(size, target, args.quality), np.random.default_rng(1)
    sizes = []
    for i in range(n):
        data = jpeg(textured(rng, size, detail), args.quality)
        (folder / f"{i:06d}.jpg").write_bytes(data)
        sizes.append(len(data))
    return {"n": n, "size": f"{size[0]}x{size[1]}", "mean_kb": round(float(np.mean(sizes)) / 1000, 1)}


def rate(fn: Callable[[], int], min_seconds: float) -> float:
    """Items per second of repeated `fn()` calls (each returns its item count), after one warm-up."""
    fn()
    done, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < min_seconds or done == 0:
        done += fn()
    return done / elapsed


# images.preprocess -> the variants the default score methods need (stages.embed_images.image_variants)
SETTINGS = {"shared": ("clip",), "per-method": ("clip", "torchvision")}


def bench_decode(blobs: list[bytes], spec: CropSpec, seconds: float) -> dict[str, float]:
    """Single-process images/s (= per CPU core): full decode path per option, and its parts."""

    def run(options: DecodeOptions) -> Callable[[], int]:
        return lambda: sum(decode_crop(b, spec, options)[1] == "ok" for b in blobs)

    per_method = list(variant_specs(spec, SETTINGS["per-method"]).values())

    def run_per_method() -> int:  # one decode, one crop per variant
        return sum(decode_crops(b, per_method, PIL_OPTS)[1] == "ok" for b in blobs)

    def decode_only() -> int:
        for b in blobs:
            Image.open(io.BytesIO(b)).convert("RGB")
        return len(blobs)

    transform = open_clip.image_transform(
        spec.out_size[0], is_train=False, mean=spec.mean, std=spec.std, interpolation=spec.interpolation
    )

    def reference_float() -> int:  # what the reference loaders do per image: float32 CHW on the CPU
        for b in blobs:
            transform(Image.open(io.BytesIO(b)).convert("RGB"))
        return len(blobs)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, as in a DataLoader worker (which torch also limits to 1 thread)
    try:
        return {
            "pil": round(rate(run(PIL_OPTS), seconds), 1),
            "pil-draft": round(rate(run(DRAFT_OPTS), seconds), 1),
            "pil_per_method_two_crops": round(rate(run_per_method, seconds), 1),
            "decode_only_pil": round(rate(decode_only, seconds), 1),
            "open_clip_transform_float": round(rate(reference_float, seconds), 1),
        }
    finally:
        torch.set_num_threads(threads)


def crops(blobs: list[bytes], spec: CropSpec, options: DecodeOptions) -> np.ndarray:
    out = []
    for b in blobs:
        crop, status, detail = decode_crop(b, spec, options)
        if crop is None:
            raise RuntimeError(f"a generated JPEG failed to decode ({status}: {detail})")
        out.append(crop)
    return np.stack(out)


def draft_effect(blobs: list[bytes], spec: CropSpec, embedder: ImageEmbedder) -> dict[str, float]:
    """Pixel and embedding differences between pil and pil-draft crops of the same files."""
    full, fast = crops(blobs, spec, PIL_OPTS), crops(blobs, spec, DRAFT_OPTS)
    diff = np.abs(full.astype(np.int16) - fast.astype(np.int16))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    ok = np.array(["ok"] * len(blobs))
    emb_full = embedder({"pixels@clip": full, "status": ok})["embedding@clip"]
    emb_fast = embedder({"pixels@clip": fast, "status": ok})["embedding@clip"]
    cos = np.sum(emb_full * emb_fast, axis=1)
    return {
        "drafted_fraction": float(np.mean(diff.reshape(len(blobs), -1).max(axis=1) > 0)),
        "mean_abs_pixel_diff": round(float(diff.mean()), 3),
        "max_abs_pixel_diff": int(diff.max()),
        "psnr_db": round(10 * np.log10(255**2 / mse), 2) if mse else float("inf"),
        "mean_cosine_random_init": round(float(cos.mean()), 6),
        "min_cosine_random_init": round(float(cos.min()), 6),
    }


def bench_embed(args: argparse.Namespace, spec: CropSpec, device: str) -> list[dict[str, Any]]:
    """Embedding images/s per (precision, batch): host uint8 -> embeddings through ImageEmbedder
    (transfer + normalise + encode + copy back), and device-resident encode only."""
    rows = []
    h, w = spec.out_size
    for precision in args.precisions:
        embedder = ImageEmbedder(model_config(args, precision), {"clip": spec}, device=device)
        for batch in args.batch_sizes:
            pixels = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
            host = {"pixels@clip": pixels, "status": np.array(["ok"] * batch)}
            on_device = torch.from_numpy(pixels).to(embedder.device)

            def from_host(host: dict[str, np.ndarray] = host, n: int = batch, e: Any = embedder) -> int:
                e(host)
                return n

            def resident(x: torch.Tensor = on_device, n: int = batch, e: Any = embedder) -> int:
                embed_crops(e.model, x, spec, e.precision)
                if device == "cuda":
                    torch.cuda.synchronize()
                return n

            rows.append(
                {"precision": embedder.precision, "batch": batch,
                 "from_host_img_s": round(rate(from_host, args.seconds), 1),
                 "device_resident_img_s": round(rate(resident, args.seconds), 1)}
            )  # fmt: skip
            print(f"  embed {rows[-1]}", file=sys.stderr)
    return rows


def bench_end_to_end(args: argparse.Namespace, folder: Path, device: str) -> list[dict[str, Any]]:
    files = [(str(folder), p.name) for p in sorted(folder.iterdir())]
    spec = crop_spec_for_model(ModelConfig(**model_dict(args)))
    rows = []
    for setting, variants in SETTINGS.items():
        embedder = ImageEmbedder(
            model_config(args, args.e2e_precision), variant_specs(spec, variants), device=device
        )
        embed_files_local(files[: args.e2e_batch], embedder, PIL_OPTS, workers=0, batch_size=args.e2e_batch)
        for decode, options in (("pil", PIL_OPTS), ("pil-draft", DRAFT_OPTS)):
            for workers in args.workers:
                t0 = time.perf_counter()
                out = embed_files_local(files, embedder, options, workers=workers, batch_size=args.e2e_batch)
                seconds = time.perf_counter() - t0
                rows.append(
                    {"preprocess": setting, "variants": len(variants), "decode": decode, "workers": workers,
                     "batch": args.e2e_batch, "precision": embedder.precision, "images": len(files),
                     "ok": int((out["clip"].status == "ok").sum()), "img_s": round(len(files) / seconds, 1)}
                )  # fmt: skip
                print(f"  e2e {rows[-1]}", file=sys.stderr)
    return rows


def model_dict(args: argparse.Namespace) -> dict[str, Any]:
    return {"arch": args.arch, "pretrained": "none", "init_seed": 0}


def model_config(args: argparse.Namespace, precision: str) -> ModelConfig:
    return ModelConfig(**model_dict(args), precision=precision)  # type: ignore[arg-type]


def markdown(report: dict[str, Any]) -> str:
    lines = [f"### bench_images on {report['machine']['device_name']} ({report['machine']['cpus']} CPUs)", ""]
    for name, d in report["decode_per_core"].items():
        lines.append(
            f"- decode+preprocess per core, {name}: " + ", ".join(f"{k} {v}/s" for k, v in d.items())
        )
    for name, d in report["draft_effect"].items():
        lines.append(f"- pil-draft effect, {name}: " + ", ".join(f"{k} {v}" for k, v in d.items()))
    lines += [
        "",
        "| precision | batch | img/s from host uint8 | img/s device-resident |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['precision']} | {r['batch']} | {r['from_host_img_s']} | {r['device_resident_img_s']} |"
              for r in report["embed"]]  # fmt: skip
    lines += ["", "| images.preprocess | decode | workers | batch | precision | img/s end to end |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    keys = ("preprocess", "decode", "workers", "batch", "precision", "img_s")
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in report["end_to_end"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    size = lambda s: tuple(int(x) for x in s.lower().split("x"))  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="ViT-B-16", help="open_clip architecture (random init)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--n-images", type=int, default=256, help="generated ImageNet-like JPEGs")
    p.add_argument("--size", type=size, default=(500, 375), help="WxH of the ImageNet-like JPEGs")
    p.add_argument("--large-size", type=size, default=(1024, 768), help="WxH where pil-draft applies")
    p.add_argument("--n-large", type=int, default=64, help="large JPEGs for the draft measurements")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--target-kb", type=float, default=110.0, help="mean JPEG size at 500x375")
    p.add_argument("--batch-sizes", type=ints, default=None, help="default: 64,256,1024 (cuda), 8,32 (cpu)")
    p.add_argument("--precisions", type=lambda s: s.split(","), default=None, help="default: fp16,bf16,fp32")
    p.add_argument("--workers", type=ints, default=[0, 2], help="DataLoader workers for end to end")
    p.add_argument("--e2e-batch", type=int, default=256)
    p.add_argument("--e2e-precision", default="fp16")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum time per throughput figure")
    p.add_argument("--data-dir", default="", help="keep generated JPEGs here (default: a temp folder)")
    p.add_argument("--out", default="", help="write the JSON report here too")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    cuda = device == "cuda"
    args.batch_sizes = args.batch_sizes or ([64, 256, 1024] if cuda else [8, 32])
    args.precisions = args.precisions or (["fp16", "bf16", "fp32"] if cuda else ["fp32"])
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; autocast covers fp16/bf16
    spec = crop_spec_for_model(ModelConfig(**model_dict(args)))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_dir or tmp)
        data = {
            "imagenet_like": make_jpegs(root / "imagenet_like", args.n_images, args.size, args),
            "large": make_jpegs(root / "large", args.n_large, args.large_size, args),
        }
        print(f"generated {data}", file=sys.stderr)
        blobs = {k: [p.read_bytes() for p in sorted((root / k).iterdir())][:128] for k in data}
        probe = ImageEmbedder(model_config(args, args.e2e_precision), {"clip": spec}, device=device)
        report: dict[str, Any] = {
            "machine": {
                "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
                "cpus": os.cpu_count(), "torch": torch.__version__, "pillow": Image.__version__,
                "libjpeg_turbo": features.check_feature("libjpeg_turbo"), "arch": args.arch,
            },
            "data": data,
            "crop": spec.describe(),
            "decode_per_core": {k: bench_decode(b, spec, args.seconds) for k, b in blobs.items()},
            "draft_effect": {k: draft_effect(b, spec, probe) for k, b in blobs.items()},
            "embed": bench_embed(args, spec, device),
            "end_to_end": bench_end_to_end(args, root / "imagenet_like", device),
        }  # fmt: skip
    print(json.dumps(report, indent=2))
    print(markdown(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
