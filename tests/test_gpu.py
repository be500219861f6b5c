"""GPU-path checks (issue 15): CLIP image and text embeddings under fp16/bf16 autocast against fp32,
NegLabel's grouping permutation drawn on CUDA against the references' own seeding in a fresh
process, and the score stage's per-image scores on CUDA (core.scores_torch through scoring.rows)
against its numpy scores. The `gpu` tests skip without CUDA; one CPU test runs the same helpers at tiny
shapes so they stay exercised. jobs/bench/gpu_suite.sh runs this file on a GPU machine and reads the
figures the tests record (NEGREFINE_GPU_FIGURES=path.json).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from negrefine_ray.clip.image import embed_crops
from negrefine_ray.clip.model import create_clip, get_tokenizer
from negrefine_ray.clip.preprocess import crop_spec
from negrefine_ray.clip.text import encode_texts
from negrefine_ray.config import ModelConfig
from negrefine_ray.core import scores
from negrefine_ray.core.scores_torch import TOLERANCE, TWINS
from negrefine_ray.core.templates import apply_templates, get_templates
from negrefine_ray.scoring.rows import Rows

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")
COSINE_MIN = 0.999  # fp16/bf16 embeddings against fp32, per row
SCORE_TOL = {"float64": 1e-9, "float32": TOLERANCE}  # max |CUDA - numpy| of a score
# (M negatives, G groups): NegLabel's 10,000 / 100, NegRefine's 6,370 / 100, an M mod G remainder.
PERMUTATION_SHAPES = ((10_000, 100), (6_370, 100), (10_499, 100))


@pytest.fixture(scope="session")
def figures() -> Iterator[dict[str, Any]]:
    """Measured values by figure name, written to $NEGREFINE_GPU_FIGURES at the end of the session."""
    found: dict[str, Any] = {}
    yield found
    if path := os.environ.get("NEGREFINE_GPU_FIGURES"):
        Path(path).write_text(json.dumps(found, indent=2) + "\n")


@pytest.fixture(scope="module")
def vit_b16() -> tuple[torch.nn.Module, Any]:
    """ViT-B-16, random weights (init_seed 0), fp32 on CUDA, and its open_clip preprocessing."""
    model, preprocess, _ = create_clip(ModelConfig(arch="ViT-B-16", pretrained="none", init_seed=0), "cuda")
    return model, preprocess


class _TrueFp32:
    """TF32 off for matmuls and convolutions (the patch embedding), so "fp32" means fp32."""

    def __enter__(self) -> None:
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a.astype(np.float64) * b, axis=1)


def image_cosines(model: torch.nn.Module, preprocess: Any, precision: str, n: int) -> np.ndarray:
    """(n,) cosines between `precision` and fp32 embeddings of n generated crops on the model's device."""
    spec = crop_spec(preprocess)
    device = next(model.parameters()).device
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (n, 3, 14, 14), dtype=np.uint8)  # smooth colour fields + grain
    smooth = torch.nn.functional.interpolate(
        torch.from_numpy(coarse).float(), size=spec.out_size, mode="bilinear"
    )
    grain = torch.from_numpy(rng.normal(0, 12, (n, 3, *spec.out_size)).astype(np.float32))
    pixels = (smooth + grain).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().to(device)
    with _TrueFp32():
        want = embed_crops(model, pixels, spec, "fp32").cpu().numpy()
    got = embed_crops(model, pixels, spec, precision).cpu().numpy()
    return _row_cosines(want, got)


def text_cosines(model: torch.nn.Module, arch: str, precision: str, n_labels: int) -> np.ndarray:
    """Cosines between `precision` and fp32 text features of ImageNet-style names x 8 CSP templates."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    device = str(next(model.parameters()).device.type)
    texts = apply_templates(list(IMAGENET_CLASSNAMES[:n_labels]), get_templates("csp-noun8"))
    tokenizer = get_tokenizer(arch)

    def run(precision: str) -> np.ndarray:
        return encode_texts(model, tokenizer, texts, batch_size=512, device=device, precision=precision)

    with _TrueFp32():
        want = run("fp32")
    return _row_cosines(want, run(precision))


def score_differences(device: str, dtype: str, shape: tuple[int, int, int]) -> dict[str, float]:
    """max |score stage on `device` - numpy| per score: the stage's own per-image path
    (scoring.rows.Rows with that device: core.scores_torch's twins on CUDA; on the CPU the twins
    are called directly) against core.scores, inputs in `dtype`.

    `shape` = (images, ID labels, negatives), D = 512, G = 100. With float64 inputs both sides
    compute in float64; with float32 the products round differently in cuBLAS and numpy's BLAS."""
    n, k, m = shape
    rng = np.random.default_rng(0)
    image, pos, neg = (_unit(rng, rows).astype(dtype) for rows in (n, k, m))
    perm = scores.grouping_permutation(m, 100, 0)
    calls = {
        "mcm": (scores.mcm, {"id_text": pos}),
        "neglabel": (
            scores.neglabel,
            {"id_text": pos, "neg_text": neg, "n_groups": 100, "permutation": perm},
        ),
        "dnm": (scores.dnm, {"id_text": pos, "neg_text": neg, "n_groups": 100, "permutation": perm}),
    }
    rows = Rows(device=device)
    out = {}
    for name, (fn, kwargs) in calls.items():
        got = rows.map(fn, image, **kwargs) if device != "cpu" else TWINS[fn](image, device="cpu", **kwargs)
        out[name] = float(np.abs(got - fn(image, **kwargs)).max())
    return out


