"""negrefine-ray: Ray-distributed zero-shot OOD evaluation with negative labels (NegRefine).

The score and metric functions are importable from the package (`negrefine_ray.neglabel`,
`negrefine_ray.compute_metrics`, ...) but load lazily, so `import negrefine_ray` pulls in neither
torch nor scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "negrefine_ray.scores": (
        "mcm", "neglabel", "grouping_permutation", "kept_negatives", "top_pairs", "distinct_pairs",
        "pair_texts", "multi_matching", "negrefine", "dnm", "dnm_permutations", "get_score", "SCORES",
    ),
    "negrefine_ray.metrics": (
        "auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_openood", "aupr_in_openood", "aupr_out_openood",
        "compute_metrics", "get_metric", "METRICS",
    ),
    "negrefine_ray.score_stage": ("multi_matching_scores",),
    "negrefine_ray.report_stage": ("evaluate",),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [  # noqa: RUF022 (grouped by module, as _EXPORTS)
    "__version__",
    "mcm", "neglabel", "grouping_permutation", "kept_negatives", "top_pairs", "distinct_pairs",
    "pair_texts", "multi_matching", "negrefine", "dnm", "dnm_permutations", "get_score", "SCORES",
    "auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_openood", "aupr_in_openood", "aupr_out_openood",
    "compute_metrics", "get_metric", "METRICS",
    "multi_matching_scores", "evaluate",
]  # fmt: skip

if TYPE_CHECKING:
    from negrefine_ray.metrics import (
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
    from negrefine_ray.report_stage import evaluate
    from negrefine_ray.score_stage import multi_matching_scores
    from negrefine_ray.scores import (
        SCORES,
        distinct_pairs,
        dnm,
        dnm_permutations,
        get_score,
        grouping_permutation,
        kept_negatives,
        mcm,
        multi_matching,
        neglabel,
        negrefine,
        pair_texts,
        top_pairs,
    )


def __getattr__(name: str) -> Any:
    """Import a public function's module on first use (PEP 562)."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'negrefine_ray' has no attribute '{name}'")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
