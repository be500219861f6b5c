"""Metrics: hand-computed tiny cases for each convention (ties, a TPR that is not 0.95, float
rounding), agreement with scikit-learn and with a naive FPR95 loop, and the two FPR95 conventions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from negrefine_ray.core.metrics import (
    DEFAULT_METRICS,
    METRICS,
    aupr_in,
    aupr_in_openood,
    aupr_out,
    aupr_out_openood,
    auroc,
    compute_metrics,
    fpr95,
    fpr95_openood,
)
from negrefine_ray.errors import NegRefineError

# Tiny case with an ID/OOD tie at 0.5.
ID_A = np.array([0.9, 0.5, 0.3])
OOD_A = np.array([0.5, 0.1])


def test_auroc_hand_with_tie() -> None:
    # ID-OOD pairs: (.9,.5)=1 (.9,.1)=1 (.5,.5)=1/2 (.5,.1)=1 (.3,.5)=0 (.3,.1)=1 -> 4.5 / 6
    assert auroc(ID_A, OOD_A) == pytest.approx(0.75, abs=1e-12)


def test_aupr_in_hand() -> None:
    # ID positive. t=.9: P=1, R=1/3; t=.5 (ID and OOD enter together): P=2/3, R=2/3; t=.3: P=3/4, R=1.
    # Step-wise AP = 1/3*1 + 1/3*2/3 + 1/3*3/4 = 29/36
    assert aupr_in(ID_A, OOD_A) == pytest.approx(29 / 36, abs=1e-12)


def test_aupr_out_hand() -> None:
    # OOD positive on -score. -.1: P=1, R=1/2; -.3 (ID): no recall step; -.5 (OOD+ID): P=2/4, R=1.
    # AP = 1/2*1 + 1/2*1/2 = 3/4
    assert aupr_out(ID_A, OOD_A) == pytest.approx(0.75, abs=1e-12)


def test_aupr_openood_hand_is_trapezoid() -> None:
    # PR points (R, P): (0, 1), (1/3, 1), (2/3, 2/3), (1, 3/4); trapezoids:
    # 1/3*(1+1)/2 + 1/3*(1+2/3)/2 + 1/3*(2/3+3/4)/2 = 24/72 + 20/72 + 17/72 = 61/72
    assert aupr_in_openood(ID_A, OOD_A) == pytest.approx(61 / 72, abs=1e-12)
    # OOD positive on -score: points (0, 1), (1/2, 1), (1/2, 1/2) at -.3, (1, 1/2) at -.5:
    # 1/2*(1+1)/2 + 0 + 1/2*(1/2+1/2)/2 = 1/2 + 1/4
    assert aupr_out_openood(ID_A, OOD_A) == pytest.approx(0.75, abs=1e-12)


def test_fpr95_hand_tie_block_and_tpr_not_095() -> None:
    # ID positive, thresholds .9 / .5 / .3: TPR 1/3, 2/3 (the tied OOD .5 enters with the ID .5,
    # FP=1), 1 (FP=1). Closest TPR to .95 is 1.0 (not .95): FPR = 1/2.
    assert fpr95(ID_A, OOD_A) == pytest.approx(0.5, abs=1e-12)


def test_fpr95_hand_ties_inside_a_block() -> None:
    ids = np.array([5.0, 4.0, 4.0, 3.0, 2.0])
    oods = np.array([4.0, 3.0, 1.0, 0.0])
    # t=5: TPR .2 FP 0; t=4: TPR .6 FP 1; t=3: TPR .8 FP 2; t=2: TPR 1 FP 2 (last kept; 1 and 0 are
    # dropped). Closest to .95 is TPR 1 -> FPR 2/4.
    assert fpr95(ids, oods) == pytest.approx(0.5, abs=1e-12)


def test_fpr95_float_rounding_prefers_tpr_090_with_ten_id() -> None:
    ids = np.arange(1.0, 11.0)  # N_ID = 10
    oods = np.array([0.5, 1.0, 5.5])
    # t=2: TPR .9, FP 1 (5.5); t=1: TPR 1, FP 2 (5.5 and the tied 1.0). |.9-.95| and |1-.95| are
    # equal on paper, but in float64 0.95-0.9 = 0.04999999999999993 < 1-0.95 = 0.05000000000000004,
    # so the reference picks TPR .9: FPR = 1/3 (with TPR 1 it would be 2/3).
    assert fpr95(ids, oods) == pytest.approx(1 / 3, abs=1e-12)


def test_fpr95_equal_tpr_points_take_the_lowest_threshold() -> None:
    ids = np.arange(1.0, 21.0)  # N_ID = 20, so 19/20 is exactly 0.95
    oods = np.array([1.5, 0.5, 1.2])
    # t=2: TPR .95 FP 0; t=1.5: TPR .95 FP 1; t=1.2: TPR .95 FP 2; t=1: TPR 1 FP 2. Three points tie at
    # distance 0; the reference's reversed argmin takes the lowest threshold (1.2): FPR = 2/3.
    assert fpr95(ids, oods) == pytest.approx(2 / 3, abs=1e-12)
    # OpenOOD (OOD positive, scores -conf): all 3 OOD must be caught (2/3 < .95), at conf <= 1.5,
    # where 1 of 20 ID (the 1.0) is flagged: FPR = 1/20. The two conventions differ.
    assert fpr95_openood(ids, oods) == pytest.approx(0.05, abs=1e-12)


def test_fpr95_openood_drop_intermediate_moves_the_point() -> None:
    # OOD scores 0..17, then 18 and 19 each tied with one ID; ID also 20..37 (N_ID = N_OOD = 20).
    oods = np.arange(0.0, 20.0)
    ids = np.arange(18.0, 38.0)
    # OpenOOD ROC (fpr, tpr) by ascending conf: ..., t=17 (0, 18/20), t=18 (1/20, 19/20), t=19 (2/20, 1):
    # equal steps, so drop_intermediate removes t=18; the first tpr >= .95 is then at t=19: FPR = 0.1.
    assert fpr95_openood(ids, oods) == pytest.approx(0.1, abs=1e-12)
    # 6.1: t=20: TPR .9 FP 0; t=19: TPR .95 FP 1; t=18: TPR 1 FP 2 -> FPR = 1/20.
    assert fpr95(ids, oods) == pytest.approx(0.05, abs=1e-12)


def _naive_fpr95(ids: np.ndarray, oods: np.ndarray, level: float = 0.95) -> float:
    """methods.md 6.1 as a loop: walk distinct thresholds downwards until TPR first reaches 1."""
    best_dist, best_fp = np.inf, 0
    for t in sorted(set(ids.tolist()) | set(oods.tolist()), reverse=True):
        tpr = float(np.sum(ids >= t)) / ids.size
        dist = abs(tpr - level)
        if dist <= best_dist:  # '<=': on equal distance the later (lower) threshold wins
            best_dist, best_fp = dist, int(np.sum(oods >= t))
        if tpr == 1.0:
            break
    return best_fp / oods.size


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_sklearn_and_naive_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(5, 300, size=2)
    # Rounded scores make many ties, within and across the two sets.
    ids = np.round(rng.normal(1.0, 1.0, n_id), 1)
    oods = np.round(rng.normal(0.0, 1.0, n_ood), 1)
    labels = np.r_[np.ones(n_id), np.zeros(n_ood)]
    scores = np.r_[ids, oods]
    assert auroc(ids, oods) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert aupr_in(ids, oods) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert aupr_out(ids, oods) == pytest.approx(average_precision_score(1 - labels, -scores), abs=1e-12)
    assert fpr95(ids, oods) == pytest.approx(_naive_fpr95(ids, oods), abs=1e-12)


def test_compute_metrics_defaults_and_registry() -> None:
    got = compute_metrics(ID_A.tolist(), OOD_A)
    assert list(got) == list(DEFAULT_METRICS)
    assert got["auroc"] == pytest.approx(0.75)
    everything = compute_metrics(ID_A, OOD_A, names=list(METRICS))
    assert set(everything) == set(METRICS)
    assert all(isinstance(v, float) for v in everything.values())


def test_unknown_metric_suggests_the_closest_name() -> None:
    with pytest.raises(NegRefineError, match=r"Unknown metric 'fpr_95'.*Did you mean 'fpr95'"):
        compute_metrics(ID_A, OOD_A, names=["auroc", "fpr_95"])


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (np.array([]), "empty"),
        (np.ones((2, 2)), "1-D"),
        (np.array([0.1, np.nan]), "non-finite"),
        (np.array(["a", "b"]), "real numbers"),
    ],
)
def test_bad_scores_are_rejected(ids: np.ndarray, match: str) -> None:
    with pytest.raises(NegRefineError, match=match):
        auroc(ids, OOD_A)
    with pytest.raises(NegRefineError, match=match):
        fpr95(OOD_A, ids)
