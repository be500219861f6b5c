"""InterNeg's pure core: hand-computed prototypes, admissibility (strict '<'), deviation and split,
the selection order, the bank, the grouped score against a per-image loop written from the
reference, and the online loop against a plain per-batch loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from negrefine_ray.core import interneg
from negrefine_ray.core.interneg import (
    NegativeBank,
    admissible,
    base_similarity,
    class_prototypes,
    deviation,
    interneg_score,
    proportional_split,
    run_online,
    select_interneg,
    stream_order,
)
from negrefine_ray.errors import NegRefineError

# Two prototypes e1, e2 in 3-D with base similarities 0.6 and 0.8: cosines are exact in float64.
PROTOS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
BASE = np.array([0.6, 0.8])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_class_prototypes_by_hand() -> None:
    emb = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 3], [0, 0, -0.5], [0, 0, 2]], dtype=np.float32)
    protos, counts = class_prototypes(emb, np.array([0, 0, 1, 3, 1]), 4)
    assert protos.dtype == np.float32
    s = np.sqrt(0.5)
    np.testing.assert_allclose(protos, [[s, s, 0], [0, 0, 1], [0, 0, 0], [0, 0, -1]], rtol=1e-6)
    np.testing.assert_array_equal(counts, [2, 2, 0, 1])
    with pytest.raises(NegRefineError, match=r"\[0, 4\)"):
        class_prototypes(emb, np.array([0, 0, 1, 4, 1]), 4)


def test_base_similarity_by_hand() -> None:
    id_text = np.array([[1.0, 0, 0], [0.6, 0.8, 0]])
    np.testing.assert_allclose(base_similarity(id_text, PROTOS), [1.0, 0.8])


def test_admissible_is_strict_and_deviation_by_hand() -> None:
    words = np.array(
        [
            [0.6, 0.0, 0.8],  # cos(w, v_0) == base_0: rejected, delta = (0 + 0.8) / 2
            [0.5, 0.0, np.sqrt(0.75)],  # admissible, delta = (0.1 + 0.8) / 2
            [0.0, 0.8, 0.6],  # cos(w, v_1) == base_1: rejected
            [0.0, 0.0, 1.0],  # admissible, delta = (0.6 + 0.8) / 2
            [-1.0, 0.0, 0.0],  # admissible, delta = (1.6 + 0.8) / 2
        ]
    )
    np.testing.assert_array_equal(admissible(words, PROTOS, BASE), [False, True, False, True, True])
    np.testing.assert_allclose(deviation(words, PROTOS, BASE), [0.4, 0.45, 0.3, 0.7, 1.2], atol=1e-15)


def test_zero_prototype_is_reported() -> None:
    with pytest.raises(NegRefineError, match="classes without images"):
        admissible(np.eye(3)[:1], np.array([[1.0, 0, 0], [0, 0, 0]]), BASE)


def test_blocks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    words, protos = _unit(rng.normal(size=(11, 8))), _unit(rng.normal(size=(4, 8)))
    base = np.full(4, 0.3)
    want = interneg.inter_modal(words, protos, base)
    monkeypatch.setattr(interneg, "BLOCK_ROWS", 3)
    got = interneg.inter_modal(words, protos, base)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-14)
    assert 0 < want[0].sum() < 11


def test_proportional_split() -> None:
    assert proportional_split(2000, 7543, 53036) == (249, 1751)  # the reference's commented counts
    assert proportional_split(2000, 201, 199) == (1004, 996)  # float form, as coded (exact floor: 1005)
    assert proportional_split(3, 0, 5) == (0, 3)
    assert proportional_split(3, 5, 0) == (3, 0)
    with pytest.raises(NegRefineError):
        proportional_split(3, 0, 0)


def _word(delta: float) -> list[float]:
    """A 3-D word with cos(w, v_0) = 0 and cos(w, v_1) = 1.4 - 2 delta: deviation `delta`."""
    b = 1.4 - 2 * delta
    return [0.0, b, np.sqrt(1 - b * b)]


def test_select_interneg_order_ties_and_split() -> None:
    adjs = np.array([[0.6, 0, 0.8], _word(0.4), _word(0.6), _word(0.4)])  # A = 3
    nouns = np.array([_word(0.35), [0, 0.8, 0.6], _word(0.5), _word(0.65), _word(0.5), _word(0.5)])  # N = 5
    sel = select_interneg(nouns, adjs, protos=PROTOS, base=BASE, m=4)
    assert (sel.n_admissible_adjectives, sel.n_admissible_nouns) == (3, 5)
    assert (sel.adj_num, sel.noun_num) == (1, 3)  # floor(4 * 3 / 8) = 1
    np.testing.assert_array_equal(sel.adj_index, [2])
    np.testing.assert_array_equal(sel.noun_index, [3, 2, 4])  # 0.65, then the 0.5 ties by index
    np.testing.assert_array_equal(sel.stack(nouns, adjs), np.stack([adjs[2], nouns[3], nouns[2], nouns[4]]))
    noun_words, adj_words = [f"n{i}" for i in range(6)], [f"a{i}" for i in range(4)]
    assert sel.labels(noun_words, adj_words) == ["a2", "n3", "n2", "n4"]

    full = select_interneg(nouns, adjs, protos=PROTOS, base=BASE, m=8)
    np.testing.assert_array_equal(full.adj_index, [2, 1, 3])
    np.testing.assert_array_equal(full.noun_index, [3, 2, 4, 5, 0])


def test_select_interneg_too_few() -> None:
    adjs = np.array([_word(0.4)])
    nouns = np.array([_word(0.5), [0.6, 0, 0.8]])
    with pytest.raises(NegRefineError, match=r"only 2 admissible words \(1 adjectives, 1 nouns\) for m=5"):
        select_interneg(nouns, adjs, protos=PROTOS, base=BASE, m=5)
    sel = select_interneg(nouns, adjs, protos=PROTOS, base=BASE, m=5, allow_fewer=True)
    assert (sel.adj_num, sel.noun_num) == (1, 1)
    with pytest.raises(NegRefineError, match="no candidate word is admissible"):
        select_interneg(nouns[1:], adjs[:0], protos=PROTOS, base=BASE, m=5)


def test_bank_keeps_everything_sorted_and_stable() -> None:
    bank = NegativeBank(2)
    bank.append(np.array([[1.0, 0], [2, 0]]), np.array([0.5, 0.9]))
    bank.append(np.zeros((0, 2)), np.zeros(0))
    bank.append(np.array([[3.0, 0], [4, 0]]), np.array([0.7, 0.9]))
    bank.append(np.array([[5.0, 0]]), np.array([0.1]))
    assert len(bank) == 5
    np.testing.assert_array_equal(bank.scores, [0.9, 0.9, 0.7, 0.5, 0.1])
    np.testing.assert_array_equal(bank.top(3)[:, 0], [2, 4, 3])  # the earlier 0.9 first
    np.testing.assert_array_equal(bank.top(10)[:, 0], [2, 4, 3, 1, 5])
    assert bank.top(0).shape == (0, 2) and bank.top(3).dtype == np.float32


N, D, K, M, G = 7, 16, 6, 23, 4  # M' = 20, Q = 5: the last 3 negatives are dropped


@pytest.fixture
def emb() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return _unit(rng.normal(size=(N, D))), _unit(rng.normal(size=(K, D))), _unit(rng.normal(size=(M, D)))


def _reference_score(image: np.ndarray, pos: np.ndarray, neg: np.ndarray, g: int) -> np.ndarray:
    """oneoodprompt_postprocessor.py:242-266, one image at a time in float64."""
    neg = neg[: len(neg) - len(neg) % g]
    torch.manual_seed(0)
    groups = neg[torch.randperm(len(neg)).numpy()].reshape(g, -1, neg.shape[1])
    out = []
    for x in image:
        per_group = []
        for q in groups:
            e = np.exp(np.concatenate([100 * pos @ x, 100 * q @ x]))
            per_group.append(e[: len(pos)].sum() / e.sum())
        out.append(np.mean(per_group))
    return np.array(out)


def test_interneg_score_matches_reference_loop(emb: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    image, pos, neg = emb
    got = interneg_score(image, pos, neg, n_groups=G)
    np.testing.assert_allclose(got, _reference_score(image, pos, neg, G), rtol=1e-10)
    moved = neg.copy()
    moved[-3:] = pos[:3]  # the dropped remainder cannot matter
    np.testing.assert_array_equal(interneg_score(image, pos, moved, n_groups=G), got)


def test_float16_score_is_quantised_like_torch_half(emb: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    image, pos, neg = emb
    got = interneg_score(image, pos, neg, n_groups=G, dtype="float16")
    np.testing.assert_array_equal(got.astype(np.float16).astype(np.float64), got)
    # The reference's expression in torch half (CPU): fp32 scalar times fp16 features, fp16 softmax.
    kept = neg[: M - M % G]
    torch.manual_seed(0)
    perm = torch.randperm(len(kept))
    logits = (torch.tensor(100.0) * torch.from_numpy(image).half()) @ torch.from_numpy(
        np.concatenate([pos, kept])
    ).half().T
    q = logits[:, K:][:, perm].reshape(N, G, -1)
    half = [torch.cat([logits[:, :K], q[:, i]], dim=-1).softmax(-1)[:, :K].sum(-1) for i in range(G)]
    want = torch.stack(half, dim=-1).mean(-1).double().numpy()
    np.testing.assert_allclose(got, want, atol=2e-3)
    np.testing.assert_allclose(got, interneg_score(image, pos, neg, n_groups=G), atol=5e-3)
    with pytest.raises(NegRefineError, match="Did you mean 'float16'"):
        interneg_score(image, pos, neg, n_groups=G, dtype="float61")  # type: ignore[arg-type]


def test_stream_order() -> None:
    a = stream_order(5, 7, seed=3)
    assert a.dtype == np.int64
    np.testing.assert_array_equal(np.sort(a), np.arange(12))
    np.testing.assert_array_equal(a, np.random.default_rng(3).permutation(12))
    np.testing.assert_array_equal(a, stream_order(5, 7, seed=3))
    assert not np.array_equal(a, stream_order(5, 7, seed=4))


# The online stream: 4 classes, ID images near their prototype, OOD images anywhere.
OK, OD, ON_ID, ON_OOD, OM = 4, 16, 30, 50, 12


def _invert(x: np.ndarray) -> np.ndarray:
    """A deterministic stand-in for OTI: a fixed mix of each image with its rotated coordinates."""
    return _unit(x + 0.4 * np.roll(x, 3, axis=1))


@pytest.fixture
def stream() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    protos = _unit(rng.normal(size=(OK, OD)))
    id_text = _unit(protos + 0.15 * rng.normal(size=(OK, OD)))
    id_text[0] = _unit(protos[0] + 0.8 * rng.normal(size=OD))  # a low base similarity rejects some inversions
    labels = rng.integers(0, OK, ON_ID)
    id_img = _unit(protos[labels] + 0.15 * rng.normal(size=(ON_ID, OD)))
    image = np.concatenate([id_img, _unit(rng.normal(size=(ON_OOD, OD)))])
    return {
        "image": image,
        "is_id": np.arange(ON_ID + ON_OOD) < ON_ID,
        "id_text": id_text,
        "text_negs": _unit(rng.normal(size=(OM, OD))),
        "protos": protos,
        "base": base_similarity(id_text, protos),
    }


def _reference_online(
    s: dict[str, np.ndarray], order: np.ndarray, batch: int, thres: float, k_extra: int, g: int
) -> tuple[np.ndarray, int, int, list[int]]:
    """oneoodprompt_postprocessor.py:225-366 as a plain loop; the bank is a Python list, sorted stably.
    Also returns the rows whose inversion entered the bank, in row order."""
    bank: list[tuple[float, np.ndarray]] = []
    banked: list[int] = []
    out = np.zeros(len(order))
    kept = activated = 0
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        x = s["image"][idx]
        negs = np.concatenate([s["text_negs"], *[e[None] for _, e in bank[:k_extra]]])
        conf = _reference_score(x, s["id_text"], negs, g)
        mask = conf < thres
        if mask.any():
            activated += int(mask.sum())
            inv = _invert(x[mask])
            cos = inv @ s["protos"].T
            for row, e, c in zip(idx[mask], inv, cos, strict=True):
                if (c < s["base"]).all():
                    bank.append((float((s["base"] - c).mean()), e.astype(np.float32)))
                    banked.append(int(row))
                    kept += 1
            bank.sort(key=lambda item: -item[0])
            negs = np.concatenate([s["text_negs"], *[e[None] for _, e in bank[:k_extra]]])
            conf = _reference_score(x, s["id_text"], negs, g)
        out[idx] = conf
    return out, activated, kept, sorted(banked)


def _online(s: dict[str, np.ndarray], order: np.ndarray, **kw: Any) -> tuple[np.ndarray, dict[str, int]]:
    kw.setdefault("invert", _invert)
    args: dict[str, Any] = {k: s[k] for k in ("id_text", "text_negs", "protos", "base")}
    return run_online(s["image"], s["is_id"], order=order, **args, **kw)


def test_run_online_matches_reference_loop(stream: dict[str, np.ndarray]) -> None:
    order = stream_order(ON_ID, ON_OOD, seed=0)
    kw = {"batch_size": 16, "threshold": 0.35, "k_extra": 7, "n_groups": 3}
    banked = np.zeros(len(order), dtype=bool)
    got, counts = _online(stream, order, banked=banked, **kw)
    want, activated, kept, rows = _reference_online(stream, order, 16, 0.35, 7, 3)
    assert np.flatnonzero(banked).tolist() == rows  # the images the report flags as banked
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert counts["batches"] == 5
    assert (counts["activated"], counts["kept"]) == (activated, kept)
    assert 0 < kept < activated and kept > 7  # the filter rejects some, and the bank outgrows k_extra
    assert 1 <= counts["inverted"] <= 5
    assert counts["activated_id"] <= counts["activated"] and counts["kept_id"] <= counts["kept"]
    again, _ = _online(stream, order, **kw)
    np.testing.assert_array_equal(again, got)
    other, _ = _online(stream, stream_order(ON_ID, ON_OOD, seed=1), **kw)
    assert not np.allclose(other, got)
    half, _ = _online(stream, order, dtype="float16", **kw)
    np.testing.assert_array_equal(half.astype(np.float16).astype(np.float64), half)


def test_run_online_without_activation_is_the_plain_score(stream: dict[str, np.ndarray]) -> None:
    order = stream_order(ON_ID, ON_OOD, seed=0)
    got, counts = _online(stream, order, batch_size=16, threshold=0.0, n_groups=3)
    assert counts == dict.fromkeys(counts, 0) | {"batches": 5}
    want = interneg_score(stream["image"], stream["id_text"], stream["text_negs"], n_groups=3)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_run_online_checks_the_inversion(stream: dict[str, np.ndarray]) -> None:
    order = stream_order(ON_ID, ON_OOD, seed=0)
    with pytest.raises(NegRefineError, match="unit row per image"):
        _online(stream, order, invert=lambda x: 2 * x, threshold=1.0)
    with pytest.raises(NegRefineError, match="permutation"):
        _online(stream, order[:-1])


def _is_half(x: np.ndarray) -> bool:
    return bool(np.array_equal(np.asarray(x, np.float64).astype(np.float16).astype(np.float64), x))


def test_the_fp16_bank_stores_and_sorts_what_the_reference_stores() -> None:
    """With half, the bank keeps float16-rounded embeddings and scores (the reference's CPU fp16
    tensors), so scores that differ only beyond float16 tie, and ties keep their arrival order."""
    rng = np.random.default_rng(0)
    emb = _unit(rng.normal(size=(4, 3)))
    scores = np.array([0.1, 0.100001, 0.3, 0.2])  # the first two are one float16 value
    half, full = NegativeBank(3, half=True), NegativeBank(3)
    half.append(emb, scores)
    full.append(emb, scores)
    assert _is_half(half.scores) and not _is_half(full.scores)
    np.testing.assert_array_equal(half.scores, np.float16([0.3, 0.2, 0.1, 0.1]).astype(np.float64))
    np.testing.assert_array_equal(half.top(4), emb[[2, 3, 0, 1]].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(full.top(4), emb[[2, 3, 1, 0]].astype(np.float32))  # no tie in float64


def test_the_fp16_selection_rounds_its_cosines_and_deviations(stream: dict[str, np.ndarray]) -> None:
    """half: the base similarities, cosines and deviations are float16 values (the reference's fp16
    GEMMs), within float16's rounding of the float64 ones."""
    s = stream
    words = s["text_negs"]
    base16 = base_similarity(s["id_text"], s["protos"], half=True)
    assert _is_half(base16) and np.allclose(base16, s["base"], atol=2e-3)
    ok, dev = interneg.inter_modal(words, s["protos"], s["base"])
    ok16, dev16 = interneg.inter_modal(words, s["protos"], base16, half=True)
    assert _is_half(dev16) and np.allclose(dev16, dev, atol=2e-3)
    assert (ok16 == ok).mean() > 0.9


def test_fp16_runs_the_whole_online_loop_in_the_reference_arithmetic(stream: dict[str, np.ndarray]) -> None:
    """dtype float16 reaches the bank: the kept inversions are the same rows, and the scores move by
    about float16's resolution, not more."""
    order = stream_order(ON_ID, ON_OOD, seed=0)
    kw = {"batch_size": 16, "threshold": 0.35, "k_extra": 7, "n_groups": 3}
    full, counts = _online(stream, order, **kw)
    half, counts16 = _online(stream, order, dtype="float16", **kw)
    assert _is_half(half) and counts16["activated"] > 0
    assert abs(counts16["kept"] - counts["kept"]) <= 2
    assert np.abs(half - full).max() < 0.05
