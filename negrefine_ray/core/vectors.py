"""Row-vector helpers over numpy alone, for modules that must not load torch (the filter stage)."""

from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows (last axis) scaled to unit length, in x's dtype; the same 1e-12 floor as torch's normalize."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
