"""negrefine-ray: Ray-distributed zero-shot OOD evaluation with negative labels (NegRefine).

The public face: the pure score and metric functions (`negrefine_ray.neglabel`,
`negrefine_ray.compute_metrics`, ...) plus `load_config` and `run_job`, no stage internals. They
load lazily, so `import negrefine_ray` pulls in neither torch nor scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from negrefine_ray.version import __version__

_EXPORTS = {
    "negrefine_ray.core.scores": (
        "mcm", "neglabel", "grouping_permutation", "kept_negatives", "top_pairs", "distinct_pairs",
        "pair_texts", "multi_matching", "negrefine", "dnm", "dnm_permutations",
    ),
    "negrefine_ray.core.metrics": (
        "auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_openood", "aupr_in_openood", "aupr_out_openood",
        "compute_metrics", "get_metric", "METRICS",
    ),
    "negrefine_ray.core.multi_matching": ("multi_matching_scores",),
    "negrefine_ray.core.glmcm": ("encode_with_local", "lmcm", "glmcm"),
    "negrefine_ray.core.adaneg": ("run_adaneg", "LabelMemory"),
    "negrefine_ray.core.interneg": (
        "class_prototypes", "base_similarity", "admissible", "deviation", "select_interneg", "NegativeBank",
        "interneg_score", "stream_order", "run_online",
    ),
    "negrefine_ray.clip.inversion": ("invert_images",),
    "negrefine_ray.config": ("load_config",),
    "negrefine_ray.pipeline": ("run_job",),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [  # noqa: RUF022 (grouped by module, as _EXPORTS)
    "__version__",
    "mcm", "neglabel", "grouping_permutation", "kept_negatives", "top_pairs", "distinct_pairs",
    "pair_texts", "multi_matching", "negrefine", "dnm", "dnm_permutations",
    "auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_openood", "aupr_in_openood", "aupr_out_openood",
    "compute_metrics", "get_metric", "METRICS",
    "multi_matching_scores",
    "encode_with_local", "lmcm", "glmcm",
    "run_adaneg", "LabelMemory",
    "class_prototypes", "base_similarity", "admissible", "deviation", "select_interneg", "NegativeBank",
    "interneg_score", "stream_order", "run_online", "invert_images",
    "load_config", "run_job",
]  # fmt: skip

if TYPE_CHECKING:
    from negrefine_ray.clip.inversion import invert_images
    from negrefine_ray.config import load_config
    from negrefine_ray.core.adaneg import LabelMemory, run_adaneg
    from negrefine_ray.core.glmcm import encode_with_local, glmcm, lmcm
    from negrefine_ray.core.interneg import (
        NegativeBank,
        admissible,
        base_similarity,
        class_prototypes,
        deviation,
        interneg_score,
        run_online,
        select_interneg,
        stream_order,
    )
    from negrefine_ray.core.metrics import (
        METRICS,
        aupr_in,
        aupr_in_openood,
        aupr_out,
        aupr_out_openood,
        auroc,
        compute_metrics,
        fpr95,
        fpr95_openood,
        get_metric,
    )
    from negrefine_ray.core.multi_matching import multi_matching_scores
    from negrefine_ray.core.scores import (
        distinct_pairs,
        dnm,
        dnm_permutations,
        grouping_permutation,
        kept_negatives,
        mcm,
        multi_matching,
        neglabel,
        negrefine,
        pair_texts,
        top_pairs,
    )
    from negrefine_ray.pipeline import run_job


def __getattr__(name: str) -> Any:
    """Import a public function's module on first use (PEP 562)."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'negrefine_ray' has no attribute '{name}'")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
