"""Which of NegRefine's negatives the grouped score drops (issue 11 item 2; methods.md 0.6 step 1, 3.2
step 1, 3.4): the reference de-duplicates with list(set(...)), a random order, so the M mod G it drops
are a random remainder; "shuffled" reproduces that distribution with a seeded order, "ranked" keeps
mine's order and always drops the last-ranked (most ID-like) adjectives."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from negrefine_ray.core import scores
from negrefine_ray.core.multi_matching import negative_order, refined_negatives
from negrefine_ray.errors import StageError


def _mined(n_nouns: int, n_adjs: int) -> pa.Table:
    """NegRefine's mine output in rank order (what refined_negatives reads), nouns then adjectives
    by rank, plus one cleaned duplicate that is not a filter input."""
    labels = [f"noun{i}" for i in range(n_nouns)] + [f"adj{i} scene" for i in range(n_adjs)]
    pos = ["noun"] * n_nouns + ["adj"] * n_adjs
    return pa.table(
        {
            "method": ["negrefine"] * (len(labels) + 1),
            "rank": pa.array(range(len(labels) + 1), pa.int32()),
            "clean_label": [*labels, "noun0"],
            "pos": [*pos, "noun"],
            "filter_input": [True] * len(labels) + [False],
        }
    )


def test_ranked_keeps_mine_order_nouns_first() -> None:
    pos = ["adj", "noun", "noun", "adj", "noun"]
    assert negative_order(pos, "ranked", 0).tolist() == [1, 2, 4, 0, 3]


def test_shuffled_permutes_each_part_with_the_seed() -> None:
    pos = ["noun"] * 50 + ["adj"] * 20
    order = negative_order(pos, "shuffled", 7)
    assert sorted(order[:50].tolist()) == list(range(50)) and sorted(order[50:].tolist()) == list(
        range(50, 70)
    )
    rng = np.random.default_rng(7)  # the documented draw: nouns first, then adjectives
    assert order[:50].tolist() == rng.permutation(50).tolist()
    assert order[50:].tolist() == (50 + rng.permutation(20)).tolist()
    assert np.array_equal(order, negative_order(pos, "shuffled", 7))  # reproducible
    assert not np.array_equal(order, negative_order(pos, "shuffled", 8))  # the run seed matters


def test_unknown_order_is_refused() -> None:
    with pytest.raises(StageError, match="known: shuffled, ranked"):
        negative_order(["noun"], "sorted", 0)


def test_shuffled_drops_a_random_remainder_ranked_the_last_ranked() -> None:
    """With 100 nouns + 37 adjectives and G = 10 the grouped score drops D = 7 adjectives. Ranked:
    always the 7 last-ranked. Shuffled: over 300 seeds every adjective is dropped sometimes and the
    dropped ones' mean rank is the middle of the list, as with the reference's set order."""
    n_nouns, n_adjs, groups = 100, 37, 10
    table = _mined(n_nouns, n_adjs)
    kept = scores.kept_negatives(n_nouns + n_adjs, groups)
    ranked = refined_negatives(table, {}, method="negrefine", order="ranked")
    assert ranked.labels[kept:] == [f"adj{i} scene" for i in range(30, 37)]
    dropped_ranks = []
    for seed in range(300):
        labels = refined_negatives(table, {}, method="negrefine", order="shuffled", seed=seed).labels
        assert sorted(labels[:n_nouns]) == sorted(ranked.labels[:n_nouns])  # nouns stay first
        dropped_ranks += [int(label[3:].split()[0]) for label in labels[kept:]]
    assert set(dropped_ranks) == set(range(n_adjs))
    assert 15.0 < float(np.mean(dropped_ranks)) < 21.0  # (37 - 1) / 2 = 18; ranked gives 33


def test_judge_sets_follow_the_final_order() -> None:
    """A judge's kept labels keep the order of its input (the final order), whatever order its
    kept.parquet lists them in, and the duplicate that was no filter input is not a negative."""
    table = _mined(6, 4)
    kept = pa.table(
        {"label": ["adj3 scene", "noun5", "noun0", "adj0 scene"], "pos": ["adj", "noun", "noun", "adj"]}
    )
    for order in ("ranked", "shuffled"):
        refined = refined_negatives(table, {"j": kept}, method="negrefine", order=order, seed=3)
        assert len(refined.labels) == 10
        chosen = [refined.labels[i] for i in refined.sets["j"]]
        assert chosen == [label for label in refined.labels if label in set(kept.column("label").to_pylist())]
        assert refined.sets["j"].tolist() == sorted(refined.sets["j"].tolist())


def test_a_kept_label_that_was_not_mined_is_an_error() -> None:
    kept = pa.table({"label": ["unmined"], "pos": ["noun"]})
    with pytest.raises(StageError, match="did not mine"):
        refined_negatives(_mined(3, 2), {"j": kept}, method="negrefine")
