"""Generated image datasets for the smoke job and demos: an ImageFolder-style ID set, a flat OOD
folder and one corrupt file (which the pipeline must record and count, not crash on), and a small
prototype image per ImageNet class for InterNeg (folders c0000..c0999, in label order). The images are
textures, not photographs: metrics computed on them with any CLIP are meaningless."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ID_CLASSES = ("tench", "goldfish", "great white shark")


def _texture(rng: np.random.Generator, size: tuple[int, int], tint: np.ndarray) -> Image.Image:
    w, h = size
    coarse = rng.normal(0, 60, (h // 16 + 1, w // 16 + 1, 3))
    field = np.kron(coarse, np.ones((16, 16, 1)))[:h, :w] + rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(field + tint, 0, 255).astype(np.uint8))


def make_demo_images(
    root: Path, *, per_class: int = 8, n_ood: int = 24, prototype_classes: int = 1000, seed: int = 0
) -> Path:
    """Write `root/id/<class>/*.jpg`, `root/ood/*.jpg` (plus `root/ood/broken.jpg`, a truncated
    JPEG) and `root/prototype/c<k>/p.jpg`, one 48x48 texture for each of `prototype_classes` labels;
    replaces an existing `root`. Returns `root`."""
    rng = np.random.default_rng(seed)
    if root.exists():
        shutil.rmtree(root)
    for k, name in enumerate(ID_CLASSES):
        folder = root / "id" / name
        folder.mkdir(parents=True)
        tint = np.array([80 + 60 * k, 120, 200 - 60 * k], dtype=float)
        for i in range(per_class):
            size = (int(rng.integers(240, 500)), int(rng.integers(240, 400)))
            _texture(rng, size, tint).save(folder / f"{name.replace(' ', '_')}_{i:03d}.jpg", quality=90)
    ood = root / "ood"
    ood.mkdir(parents=True)
    for i in range(n_ood):
        size = (int(rng.integers(240, 500)), int(rng.integers(240, 400)))
        _texture(rng, size, rng.uniform(40, 220, 3)).save(ood / f"ood_{i:03d}.jpg", quality=90)
    good = (ood / "ood_000.jpg").read_bytes()
    (ood / "broken.jpg").write_bytes(good[: len(good) // 3])
    for k in range(prototype_classes):
        folder = root / "prototype" / f"c{k:04d}"
        folder.mkdir(parents=True)
        _texture(rng, (48, 48), rng.uniform(40, 220, 3)).save(folder / "p.jpg", quality=90)
    return root
