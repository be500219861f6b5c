"""torch twins of core.scores' per-image scores (MCM, NegLabel's grouped score, DNM), for scoring on
a GPU (score.device). Same arguments, same checks and the same result, (N,) float64 numpy, by the
same arithmetic: each matrix product in the embeddings' own precision (float32), everything after
it (exponentials, log-sum-exps, sigmoids, means) in float64.

Only the products' rounding differs from numpy's: another BLAS (cuBLAS, or torch's on the CPU) sums
in another order. Scores agree with core.scores within 1e-5 (TOLERANCE; tests/test_scores.py on the
CPU, tests/test_gpu.py on CUDA); TF32 stays off, as torch's default for float32 products is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from negrefine_ray.core import scores
from negrefine_ray.core.scores import CHUNK_SIZE
from negrefine_ray.errors import NegRefineError

TOLERANCE = 1e-5  # largest |torch - numpy| difference of a score, stated and tested


def _tensor(x: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def _logits(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    return (image @ text.T).to(torch.float64) * scale


def mcm(
    image: np.ndarray,
    id_text: np.ndarray,
    temperature: float = 1.0,
    *,
    chunk_size: int = CHUNK_SIZE,
    device: str = "cuda",
) -> np.ndarray:
    """core.scores.mcm on `device`."""
    image = scores._embeddings(image, "image")
    id_text = scores._embeddings(id_text, "id_text", image.shape[1])
    scale = 1.0 / scores._positive(temperature, "temperature")
    x, p = _tensor(image, device), _tensor(id_text, device)
    out = torch.empty(image.shape[0], dtype=torch.float64, device=device)
    for rows in scores._chunks(image.shape[0], chunk_size):
        logits = _logits(x[rows], p, scale)
        out[rows] = 1.0 / torch.exp(logits - logits.amax(dim=1, keepdim=True)).sum(dim=1)
    return out.cpu().numpy()


def neglabel(
    image: np.ndarray,
    id_text: np.ndarray,
    neg_text: np.ndarray,
    *,
    n_groups: int = 100,
    seed: int = 0,
    logit_scale: float = 100.0,
    permutation: np.ndarray | None = None,
    chunk_size: int = CHUNK_SIZE,
    device: str = "cuda",
) -> np.ndarray:
    """core.scores.neglabel on `device`."""
    image = scores._embeddings(image, "image")
    id_text = scores._embeddings(id_text, "id_text", image.shape[1])
    neg_text = scores._embeddings(neg_text, "neg_text", image.shape[1])
    if permutation is None:
        permutation = scores.grouping_permutation(neg_text.shape[0], n_groups, seed)
    grouped = _tensor(scores._grouped_negatives(neg_text, n_groups, permutation), device)
    x, p = _tensor(image, device), _tensor(id_text, device)
    out = torch.empty(image.shape[0], dtype=torch.float64, device=device)
    for rows in scores._chunks(image.shape[0], chunk_size):
        lse_id = torch.logsumexp(_logits(x[rows], p, logit_scale), dim=1)
        neg = _logits(x[rows], grouped, logit_scale).reshape(len(lse_id), n_groups, -1)
        out[rows] = torch.sigmoid(lse_id[:, None] - torch.logsumexp(neg, dim=2)).mean(dim=1)
    return out.cpu().numpy()


def dnm(
    image: np.ndarray,
    id_text: np.ndarray,
    neg_text: np.ndarray,
    *,
    permutation: np.ndarray | None,
    n_groups: int = 100,
    temperature: float = 0.01,
    tau: float = 0.5,
    chunk_size: int = CHUNK_SIZE,
    device: str = "cuda",
) -> np.ndarray:
    """core.scores.dnm on `device`."""
    image = scores._unit_rows(scores._embeddings(image, "image"), "image")
    id_text = scores._unit_rows(scores._embeddings(id_text, "id_text", image.shape[1]), "id_text")
    neg_text = scores._unit_rows(scores._embeddings(neg_text, "neg_text", image.shape[1]), "neg_text")
    if not 0 < tau <= 1:
        raise NegRefineError(f"tau must be in (0, 1]; got {tau}.")
    scale = 1.0 / scores._positive(temperature, "temperature")
    grouped = scores._grouped_negatives(neg_text, n_groups, permutation)
    q, k = grouped.shape[0] // n_groups, id_text.shape[0]
    base = 1.0 - q * (1.0 - tau) / (tau * k)
    x, p, g = _tensor(image, device), _tensor(id_text, device), _tensor(grouped, device)
    out = torch.empty(image.shape[0], dtype=torch.float64, device=device)
    for rows in scores._chunks(image.shape[0], chunk_size):
        lse_id = torch.logsumexp(_logits(x[rows], p, scale), dim=1)
        neg = _logits(x[rows], g, scale).reshape(len(lse_id), n_groups, q)
        ratio = torch.exp(torch.logsumexp(neg, dim=2) - lse_id[:, None]) / tau
        out[rows] = (1.0 / (k * (base + ratio))).mean(dim=1)
    return out.cpu().numpy()


TWINS: dict[Callable[..., np.ndarray], Callable[..., np.ndarray]] = {
    scores.mcm: mcm,
    scores.neglabel: neglabel,
    scores.dnm: dnm,
}
