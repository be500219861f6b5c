"""Selection rules on hand-built embeddings: torch-exact quantiles, per-POS cuts, the CSP guard,
max-similarity ranking, chunked DNM density against brute force, nearest labels and cleaning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from negrefine_ray.core import mining
from negrefine_ray.core.mining import (
    clean_label,
    clean_labels,
    dnm_density,
    mine_csp,
    mine_dnm,
    mine_negrefine,
    nearest_id_labels,
    percentile_distance,
    quantile_rows,
    select_neglabel,
)
from negrefine_ray.errors import NegRefineError


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("k", [1, 2, 7, 10, 999, 1000])
@pytest.mark.parametrize("q", [0.0, 0.05, 0.3, 0.5, 0.9, 0.95, 0.99, 1.0])
def test_quantile_is_bit_identical_to_torch(k: int, q: float) -> None:
    sims = (np.random.default_rng(k).standard_normal((400, k)) * 0.1).astype(np.float32)
    expected = torch.quantile(torch.from_numpy(sims), q, dim=1).numpy()
    np.testing.assert_array_equal(quantile_rows(sims, q), expected)


def test_percentile_distance_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    cand, ids = _unit(rng.standard_normal((203, 16))), _unit(rng.standard_normal((50, 16)))
    monkeypatch.setattr(mining, "_BLOCK_ELEMENTS", 50 * 17)  # 17 rows a block, last one partial
    got = percentile_distance(cand, ids, 0.95)
    expected = torch.quantile(torch.from_numpy(cand @ ids.T), 0.95, dim=1).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(percentile_distance(cand, ids, 1.0), (cand @ ids.T).max(axis=1), atol=1e-6)
    with pytest.raises(NegRefineError, match=r"\[0, 1\]"):
        percentile_distance(cand, ids, 95)


def test_fifteen_percent_per_part_of_speech_in_order() -> None:
    d = np.array([0.5, 0.1, 0.9, 0.3, 0.2, 0.7, 0.1, 0.4, 0.6, 0.8, 0.05, 0.3, 0.3, 0.2, 0.6])
    pos = ["noun"] * 7 + ["adj"] * 8
    pos[10], pos[2] = "noun", "adj"  # interleaved pool order
    result = select_neglabel(d, pos, top_fraction=0.3)
    nouns = [i for i in np.argsort(d, kind="stable") if pos[i] == "noun"]
    adjs = [i for i in np.argsort(d, kind="stable") if pos[i] == "adj"]
    assert result.counts == {"noun": 2, "adj": 2}  # floor(0.3 * 7), floor(0.3 * 8)
    assert result.indices.tolist() == nouns[:2] + adjs[:2] == [10, 1, 13, 11]
    assert result.rank[10] == 0 and result.rank[13] == 0 and result.rank[11] == 1
    # ties keep pool order: nouns 1 and 6 (0.1), adjectives 11 and 12 (0.3), 8 and 14 (0.6)
    full = select_neglabel(d, pos, top_fraction=1.0).indices.tolist()
    assert full == [10, 1, 6, 4, 3, 0, 5, 13, 11, 12, 7, 8, 14, 9, 2]


def test_fraction_counts_floor() -> None:
    pos = ["noun"] * 57190 + ["adj"] * 12810
    counts = select_neglabel(np.zeros(len(pos)), pos).counts
    assert counts == {"noun": 8578, "adj": 1921}  # NegLabel's shipped 8,578 + 1,921 = 10,499
    with pytest.raises(NegRefineError, match="part-of-speech"):
        select_neglabel(np.zeros(2), ["noun", "verb"])


def test_csp_guard_blocks_near_duplicates_of_id_labels() -> None:
    ids = np.eye(4, 8, dtype=np.float32)
    cand = _unit(
        np.array(
            [
                [1, 0.1, 0, 0, 0, 0, 0, 0],  # near-duplicate of ID label 0 (cos 0.995)
                [0, 0, 0, 0, 1, 0, 0, 0],  # orthogonal to every ID label
                [1, 1, 1, 1, 0, 0, 0, 0],  # cos 0.5 to all
                [0, 0, 0, 0, 0, 1, 0, 0],
            ],
            dtype=np.float32,
        )
    )
    d = percentile_distance(cand, ids, 0.0)  # the minimum cosine: 0 for the near duplicate
    guarded = percentile_distance(cand, ids, 0.0, csp_guard=True)
    assert d[0] < 0.01 and guarded[0] == 1.0
    np.testing.assert_array_equal(guarded[1:], d[1:])
    assert 0 not in mine_csp(cand, ids, ["noun"] * 4).indices


def test_negrefine_ranks_by_max_similarity() -> None:
    ids = np.eye(3, 4, dtype=np.float32)
    # candidate 0: high quantile but low max? build rows whose max and 0.5-quantile order disagree
    cand = _unit(np.array([[0.6, 0.6, 0.0, 0.5], [0.9, 0.0, 0.0, 0.4], [0.3, 0.3, 0.3, 0.8]], np.float32))
    sims = cand @ ids.T
    result = mine_negrefine(cand, ids, ["noun"] * 3)
    np.testing.assert_allclose(result.statistic, sims.max(axis=1), atol=1e-7)
    assert np.argsort(result.statistic).tolist() == [2, 0, 1]
    median = mine_negrefine(cand, ids, ["noun"] * 3, q=0.5).statistic
    assert np.argsort(median).tolist() != [2, 0, 1]


def _dnm_brute(raw: np.ndarray, k1: int, distance: str) -> np.ndarray:
    x = raw.astype(np.float32)
    r = np.linalg.norm(x, axis=1)
    u = x / r[:, None]
    cos = u @ u.T
    if distance == "reference":
        delta = r[:, None] + r[None, :] - 2 * cos
    else:
        delta = 2 - 2 * cos
        np.fill_diagonal(delta, 0)
    nearest = np.sort(delta, axis=1)[:, : k1 + 1]
    return np.log(np.maximum(nearest.astype(np.float64), mining.DNM_LOG_FLOOR)).mean(axis=1)


@pytest.mark.parametrize("distance", ["reference", "normalised"])
def test_dnm_chunked_equals_brute_force(distance: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    # raw CLIP text features have norms of several units; vary them so "reference" differs
    raw = rng.standard_normal((300, 24)) * rng.uniform(2, 8, (300, 1))
    expected = _dnm_brute(raw, 100, distance)
    monkeypatch.setattr(mining, "_BLOCK_ELEMENTS", 300 * 37)
    got = dnm_density(raw, 100, distance)  # type: ignore[arg-type]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert np.array_equal(np.argsort(got, kind="stable"), np.argsort(expected, kind="stable"))
    assert np.isfinite(got).all()


def test_dnm_selection_uses_per_pos_fractions() -> None:
    rng = np.random.default_rng(2)
    raw = rng.standard_normal((200, 8)) * 3
    pos = ["noun"] * 150 + ["adj"] * 50
    result = mine_dnm(raw, pos)
    assert result.counts == {"noun": 34, "adj": 6}  # floor(0.23 * 150), floor(0.13 * 50)
    rho = dnm_density(raw, 100)
    np.testing.assert_array_equal(result.statistic, rho)
    assert result.indices[:34].tolist() == np.argsort(rho[:150], kind="stable")[:34].tolist()


def test_nearest_id_labels_descending_with_index_ties() -> None:
    ids = _unit(np.array([[1, 0], [0, 1], [1, 1], [1, 0], [-1, 0]], np.float32))
    neg = _unit(np.array([[1, 0.01], [0, 1]], np.float32))
    idx, sims = nearest_id_labels(neg, ids, n=3)
    assert idx[0].tolist() == [0, 3, 2]  # 0 and 3 identical: lower index first
    assert idx[1].tolist() == [1, 2, 0]
    assert np.all(np.diff(sims, axis=1) <= 0) and sims.dtype == np.float32
    idx_all, _ = nearest_id_labels(neg, ids, n=10)
    assert idx_all.shape == (2, 5)


def test_cleaning_examples_from_the_spec() -> None:
    assert clean_label('biosafety level 2"') == "biosafety level "
    assert clean_label("bird's foot trefoil") == "birds foot trefoil"
    assert clean_label("[aqueous pattern") == "aqueous pattern"
    assert clean_label('y2"k compliant area') == "yk compliant area"
    assert (
        clean_label("ab-1") == "ab-"
        and clean_label("a-1") is None
        and clean_label("x1") is None
        and clean_label("ab") is None
    )
    assert clean_label("café_au-lait") == "café_au-lait"
    labels = ['biosafety level 1"', "tench", 'biosafety level 2"', "x9", 'biosafety level 4"', "tench!"]
    assert clean_labels(labels) == ["biosafety level ", "tench"]


_SCRIPT = """
import json, numpy as np
from negrefine_ray.core.mining import clean_labels, select_neglabel
labels = ["b'c", "bc", "zeta", "alpha", "beta!", "beta", "gamma", "delta", "q1"]
d = np.array([0.3, 0.3, 0.1, 0.2, 0.2, 0.2, 0.0, 0.3, 0.9])
pos = ["noun", "adj"] * 4 + ["noun"]
print(json.dumps([clean_labels(labels), select_neglabel(d, pos, 0.5).indices.tolist()]))
"""


def test_deterministic_under_any_hash_seed() -> None:
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(run.stdout)
    assert len(outputs) == 1
    cleaned, selected = json.loads(outputs.pop())
    assert cleaned == ["zeta", "alpha", "beta", "gamma", "delta"]  # "b'c" -> "bc" is too short
    assert selected == [6, 2, 3, 5]


def test_adaneg_selection_is_its_order_statistic_split_in_proportion_adjectives_first() -> None:
    """AdaNeg (D.2): d = the element at index int(K * 0.95) of the sorted cosines, no interpolation;
    adj_num = int(M A / (A + N)); each part ascending by d; [adjectives | nouns]."""
    from negrefine_ray.core.mining import mine_adaneg

    rng = np.random.default_rng(4)
    cand = rng.standard_normal((50, 8)).astype(np.float32)
    cand /= np.linalg.norm(cand, axis=1, keepdims=True)
    ids = rng.standard_normal((40, 8)).astype(np.float32)
    ids /= np.linalg.norm(ids, axis=1, keepdims=True)
    pos = ["noun"] * 35 + ["adj"] * 15
    got = mine_adaneg(cand, ids, pos, m=20)
    d = np.sort(cand @ ids.T, axis=1)[:, int(40 * 0.95)]  # index 38 of 40
    adj_num = int(20 * 15 / 50)
    adjs = sorted(range(35, 50), key=lambda i: (d[i], i))[:adj_num]
    nouns = sorted(range(35), key=lambda i: (d[i], i))[: 20 - adj_num]
    assert got.indices.tolist() == adjs + nouns
    assert got.counts == {"adj": 6, "noun": 14}
    np.testing.assert_array_equal(got.statistic, d.astype(np.float32))
