"""OOD detection metrics, one named convention per function (methods.md section 6).

Input: per-image scores of the ID set and of one OOD set, larger = more in-distribution.
Output: floats in [0, 1]. `auroc`, `aupr_in`, `aupr_out`, `fpr95` follow NegLabel/CSP/NegRefine/DNM
(ID positive, section 6.1); the `*_openood` functions follow OpenOOD as used by InterNeg (section 6.2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from negrefine_ray.errors import NegRefineError, unknown_name

Metric = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class MetricInfo:
    """A registered metric: its function, whether a higher value is better, and its table heading."""

    name: str
    fn: Metric
    higher_is_better: bool
    label: str


METRIC_INFO: dict[str, MetricInfo] = {}  # in registration order, which tables follow


def register_metric(name: str, *, higher_is_better: bool, label: str) -> Callable[[Metric], Metric]:
    """Register the decorated function as metric `name`, its metadata beside it."""

    def register(fn: Metric) -> Metric:
        if name in METRIC_INFO:
            raise ValueError(f"metric {name!r} is registered twice.")
        METRIC_INFO[name] = MetricInfo(name, fn, higher_is_better, label)
        return fn

    return register


def _scores(values: np.ndarray | Sequence[float], name: str) -> np.ndarray:
    """`values` as a 1-D float64 array, or a NegRefineError saying what is wrong with it."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise NegRefineError(f"{name} must be a 1-D array of per-image scores; got shape {arr.shape}.")
    if arr.size == 0:
        raise NegRefineError(f"{name} is empty; every metric needs at least one ID and one OOD score.")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise NegRefineError(f"{name} must hold real numbers; got dtype {arr.dtype}.")
    arr = arr.astype(np.float64, copy=False)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise NegRefineError(
            f"{name} has {bad.size} non-finite value(s) (first at index {bad[0]}: {arr[bad[0]]}); "
            "scores must be finite; check the score inputs for NaN embeddings or overflow."
        )
    return arr


def _labelled(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores): ID first with label 1, then OOD with label 0, as the references stack them."""
    ids, oods = _scores(id_scores, "id_scores"), _scores(ood_scores, "ood_scores")
    labels = np.concatenate([np.ones(ids.size, dtype=np.int64), np.zeros(oods.size, dtype=np.int64)])
    return labels, np.concatenate([ids, oods])


@register_metric("auroc", higher_is_better=True, label="AUROC")
def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Area under the ROC curve, ID positive; equals sklearn `roc_auc_score(labels, scores)`.

    = P(score(ID) > score(OOD)) + 1/2 P(score(ID) == score(OOD)): tied ID/OOD pairs count 1/2.
    The value does not depend on which class is called positive, so it also equals OpenOOD's AUROC.
    """
    labels, scores = _labelled(id_scores, ood_scores)
    return float(roc_auc_score(labels, scores))


