"""Scores: each one against a per-image loop written from its formula, chunking invariance, the
grouping permutation (remainder dropped, same draws as torch's seeded randperm), NegRefine's
pair bookkeeping, numerical stability and the sign convention."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from negrefine_ray.core.scores import (
    _topk,
    distinct_pairs,
    dnm,
    dnm_permutations,
    grouping_permutation,
    mcm,
    multi_matching,
    neglabel,
    negrefine,
    pair_texts,
    top_pairs,
)
from negrefine_ray.errors import NegRefineError

N, D, K, M, G = 9, 16, 8, 23, 4  # M' = 20, Q = 5: the last 3 negatives are dropped


def _unit(rng: np.random.Generator, rows: int) -> np.ndarray:
    x = rng.normal(size=(rows, D))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def emb() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return _unit(rng, N), _unit(rng, K), _unit(rng, M)


def test_mcm_matches_loop(emb: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    image, pos, _ = emb
    for t in (1.0, 0.01):
        want = []
        for x in image:
            e = np.exp(pos @ x / t)
            want.append(max(e / e.sum()))
        np.testing.assert_allclose(mcm(image, pos, t), want, rtol=1e-12)


def _neglabel_loop(image: np.ndarray, pos: np.ndarray, neg: np.ndarray, perm: np.ndarray, g: int) -> list:
    groups = perm.reshape(g, -1)
    out = []
    for x in image:
        id_mass = np.exp(100 * pos @ x).sum()
        out.append(np.mean([id_mass / (id_mass + np.exp(100 * neg[cols] @ x).sum()) for cols in groups]))
    return out


def test_neglabel_matches_loop(emb: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    image, pos, neg = emb
    perm = grouping_permutation(M, G, seed=0)
    want = _neglabel_loop(image, pos, neg, perm, G)
    np.testing.assert_allclose(neglabel(image, pos, neg, n_groups=G, permutation=perm), want, rtol=1e-12)
    # Without an explicit permutation: grouping_permutation(M, G, seed) on the CPU.
    np.testing.assert_allclose(neglabel(image, pos, neg, n_groups=G), want, rtol=1e-12)


def test_one_group_is_the_plain_softmax_id_mass(emb: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    image, pos, neg = emb
    logits = 100 * image @ np.concatenate([pos, neg]).T
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(neglabel(image, pos, neg, n_groups=1), p[:, :K].sum(axis=1), rtol=1e-12)


def test_permutation_drops_the_last_columns_and_equals_torch_randperm() -> None:
    perm = grouping_permutation(10, 3, seed=0)
    assert sorted(perm.tolist()) == list(range(9))  # column 9 (the end of the order) is dropped
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        assert perm.tolist() == torch.randperm(9).tolist()
        torch.manual_seed(7)
        assert grouping_permutation(10, 3, seed=7).tolist() == torch.randperm(9).tolist()


def test_dropped_negatives_do_not_change_the_score(emb: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    image, pos, neg = emb
    neg = neg[:10]
    moved = neg.copy()
    moved[9] = image[0]  # the dropped column: would dominate image 0 if it were used
    perm = grouping_permutation(10, 3)
    for negs in (neg, moved):
        np.testing.assert_array_equal(
            neglabel(image, pos, negs, n_groups=3, permutation=perm),
            neglabel(image, pos, neg, n_groups=3, permutation=perm),
        )
        np.testing.assert_array_equal(
            dnm(image, pos, negs, n_groups=3, permutation=perm),
            dnm(image, pos, neg, n_groups=3, permutation=perm),
        )


def test_dnm_permutations_are_successive_draws_after_one_seed() -> None:
    perms = dnm_permutations(M, G, 3, seed=50)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(50)
        want = [torch.randperm(20).tolist() for _ in range(3)]
    assert [p.tolist() for p in perms] == want
    assert want[0] != want[1]
    assert [p.tolist() for p in dnm_permutations(M, 1, 2)] == [list(range(M))] * 2


def _dnm_loop(arrays: tuple[np.ndarray, ...], perm: np.ndarray, g: int, t: float, tau: float) -> list:
    """methods.md 4.3 step by step; arrays = (image, id_text, neg_text), rows not yet normalised."""
    image, pos, neg = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in arrays)
    groups = perm.reshape(g, -1)
    q = groups.shape[1]
    out = []
    for x in image:
        a = np.exp(pos @ x / t)
        score = np.zeros(len(pos))
        for cols in groups:
            b = np.exp(neg[cols] @ x / t)
            z = a.sum() + q * ((1 / tau) * b.mean() - (1 - tau) / tau * a.mean())
            score += a / z / g
        out.append(score.mean())
    return out


@pytest.mark.parametrize("tau", [0.5, 0.8])
def test_dnm_matches_loop(emb: tuple[np.ndarray, np.ndarray, np.ndarray], tau: float) -> None:
    image, pos, neg = emb
    rng = np.random.default_rng(1)
    # Unnormalised rows (as DNM's raw text features): the score normalises every row itself.
    image, pos, neg = (a * rng.uniform(0.5, 3, size=(len(a), 1)) for a in (image, pos, neg))
    perm = dnm_permutations(M, G, 1)[0]
    want = _dnm_loop((image, pos, neg), perm, G, 0.01, tau)
    got = dnm(image, pos, neg, permutation=perm, n_groups=G, tau=tau)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_topk_orders_by_value_then_lower_index() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(50, 12)).astype(np.float64)  # many ties, also across the k-th value
    for k in (1, 3, 5, 12):
        want = [sorted(range(12), key=lambda j: (-row[j], j))[:k] for row in x.tolist()]
        assert _topk(x, k).tolist() == want


def test_top_pairs_matches_loop(emb: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    image, pos, neg = emb
    pos_idx, neg_idx, neg_logits = top_pairs(image, pos, neg, k_pos=3, k_neg=5)
    for i, x in enumerate(image):
        assert pos_idx[i].tolist() == np.argsort(-(pos @ x))[:3].tolist()
        assert neg_idx[i].tolist() == np.argsort(-(neg @ x))[:5].tolist()
        np.testing.assert_allclose(neg_logits[i], 100 * neg[neg_idx[i]] @ x, rtol=1e-12)
    assert top_pairs(image, pos[:2], neg)[0].shape == (N, 2)  # k_pos capped at K as in the reference


def test_distinct_pairs_round_trip() -> None:
    rng = np.random.default_rng(4)
    pos_idx = rng.integers(0, 4, size=(30, 3))
    neg_idx = rng.integers(0, 6, size=(30, 2))
    pairs, index = distinct_pairs(pos_idx, neg_idx)
    assert index.shape == (30, 3, 2)
    every = {
        (p, q) for ps, qs in zip(pos_idx.tolist(), neg_idx.tolist(), strict=True) for p in ps for q in qs
    }
    assert [tuple(pq) for pq in pairs.tolist()] == sorted(every)  # each pair once, lexicographic
    for n, a, b in itertools.product(range(30), range(3), range(2)):
        assert pairs[index[n, a, b]].tolist() == [pos_idx[n, a], neg_idx[n, b]]
    assert pair_texts(np.array([[1, 0]]), ["tench", "goldfish"], ["gooey landscape"]) == [
        "goldfish and gooey landscape"
    ]


def test_multi_matching_equals_brute_force(emb: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    image, pos, neg = emb
    rng = np.random.default_rng(5)
    table = {pq: _unit(rng, 1)[0] for pq in itertools.product(range(K), range(M))}  # e("p and n")
    pos_idx, neg_idx, neg_logits = top_pairs(image, pos, neg, k_pos=3, k_neg=4)
    pairs, index = distinct_pairs(pos_idx, neg_idx)
    pair_text = np.stack([table[(p, q)] for p, q in pairs.tolist()])
    want = []
    for x, ps, qs in zip(image, pos_idx, neg_idx, strict=True):
        vals = []
        for p, q in itertools.product(ps, qs):
            m, v = 100 * table[(p, q)] @ x, 100 * neg[q] @ x
            vals.append(np.exp(m) / (np.exp(m) + np.exp(v)))
        want.append(max(vals))
    s_mm = multi_matching(image, pair_text, index, neg_logits)
    np.testing.assert_allclose(s_mm, want, rtol=1e-12)
    s_nl = neglabel(image, pos, neg, n_groups=G)
    np.testing.assert_allclose(negrefine(s_nl, s_mm), s_nl + 2 * s_mm, rtol=0)


@pytest.mark.parametrize("name", ["mcm", "neglabel", "dnm", "top_pairs", "multi_matching"])
def test_chunking_does_not_change_results(emb: tuple[np.ndarray, np.ndarray, np.ndarray], name: str) -> None:
    image, pos, neg = emb
    pos_idx, neg_idx, neg_logits = top_pairs(image, pos, neg)
    pairs, index = distinct_pairs(pos_idx, neg_idx)
    pair_text = _unit(np.random.default_rng(6), len(pairs))
    calls = {
        "mcm": lambda c: mcm(image, pos, chunk_size=c),
        "neglabel": lambda c: neglabel(image, pos, neg, n_groups=G, chunk_size=c),
        "dnm": lambda c: dnm(image, pos, neg, permutation=None, n_groups=G, chunk_size=c),
        "top_pairs": lambda c: np.concatenate(top_pairs(image, pos, neg, chunk_size=c), axis=1),
        "multi_matching": lambda c: multi_matching(image, pair_text, index, neg_logits, chunk_size=c),
    }
    full = calls[name](N)
    for chunk in (1, 7):
        np.testing.assert_allclose(calls[name](chunk), full, rtol=1e-12)


def test_stable_where_plain_exponentials_overflow(emb: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    image, pos, neg = emb
    for got in (
        neglabel(image, pos, neg, n_groups=G, logit_scale=1e5),
        mcm(image, pos, 1e-5),
        dnm(image, pos, neg, permutation=None, n_groups=G, temperature=1e-4),
        multi_matching(
            image, neg[:1], np.zeros((N, 1, 1), dtype=np.int64), np.full((N, 1), 1e5), logit_scale=1e5
        ),
    ):
        assert np.isfinite(got).all()
        assert ((got >= 0) & (got <= 1)).all()


def test_float32_inputs_match_float64(emb: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    image, pos, neg = emb
    f32 = [a.astype(np.float32) for a in emb]
    np.testing.assert_allclose(neglabel(*f32, n_groups=G), neglabel(image, pos, neg, n_groups=G), rtol=1e-4)


def test_image_equal_to_an_id_label_scores_higher_than_one_equal_to_a_negative(
    emb: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    _, pos, neg = emb
    probe = np.stack([pos[0], neg[0]])
    assert np.diff(mcm(probe, pos))[0] < 0
    assert np.diff(neglabel(probe, pos, neg, n_groups=G))[0] < 0
    assert np.diff(dnm(probe, pos, neg, permutation=None, n_groups=G))[0] < 0


def test_bad_arguments_are_named(emb: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    image, pos, neg = emb
    with pytest.raises(NegRefineError, match=r"permutation of 0\.\.19"):
        neglabel(image, pos, neg, n_groups=G, permutation=np.arange(M))
    with pytest.raises(NegRefineError, match="dimension 3"):
        neglabel(image, pos[:, :3], neg)
    with pytest.raises(NegRefineError, match="n_groups"):
        neglabel(image, pos, neg, n_groups=M + 1)
    with pytest.raises(NegRefineError, match="chunk_size"):
        mcm(image, pos, chunk_size=0)
    with pytest.raises(NegRefineError, match="NaN"):
        mcm(np.full((1, D), np.nan), pos)
    with pytest.raises(NegRefineError, match="tau"):
        dnm(image, pos, neg, permutation=None, n_groups=G, tau=0.0)
    with pytest.raises(NegRefineError, match="pair_index"):
        multi_matching(image, pos, np.zeros((N, 2, 2), dtype=np.int64), np.zeros((N, 3)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_permutation_matches_the_references_seeding() -> None:
    with torch.random.fork_rng(devices=[0]):
        torch.manual_seed(0)
        torch.cuda.manual_seed(0)
        want = torch.randperm(10400, device="cuda").tolist()
    assert grouping_permutation(10499, 100, seed=0, device="cuda").tolist() == want