def _unit(rng: np.random.Generator, rows: int) -> np.ndarray:
    x = rng.standard_normal((rows, 512))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_permutations(shapes: tuple[tuple[int, int], ...], device: str) -> list[list[int]]:
    """The references' draw in a fresh process: `torch.manual_seed(0); torch.randperm(M', device)`."""
    kept = [m - m % g for m, g in shapes]
    code = (
        "import json, sys, torch\n"
        "out = []\n"
        "for n in json.loads(sys.argv[1]):\n"
        "    torch.manual_seed(0)\n"
        "    out.append(torch.randperm(n, device=sys.argv[2]).tolist())\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kept), device], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_image_embeddings_at_half_precision_match_fp32(
    vit_b16: tuple[torch.nn.Module, Any], precision: str, figures: dict[str, Any]
) -> None:
    cos = image_cosines(*vit_b16, precision, n=256)
    figures[f"image_cosine_{precision}"] = float(cos.min())
    assert cos.min() >= COSINE_MIN, f"min cosine {cos.min():.6f} of ViT-B-16 {precision} image embeddings"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_text_embeddings_at_half_precision_match_fp32(
    vit_b16: tuple[torch.nn.Module, Any], precision: str, figures: dict[str, Any]
) -> None:
    cos = text_cosines(vit_b16[0], "ViT-B-16", precision, n_labels=256)
    figures[f"text_cosine_{precision}"] = float(cos.min())
    assert cos.min() >= COSINE_MIN, f"min cosine {cos.min():.6f} of ViT-B-16 {precision} text features"


@pytest.mark.gpu
@needs_cuda
def test_cuda_grouping_permutation_is_the_references_stream(figures: dict[str, Any]) -> None:
    before = torch.random.get_rng_state(), torch.cuda.get_rng_state()
    got = [scores.grouping_permutation(m, g, seed=0, device="cuda").tolist() for m, g in PERMUTATION_SHAPES]
    after = torch.random.get_rng_state(), torch.cuda.get_rng_state()
    want = reference_permutations(PERMUTATION_SHAPES, "cuda")
    equal = [a == b for a, b in zip(got, want, strict=True)]
    figures["cuda_permutation_equal"] = f"{sum(equal)}/{len(equal)}"
    figures["cuda_permutation_differs_from_cpu"] = [
        g != scores.grouping_permutation(m, n, seed=0).tolist()
        for g, (m, n) in zip(got, PERMUTATION_SHAPES, strict=True)
    ]
    assert all(equal), f"CUDA grouping permutations equal to a fresh process's draw: {equal}"
    assert all(torch.equal(b, a) for b, a in zip(before, after, strict=True)), (
        "the caller's RNG state changed"
    )


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_scores_on_cuda_match_the_cpu_scores(dtype: str, figures: dict[str, Any]) -> None:
    diffs = score_differences("cuda", dtype, (4096, 1000, 6370))
    figures[f"score_max_rel_diff_{dtype}"] = max(diffs.values())
    figures[f"score_diffs_{dtype}"] = diffs
    assert max(diffs.values()) <= SCORE_TOL[dtype], f"max |CUDA - CPU| per score ({dtype}): {diffs}"


def test_the_checks_run_on_cpu_at_tiny_shapes() -> None:
    """The helpers above on CPU (where fp16/bf16 resolve to fp32), so a GPU run meets no wiring error."""
    model, preprocess, _ = create_clip(ModelConfig(arch="nr-tiny-vit", pretrained="none"), "cpu")
    assert image_cosines(model, preprocess, "bf16", n=4).min() > 0.999999
    assert text_cosines(model, "nr-tiny-vit", "fp16", n_labels=3).min() > 0.999999
    for dtype in ("float64", "float32"):
        diffs = score_differences("cpu", dtype, (64, 20, 300))
        assert set(diffs) == {"mcm", "neglabel", "dnm"} and max(diffs.values()) <= SCORE_TOL[dtype], diffs
    shapes = ((300, 100), (250, 7))
    want = reference_permutations(shapes, "cpu")
    assert [scores.grouping_permutation(m, g, seed=0).tolist() for m, g in shapes] == want