@register_metric("aupr_in", higher_is_better=True, label="AUPR-In")
def aupr_in(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """AUPR-In as NegLabel/CSP/NegRefine/DNM: `average_precision_score(labels, scores)`, ID positive.

    Step-wise average precision sum_n (R_n - R_{n-1}) P_n over distinct score thresholds (no
    interpolation between points, unlike the trapezoid area of `aupr_in_openood`).
    """
    labels, scores = _labelled(id_scores, ood_scores)
    return float(average_precision_score(labels, scores))


@register_metric("aupr_out", higher_is_better=True, label="AUPR-Out")
def aupr_out(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """AUPR-Out as NegLabel/CSP: `average_precision_score(1 - labels, -scores)`, OOD positive, step-wise."""
    labels, scores = _labelled(id_scores, ood_scores)
    return float(average_precision_score(1 - labels, -scores))


@register_metric("fpr95", higher_is_better=False, label="FPR95")
def fpr95(id_scores: np.ndarray, ood_scores: np.ndarray, recall_level: float = 0.95) -> float:
    """FPR at 95 % TPR as NegLabel/CSP/NegRefine/DNM (`fpr_and_fdr_at_recall`, methods.md 6.1).

    ID is positive. Candidate thresholds t are the distinct score values, so a block of tied scores is
    entered whole; TPR(t) = #{ID >= t} / N_ID and FP(t) = #{OOD >= t}. Thresholds below the highest
    one at which TPR first reaches 1 are discarded. Among the rest the point whose TPR is closest to
    `recall_level` is chosen, |TPR - level| computed in float64 exactly as the reference, so e.g.
    with N_ID = 10 the point at TPR 0.9 wins over TPR 1.0 (0.95 - 0.9 rounds smaller than 1 - 0.95).
    Ties of that distance are broken as the reference's reversed argmin does: the LOWEST threshold
    wins, i.e. the higher TPR when two TPRs are equally close, and the largest FP when several
    thresholds share the chosen TPR (OOD-only score values between two ID scores). Returns
    FP(t*) / N_OOD; the TPR behind it may be slightly below or above `recall_level`.
    """
    _, fp = _fpr95_point(id_scores, ood_scores, recall_level)
    return float(fp / _scores(ood_scores, "ood_scores").size)


def fpr95_threshold(id_scores: np.ndarray, ood_scores: np.ndarray, recall_level: float = 0.95) -> float:
    """The threshold t* behind `fpr95`: an image scoring >= t* is accepted as ID there, so an OOD
    image at or above it is one of FPR95's false positives and an ID image below it one of the ~5 %
    rejected (the report's hardest images say which side each is on)."""
    return _fpr95_point(id_scores, ood_scores, recall_level)[0]


def _fpr95_point(id_scores: np.ndarray, ood_scores: np.ndarray, recall_level: float) -> tuple[float, int]:
    """(t*, FP(t*)) of `fpr95`."""
    ids, oods = _scores(id_scores, "id_scores"), _scores(ood_scores, "ood_scores")
    thresholds = np.unique(np.concatenate([ids, oods]))[::-1]  # distinct, descending
    tp = ids.size - np.searchsorted(np.sort(ids), thresholds, side="left")  # ID >= t
    fp = oods.size - np.searchsorted(np.sort(oods), thresholds, side="left")  # OOD >= t
    last = int(np.searchsorted(tp, ids.size))  # tp is non-decreasing: first index with TPR == 1
    tpr = tp[: last + 1] / ids.size
    best = last - int(np.argmin(np.abs(tpr - recall_level)[::-1]))
    return float(thresholds[best]), int(fp[best])


def _openood(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ood_indicator, conf) in OpenOOD's convention: OOD = 1, conf = score (larger = more ID)."""
    labels, scores = _labelled(id_scores, ood_scores)
    return 1 - labels, scores


@register_metric("fpr95_openood", higher_is_better=False, label="FPR95 (OpenOOD)")
def fpr95_openood(id_scores: np.ndarray, ood_scores: np.ndarray, recall_level: float = 0.95) -> float:
    """FPR at 95 % TPR as OpenOOD/InterNeg (methods.md 6.2): OOD is positive.

    `fpr, tpr = roc_curve(ood_indicator, -conf)` (drop_intermediate=True, which can remove a point
    on a straight stretch and so move the answer); returns fpr at the first index with tpr >= level:
    the fraction of ID images flagged OOD at the threshold that catches >= 95 % of OOD images, tie
    blocks taken whole. A different quantity from `fpr95` (roles of ID and OOD swapped).
    """
    ood, conf = _openood(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(ood, -conf, drop_intermediate=True)
    return float(fpr[int(np.argmax(tpr >= recall_level))])


@register_metric("aupr_in_openood", higher_is_better=True, label="AUPR-In (OpenOOD)")
def aupr_in_openood(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """AUPR-In as OpenOOD: trapezoid area `auc(recall, precision)` of
    `precision_recall_curve(1 - ood_indicator, conf)` (ID positive), not step-wise AP."""
    ood, conf = _openood(id_scores, ood_scores)
    precision, recall, _ = precision_recall_curve(1 - ood, conf)
    return float(auc(recall, precision))


@register_metric("aupr_out_openood", higher_is_better=True, label="AUPR-Out (OpenOOD)")
def aupr_out_openood(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """AUPR-Out as OpenOOD: trapezoid area of `precision_recall_curve(ood_indicator, -conf)`."""
    ood, conf = _openood(id_scores, ood_scores)
    precision, recall, _ = precision_recall_curve(ood, -conf)
    return float(auc(recall, precision))


METRICS: dict[str, Metric] = {name: info.fn for name, info in METRIC_INFO.items()}
# What NegLabel and CSP log per OOD set (NegRefine prints only AUROC and FPR95).
DEFAULT_METRICS: tuple[str, ...] = ("auroc", "aupr_in", "aupr_out", "fpr95")


def get_metric(name: str) -> Metric:
    """The metric registered under `name`; unknown names raise with the closest known name."""
    if name not in METRICS:
        raise unknown_name("metric", name, METRICS)
    return METRICS[name]


def compute_metrics(
    id_scores: np.ndarray, ood_scores: np.ndarray, names: Sequence[str] = DEFAULT_METRICS
) -> dict[str, float]:
    """{name: value} for each metric in `names`, in that order; scores are validated once up front."""
    fns = [get_metric(name) for name in names]
    ids, oods = _scores(id_scores, "id_scores"), _scores(ood_scores, "ood_scores")
    return {name: fn(ids, oods) for name, fn in zip(names, fns, strict=True)}
