"""The embed-images decode task: the Ray task that reads and decodes a block of image rows, on the
CPU with Pillow (clip.preprocess) or, with images.decode = "gpu", reading JPEG bytes for the device
decoder (clip.device_decode). It sits above both, so neither imports the other."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from negrefine_ray.clip.device_decode import encode_rows
from negrefine_ray.clip.preprocess import (
    CropSpec,
    DecodeOptions,
    listed_failure,
    pixels_column,
    read_and_decode,
)


def decode_rows(
    rows: dict[str, np.ndarray], specs: Mapping[str, CropSpec], options: DecodeOptions
) -> dict[str, Any]:
    """Ray task: columns row, root, path (and optionally the listing's status) -> row, status, detail
    and per variant of `specs` its crops, `pixels@<variant>` (N, H, W, 3) uint8, zeros for failures.
    Each file is read and decoded once. A row whose listing status is a failure kind is passed on.
    With options.decode "gpu" the task reads bytes for the device decoder instead (device_decode's
    `encode_rows`: columns row, status, detail, path, encoded)."""
    if options.decode == "gpu":
        return encode_rows(rows, specs, options)
    n = len(rows["path"])
    pixels = {v: np.zeros((n, *spec.out_size, 3), dtype=np.uint8) for v, spec in specs.items()}
    listed = rows["status"] if "status" in rows else np.full(n, "")
    statuses, details = [], []
    for i, (root, path, known) in enumerate(zip(rows["root"], rows["path"], listed, strict=True)):
        if known:
            crops, (status, detail) = None, listed_failure(str(known))
        else:
            crops, status, detail = read_and_decode(str(root), str(path), tuple(specs.values()), options)
        for variant, crop in zip(specs, crops or (), strict=False):
            pixels[variant][i] = crop
        statuses.append(status)
        details.append(detail)
    out = {"row": rows["row"], "status": np.array(statuses), "detail": np.array(details)}
    return {**out, **{pixels_column(v): p for v, p in pixels.items()}}
